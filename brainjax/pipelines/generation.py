"""Video generation shared by the stages that sample: a jitted sampler around a video UNet, decoding, GIFs.

  make_sampler(unet, schedule, sample_cfg, beta)   jit(params, cond, negative, rng, shape) -> latents
                                                   (one lax.scan; DDIM / DPM-Solver++; guidance with
                                                   an arbitrary negative condition; dependent initial
                                                   noise when beta > 0, NeuralFlix Eq. 7); rng is one
                                                   key for the batch or one key per sample [B]
  decode(vae_module, vae_params, latents)          -> uint8 videos [B, T, H, W, 3]
  match_size(real, like)                           real clips resized to the generated ones' size
  write_pairs(directory, real, generated, captions, fps)   <i>.gif (real | generated), all.gif,
                                                   captions.json

`sample_cfg` fields: sampler, num_steps, guidance_scale, eta. Guidance: with a
caption condition the negative is the empty caption's hidden states
(classifier-free guidance); with an fMRI condition it is the encoder's output
for the mean test fMRI (MinD-Video's adversarial guidance, scale 12.5).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from brainjax import diffusion, media
from brainjax.models import vae


def noise_fn(beta: float, frame_axis: int = 1) -> diffusion.NoiseFn:
  """NeuralFlix's dependent noise when beta > 0, else i.i.d. Gaussian; frames along `frame_axis`
  (1 for a batch of video latents [B, T, h, w, c], 0 for one sample's [T, h, w, c])."""
  return diffusion.dependent_noise_fn(beta, frame_axis) if beta > 0 else diffusion.gaussian_noise


# diffusion.sample draws DDIM's eta > 0 noise of step i from fold_in(rng, i) of ONE key. With
# per-sample keys it is given this fixed root instead, and `_per_sample_noise` folds the step key it
# receives (a function of i alone) into each sample's own key.
_STEP_ROOT = 0x5EED


def _is_key_batch(rng: jax.Array) -> bool:
  """True for one key per sample: typed keys [B] or raw uint32 keys [B, 2]."""
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return rng.ndim == 1
  return rng.ndim == 2


def _per_sample_noise(keys: jax.Array) -> diffusion.NoiseFn:
  """A NoiseFn for diffusion.sample whose sample b depends only on keys[b] and the step (Gaussian, as
  the single-key path's eta > 0 noise)."""

  def draw(step_key, shape, dtype=jnp.float32):
    words = jax.random.key_data(step_key).reshape(-1)
    def sample(key):
      for w in words:  # both words: injective in the step, unlike one 32-bit hash of it
        key = jax.random.fold_in(key, w)
      return diffusion.gaussian_noise(key, shape[1:], dtype)
    return jax.vmap(sample)(keys)

  return draw


def make_sampler(module, schedule: diffusion.NoiseSchedule, sample_cfg, beta: float = 0.0):
  """jit(params, cond [B, ...], negative [B, ...] or None, rng, shape) -> latents [B, T, h, w, c].

  rng is either one key for the whole batch (the initial noise is noise_fn(rng, shape), DDIM's
  eta > 0 noise comes from fold_in(rng, 1)), or one key per sample (typed keys [B] or raw keys
  [B, 2]): sample b's initial noise is noise_fn(keys[b], shape[1:]) (dependent noise within the
  sample) and its eta > 0 noise (Gaussian, as with one key) comes from fold_in(keys[b], 1) and the
  step alone. With per-sample keys a sample's noise does not depend on which batch, device or
  process it is generated in: keys fold_in(key(seed), record) give every test window the same
  starting point for any device count and batch size (stage evaluate).
  """

  @functools.partial(jax.jit, static_argnames=("shape",))
  def run(params, cond, negative, rng, shape):
    if _is_key_batch(rng):
      keys = rng if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(rng)
      if keys.shape[0] != shape[0]:
        raise ValueError(f"make_sampler: {keys.shape[0]} per-sample keys for a batch of {shape[0]}; pass one key "
                         "per sample or a single key.")
      init = jax.vmap(lambda k: noise_fn(beta, frame_axis=0)(k, shape[1:], jnp.float32))(keys)
      step_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
      step_rng, step_noise = jax.random.key(_STEP_ROOT), _per_sample_noise(step_keys)
    else:
      init = noise_fn(beta)(rng, shape, jnp.float32)
      step_rng, step_noise = jax.random.fold_in(rng, 1), None
    denoise = lambda x, t, c: module.apply({"params": params}, x, t, c)
    return diffusion.sample(denoise, schedule, init, cond, sampler=sample_cfg.sampler,
                            num_steps=sample_cfg.num_steps, eta=sample_cfg.eta,
                            guidance_scale=sample_cfg.guidance_scale if negative is not None else None,
                            negative_cond=negative, rng=step_rng, noise_fn=step_noise)
  return run


def decode(vae_module: vae.AutoencoderKL, vae_params, latents: jax.Array) -> np.ndarray:
  return np.asarray(vae.to_uint8(vae.decode_video(vae_module, vae_params, latents)))


def match_size(real: np.ndarray, like: np.ndarray) -> np.ndarray:
  """uint8 clips [B, T, H, W, 3] resized (antialiased) to `like`'s H x W."""
  if real.shape[2:4] == like.shape[2:4]:
    return real
  if like.shape[2] != like.shape[3]:
    x = jax.image.resize(vae.to_model_range(real), real.shape[:2] + like.shape[2:], "linear", antialias=True)
  else:
    x = vae.to_model_input(real, like.shape[2])
  return np.asarray(vae.to_uint8(x))


def write_pairs(directory: epath.Path, real: np.ndarray, generated: np.ndarray, captions: Sequence[str],
                fps: float, extra: Sequence[dict] | None = None) -> None:
  """<i>.gif with the real clip left and the generated one right, all.gif with every pair, captions.json."""
  pairs = [media.side_by_side([r, g]) for r, g in zip(real, generated)]
  for i, pair in enumerate(pairs):
    media.write_gif(directory / f"{i}.gif", pair, fps, scale=2)
  media.write_gif(directory / "all.gif", media.grid(pairs, columns=2, gap=4), fps, scale=2)
  entries = [{"gif": f"{i}.gif", "caption": c, **(extra[i] if extra else {})} for i, c in enumerate(captions)]
  (directory / "captions.json").write_text(json.dumps(entries, indent=1))


def spread_records(source, count: int, key: str = "clip_id") -> list[int]:
  """`count` indices of `source` spread over it, one per distinct `key` where possible."""
  picked, seen = [], set()
  for i in np.linspace(0, len(source) - 1, 4 * count).astype(int):
    value = int(source[int(i)][key])
    if value not in seen:
      seen.add(value)
      picked.append(int(i))
  for i in range(len(source)):  # fewer distinct values than asked: fill with others
    if len(picked) >= count:
      break
    if i not in picked:
      picked.append(i)
  return sorted(picked[:count])
