"""Augmentations applied inside the jitted step, each a pure function of an rng and an array.

fMRI, for contrastive training (MinD-Video, NeuralFlix):

  sparsify              MinD-Video: zero a random `rate` of the voxels of each
                        sample (the same voxels in every volume of its window).
                        MinD-Vis's `fmri_transform` meant to do this but indexed
                        the wrong axis and was a no-op; here it is applied.
  spatial_mask          NeuralFlix §3.1.2: zero round(γ_spa·D) of the D
                        embedding dims of the fMRI tokens [B, w, N, D]; the
                        dims are the same for every token of a sample's window
                        and differ between samples.
  temporal_interpolate  NeuralFlix Eq. 1: replace selected volumes i of a
                        window of n by  Σ_{j≠i} (1 − |i−j|/n) v_j  (weights as
                        printed, not renormalised); each volume is selected
                        with probability γ_tem, independently per sample.

Images, for the demo's stand-in classifiers:
  random_blur           a Gaussian blur of random width per sample, so that a
                        classifier trained on sharp renders still names the
                        object in a decoded (softer) frame.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def sparsify(rng: jax.Array, fmri: jax.Array, rate: float) -> jax.Array:
  """fmri [B, w, V] with round(rate·V) voxels per sample set to 0 across the window."""
  if rate <= 0:
    return fmri
  b, _, v = fmri.shape
  keep = _keep_mask(rng, b, v, int(round(rate * v)))
  return fmri * keep[:, None, :].astype(fmri.dtype)


def spatial_mask(rng: jax.Array, tokens: jax.Array, ratio: float) -> jax.Array:
  """tokens [B, w, N, D] with round(ratio·D) embedding dims per sample zeroed."""
  if ratio <= 0:
    return tokens
  b, d = tokens.shape[0], tokens.shape[-1]
  keep = _keep_mask(rng, b, d, int(round(ratio * d)))
  return tokens * keep[:, None, None, :].astype(tokens.dtype)


def interpolation_weights(n: int) -> np.ndarray:
  """W[i, j] = 1 − |i−j|/n for j ≠ i, 0 on the diagonal (NeuralFlix Eq. 1)."""
  idx = np.arange(n)
  w = 1.0 - np.abs(idx[:, None] - idx[None, :]) / n
  np.fill_diagonal(w, 0.0)
  return w.astype(np.float32)


def temporal_interpolate(rng: jax.Array, x: jax.Array, ratio: float) -> jax.Array:
  """x [B, w, ...]: each volume replaced by its Eq. 1 interpolation with probability `ratio`."""
  b, w = x.shape[:2]
  if ratio <= 0 or w < 2:
    return x
  weights = jnp.asarray(interpolation_weights(w), x.dtype)
  interpolated = jnp.einsum("ij,bj...->bi...", weights, x)
  selected = jax.random.bernoulli(rng, ratio, (b, w)).reshape((b, w) + (1,) * (x.ndim - 2))
  return jnp.where(selected, interpolated, x)


def blur_matrix(size: int, sigma: jax.Array) -> jax.Array:
  """[..., size, size] row-stochastic Gaussian blur along one axis, one per entry of `sigma` [...] (pixels).

  Weights exp(−d²/2σ²) over the pixels inside the frame, renormalised per row, so a blurred frame keeps
  its brightness at the borders; σ → 0 gives the identity.
  """
  d = jnp.arange(size, dtype=jnp.float32)
  d2 = (d[:, None] - d[None, :]) ** 2
  sigma = jnp.maximum(jnp.asarray(sigma, jnp.float32), 1e-3)[..., None, None]
  logits = -d2 / (2.0 * sigma**2)
  return jax.nn.softmax(logits, axis=-1)


def random_blur(rng: jax.Array, images: jax.Array, max_sigma: float) -> jax.Array:
  """images [B, ..., H, W, C] float, each sample blurred by a Gaussian of σ ~ U(0, max_sigma) pixels.

  One σ per sample: every frame of a clip [B, T, H, W, C] gets the same blur, as a decoder blurs a clip.
  """
  if max_sigma <= 0:
    return images
  b, (h, w) = images.shape[0], images.shape[-3:-1]
  sigma = jax.random.uniform(rng, (b,), maxval=max_sigma)
  rows, cols = blur_matrix(h, sigma), blur_matrix(w, sigma)
  flat = images.reshape(b, -1, h, w, images.shape[-1])
  out = jnp.einsum("bih,bnhwc->bniwc", rows, flat)
  out = jnp.einsum("bjw,bniwc->bnijc", cols, out)
  return out.reshape(images.shape).astype(images.dtype)


def _keep_mask(rng: jax.Array, batch: int, size: int, num_drop: int) -> jax.Array:
  """[batch, size] booleans, exactly `num_drop` False per row, independent rows."""
  ranks = jnp.argsort(jax.random.uniform(rng, (batch, size)), axis=1).argsort(axis=1)
  return ranks >= num_drop
