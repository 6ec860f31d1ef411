"""Ridge regression from fMRI to a target space, in the dual (kernel) form.

The linear decoder of the fMRI literature (Brain Netflix regresses fMRI to text and
video embeddings this way); `evaluate` uses it for its "ridge" baseline: fMRI windows
to the captions' hidden states. Voxels are standardised with the training statistics
and the targets centred, so the intercept is the training mean:

  W = X^T (X X^T + alpha I)^-1 (Y - mean(Y))      prediction(x) = x W + mean(Y)

which equals the primal (X^T X + alpha I)^-1 X^T (Y - mean(Y)). The dual form keeps
an [n, n] system and never forms W: fMRI vectors (tens of thousands of voxels) and
targets (77 x 768 hidden states) are both wider than the number of training windows.
float64 throughout, in NumPy: it runs once per evaluation on the host.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class RidgeMap:
  x_mean: np.ndarray    # [d] training mean of each input feature
  x_scale: np.ndarray   # [d] training std (1 where a feature is constant)
  train: np.ndarray     # [n, d] standardised training inputs
  dual: np.ndarray      # [n, k] (X X^T + alpha I)^-1 (Y - mean(Y))
  y_mean: np.ndarray    # [k]

  def predict(self, x: np.ndarray) -> np.ndarray:
    """[m, d] inputs -> [m, k] predictions (float64)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    if x.shape[1] != self.train.shape[1]:
      raise ValueError(f"ridge: inputs have {x.shape[1]} features but the map was fitted on {self.train.shape[1]}.")
    z = (x - self.x_mean) / self.x_scale
    return (z @ self.train.T) @ self.dual + self.y_mean

  def low_rank(self, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The map as x @ w_in [d, r] @ w_out [r, k] + bias [k], on raw (unstandardised) inputs.

    Reduced-rank ridge: the fitted training predictions are projected onto their top
    `rank` right singular vectors V_r, W_r = W V_r V_r^T. Exact (equal to `predict`)
    when `rank` reaches the rank of those predictions (at most n - 1).
    """
    if rank < 1:
      raise ValueError(f"ridge: rank = {rank}; it must be at least 1.")
    dual = self.dual
    fitted = (self.train @ self.train.T) @ dual  # the centred training predictions
    _, _, vt = np.linalg.svd(fitted, full_matrices=False)
    v = vt[:rank].T                                           # [k, r]
    w_in = (self.train.T @ (dual @ v)) / self.x_scale[:, None]  # standardisation folded into the kernel
    bias = self.y_mean - (self.x_mean @ w_in) @ v.T
    return w_in, v.T, bias


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> RidgeMap:
  """Fits x [n, ...] -> y [n, ...] (trailing axes flattened); alpha > 0 on standardised inputs."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  y = np.asarray(y, np.float64).reshape(len(y), -1)
  if len(x) != len(y) or len(x) < 2:
    raise ValueError(f"ridge: {len(x)} inputs and {len(y)} targets; both need the same number (at least 2) of rows.")
  if not alpha > 0:
    raise ValueError(f"ridge: alpha = {alpha!r}; it must be positive.")
  if not (np.isfinite(x).all() and np.isfinite(y).all()):
    raise ValueError("ridge: the inputs or targets contain NaN or infinity; clean the data before fitting.")
  x_mean, x_scale = x.mean(0), x.std(0)
  x_scale = np.where(x_scale > 0, x_scale, 1.0)
  z = (x - x_mean) / x_scale
  y_mean = y.mean(0)
  dual = np.linalg.solve(z @ z.T + alpha * np.eye(len(z)), y - y_mean)
  return RidgeMap(x_mean=x_mean, x_scale=x_scale, train=z, dual=dual, y_mean=y_mean)
