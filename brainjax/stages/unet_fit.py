"""Stage `unet_fit` (demo only): a small text-to-image UNet trained on single frames of the synthetic clips.

MinD-Video and NeuralFlix do not train their video UNet from nothing: they inflate
Stable Diffusion's UNet, pretrained text-to-image, and fine-tune it on the target
clips. No pretrained UNet exists for the synthetic world, so this stage plays SD's
part: it trains a `UNet2DConditionModel` on single frames with their captions and
saves it in the diffusers `unet/` layout. `video_finetune` (unet_path
"stage:unet_fit/unet") then inflates it exactly as it inflates
stable-diffusion-v1-5/unet: one code path for the demo and the paper.

Why not train the video UNet from scratch: a clip's frames are near copies of one
another, so a video batch of B clips teaches B captions; a frame batch of the same
cost teaches B x frames. On the demo, for about the same wall time (1000 frame steps
+ 300 clip steps against 1000 clip steps), clips generated from the 24 evaluation
windows' true captions show the captioned object more often (stand-in classifier
top-1 0.17 against 0.11, chance 0.08) and match their clips better (SSIM 0.170
against 0.147).

Training: each example is one frame (a random frame of a random training TR, all
frames of every TR in the pool), its latent drawn from the frozen VAE's cached
posterior, the condition its caption's hidden states from clip_embed, replaced by
the empty caption with probability `uncond_prob` so that classifier-free guidance
works. The loss, schedule and Min-SNR weighting are video_finetune's.

Outputs: `unet/` (config.json + diffusion_pytorch_model.safetensors, loadable by
`diffusers.UNet2DConditionModel.from_pretrained`), `samples.png` (`sample.count` test
frames: top row the real frames, bottom row generated from their captions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from brainjax import config as cfg
from brainjax import diffusion, media
from brainjax.data import pipeline
from brainjax.diffusion import training as dtraining
from brainjax.features import clip_cache, vae_cache
from brainjax.models import unet, vae
from brainjax.pipelines import generation
from brainjax.stages import StageContext, common, resolve_path
from brainjax.train.optim import optim_config

CONFIG_KEYS = ("seed", "data")
# Artifact kinds: what its path fields read and what it writes (checked before anything runs).
INPUTS = {"vae_path": ("vae",), "text_cache": ("clip_cache",)}
OUTPUTS = {"unet": "unet"}
fingerprint = common.dataset_fingerprint


def stage_config(**overrides) -> ml_collections.ConfigDict:
  stage = ml_collections.ConfigDict(dict(
      unet={}, vae_path="stage:vae_fit/vae", text_cache="stage:clip_embed", resolution=0,
      schedule=dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type="epsilon"),
      snr_gamma=0.0, uncond_prob=0.1,
      optim=optim_config(lr=1e-3, weight_decay=0.0, warmup_steps=50, grad_clip_norm=1.0),
      batch_size=48, num_steps=1000, log_every_steps=50, checkpoint_every_steps=250, keep_checkpoints=2,
      sample=dict(count=8, sampler="ddim", num_steps=50, guidance_scale=5.0, eta=0.0, seed=0),
  ))
  stage.update(overrides)
  return stage


def validate(config: ml_collections.ConfigDict, name: str) -> None:
  del name
  stage = config.unet_fit
  if config.data.name != "synthetic":
    raise cfg.ConfigError("stage unet_fit trains a stand-in text-to-image UNet for the synthetic benchmark only; "
                          "with real data point config.video_finetune.unet_path at a pretrained one (e.g. "
                          "stable-diffusion-v1-5/unet).")
  common.validate_train(config, "unet_fit")
  common.validate_diffusion_fields(config, "unet_fit")
  cfg.require_in_range(config, "unet_fit.uncond_prob", 0.0, 1.0)
  cfg.require_positive_int(config, "unet_fit.resolution", allow_zero=True)
  try:
    unet.UNetConfig.from_dict(stage.unet.to_dict())
  except (ValueError, TypeError) as e:
    raise cfg.ConfigError(f"config.unet_fit.unet: {e}") from e
  for field in ("vae_path", "text_cache"):
    if not stage[field]:
      raise cfg.ConfigError(f"config.unet_fit.{field} is empty; see the stage's docstring for what it reads.")
    common.validate_stage_path(config, "unet_fit", field, stage[field])


class _FrameSource:
  """Training examples: index -> one frame's cached posterior and its TR's caption condition."""

  def __init__(self, mean: np.ndarray, std: np.ndarray, cond: np.ndarray):
    self.mean, self.std, self.cond = mean, std, cond
    self.frames = mean.shape[1]

  def __len__(self) -> int:
    return len(self.mean) * self.frames

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    record, frame = divmod(int(i), self.frames)
    return {"mean": self.mean[record, frame], "std": self.std[record, frame], "cond": self.cond[record]}


def run(ctx: StageContext) -> dict:
  stage = ctx.config.unet_fit
  module = unet.UNet2DConditionModel(unet.UNetConfig.from_dict(stage.unet.to_dict()))
  vae_module, vae_params = vae.load_vae(resolve_path(ctx, stage.vae_path))
  cache_dir = resolve_path(ctx, stage.text_cache)
  hidden, uncond = clip_cache.load_caption_condition(cache_dir, "train")
  dtraining.check_widths(module.config, vae_module.config, uncond)

  source = pipeline.make_stimulus_source(ctx.config.data, "train")
  frames_per_tr = int(source[0]["frames"].shape[0])
  mean, std = vae_cache.posterior_cache(vae_module, vae_params, source, frames_per_tr, stage.resolution)
  schedule = diffusion.NoiseSchedule.create(**stage.schedule.to_dict())
  latent_shape = mean.shape[2:]

  def init_variables(rng):
    return module.init(rng, jnp.zeros((1,) + latent_shape), jnp.zeros((), jnp.int32), jnp.zeros((1,) + uncond.shape))

  loss_fn = dtraining.caption_diffusion_loss(module, schedule, uncond, stage.uncond_prob, stage.snr_gamma)
  iterator = pipeline.make_iterator(_FrameSource(mean, std, hidden), batch_size=stage.batch_size,
                                    seed=ctx.config.seed)
  state = common.train(ctx, init_variables=init_variables, loss_fn=loss_fn, iterator=iterator,
                       batch_keys=("mean", "std", "cond"))
  params = jax.device_get(state.params)
  if jax.process_index() == 0:
    unet.save_unet(ctx.stage_dir / "unet", module, params)
  summary = {"steps": int(jax.device_get(state.step)), "latent_shape": list(latent_shape)}
  if stage.sample.count:
    summary["samples"] = _write_samples(ctx, module, params, schedule, vae_module, vae_params, uncond, latent_shape)
  return summary


def _write_samples(ctx: StageContext, module, params, schedule, vae_module, vae_params, uncond,
                   latent_shape) -> int:
  """samples.png: the middle frame of `sample.count` test TRs over the frame generated from each caption."""
  stage = ctx.config.unet_fit
  test = pipeline.make_stimulus_source(ctx.config.data, "test")
  hidden, _ = clip_cache.load_caption_condition(resolve_path(ctx, stage.text_cache), "test")
  records = generation.spread_records(test, stage.sample.count)
  cond = hidden[records]
  sampler = generation.make_sampler(module, schedule, stage.sample)
  latents = sampler(params, cond, np.broadcast_to(uncond, cond.shape), jax.random.key(stage.sample.seed),
                    shape=(len(records),) + tuple(latent_shape))
  generated = np.asarray(vae.to_uint8(vae.decode_latents(vae_module, vae_params, latents)))
  real = np.stack([test[r]["frames"][len(test[r]["frames"]) // 2] for r in records])
  real = generation.match_size(real[:, None], generated[:, None])[:, 0]
  if jax.process_index() == 0:
    media.write_png(ctx.stage_dir / "samples.png", media.grid([f[None] for f in list(real) + list(generated)],
                                                              len(records))[0], scale=2)
  return len(records)
