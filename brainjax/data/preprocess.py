"""Per-run fMRI preprocessing and test-retest voxel selection (pure NumPy, float64 inside).

The reference is Wen et al.'s official cc2017 code (PURR doi:10.4231/R7N58JJ3;
datasets.md §1.3, §1.5):

* `movie_fmri_data_processing.m`: per run and per vertex, remove a 4th-order
  polynomial trend (`amri_sig_detrend(x, 4)`: subtract the mean, then the
  least-squares fit of the polynomials 1, t, ..., t^4), then z-score over time
  with MATLAB's `std` (normalised by N - 1, hence `ddof=1` here).
* `movie_fmri_reproducibility.m`: per training segment, the Pearson
  correlation between repeat 1 and repeat 2 of every vertex, Fisher
  r-to-z (`0.5 log((1 + r) / (1 - r))`). The paper then keeps vertices whose z
  is significant across the 18 segments by a one-sample t-test with Bonferroni
  correction (p < 0.01 in Wen's paper; NeuroClips uses p < 0.05, 13447 / 14828 /
  9114 vertices for subjects 1-3), and Mind-Animator instead keeps the 4500
  vertices with the smallest Bonferroni-adjusted p (scipy `ttest_1samp`,
  two-sided).

Choices where the references are silent or disagree:

* The t-test is two-sided by default (the only code that runs it,
  Mind-Animator, uses scipy's default), but a vertex is only selectable when
  its mean z is positive: repeats that are reliably *anti*-correlated are not
  reproducible (on real data no such vertex reaches significance anyway).
  `alternative='greater'` gives the one-sided test.
* With more than two repeats a segment contributes the mean Fisher z over all
  pairs of its repeats (pairs of one segment are not independent samples, so
  the t-test stays across segments).
* Top-N ranks by the t statistic (equivalent to ranking by p for a fixed
  number of segments, and free of the p-value underflow that makes thousands
  of real vertices tie at p = 0).
* A constant column (no variance) z-scores to zeros and has correlation 0,
  instead of NaN.

The hemodynamic shift is NOT here: records are stored unshifted and the data
pipeline applies `hrf_shift_trs` (brainjax.data.pipeline).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np
from scipy import stats

_R_LIMIT = 1.0 - 1e-12  # keeps Fisher z finite for (numerically) identical repeats


def _float64(x) -> np.ndarray:
  return np.asarray(x, dtype=np.float64)


def polynomial_basis(num_samples: int, order: int) -> np.ndarray:
  """float64[num_samples, order + 1] orthonormal basis of the polynomials of degree <= order.

  Built from Legendre polynomials on [-1, 1] and orthonormalised by QR: the same column space as MATLAB's
  (1:nt).^k (so the same fitted trend) without the ill-conditioning of raw powers of 1..240.
  """
  if order < 0:
    raise ValueError(f"order = {order}: must be >= 0.")
  if num_samples <= order + 1:
    raise ValueError(f"a polynomial trend of order {order} needs more than {order + 1} samples; got {num_samples}.")
  grid = np.linspace(-1.0, 1.0, num_samples)
  basis, _ = np.linalg.qr(np.polynomial.legendre.legvander(grid, order))
  return basis


def detrend(x, order: int = 4, axis: int = 0) -> np.ndarray:
  """float64: `x` minus its least-squares polynomial fit of degree <= `order` along `axis`, per column.

  order 4 is Wen's `amri_sig_detrend(x, 4)`; order 0 removes the mean; order 1 equals
  `scipy.signal.detrend(x, axis, type='linear')`.
  """
  x = np.moveaxis(_float64(x), axis, 0)
  basis = polynomial_basis(x.shape[0], order)
  flat = x.reshape(x.shape[0], -1)
  residual = flat - basis @ (basis.T @ flat)
  return np.moveaxis(residual.reshape(x.shape), 0, axis)


def zscore(x, axis: int = 0, ddof: int = 1) -> np.ndarray:
  """float64: per column (0 mean, unit std with `ddof`) along `axis`; constant columns become 0.

  ddof=1 matches MATLAB's `std` in Wen's code (Mind-Animator's numpy port uses ddof=0; the two differ by a
  factor sqrt(T / (T - 1)), 0.2% for 240 volumes).
  """
  x = _float64(x)
  centred = x - x.mean(axis=axis, keepdims=True)
  sd = x.std(axis=axis, ddof=ddof, keepdims=True)
  return np.divide(centred, sd, out=np.zeros_like(centred), where=sd > 1e-12 * (1.0 + np.abs(x).max(initial=0.0)))


def preprocess_run(run, *, detrend_order: int | None = 4, zscore_ddof: int | None = 1) -> np.ndarray:
  """float64[T, V] one run, detrended (None: not) then z-scored (None: not) over time, per column."""
  out = _float64(run)
  if detrend_order is not None:
    out = detrend(out, detrend_order, axis=0)
  if zscore_ddof is not None:
    out = zscore(out, axis=0, ddof=zscore_ddof)
  return out


def column_correlation(a, b) -> np.ndarray:
  """float64[V] Pearson r between the columns of a[T, V] and b[T, V]; 0 where either column is constant."""
  a, b = _float64(a), _float64(b)
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f"column_correlation needs two [T, V] arrays of one shape; got {a.shape} and {b.shape}.")
  a = a - a.mean(axis=0)
  b = b - b.mean(axis=0)
  norms = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
  return np.divide((a * b).sum(axis=0), norms, out=np.zeros(a.shape[1]), where=norms > 0)


def fisher_z(r) -> np.ndarray:
  """Fisher r-to-z, 0.5 log((1 + r) / (1 - r)) (Wen's `amri_sig_r2z`), finite at |r| = 1."""
  return np.arctanh(np.clip(_float64(r), -_R_LIMIT, _R_LIMIT))


def segment_fisher_z(repeats) -> np.ndarray:
  """float64[V]: mean Fisher z of the column correlations over all pairs of repeats [R >= 2, T, V] of one segment."""
  repeats = _float64(repeats)
  if repeats.ndim != 3 or repeats.shape[0] < 2:
    raise ValueError(f"test-retest reproducibility needs repeats [R >= 2, T, V]; got shape {repeats.shape}.")
  pairs = itertools.combinations(range(repeats.shape[0]), 2)
  return np.mean([fisher_z(column_correlation(repeats[i], repeats[j])) for i, j in pairs], axis=0)


@dataclasses.dataclass(frozen=True)
class Reproducibility:
  """Per-column test-retest statistics over training segments."""

  z: np.ndarray             # float64[S, V] Fisher z per segment
  mean_z: np.ndarray        # float64[V]
  t: np.ndarray             # float64[V] one-sample t statistic of z against 0 (0 where undefined)
  p: np.ndarray             # float64[V] (1 where undefined)
  p_bonferroni: np.ndarray  # float64[V] min(p * V, 1)
  alternative: str

  @property
  def num_columns(self) -> int:
    return int(self.z.shape[1])


def reproducibility(segment_z, alternative: str = "two-sided") -> Reproducibility:
  """The one-sample t-test of per-segment Fisher z [S >= 2, V] against 0, Bonferroni-corrected over V columns.

  Pass TRAINING segments only: the selection must not see the test data.
  """
  z = _float64(segment_z)
  if z.ndim != 2 or z.shape[0] < 2:
    raise ValueError(f"the reproducibility t-test needs Fisher z of at least 2 segments, [S >= 2, V]; got shape "
                     f"{z.shape}. Use more training segments (or select voxels by another rule).")
  if alternative not in ("two-sided", "greater"):
    raise ValueError(f"alternative = {alternative!r}: 'two-sided' (Mind-Animator, scipy's default) or 'greater'.")
  with np.errstate(invalid="ignore", divide="ignore"):
    result = stats.ttest_1samp(z, 0.0, axis=0, alternative=alternative)
  t = np.nan_to_num(np.asarray(result.statistic, np.float64), nan=0.0)
  p = np.nan_to_num(np.asarray(result.pvalue, np.float64), nan=1.0)
  return Reproducibility(z=z, mean_z=z.mean(axis=0), t=t, p=p,
                         p_bonferroni=np.minimum(p * z.shape[1], 1.0), alternative=alternative)


def select_reproducible(stats_: Reproducibility, *, p_threshold: float | None = None,
                        top_n: int | None = None) -> np.ndarray:
  """int64 sorted column indices: Bonferroni p < p_threshold, OR the top_n most reproducible (one of the two).

  Only columns with a positive mean z are candidates. top_n larger than the number of candidates keeps all
  candidates.
  """
  if (p_threshold is None) == (top_n is None):
    raise ValueError("give exactly one of p_threshold (Bonferroni-corrected p, e.g. 0.05 as NeuroClips) or top_n "
                     "(e.g. 4500 as Mind-Animator).")
  candidate = stats_.mean_z > 0
  if p_threshold is not None:
    if not 0 < p_threshold <= 1:
      raise ValueError(f"p_threshold = {p_threshold!r}: must be in (0, 1].")
    return np.flatnonzero(candidate & (stats_.p_bonferroni < p_threshold)).astype(np.int64)
  if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 1:
    raise ValueError(f"top_n = {top_n!r}: must be a positive integer.")
  order = np.lexsort((np.arange(stats_.num_columns), -stats_.t))  # largest t first, ties by column
  ranked = order[candidate[order]]
  return np.sort(ranked[:top_n]).astype(np.int64)


def select_by_reproducibility(train_segments: Sequence[np.ndarray], *, p_threshold: float | None = None,
                              top_n: int | None = None, alternative: str = "two-sided") -> np.ndarray:
  """Convenience: training repeats per segment [R, T, V] -> selected column indices (train statistics only)."""
  z = np.stack([segment_fisher_z(repeats) for repeats in train_segments])
  return select_reproducible(reproducibility(z, alternative), p_threshold=p_threshold, top_n=top_n)
