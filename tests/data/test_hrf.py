"""Tests of the canonical double-gamma HRF."""

import numpy as np
import pytest

from brainjax.data import hrf

FINE_GRID_S = np.arange(0.0, 32.0, 0.001)


@pytest.mark.parametrize("peak_s", [3.0, 4.0, 4.7, 5.0, 6.0, 7.5, 9.0])
def test_peak_is_at_configured_time(peak_s):
  response = hrf.double_gamma_hrf(FINE_GRID_S, peak_s=peak_s)
  assert abs(FINE_GRID_S[np.argmax(response)] - peak_s) < 0.1
  assert response.max() == pytest.approx(1.0, abs=1e-6)  # peak-normalised


@pytest.mark.parametrize("dispersion", [0.6, 1.0, 1.5])
def test_peak_holds_for_other_dispersions(dispersion):
  response = hrf.double_gamma_hrf(FINE_GRID_S, peak_s=5.0, dispersion=dispersion)
  assert abs(FINE_GRID_S[np.argmax(response)] - 5.0) < 0.1


def test_default_is_spm_canonical_shape():
  # SPM: gamma(6, 1) - gamma(16, 1) / 6, i.e. peak ~5 s and undershoot ~15 s.
  response = hrf.double_gamma_hrf(FINE_GRID_S)
  assert abs(FINE_GRID_S[np.argmax(response)] - 5.0) < 0.01
  assert 13.0 < FINE_GRID_S[np.argmin(response)] < 17.0


def test_undershoot_is_negative_and_response_is_causal():
  response = hrf.double_gamma_hrf(FINE_GRID_S, peak_s=5.0)
  after_peak = response[FINE_GRID_S > 10.0]
  assert after_peak.min() < -0.05  # visible post-stimulus undershoot
  assert response[0] == 0.0
  assert np.all(hrf.double_gamma_hrf(np.array([-3.0, -0.5]), peak_s=5.0) == 0.0)


def test_later_peak_means_later_rise():
  early, late = (hrf.double_gamma_hrf(FINE_GRID_S, peak_s=p) for p in (4.0, 6.0))
  at_3s = np.searchsorted(FINE_GRID_S, 3.0)
  assert early[at_3s] > late[at_3s]


@pytest.mark.parametrize("kwargs, name", [
    ({"peak_s": 0.0}, "peak_s"),
    ({"peak_s": -2.0}, "peak_s"),
    ({"peak_s": float("nan")}, "peak_s"),
    ({"undershoot_s": 0.0}, "undershoot_s"),
    ({"peak_s": 8.0, "undershoot_s": 6.0}, "undershoot_s"),
    ({"undershoot_ratio": 1.0}, "undershoot_ratio"),
    ({"undershoot_ratio": -0.1}, "undershoot_ratio"),
    ({"dispersion": 0.0}, "dispersion"),
])
def test_bad_shape_arguments_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    hrf.double_gamma_hrf(FINE_GRID_S, **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"dt_s": 0.0}, "dt_s"),
    ({"dt_s": 0.5, "length_s": -1.0}, "length_s"),
    ({"dt_s": 0.5, "peak_s": 5.0, "length_s": 4.0}, "length_s"),
    ({"dt_s": 0.5, "peak_s": -1.0}, "peak_s"),
])
def test_bad_kernel_arguments_raise(kwargs, name):
  with pytest.raises(ValueError, match=name):
    hrf.hrf_kernel(**kwargs)


@pytest.mark.parametrize("dt_s", [0.1, 1 / 3, 2.0])
def test_kernel_sums_to_one_and_covers_length(dt_s):
  kernel = hrf.hrf_kernel(dt_s, peak_s=5.0, length_s=32.0)
  assert kernel.sum() == pytest.approx(1.0)
  assert len(kernel) == int(np.ceil(32.0 / dt_s - 1e-9))


def test_convolution_is_causal_same_length_and_peaks_at_hrf_peak():
  dt_s, onset = 0.1, 50
  impulse = np.zeros(600)
  impulse[onset] = 1.0
  response = hrf.convolve_hrf(impulse, dt_s=dt_s, peak_s=6.0)
  assert response.shape == impulse.shape
  assert np.all(response[:onset + 1] == 0.0)  # nothing before (or at) the event
  assert abs((np.argmax(response) - onset) * dt_s - 6.0) < dt_s + 1e-9


def test_sustained_drive_settles_at_unit_response():
  response = hrf.convolve_hrf(np.ones(400), dt_s=0.25, peak_s=5.0)
  assert response[-1] == pytest.approx(1.0, abs=1e-6)


def test_convolution_along_other_axis_matches_axis0():
  rng = np.random.default_rng(0)
  signal = rng.standard_normal((90, 7))
  along0 = hrf.convolve_hrf(signal, dt_s=1 / 3, peak_s=4.5, axis=0)
  along1 = hrf.convolve_hrf(signal.T, dt_s=1 / 3, peak_s=4.5, axis=1)
  np.testing.assert_allclose(along1.T, along0, atol=1e-12)
  # Columns are convolved independently.
  np.testing.assert_allclose(hrf.convolve_hrf(signal[:, 2], dt_s=1 / 3, peak_s=4.5), along0[:, 2], atol=1e-12)
