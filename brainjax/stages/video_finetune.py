"""Stage `video_finetune`: text-to-video fine-tuning of an inflated UNet on the target videos.

MinD-Video (supplement B) and NeuralFlix first teach an SD 1.5 UNet, inflated to
video (brainjax.models.video_unet), the target dataset's clips with caption
conditioning: 3 FPS, 256 x 256, lr 2e-5, batch 14, 800 (NeuralFlix: 1000) steps,
training only the attention layers (`trainable_pattern(variant)`). Later the
caption condition is swapped for the fMRI encoder's.

Inputs, each the same kind of thing in the demo and the paper:
  unet_path      a diffusers SD `unet/` (or pipeline) directory, inflated on load (demo:
                 stage:unet_fit/unet, a small stand-in trained on the synthetic frames), or a
                 video UNet saved by this stage / MindVideo; "" trains `unet` (UNetConfig
                 fields) from scratch
  vae_path       a diffusers `vae/` directory (stable-diffusion-v1-5/vae; demo: stage:vae_fit/vae)
  text_cache     clip_embed's outputs: the caption hidden states per stimulus TR (the
                 condition) and the empty caption's (the unconditional input)
Each stimulus TR is one clip: its first `num_frames` frames (fps x TR), resized to
`resolution`. The VAE is frozen, so the clips' posteriors (mean and std, scaled)
are computed once at the start and a fresh latent is drawn from them every step.
Captions are dropped (replaced by the empty caption) with probability
`uncond_prob` so classifier-free guidance works at sampling. `dependent_noise_beta`
> 0 trains with NeuralFlix's dependent noise (Eq. 7). `snr_gamma` > 0 weights the loss by
Min-SNR-γ (off in the papers' settings; the demo's from-scratch UNet converges much faster with it).

Outputs: `unet/` (save_video_unet: the MindVideo layout), `samples/` (for `sample.count`
test clips: `<i>.gif` with the real clip on the left and the clip generated from its
caption on the right, `all.gif` with every pair, `captions.json`), and in the summary the
samples' caption retrieval (the generated middle frame's CLIP image embedding against
the sampled clips' caption embeddings, chance 1 / count) when `eval_vision_path` is set.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from brainjax import config as cfg
from brainjax import diffusion, losses
from brainjax.data import pipeline, stimuli
from brainjax.diffusion import training as dtraining
from brainjax.features import clip_cache, vae_cache
from brainjax.models import clip, unet, vae
from brainjax.models import video_unet as vu
from brainjax.pipelines import generation
from brainjax.stages import StageContext, common, resolve_path
from brainjax.train.optim import optim_config

CONFIG_KEYS = ("seed", "data")
# Artifact kinds: what its path fields read and what it writes (checked before anything runs).
INPUTS = {"unet_path": ("unet", "video_unet"), "vae_path": ("vae",), "text_cache": ("clip_cache",),
          "eval_vision_path": ("clip_vision",)}
OUTPUTS = {"unet": "video_unet"}
fingerprint = common.dataset_fingerprint


def stage_config(**overrides) -> ml_collections.ConfigDict:
  stage = ml_collections.ConfigDict(dict(
      unet_path="", unet={}, variant="mindvideo",
      vae_path="stage:vae_fit/vae", text_cache="stage:clip_embed", eval_vision_path="",
      num_frames=6, resolution=0,
      schedule=dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type="epsilon"),
      dependent_noise_beta=0.0, snr_gamma=0.0, uncond_prob=0.1, remat=False, attention_query_chunk=0,
      optim=optim_config(lr=2e-5, weight_decay=0.0, warmup_steps=0, schedule="constant", grad_clip_norm=1.0),
      batch_size=14, num_steps=800, log_every_steps=50, checkpoint_every_steps=200, keep_checkpoints=2,
      sample=dict(count=8, sampler="ddim", num_steps=50, guidance_scale=7.5, eta=0.0, seed=0),
  ))
  stage.update(overrides)
  return stage


def validate(config: ml_collections.ConfigDict, name: str) -> None:
  del name
  stage = config.video_finetune
  common.validate_video_training(config, "video_finetune")
  cfg.require_in_range(config, "video_finetune.uncond_prob", 0.0, 1.0)
  if not stage.unet_path and not stage.unet:
    raise cfg.ConfigError("config.video_finetune: give unet_path (a diffusers SD unet/ directory, e.g. a copy of "
                          "stable-diffusion-v1-5/unet) or unet (UNetConfig fields to train from scratch).")
  if not stage.unet_path:
    try:
      unet.UNetConfig.from_dict(stage.unet.to_dict())
    except ValueError as e:
      raise cfg.ConfigError(f"config.video_finetune.unet: {e}") from e
  for field in ("vae_path", "text_cache", "eval_vision_path", "unet_path"):
    path = stage.get(field, "")
    common.validate_stage_path(config, "video_finetune", field, path)
    if field in ("vae_path", "text_cache") and not path:
      raise cfg.ConfigError(f"config.video_finetune.{field} is empty; see the stage's docstring for what it reads.")


# --------------------------------------------------------------------------------------- pieces


def build_unet(ctx: StageContext):
  """(module, initial params or None): loaded from unet_path (inflated if 2-D), or a fresh config."""
  stage = ctx.config.video_finetune
  spec = vu.video_spec(stage.variant)
  if stage.unet_path:
    module, params = vu.load_video_unet(resolve_path(ctx, stage.unet_path), spec, rng=jax.random.key(ctx.config.seed),
                                        remat=stage.remat, attention_query_chunk=stage.attention_query_chunk)
    return module, params
  return vu.VideoUNet(unet.UNetConfig.from_dict(stage.unet.to_dict()), spec, remat=stage.remat,
                      attention_query_chunk=stage.attention_query_chunk), None


class _ClipSource:
  """Training examples: record index -> cached posterior and caption condition."""

  def __init__(self, mean: np.ndarray, std: np.ndarray, cond: np.ndarray):
    self.mean, self.std, self.cond = mean, std, cond

  def __len__(self) -> int:
    return len(self.mean)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {"mean": self.mean[i], "std": self.std[i], "cond": self.cond[i]}


# --------------------------------------------------------------------------------------- run


def run(ctx: StageContext) -> dict:
  stage = ctx.config.video_finetune
  module, loaded = build_unet(ctx)
  vae_module, vae_params = vae.load_vae(resolve_path(ctx, stage.vae_path))
  hidden, uncond = clip_cache.load_caption_condition(resolve_path(ctx, stage.text_cache), "train")
  dtraining.check_widths(module.config, vae_module.config, uncond)

  source = pipeline.make_stimulus_source(ctx.config.data, "train")
  mean, std = vae_cache.posterior_cache(vae_module, vae_params, source, stage.num_frames, stage.resolution)
  schedule = diffusion.NoiseSchedule.create(**stage.schedule.to_dict())
  beta = float(stage.dependent_noise_beta)
  latent_shape = mean.shape[1:]

  def init_variables(rng):
    return module.init(rng, jnp.zeros((1,) + latent_shape), jnp.zeros((), jnp.int32), jnp.zeros((1,) + uncond.shape))

  loss_fn = dtraining.caption_diffusion_loss(module, schedule, uncond, stage.uncond_prob, stage.snr_gamma,
                                   generation.noise_fn(beta))
  iterator = pipeline.make_iterator(_ClipSource(mean, std, hidden), batch_size=stage.batch_size,
                                    seed=ctx.config.seed)
  state = common.train(ctx, init_variables=init_variables, loss_fn=loss_fn, iterator=iterator,
                       batch_keys=("mean", "std", "cond"),
                       params=loaded)
  params = jax.device_get(state.params)
  if jax.process_index() == 0:
    vu.save_video_unet(ctx.stage_dir / "unet", module, params)
  summary = {"steps": int(jax.device_get(state.step)), "latent_shape": list(latent_shape)}
  if stage.sample.count:
    summary.update(_write_samples(ctx, module, params, schedule, vae_module, vae_params, uncond, latent_shape))
  return summary


def _write_samples(ctx: StageContext, module, params, schedule, vae_module, vae_params, uncond,
                   latent_shape) -> dict:
  stage = ctx.config.video_finetune
  test = pipeline.make_stimulus_source(ctx.config.data, "test")
  cache_dir = resolve_path(ctx, stage.text_cache)
  test_cache = clip_cache.load_cache(cache_dir, "test")
  records = generation.spread_records(test, stage.sample.count)
  cond = clip_cache.load_caption_condition(cache_dir, "test")[0][records]
  negative = np.broadcast_to(uncond, cond.shape)  # classifier-free guidance: the empty caption
  sampler = generation.make_sampler(module, schedule, stage.sample, float(stage.dependent_noise_beta))
  latents = sampler(params, cond, negative, jax.random.key(stage.sample.seed),
                    shape=(len(records),) + tuple(latent_shape))
  generated = generation.decode(vae_module, vae_params, latents)
  real = generation.match_size(
      stimuli.clip_frames(np.stack([test[r]["frames"] for r in records]), stage.num_frames, "the test stimuli"),
      generated)
  captions = [test[r]["caption"] for r in records]
  if jax.process_index() == 0:
    generation.write_pairs(ctx.stage_dir / "samples", real, generated, captions, stimuli.dataset_fps(ctx.config.data),
                           extra=[{"record": r} for r in records])
  summary = {"samples": len(records)}
  if stage.eval_vision_path:
    summary.update(_caption_retrieval(ctx, generated, test_cache["text_embeds"][records]))
  return summary


def _caption_retrieval(ctx: StageContext, generated: np.ndarray, text_embeds: np.ndarray) -> dict:
  """Generated middle frame -> its own caption among the sampled captions (CLIP image vs text embeddings)."""
  model, params = clip.load_clip_vision(resolve_path(ctx, ctx.config.video_finetune.eval_vision_path),
                                        with_projection=True)
  middle = generated[:, generated.shape[1] // 2]
  image = model.apply({"params": params}, clip.frames_to_pixels(middle, model.config.image_size)).image_embeds
  top1 = float(losses.retrieval_top1(jnp.asarray(image), jnp.asarray(text_embeds)))
  return {"sample_caption_top1": top1, "sample_caption_chance": 1.0 / len(generated)}
