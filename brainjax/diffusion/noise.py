"""Noise for diffusion training and sampling: i.i.d. Gaussian and NeuralFlix's dependent prior noise.

Every noise source has the signature of a `NoiseFn`, `(rng, shape, dtype) -> array`,
so training (`schedules.diffusion_loss(noise_fn=...)`), sampling (the initial
latents, DDIM's eta > 0 variance noise) and video-to-video renoising all take
the same pluggable callable:

  gaussian_noise(rng, shape, dtype)          standard normal, independent elements (the default)
  dependent_noise(rng, shape, beta, *, frame_axis=1, dtype)
                                             NeuralFlix Eq. 7: per frame j of a sample,
                                             eps_j = sqrt(beta) eps_shared + sqrt(1 - beta) eps_j',
                                             eps_shared drawn once per sample and shared by all
                                             its frames. Every element stays N(0, 1); two frames
                                             of one sample have correlation beta (element-wise);
                                             different samples are independent. beta = 0 is
                                             i.i.d. noise, beta = 1 the same noise in every frame.
  dependent_noise_fn(beta, frame_axis=1)     the NoiseFn for a fixed beta

NeuralFlix replaces SD's noise by dependent noise both in training (the noisy
latents of the video UNet) and in generation (the initial latents); the paper's
best beta is 0.25. `frame_axis` is 1 for brainjax's video latents [B, T, H, W, C].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from brainjax.config import ConfigError

Dtype = Any
NoiseFn = Callable[[jax.Array, Sequence[int], Dtype], jax.Array]

__all__ = ["NoiseFn", "gaussian_noise", "dependent_noise", "dependent_noise_fn"]


def _normal(rng: jax.Array, shape: Sequence[int], dtype: Dtype) -> jax.Array:
  # Drawn flat and reshaped: XLA compiles jax.random.normal of a rank-5 shape (video latents)
  # ~10x slower than of the same number of elements in one axis (seconds per program on CPU).
  shape = tuple(shape)
  return jax.random.normal(rng, (math.prod(shape),), dtype).reshape(shape)


def gaussian_noise(rng: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
  """Standard normal noise of `shape`."""
  return _normal(rng, shape, dtype)


def _check_beta(beta: float | jax.Array) -> None:
  try:
    value = float(beta)
  except jax.errors.ConcretizationTypeError:
    return  # a traced beta cannot be checked here; the caller owns its range
  if not 0.0 <= value <= 1.0:
    raise ConfigError(f"dependent noise beta = {value!r}: must be in [0, 1] (the inter-frame correlation; "
                      f"0 is i.i.d. noise, NeuralFlix uses 0.25).")


def dependent_noise(rng: jax.Array, shape: Sequence[int], beta: float | jax.Array, *, frame_axis: int = 1,
                    dtype: Dtype = jnp.float32) -> jax.Array:
  """NeuralFlix Eq. 7: unit-variance noise whose frames (along `frame_axis`) have correlation `beta`."""
  _check_beta(beta)
  shape = tuple(shape)
  if not shape:
    raise ValueError("dependent_noise needs a shape with a frame axis, got a scalar shape ().")
  axis = frame_axis % len(shape)
  shared_shape = shape[:axis] + (1,) + shape[axis + 1:]
  shared_rng, frame_rng = jax.random.split(rng)
  shared = _normal(shared_rng, shared_shape, jnp.float32)
  own = _normal(frame_rng, shape, jnp.float32)
  beta = jnp.asarray(beta, jnp.float32)
  return (jnp.sqrt(beta) * shared + jnp.sqrt(1.0 - beta) * own).astype(dtype)


def dependent_noise_fn(beta: float, frame_axis: int = 1) -> NoiseFn:
  """`dependent_noise` with a fixed beta, as a NoiseFn `(rng, shape, dtype) -> noise`."""
  _check_beta(beta)

  def noise_fn(rng: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
    return dependent_noise(rng, shape, beta, frame_axis=frame_axis, dtype=dtype)

  return noise_fn
