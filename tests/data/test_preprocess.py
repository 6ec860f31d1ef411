"""brainjax.data.preprocess against scipy/numpy references and planted reliable voxels."""

import numpy as np
import pytest
from scipy import signal, stats

from brainjax.data import preprocess


def _series(rng, t=240, v=7):
  time = np.arange(t)[:, None]
  # a trend of every degree up to 4 plus noise, large offsets (as raw BOLD: ~10^4)
  trend = 1e4 + 3.0 * time - 0.02 * time ** 2 + 1e-4 * time ** 3 - 2e-7 * time ** 4
  return trend * rng.uniform(0.5, 1.5, v) + rng.normal(0, 5, (t, v))


def test_order_1_detrend_equals_scipy():
  x = _series(np.random.default_rng(0))
  np.testing.assert_allclose(preprocess.detrend(x, order=1), signal.detrend(x, axis=0, type="linear"), atol=1e-7)
  np.testing.assert_allclose(preprocess.detrend(x.T, order=1, axis=1), signal.detrend(x.T, axis=1), atol=1e-7)


def test_order_4_detrend_equals_numpy_polynomial_fit_per_column():
  x = _series(np.random.default_rng(1))
  got = preprocess.detrend(x, order=4)
  time = np.arange(x.shape[0])
  for column in range(x.shape[1]):
    fit = np.polynomial.Polynomial.fit(time, x[:, column], 4)
    np.testing.assert_allclose(got[:, column], x[:, column] - fit(time), atol=1e-6)
  # the residual is orthogonal to every polynomial of degree <= 4 ...
  powers = np.vander(np.linspace(-1, 1, x.shape[0]), 5)
  assert np.abs(powers.T @ got).max() < 1e-6
  # ... and a pure quartic is removed entirely
  np.testing.assert_allclose(preprocess.detrend(powers @ [1.0, -2.0, 3.0, 0.5, 7.0], order=4), 0, atol=1e-9)


def test_order_0_removes_the_mean_and_short_series_fail():
  x = np.random.default_rng(2).normal(5, 1, (20, 3))
  np.testing.assert_allclose(preprocess.detrend(x, order=0), x - x.mean(0), atol=1e-12)
  with pytest.raises(ValueError, match="more than 5 samples"):
    preprocess.detrend(np.ones((5, 2)), order=4)


def test_zscore_uses_matlab_ddof_and_handles_constant_columns():
  x = np.random.default_rng(3).normal(3, 2, (50, 4))
  x[:, 2] = 7.0
  z = preprocess.zscore(x)
  np.testing.assert_allclose(z[:, [0, 1, 3]], stats.zscore(x[:, [0, 1, 3]], axis=0, ddof=1), atol=1e-12)
  np.testing.assert_allclose(z[:, [0, 1, 3]].std(0, ddof=1), 1.0)
  assert (z[:, 2] == 0).all()
  np.testing.assert_allclose(preprocess.zscore(x[:, :2], ddof=0), stats.zscore(x[:, :2], ddof=0), atol=1e-12)


def test_preprocess_run_is_detrend_then_zscore_in_float64():
  x = _series(np.random.default_rng(4)).astype(np.float32)
  out = preprocess.preprocess_run(x)
  assert out.dtype == np.float64
  np.testing.assert_allclose(out, stats.zscore(preprocess.detrend(x.astype(np.float64), 4), ddof=1), atol=1e-9)
  np.testing.assert_allclose(out.mean(0), 0, atol=1e-9)
  np.testing.assert_array_equal(preprocess.preprocess_run(x, detrend_order=None, zscore_ddof=None), x)


def test_correlation_and_fisher_z_match_scipy():
  rng = np.random.default_rng(5)
  a, b = rng.normal(size=(30, 6)), rng.normal(size=(30, 6))
  b[:, 0] = a[:, 0]
  b[:, 1] = 3.0  # constant
  r = preprocess.column_correlation(a, b)
  for column in (2, 3, 4, 5):
    assert r[column] == pytest.approx(stats.pearsonr(a[:, column], b[:, column])[0])
  assert r[1] == 0
  assert np.isfinite(preprocess.fisher_z(r)).all()
  np.testing.assert_allclose(preprocess.fisher_z(r[2:]), 0.5 * np.log((1 + r[2:]) / (1 - r[2:])))


def _planted_training_data(rng, segments=6, repeats=2, t=40, v=60, reliable=(3, 17, 42, 43), anti=(9,)):
  """[S][R, T, V]: noise everywhere; `reliable` columns share a per-segment signal across repeats."""
  out = []
  for _ in range(segments):
    signal_ = rng.normal(size=(t, v))
    runs = rng.normal(size=(repeats, t, v))
    runs[:, :, list(reliable)] += 1.5 * signal_[:, list(reliable)]
    runs[0][:, list(anti)] += 1.5 * signal_[:, list(anti)]
    for later in runs[1:]:
      later[:, list(anti)] -= 1.5 * signal_[:, list(anti)]
    out.append(runs)
  return out


def test_t_test_and_bonferroni_match_scipy():
  rng = np.random.default_rng(6)
  data = _planted_training_data(rng)
  z = np.stack([preprocess.segment_fisher_z(runs) for runs in data])
  expected_z = np.stack([np.arctanh([stats.pearsonr(r[0][:, c], r[1][:, c])[0] for c in range(60)]) for r in data])
  np.testing.assert_allclose(z, expected_z, atol=1e-10)
  result = preprocess.reproducibility(z)
  reference = stats.ttest_1samp(expected_z, 0.0, axis=0)
  np.testing.assert_allclose(result.t, reference.statistic, rtol=1e-8)
  np.testing.assert_allclose(result.p, reference.pvalue, rtol=1e-8)
  np.testing.assert_allclose(result.p_bonferroni, np.minimum(reference.pvalue * 60, 1))
  greater = preprocess.reproducibility(z, alternative="greater")
  np.testing.assert_allclose(greater.p, stats.ttest_1samp(expected_z, 0.0, axis=0, alternative="greater").pvalue)


def test_planted_reliable_voxels_are_selected_by_threshold_and_top_n():
  data = _planted_training_data(np.random.default_rng(7))
  np.testing.assert_array_equal(preprocess.select_by_reproducibility(data, p_threshold=0.05), [3, 17, 42, 43])
  # top-N: the planted ones first, then the next best; the anti-correlated column is never a candidate
  assert set(preprocess.select_by_reproducibility(data, top_n=4)) == {3, 17, 42, 43}
  six = preprocess.select_by_reproducibility(data, top_n=6)
  assert len(six) == 6 and {3, 17, 42, 43} <= set(six) and 9 not in six
  assert list(six) == sorted(six)
  z = np.stack([preprocess.segment_fisher_z(runs) for runs in data])
  assert preprocess.reproducibility(z).p_bonferroni[9] < 0.05  # significant, but negative: excluded
  assert len(preprocess.select_by_reproducibility(data, top_n=1000)) == int((z.mean(0) > 0).sum())


def test_more_than_two_repeats_average_pairwise_z():
  rng = np.random.default_rng(8)
  data = _planted_training_data(rng, repeats=3)
  runs = data[0]
  pairs = [(0, 1), (0, 2), (1, 2)]
  expected = np.mean([preprocess.fisher_z(preprocess.column_correlation(runs[i], runs[j])) for i, j in pairs], 0)
  np.testing.assert_allclose(preprocess.segment_fisher_z(runs), expected)
  np.testing.assert_array_equal(preprocess.select_by_reproducibility(data, p_threshold=0.05), [3, 17, 42, 43])


def test_selection_sees_only_what_it_is_given():
  # The selection is a function of the training segments alone: changing anything else cannot move it.
  rng = np.random.default_rng(9)
  train = _planted_training_data(rng)
  test_a = _planted_training_data(rng, segments=2, repeats=4, reliable=(0, 1))
  before = preprocess.select_by_reproducibility(train, p_threshold=0.05)
  del test_a
  np.testing.assert_array_equal(preprocess.select_by_reproducibility(train, p_threshold=0.05), before)


def test_bad_arguments():
  data = _planted_training_data(np.random.default_rng(10))
  with pytest.raises(ValueError, match="exactly one of"):
    preprocess.select_by_reproducibility(data)
  with pytest.raises(ValueError, match="exactly one of"):
    preprocess.select_by_reproducibility(data, p_threshold=0.05, top_n=3)
  with pytest.raises(ValueError, match="at least 2 segments"):
    preprocess.select_by_reproducibility(data[:1], top_n=3)
  with pytest.raises(ValueError, match="R >= 2"):
    preprocess.segment_fisher_z(data[0][:1])
  with pytest.raises(ValueError, match="top_n"):
    preprocess.select_by_reproducibility(data, top_n=0)
