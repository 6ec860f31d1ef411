"""Stage `vae_fit` (demo only): a small AutoencoderKL trained on the synthetic frames.

The papers decode through Stable Diffusion's VAE; no pretrained VAE exists for
the synthetic world, so this stage trains one and saves it in the diffusers
`vae/` layout. `video_finetune` then reads it exactly as it would read
`stable-diffusion-v1-5/vae`: one code path for the demo and the paper.

Loss: mean squared error of the reconstruction from a posterior sample, plus
`kl_weight` x the KL divergence to N(0, I) (SD's first stage also used a
perceptual and an adversarial loss; at 32 px on simple synthetic scenes plain
MSE is enough and keeps the stage short). After training, the latent scaling
factor is set as SD's was chosen: 1 / (std of the latents of training frames),
so the diffusion model sees unit-variance latents.

Outputs: `vae/` (config.json + diffusion_pytorch_model.safetensors),
`reconstructions.png` (test frames, top row originals, bottom row
reconstructions); summary: test PSNR (dB) and the scaling factor.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from brainjax import config as cfg
from brainjax import media
from brainjax.data import pipeline
from brainjax.models import vae
from brainjax.stages import StageContext, common
from brainjax.train.optim import optim_config

CONFIG_KEYS = ("seed", "data")
# Artifact kinds: what its path fields read and what it writes (checked before anything runs).
INPUTS = {}
OUTPUTS = {"vae": "vae"}
fingerprint = common.dataset_fingerprint


def stage_config(**overrides) -> ml_collections.ConfigDict:
  stage = ml_collections.ConfigDict(dict(
      # Small on purpose: XLA's CPU convolutions make a VAE step costly; 3 levels = 4x downsampling
      # (8 x 8 x 4 latents of the demo's 32 px frames).
      model=dict(block_out_channels=(16, 32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8),
      kl_weight=1e-6,
      resolution=0,  # frames resized to this square size first (0: their own); video stages use the same

      optim=optim_config(lr=2e-3, weight_decay=0.0, warmup_steps=30, grad_clip_norm=1.0),
      batch_size=16, num_steps=300, log_every_steps=50, checkpoint_every_steps=150, keep_checkpoints=2,
  ))
  stage.update(overrides)
  return stage


def validate(config: ml_collections.ConfigDict, name: str) -> None:
  del name
  if config.data.name != "synthetic":
    raise cfg.ConfigError("stage vae_fit trains a stand-in VAE for the synthetic benchmark only; with real data "
                          "point config.video_finetune.vae_path at a pretrained VAE (e.g. stable-diffusion-v1-5/vae).")
  common.validate_train(config, "vae_fit")
  cfg.require_positive(config, "vae_fit.kl_weight", allow_zero=True)
  cfg.require_positive_int(config, "vae_fit.resolution", allow_zero=True)
  try:
    build(config.vae_fit)
  except ValueError as e:
    raise cfg.ConfigError(f"config.vae_fit.model: {e}") from e


def build(stage: ml_collections.ConfigDict) -> vae.AutoencoderKL:
  model = stage.model.to_dict()
  levels = len(model["block_out_channels"])
  return vae.AutoencoderKL(vae.VAEConfig(down_block_types=(vae.DOWN_BLOCK,) * levels,
                                         up_block_types=(vae.UP_BLOCK,) * levels, **model))


def _kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)), summed over a latent, averaged over the batch (as SD's first stage)."""
  kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.mean(jnp.sum(kl, axis=tuple(range(1, kl.ndim))))


def run(ctx: StageContext) -> dict:
  stage = ctx.config.vae_fit
  model = build(stage)
  source = pipeline.make_stimulus_source(ctx.config.data, "train")
  resolution = stage.resolution or int(source[0]["frames"].shape[1])
  if resolution % model.config.downsampling_factor:
    raise cfg.ConfigError(f"the frames are {resolution} px (config.vae_fit.resolution or the data's own size), "
                          f"not a multiple of the VAE's downsampling factor "
                          f"{model.config.downsampling_factor}; change config.vae_fit.model.block_out_channels.")

  def init_variables(rng):
    return model.init(rng, jnp.zeros((1, resolution, resolution, 3)))

  def loss_fn(params, model_state, batch, rng):
    frames = batch["frames"]
    pick_rng, sample_rng = jax.random.split(rng)
    pick = jax.random.randint(pick_rng, (frames.shape[0],), 0, frames.shape[1])  # a random frame of each TR
    x = vae.to_model_input(frames[jnp.arange(frames.shape[0]), pick], resolution)
    posterior = model.apply({"params": params}, x, method=vae.AutoencoderKL.encode)
    recon = model.apply({"params": params}, posterior.sample(sample_rng), method=vae.AutoencoderKL.decode)
    mse = jnp.mean(jnp.square(recon - x))
    kl = _kl(posterior.mean, posterior.logvar)
    return mse + stage.kl_weight * kl, ({"mse": mse, "kl": kl}, model_state)

  iterator = pipeline.make_iterator(source, batch_size=stage.batch_size, seed=ctx.config.seed,
                                    transform=lambda ex: {"frames": ex["frames"]})
  state = common.train(ctx, init_variables=init_variables, loss_fn=loss_fn, iterator=iterator,
                       batch_keys=("frames",))
  params = jax.device_get(state.params)

  scaling = _scaling_factor(model, params, source, resolution)
  config = dataclasses.replace(model.config, scaling_factor=scaling, sample_size=resolution)
  psnr, sheet = _test_reconstructions(model, params, pipeline.make_stimulus_source(ctx.config.data, "test"),
                                      resolution)
  if jax.process_index() == 0:
    vae.save_vae(ctx.stage_dir / "vae", config, params)
    media.write_png(ctx.stage_dir / "reconstructions.png", sheet, scale=2)
  return {"steps": int(jax.device_get(state.step)), "test_psnr_db": psnr, "scaling_factor": scaling}


def _scaling_factor(model: vae.AutoencoderKL, params, source, resolution: int, count: int = 256) -> float:
  """1 / std of the (unscaled) posterior means of up to `count` training frames."""
  encode = jax.jit(lambda p, x: model.apply({"params": p}, vae.to_model_input(x, resolution),
                                            method=vae.AutoencoderKL.encode).mean)
  idx = np.linspace(0, len(source) - 1, min(count, len(source))).astype(int)
  frames = np.stack([source[int(i)]["frames"][0] for i in idx])
  latents = np.concatenate([np.asarray(encode(params, frames[s:s + 64])) for s in range(0, len(frames), 64)])
  return float(1.0 / latents.std())


def _test_reconstructions(model: vae.AutoencoderKL, params, source, resolution: int,
                          columns: int = 8) -> tuple[float, np.ndarray]:
  """PSNR (dB, uint8 range) of the middle frame of every test TR (at `resolution`), and a sheet of the first
  `columns`."""
  recon_fn = jax.jit(lambda p, x: vae.to_uint8(model.apply({"params": p}, vae.to_model_input(x, resolution))))
  target_fn = jax.jit(lambda x: vae.to_uint8(vae.to_model_input(x, resolution)))
  mse, originals, recons = [], [], []
  for start in range(0, len(source), 64):
    frames = np.stack([source[i]["frames"][len(source[i]["frames"]) // 2]
                       for i in range(start, min(len(source), start + 64))])
    out = np.asarray(recon_fn(params, frames))
    frames = np.asarray(target_fn(frames))
    mse.append(np.mean((out.astype(np.float64) - frames) ** 2, axis=(1, 2, 3)))
    if start == 0:
      step = max(1, len(frames) // columns)
      originals, recons = list(frames[::step][:columns]), list(out[::step][:columns])
  psnr = float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(np.concatenate(mse), 1e-10))))
  sheet = media.grid([f[None] for f in originals + recons], columns)[0]
  return psnr, sheet
