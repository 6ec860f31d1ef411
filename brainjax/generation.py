"""Video generation shared by the stages that sample: a jitted sampler around a video UNet, decoding, GIFs.

  make_sampler(unet, schedule, sample_cfg, beta)   jit(params, cond, negative, rng, shape) -> latents
                                                   (one lax.scan; DDIM / DPM-Solver++; guidance with
                                                   an arbitrary negative condition; dependent initial
                                                   noise when beta > 0, NeuralFlix Eq. 7)
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


def noise_fn(beta: float) -> diffusion.NoiseFn:
  return diffusion.dependent_noise_fn(beta) if beta > 0 else diffusion.gaussian_noise


def make_sampler(module, schedule: diffusion.NoiseSchedule, sample_cfg, beta: float = 0.0):
  """jit(params, cond [B, ...], negative [B, ...] or None, rng, shape) -> latents [B, T, h, w, c]."""

  @functools.partial(jax.jit, static_argnames=("shape",))
  def run(params, cond, negative, rng, shape):
    init = noise_fn(beta)(rng, shape, jnp.float32)
    denoise = lambda x, t, c: module.apply({"params": params}, x, t, c)
    return diffusion.sample(denoise, schedule, init, cond, sampler=sample_cfg.sampler,
                            num_steps=sample_cfg.num_steps, eta=sample_cfg.eta,
                            guidance_scale=sample_cfg.guidance_scale if negative is not None else None,
                            negative_cond=negative, rng=jax.random.fold_in(rng, 1))
  return run


def decode(vae_module: vae.AutoencoderKL, vae_params, latents: jax.Array) -> np.ndarray:
  return np.asarray(vae.to_uint8(vae.decode_video(vae_module, vae_params, latents)))


def match_size(real: np.ndarray, like: np.ndarray) -> np.ndarray:
  """uint8 clips [B, T, H, W, 3] resized (antialiased) to `like`'s H x W."""
  if real.shape[2:4] == like.shape[2:4]:
    return real
  x = jax.image.resize(vae.to_model_range(real), real.shape[:2] + like.shape[2:], "linear", antialias=True)
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
