"""Numerical parity checks shared by the tests: brainjax against a reference (PyTorch, diffusers, transformers,
numpy formulas).

Three kinds of check, kept apart because they accept different things:

* `assert_close(actual, desired, rtol=, atol=)`: element by element, numpy's rule
  |actual - desired| <= atol + rtol * |desired| (it runs `np.testing.assert_allclose`, so NaNs in the same
  places pass and shapes must broadcast as there); the failure also names the worst element.
* `assert_rel_close(name, ref, got, bound)`: over the whole array, `rel_err(ref, got) <= bound`, the largest
  absolute error relative to the reference's largest magnitude (a model output's small entries do not count
  on their own). Shapes must be equal unless `check_shape=False`.
* `assert_abs_close(name, ref, got, atol=, rtol=)`: over the whole array, max |ref - got| <= max(atol,
  rtol * max |ref|).

Every failure message says the largest absolute and relative error and the index where it is.
Inputs may be numpy or jax arrays, torch tensors (bfloat16 included), or anything `np.asarray` takes.
"""

from __future__ import annotations

import numpy as np


def to_numpy(x, dtype=None) -> np.ndarray:
  """`x` as a numpy array (`dtype` if given): torch tensors are detached and moved to the CPU first."""
  if type(x).__module__.split(".")[0] == "torch":
    x = x.detach().cpu()
    if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16 of torch's
      x = x.float()
    x = x.numpy()
  return np.asarray(x, dtype)


def _pair(ref, got) -> tuple[np.ndarray, np.ndarray]:
  return to_numpy(ref, np.float64), to_numpy(got, np.float64)


def max_abs_err(ref, got) -> float:
  """max |ref - got| (float64; NaN if any difference is NaN)."""
  ref, got = _pair(ref, got)
  return float(np.abs(ref - got).max())


def rel_err(ref, got, *, floor: float = 0.0) -> float:
  """max |ref - got| / max(max |ref|, floor), in float64.

  With the default floor 0 an all-zero reference gives NaN (or inf), which no bound accepts; a positive floor
  (e.g. 1e-12) lets an all-zero reference pass when `got` is zero as well."""
  ref, got = _pair(ref, got)
  with np.errstate(divide="ignore", invalid="ignore"):
    return float(np.float64(np.abs(ref - got).max()) / np.float64(max(float(np.abs(ref).max()), floor)))


def _where(ref: np.ndarray, got: np.ndarray) -> str:
  """The largest absolute and (element-wise) relative error and where they are, for failure messages."""
  try:
    ref, got = np.broadcast_arrays(ref, got)
  except ValueError:
    return f"shapes {got.shape} (got) and {ref.shape} (ref) do not broadcast"
  if ref.size == 0:
    return "empty arrays"
  diff = np.abs(ref - got)
  with np.errstate(divide="ignore", invalid="ignore"):
    rel = np.where(diff == 0, 0.0, diff / np.abs(ref))  # 0 where equal, also where both are 0
  parts = []
  for what, err in (("abs", diff), ("rel", rel)):
    filled = np.where(np.isnan(err), np.inf, err)  # a NaN difference is the worst one
    i = np.unravel_index(int(np.argmax(filled)), err.shape)
    parts.append(f"max {what} err {float(err[i]):.3e} at {tuple(int(j) for j in i)} "
                 f"(got {float(got[i]):.9g}, ref {float(ref[i]):.9g})")
  if not np.any(ref):
    parts.append("the reference is all zeros")
  return "; ".join(parts)


def _check_shape(name: str, ref: np.ndarray, got: np.ndarray) -> None:
  assert got.shape == ref.shape, f"{name}: shape {got.shape} (got) != {ref.shape} (ref)"


def assert_close(actual, desired, *, rtol: float, atol: float, name: str = "") -> None:
  """Element-wise |actual - desired| <= atol + rtol * |desired| (`np.testing.assert_allclose`'s rule and its
  NaN and broadcasting behaviour); the failure adds the worst element's index and values."""
  actual, desired = to_numpy(actual), to_numpy(desired)
  try:
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol, err_msg=name)
  except AssertionError as e:
    where = _where(desired.astype(np.float64), actual.astype(np.float64))
    raise AssertionError(f"{name + ': ' if name else ''}not close (rtol={rtol}, atol={atol}): {where}\n{e}") from None


def assert_rel_close(name: str, ref, got, bound: float, *, floor: float = 0.0, check_shape: bool = True) -> float:
  """`rel_err(ref, got, floor=floor) <= bound`: the largest absolute error relative to the reference's largest
  magnitude. Shapes must be equal unless `check_shape=False`. Prints and returns the error."""
  ref, got = _pair(ref, got)
  if check_shape:
    _check_shape(name, ref, got)
  err = rel_err(ref, got, floor=floor)
  print(f"  {name}: max rel err {err:.2e} (bound {bound:.1e})")
  assert err <= bound, f"{name}: max relative error {err:.3e} > {bound} ({_where(ref, got)})"
  return err


def assert_abs_close(name: str, ref, got, *, atol: float, rtol: float = 0.0, check_shape: bool = True) -> float:
  """max |ref - got| <= max(atol, rtol * max |ref|): an absolute bound that grows with the reference's scale.
  Shapes must be equal unless `check_shape=False`. Prints and returns the error."""
  ref, got = _pair(ref, got)
  if check_shape:
    _check_shape(name, ref, got)
  err = float(np.abs(ref - got).max())
  bound = max(atol, rtol * float(np.abs(ref).max()))
  print(f"  {name}: max abs err {err:.2e} (bound {bound:.1e})")
  assert err <= bound, f"{name}: max abs error {err:.3e} > {bound:.3e} ({_where(ref, got)})"
  return err


def random_flax_params(abstract, seed: int = 7):
  """Random values for a Flax param tree of ShapeDtypeStructs, every leaf drawn (norm scales around 1, kernels
  scaled by their fan-in), so a transposed or misplaced tensor cannot hide in an export test. numpy draws:
  jax.random per shape compiles slowly on a CPU."""
  import jax
  import jax.numpy as jnp
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    fan_in = int(np.prod(leaf.shape[:-1])) if name == "kernel" else 1
    base = 1.0 if name == "scale" else 0.0
    return jnp.asarray(base + rng.standard_normal(leaf.shape).astype(np.float32) / np.sqrt(fan_in) * 0.5)

  return jax.tree_util.tree_map_with_path(draw, abstract)
