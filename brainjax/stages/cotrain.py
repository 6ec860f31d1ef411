"""Stage `cotrain`: the fMRI encoder conditions the video UNet, and both are trained together.

MinD-Video (§3.4, supplement B): the text condition of the fine-tuned video UNet
is replaced by the fMRI encoder's 77 x 768 tokens (the projection head of
stage `align`); the whole encoder and the UNet's attn1 / attn2 / attn_temp are
trained with the denoising loss on the target videos (batch 9, lr 3e-5).
NeuralFlix does the same with its dependent noise (`dependent_noise_beta`,
Eq. 7) in training and at sampling.

Reads: `encoder_from` (an `fmri_encoder` artifact: stage align's, or a MindVideo
encoder imported with `python -m brainjax.convert.mbm encoder-import`),
`unet_from` (stage video_finetune's `unet/`), `vae_path` (frozen; the clips'
posteriors are cached at the start, as in video_finetune). Each training example
is an fMRI window (config.data with `data_overrides`) paired with the clip of
its stimulus TR (the first `num_frames` frames, at `resolution`).

Caption readout (brainjax, off unless `readout_fit.alpha` > 0; needs an encoder
whose head has `readout_rank` > 0, see brainjax.models.fmri_encoder): before
training, the head's readout takes the condition over: the head's bilinear path
is switched off (its channel_mapper zeroed; co-training may grow it back) and the
readout fitted in closed form, by reduced-rank ridge regression (brainjax.ridge),
from every training fMRI window to its stimulus caption's hidden states
(`readout_fit.text_cache`, clip_embed's). Co-training then starts from a
condition in the space the text-to-video UNet was trained to read, instead of
having to bend the UNet's cross-attention to an unrelated one in a few hundred
steps (what it does otherwise: it learns to ignore the condition). The summary
reports the condition's relative squared error to the test windows' captions
(1 = the mean training caption) for the aligned head and after the fit.
Memory: the fit holds every training window (window x voxels floats) and its
caption's hidden states on the host, in float64. One map serves all subjects:
with several, their voxels share the readout's input positions.

Writes: `params/` + `model.json` (the encoder, an `fmri_encoder` artifact like
align's, so later stages read either), `unet/` (the MindVideo layout), and `samples/` GIFs of test clips
reconstructed from test fMRI with adversarial guidance: the negative condition
is the encoder's output for the mean test fMRI window (MindVideo's
`uncon_fmri`), scale `sample.guidance_scale` (12.5 in the paper).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from brainjax import augment, diffusion
from brainjax import config as cfg
from brainjax.data import pipeline, stimuli
from brainjax.features import clip_cache, vae_cache
from brainjax.models import fmri_encoder, vae
from brainjax.models import video_unet as vu
from brainjax.pipelines import generation
from brainjax.stages import StageContext, common, resolve_path, stage_source
from brainjax.train.optim import optim_config

CONFIG_KEYS = ("seed", "data")
# Artifact kinds: what its path fields read and what it writes (checked before anything runs).
INPUTS = {"encoder_from": ("fmri_encoder",), "unet_from": ("video_unet",), "vae_path": ("vae",),
          "readout_fit.text_cache": ("clip_cache",)}
OUTPUTS = {"": "fmri_encoder", "unet": "video_unet"}
fingerprint = common.effective_data_fingerprint


def stage_config(**overrides) -> ml_collections.ConfigDict:
  stage = ml_collections.ConfigDict(dict(
      encoder_from="stage:align", unet_from="stage:video_finetune/unet",
      vae_path="",  # "" = config.video_finetune.vae_path
      num_frames=6, resolution=0, variant="mindvideo",
      schedule=dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    prediction_type="epsilon"),
      # alpha > 0: fit the head's caption readout first (module docstring); ridge on standardised voxels.
      readout_fit=dict(alpha=0.0, text_cache="stage:clip_embed"),
      dependent_noise_beta=0.0, snr_gamma=0.0, sparsify_rate=0.0, remat=False, attention_query_chunk=0,
      # The encoder is trained whole; of the UNet, the attention layers (MinD-Video supplement B).
      optim=optim_config(lr=3e-5, weight_decay=0.0, warmup_steps=0, schedule="constant", grad_clip_norm=1.0,
                         trainable=(r"^fmri/", r"^unet/.*(attn1|attn2|attn_temp|norm_temp)/")),
      batch_size=9, num_steps=1000, log_every_steps=50, checkpoint_every_steps=250, keep_checkpoints=2,
      sample=dict(count=8, sampler="ddim", num_steps=50, guidance_scale=12.5, eta=0.0, seed=0,
                  adversarial=True),
      data_overrides={},
  ))
  stage.update(overrides)
  return stage


def validate(config: ml_collections.ConfigDict, name: str) -> None:
  del name
  stage = config.cotrain
  common.validate_video_training(config, "cotrain")
  cfg.require_in_range(config, "cotrain.sparsify_rate", 0.0, 0.99)
  if (stage_source(stage.unet_from) or ("",))[0] == "video_finetune" and "video_finetune" in config:
    trained, here = config.video_finetune.schedule.to_dict(), stage.schedule.to_dict()
    if trained != here:
      changed = sorted(k for k in set(trained) | set(here) if trained.get(k) != here.get(k))
      raise cfg.ConfigError(f"config.cotrain.schedule differs from config.video_finetune.schedule in {changed}: "
                            "co-training continues the UNet video_finetune trained, under the same noise schedule "
                            "and parametrisation; set both to the same values.")
  cfg.require_positive(config, "cotrain.readout_fit.alpha", allow_zero=True)
  if stage.readout_fit.alpha:
    if not stage.readout_fit.text_cache:
      raise cfg.ConfigError("config.cotrain.readout_fit.text_cache is empty but readout_fit.alpha > 0; point it at "
                            "clip_embed's cache (stage:clip_embed) or set alpha = 0.")
    common.validate_stage_path(config, "cotrain", "readout_fit.text_cache", stage.readout_fit.text_cache)
    if "align" in config and not config.align.head.get("readout_rank", 0):
      raise cfg.ConfigError("config.cotrain.readout_fit.alpha > 0 fits the head's caption readout, but "
                            "config.align.head.readout_rank = 0: the encoder has none; set a rank (e.g. 256).")
  for field in ("encoder_from", "unet_from", "vae_path"):
    path = _vae_path(config) if field == "vae_path" else stage[field]
    if not path:
      raise cfg.ConfigError(f"config.cotrain.{field} is empty; see the stage's docstring for what it reads.")
    common.validate_stage_path(config, "cotrain", field, path)


def _vae_path(config: ml_collections.ConfigDict) -> str:
  """config.cotrain.vae_path, or video_finetune's when empty (the VAE the UNet was fine-tuned with)."""
  return config.cotrain.vae_path or (config.video_finetune.vae_path if "video_finetune" in config else "")


def run(ctx: StageContext) -> dict:
  stage = ctx.config.cotrain
  encoder, encoder_params, meta = fmri_encoder.load(resolve_path(ctx, stage.encoder_from))
  unet, unet_params = vu.load_video_unet(resolve_path(ctx, stage.unet_from), stage.variant, remat=stage.remat,
                                         attention_query_chunk=stage.attention_query_chunk)
  vae_module, vae_params = vae.load_vae(resolve_path(ctx, _vae_path(ctx.config)))
  head = encoder.head
  if unet.config.context_dim != head.out_dim:
    raise cfg.ConfigError(f"the fMRI encoder's condition is {head.out_dim} wide but the UNet cross-attends to "
                          f"{unet.config.context_dim}; set config.align.head.out_dim = {unet.config.context_dim}.")

  data = common.stage_data_config(ctx.config, ctx.name)
  source = pipeline.make_source(data, "train")
  window, num_voxels = encoder.encoder.window, encoder.encoder.num_voxels
  if source.num_voxels != num_voxels or data.window != window:
    raise cfg.ConfigError(f"the fMRI windows are {data.window} x {source.num_voxels} but the encoder from "
                          f"{stage.encoder_from} takes {window} x {num_voxels}; use the data settings "
                          "of stage align.")
  readout_summary = {}
  if stage.readout_fit.alpha:
    encoder_params, readout_summary = fit_caption_readout(encoder, encoder_params, data,
                                                          resolve_path(ctx, stage.readout_fit.text_cache),
                                                          float(stage.readout_fit.alpha))
  stimuli = pipeline.make_stimulus_source(data, "train")
  mean, std = vae_cache.posterior_cache(vae_module, vae_params, stimuli, stage.num_frames, stage.resolution)
  schedule = diffusion.NoiseSchedule.create(**stage.schedule.to_dict())
  beta = float(stage.dependent_noise_beta)
  per_subject = bool(encoder.encoder.num_subjects)

  def transform(ex):
    r = int(ex["record"])
    return {"fmri": ex["fmri"], "subject": ex["subject"], "mean": mean[r], "std": std[r]}

  def condition(params, fmri, subject, *, rng=None):
    kw = dict(deterministic=rng is None, subject=subject if per_subject else None)
    if rng is not None:
      kw["rngs"] = {"dropout": rng}
    return encoder.apply({"params": params}, fmri, **kw)["condition"]

  def init_variables(rng):
    # Shapes and shardings only (never run): both parts start from their stages' params (params= below).
    fmri_rng, unet_rng = jax.random.split(rng)
    fmri = jnp.zeros((1, window, num_voxels))
    fmri_vars = encoder.init({"params": fmri_rng, "dropout": fmri_rng}, fmri,
                             subject=jnp.zeros((1,), jnp.int32) if per_subject else None)
    unet_vars = unet.init(unet_rng, jnp.zeros((1,) + mean.shape[1:]), jnp.zeros((), jnp.int32),
                          jnp.zeros((1, head.out_tokens, head.out_dim)))
    return {"params": {"fmri": fmri_vars["params"], "unet": unet_vars["params"]}}

  def loss_fn(params, model_state, batch, rng):
    sparse_rng, drop_rng, latent_rng, loss_rng = jax.random.split(rng, 4)
    fmri = augment.sparsify(sparse_rng, batch["fmri"], stage.sparsify_rate)
    cond = condition(params["fmri"], fmri, batch["subject"], rng=drop_rng)
    x0 = batch["mean"] + batch["std"] * jax.random.normal(latent_rng, batch["mean"].shape)
    predict = lambda x, t, c: unet.apply({"params": params["unet"]}, x, t, c)
    loss = diffusion.diffusion_loss(schedule, predict, x0, cond, loss_rng, noise_fn=generation.noise_fn(beta),
                                   snr_gamma=stage.snr_gamma)
    return loss, ({}, model_state)

  iterator = pipeline.make_iterator(source, batch_size=stage.batch_size, seed=ctx.config.seed, transform=transform)
  state = common.train(ctx, init_variables=init_variables, loss_fn=loss_fn, iterator=iterator,
                       batch_keys=("fmri", "subject", "mean", "std"),
                       params={"fmri": encoder_params, "unet": unet_params})
  params = jax.device_get(state.params)
  provenance = {k: v for k, v in meta.items() if k not in fmri_encoder.model_meta(encoder)}
  fmri_encoder.save(ctx.stage_dir, encoder, params["fmri"], **dict(provenance, trained_by=ctx.name))
  if jax.process_index() == 0:
    vu.save_video_unet(ctx.stage_dir / "unet", unet, params["unet"])
  summary = {"steps": int(jax.device_get(state.step)), "train_windows": len(source), **readout_summary}
  if stage.sample.count:
    summary.update(_write_samples(ctx, data, unet, params, condition, schedule, vae_module, vae_params,
                                  mean.shape[1:]))
  return summary


def fit_caption_readout(encoder: fmri_encoder.FmriAligner, params: dict, data: ml_collections.ConfigDict, text_cache,
                        alpha: float) -> tuple[dict, dict]:
  """The encoder's params with the head's caption readout fitted (module docstring), and the fit's numbers."""
  head = encoder.head
  if not head.readout_rank:
    raise cfg.ConfigError("config.cotrain.readout_fit.alpha > 0 but the encoder's head has no caption readout "
                          "(readout_rank 0 when align trained it); set config.align.head.readout_rank and rerun "
                          "align, or set readout_fit.alpha = 0.")
  hidden = {split: clip_cache.load_caption_condition(text_cache, split)[0] for split in ("train", "test")}
  if hidden["train"].shape[1:] != (head.out_tokens, head.out_dim):
    raise cfg.ConfigError(f"the captions' hidden states in {text_cache} are {hidden['train'].shape[1:]} but the "
                          f"fMRI condition is ({head.out_tokens}, {head.out_dim}); the readout fits one onto the "
                          f"other: set config.align.head.out_tokens = {hidden['train'].shape[1]} (the text "
                          "encoder's length) and rerun align.")
  # The readout takes the condition over: the head's bilinear path is switched off (channel_mapper zeroed makes
  # its output zero; co-training can grow it back) and the readout's own output zeroed, then the readout is
  # fitted to the captions. Fitting it to what the aligned head misses instead was worse: that output is far
  # from caption space (relative error 4.6 on the demo) and cancelling its nonlinear part cost the readout
  # (measured with a readout of the tokens: 1.14 against 0.73 when it took over).
  zeroed = {name: jax.tree_util.tree_map(jnp.zeros_like, params["head"][name])
            for name in ("channel_mapper", "readout_out")}
  plain = dict(params, head=dict(params["head"], **zeroed))
  per_subject = bool(encoder.encoder.num_subjects)
  apply = jax.jit(lambda p, fmri, subject: encoder.apply(
      {"params": p}, fmri, subject=subject if per_subject else None)["condition"])

  def conditions(p, fmri, subject):
    return np.concatenate([np.asarray(apply(p, fmri[i:i + 64], subject[i:i + 64]), np.float64)
                           for i in range(0, len(fmri), 64)])

  train_fmri, train_subject, train_caption = stimuli.caption_windows(pipeline.make_source(data, "train"), hidden["train"])
  train_caption = train_caption.astype(np.float64)
  out = dict(params, head=fmri_encoder.fit_readout(
      head, plain["head"], train_fmri, train_caption - conditions(plain, train_fmri, train_subject), alpha))
  # How far the condition is from the test windows' captions, relative to the mean training caption's.
  test_fmri, test_subject, test_caption = stimuli.caption_windows(pipeline.make_source(data, "test"), hidden["test"])
  aligned = dict(params, head=dict(params["head"], readout_out=zeroed["readout_out"]))  # align's head alone
  spread = float(((test_caption - train_caption.mean(0)) ** 2).sum())
  before = float(((conditions(aligned, test_fmri, test_subject) - test_caption) ** 2).sum()) / spread
  after = float(((conditions(out, test_fmri, test_subject) - test_caption) ** 2).sum()) / spread
  rank = int(np.linalg.matrix_rank(np.asarray(out["head"]["readout_out"]["kernel"], np.float64)))
  summary = {"readout_rank": rank, "readout_test_rel_error_before": before, "readout_test_rel_error_after": after}
  logging.info("cotrain: caption readout fitted (rank %d, alpha %g): relative squared error to the test captions "
               "%.3f -> %.3f", rank, alpha, before, after)
  return out, summary


def _write_samples(ctx, data, unet, params, condition, schedule, vae_module, vae_params, latent_shape) -> dict:
  stage = ctx.config.cotrain
  test = pipeline.make_source(data, "test")
  picks = generation.spread_records(test, stage.sample.count)
  exs = [test[i] for i in picks]
  fmri = np.stack([e["fmri"] for e in exs])
  subject = np.stack([e["subject"] for e in exs])
  cond = condition(params["fmri"], fmri, subject)
  negative = None
  if stage.sample.adversarial:
    negative = condition(params["fmri"], np.broadcast_to(stimuli.mean_fmri(test), fmri.shape), subject)
  sampler = generation.make_sampler(unet, schedule, stage.sample, float(stage.dependent_noise_beta))
  latents = sampler(params["unet"], cond, negative, jax.random.key(stage.sample.seed),
                    shape=(len(picks),) + tuple(latent_shape))
  generated = generation.decode(vae_module, vae_params, latents)
  real = generation.match_size(
      stimuli.clip_frames(np.stack([e["frames"] for e in exs]), stage.num_frames, "the test stimuli"),
      generated)
  if jax.process_index() == 0:
    generation.write_pairs(ctx.stage_dir / "samples", real, generated, [e["caption"] for e in exs],
                           stimuli.dataset_fps(data), extra=[{"record": int(e["record"])} for e in exs])
  return {"samples": len(picks)}
