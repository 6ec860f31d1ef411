"""The VAE posteriors of every stimulus TR's clip: the video stages' training targets, computed once.

The VAE is frozen in every recipe, so each stage encodes the clips once at its start
and draws a fresh latent from the cached posterior (mean, std) at every step.
"""

from __future__ import annotations

import jax
import numpy as np

from brainjax.data import stimuli
from brainjax.models import vae


def posterior_cache(vae_module: vae.AutoencoderKL, vae_params, source, num_frames: int, resolution: int,
                    batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """Scaled posterior (mean, std) [R, T, h, w, c] of every TR's clip of `source`, in record order:
  its first `num_frames` frames at `resolution` (0: the frames' own size)."""

  @jax.jit
  def moments(frames):
    x = vae.to_model_input(frames, resolution)
    b, t = x.shape[:2]
    posterior = vae_module.apply({"params": vae_params}, x.reshape(b * t, *x.shape[2:]),
                                 method=vae.AutoencoderKL.encode)
    scale = lambda a: a.reshape(b, t, *a.shape[1:])
    return (scale(vae.scale_latents(vae_module.config, posterior.mean)),
            scale(posterior.std * vae_module.config.scaling_factor))

  means, stds = [], []
  for start in range(0, len(source), batch):
    frames = np.stack([source[i]["frames"] for i in range(start, min(len(source), start + batch))])
    m, s = moments(stimuli.clip_frames(frames, num_frames, "the stimuli"))
    means.append(np.asarray(m))
    stds.append(np.asarray(s))
  return np.concatenate(means), np.concatenate(stds)
