"""brainjax.ridge: the dual-form ridge map equals the primal closed form, and refuses bad input."""

import numpy as np
import pytest

from brainjax import ridge


def _primal(x, y, alpha, x_test):
  """(X^T X + alpha I)^-1 X^T (Y - mean Y) on standardised X, written out directly."""
  mean, std = x.mean(0), x.std(0)
  std = np.where(std > 0, std, 1.0)
  z = (x - mean) / std
  w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - y.mean(0)))
  return ((x_test - mean) / std) @ w + y.mean(0)


@pytest.mark.parametrize("n, d", [(40, 10), (12, 30)])  # more rows than features, and fewer (fMRI)
def test_dual_form_equals_the_primal_closed_form(n, d):
  rng = np.random.default_rng(n)
  x = rng.standard_normal((n, d)) * rng.uniform(0.5, 3, d) + rng.uniform(-2, 2, d)
  x[:, 3] = 1.5  # a constant voxel: scale 1, contributes nothing
  y = rng.standard_normal((n, 4, 3))
  x_test = rng.standard_normal((5, d))
  fitted = ridge.fit_ridge(x, y, 7.0)
  np.testing.assert_allclose(fitted.predict(x_test), _primal(x, y.reshape(n, -1), 7.0, x_test), atol=1e-10)


def test_recovers_a_linear_map_and_shrinks_to_the_mean():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((200, 5))
  w = rng.standard_normal((5, 2))
  y = x @ w + 3.0
  np.testing.assert_allclose(ridge.fit_ridge(x, y, 1e-6).predict(x[:4]), y[:4], atol=1e-4)
  # huge alpha: every prediction is the training mean
  np.testing.assert_allclose(ridge.fit_ridge(x, y, 1e12).predict(x[:4]), np.broadcast_to(y.mean(0), (4, 2)),
                             atol=1e-6)


def test_bad_inputs_are_refused():
  x, y = np.zeros((4, 3)), np.zeros((4, 2))
  with pytest.raises(ValueError, match="4 inputs and 3 targets"):
    ridge.fit_ridge(x, y[:3], 1.0)
  with pytest.raises(ValueError, match="alpha = 0"):
    ridge.fit_ridge(x, y, 0)
  bad = x.copy()
  bad[1, 1] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    ridge.fit_ridge(bad, y, 1.0)
  with pytest.raises(ValueError, match="inputs have 5 features but the map was fitted on 3"):
    ridge.fit_ridge(x, y, 1.0).predict(np.zeros((2, 5)))


def test_low_rank_factorisation_equals_predict_at_full_rank_and_is_best_at_lower_rank():
  rng = np.random.default_rng(3)
  x = rng.normal(2.0, 3.0, (40, 30))
  y = x @ rng.normal(size=(30, 12)) + rng.normal(size=12)
  fitted = ridge.fit_ridge(x, y, 5.0)
  test = rng.normal(2.0, 3.0, (7, 30))
  w_in, w_out, bias = fitted.low_rank(12)
  np.testing.assert_allclose(test @ w_in @ w_out + bias, fitted.predict(test), rtol=1e-9, atol=1e-9)
  # Rank 3: the training predictions are their best rank-3 approximation (Eckart-Young) around the mean.
  w_in, w_out, bias = fitted.low_rank(3)
  assert w_in.shape == (30, 3) and w_out.shape == (3, 12)
  centred = fitted.predict(x) - fitted.y_mean
  u, s, vt = np.linalg.svd(centred, full_matrices=False)
  np.testing.assert_allclose(x @ w_in @ w_out + bias - fitted.y_mean, (u[:, :3] * s[:3]) @ vt[:3], atol=1e-8)
  with pytest.raises(ValueError, match="rank"):
    fitted.low_rank(0)
