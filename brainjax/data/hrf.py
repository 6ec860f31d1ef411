"""Canonical double-gamma haemodynamic response function (HRF).

The BOLD response to a brief burst of neural activity rises after ~2 s, peaks
4-6 s after the burst and then dips below baseline (the post-stimulus
undershoot) before returning to zero after ~30 s. The SPM canonical HRF models
this as the difference of two gamma densities,

  h(t) = g(t; a1, b) - undershoot_ratio * g(t; a2, b),

with shape a and scale b. A gamma density has its mode at (a - 1) * b, so we
parameterise the shapes by where the response *peaks* rather than by the
shapes themselves: a2 = undershoot_s / b + 1 and, to first order,
a1 = peak_s / b + 1, with b = `dispersion`. The rising undershoot lobe pulls
the mode of the difference slightly earlier (by 0.07 s for an 8 s peak), so a1
is then refined by root finding until h'(peak_s) = 0 exactly: `peak_s` is the
mode of the whole response, as the name promises. The defaults (peak 5 s,
undershoot 15 s, ratio 1/6, dispersion 1) reproduce SPM's canonical HRF
(shapes ~6 and 16, scale 1).

Normalisation (two functions, two conventions, each chosen for its use):
  * `double_gamma_hrf` is *peak-normalised*: its maximum is 1, so curves with
    different peaks or sampling grids are directly comparable.
  * `hrf_kernel` is *sum-normalised*: the sampled kernel sums to 1, so a
    sustained unit drive settles at a unit response whatever the sampling step.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, stats
from scipy import signal as sp_signal


def _check_positive(name: str, value: float) -> None:
  if not np.isfinite(value) or value <= 0:
    raise ValueError(f"{name} = {value!r}: must be a finite number > 0.")


def _validate_shape_args(peak_s: float, undershoot_s: float, undershoot_ratio: float,
                         dispersion: float) -> None:
  _check_positive("peak_s", peak_s)
  _check_positive("undershoot_s", undershoot_s)
  _check_positive("dispersion", dispersion)
  if undershoot_s <= peak_s:
    raise ValueError(f"undershoot_s = {undershoot_s!r} must be later than peak_s = {peak_s!r}: "
                     "the undershoot follows the peak (canonical: peak 5 s, undershoot 15 s).")
  if not np.isfinite(undershoot_ratio) or not 0 <= undershoot_ratio < 1:
    raise ValueError(f"undershoot_ratio = {undershoot_ratio!r}: must be in [0, 1) "
                     "(canonical 1/6); >= 1 would make the undershoot dominate the peak.")


def _gamma_pdf_slope(t: float, shape: float, scale: float) -> float:
  """d/dt of the gamma density, from d/dt log g = (shape - 1) / t - 1 / scale."""
  return stats.gamma.pdf(t, shape, scale=scale) * ((shape - 1.0) / t - 1.0 / scale)


def _peak_shape(peak_s: float, undershoot_shape: float, undershoot_ratio: float, dispersion: float) -> float:
  """Shape of the positive lobe that puts the mode of the *difference* at peak_s."""
  undershoot_slope = undershoot_ratio * _gamma_pdf_slope(peak_s, undershoot_shape, dispersion)

  def slope_at_peak(shape: float) -> float:
    return _gamma_pdf_slope(peak_s, shape, dispersion) - undershoot_slope

  shape_lo = peak_s / dispersion + 1.0  # positive lobe alone peaks at peak_s
  if slope_at_peak(shape_lo) >= 0.0:  # undershoot negligible (underflows) at the peak
    return shape_lo
  # A later positive lobe rises faster at peak_s; widen until the slope is positive.
  shape_hi = shape_lo + 0.5
  for _ in range(64):
    if slope_at_peak(shape_hi) >= 0.0:
      return optimize.brentq(slope_at_peak, shape_lo, shape_hi, xtol=1e-12, rtol=1e-12)
    shape_hi += shape_hi - shape_lo
  raise ValueError(f"no double-gamma HRF peaks at peak_s = {peak_s!r} with this undershoot; "
                   "move undershoot_s later or lower undershoot_ratio.")


def _unnormalised_double_gamma(times_s: np.ndarray, peak_s: float, undershoot_s: float,
                               undershoot_ratio: float, dispersion: float) -> np.ndarray:
  """Difference of two gamma densities; the difference has its mode at peak_s."""
  undershoot_shape = undershoot_s / dispersion + 1.0
  peak_shape = _peak_shape(peak_s, undershoot_shape, undershoot_ratio, dispersion)
  response = stats.gamma.pdf(times_s, peak_shape, scale=dispersion)
  undershoot = stats.gamma.pdf(times_s, undershoot_shape, scale=dispersion)
  return response - undershoot_ratio * undershoot


def double_gamma_hrf(times_s: np.ndarray, peak_s: float = 5.0, undershoot_s: float = 15.0,
                     undershoot_ratio: float = 1 / 6, dispersion: float = 1.0) -> np.ndarray:
  """The double-gamma HRF at `times_s` (seconds after the neural event), peak value 1.

  Args:
    times_s: times in seconds; negative times give 0 (the response is causal).
    peak_s: mode of the positive lobe (time to peak), seconds.
    undershoot_s: mode of the undershoot lobe, seconds; must exceed `peak_s`.
    undershoot_ratio: amplitude of the undershoot density relative to the peak density.
    dispersion: gamma scale; larger values widen both lobes.

  Returns:
    float64 array shaped like `times_s`, equal to 1 at t = peak_s (the mode).
  """
  _validate_shape_args(peak_s, undershoot_s, undershoot_ratio, dispersion)
  times_s = np.asarray(times_s, dtype=np.float64)
  # Normalise by the value at the mode itself, not the max over `times_s`, so
  # the scale does not depend on how the caller samples time.
  both = _unnormalised_double_gamma(np.append(times_s.ravel(), peak_s), peak_s, undershoot_s,
                                    undershoot_ratio, dispersion)
  return (both[:-1] / both[-1]).reshape(times_s.shape)


def hrf_kernel(dt_s: float, peak_s: float = 5.0, length_s: float = 32.0, **kw) -> np.ndarray:
  """The HRF sampled at 0, dt_s, 2 dt_s, ... < length_s, normalised to sum 1.

  Args:
    dt_s: sampling step in seconds (e.g. 1 / fps for frame-rate convolution).
    peak_s: time to peak, seconds.
    length_s: kernel support in seconds; 32 s covers the undershoot's return to baseline.
    **kw: forwarded to `double_gamma_hrf` (undershoot_s, undershoot_ratio, dispersion).

  Returns:
    float64[ceil(length_s / dt_s)] kernel.
  """
  _check_positive("dt_s", dt_s)
  _check_positive("length_s", length_s)
  if length_s <= peak_s:
    raise ValueError(f"length_s = {length_s!r} must exceed peak_s = {peak_s!r}, "
                     "or the kernel would cut off the response before its peak.")
  num_taps = int(np.ceil(length_s / dt_s - 1e-9))
  kernel = double_gamma_hrf(np.arange(num_taps) * dt_s, peak_s=peak_s, **kw)
  # The net area (peak lobe minus undershoot) is positive because undershoot_ratio < 1.
  return kernel / kernel.sum()


def convolve_hrf(signal: np.ndarray, dt_s: float, peak_s: float, axis: int = 0) -> np.ndarray:
  """Causal convolution of `signal` (sampled every dt_s) with the HRF, same length.

  Output sample n depends only on input samples <= n; the signal is taken to be
  zero before its first sample.
  """
  signal = np.asarray(signal, dtype=np.float64)
  if signal.ndim == 0:
    raise ValueError("signal must have at least one axis (time).")
  # A direct FIR filter rather than an FFT: exactly causal (no round-off leaking
  # before an event) and as fast for HRF-length kernels.
  return sp_signal.lfilter(hrf_kernel(dt_s, peak_s=peak_s), [1.0], signal, axis=axis)
