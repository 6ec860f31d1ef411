"""The text-conditioned denoising loss over cached VAE posteriors, as the UNet stages train it.

unet_fit (single frames), video_finetune (clips) and the caption conditions share it:
each batch holds an example's scaled posterior (mean, std) and its caption's hidden
states; a fresh latent is drawn from the posterior every step, and the caption is
swapped for the empty caption with probability `uncond_prob` so that classifier-free
guidance works at sampling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from brainjax.config import ConfigError
from brainjax.diffusion import noise as noise_lib
from brainjax.diffusion import schedules


def caption_diffusion_loss(module, schedule: schedules.NoiseSchedule, uncond: np.ndarray, uncond_prob: float,
                           snr_gamma: float, noise_fn: noise_lib.NoiseFn | None = None):
  """loss_fn(params, model_state, batch, rng) over batches of mean, std (the scaled VAE posterior of each
  example) and cond (its caption's hidden states), for a UNet `module` called as module(x, t, cond)."""
  uncond = jnp.asarray(uncond)

  def loss_fn(params, model_state, batch, rng):
    latent_rng, drop_rng, loss_rng = jax.random.split(rng, 3)
    x0 = batch["mean"] + batch["std"] * jax.random.normal(latent_rng, batch["mean"].shape)
    drop = jax.random.uniform(drop_rng, (x0.shape[0],)) < uncond_prob
    cond = jnp.where(drop[:, None, None], uncond[None], batch["cond"])
    predict = lambda x, t, c: module.apply({"params": params}, x, t, c)
    loss = schedules.diffusion_loss(schedule, predict, x0, cond, loss_rng, noise_fn=noise_fn, snr_gamma=snr_gamma)
    return loss, ({}, model_state)

  return loss_fn


def check_widths(unet_config, vae_config, uncond: np.ndarray) -> None:
  """The UNet must take the VAE's latent channels and cross-attend to the text condition's width."""
  if unet_config.context_dim != uncond.shape[-1]:
    raise ConfigError(f"the UNet's cross_attention_dim is {unet_config.context_dim} but the text condition is "
                      f"{uncond.shape[-1]} wide; the UNet and the text tower of clip_embed must belong together "
                      "(SD 1.x: CLIP ViT-L/14, 768).")
  if unet_config.in_channels != vae_config.latent_channels:
    raise ConfigError(f"the UNet takes {unet_config.in_channels} input channels but the VAE makes "
                      f"{vae_config.latent_channels} latent channels.")
