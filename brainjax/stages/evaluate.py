"""Stage `evaluate`: reconstruct the test windows from fMRI, score them as the papers do, write a report.

MinD-Video (§4.3, supplement), NeuralFlix (§4) and Brain Netflix evaluate on the
test split: every test window's fMRI is encoded (the 77-token condition of stage
cotrain), a clip is generated with DDIM (200 steps in MinD-Video) under
adversarial guidance (negative condition = the encoder's output for the mean
test fMRI, scale 12.5; per subject when there are several), decoded with the
VAE and compared with the clip the subject watched:

  SSIM, PSNR   per frame (brainjax.eval.metrics: skimage's SSIM, Mind-Animator's PSNR),
               reported per frame index over all samples (MinD-Video) and averaged per
               video, then mean +- std over videos (Brain Netflix)
  N-way top-K  image classifier on every frame (MinD-Video: ViT-B/16 ImageNet) and video
               classifier on every clip (VideoMAE Kinetics-400), ground-truth classes from
               the same classifier on the ground truth, 100 trials, n in `n_way`
  baselines    next to every number: chance; shuffled pairs (each reconstruction against
               ANOTHER stimulus' ground truth: a derangement of the distinct stimulus TRs, so
               two subjects' windows of one clip never pair); the mean-fMRI condition (every
               clip generated from the mean test fMRI with the same seeds: what the decoder
               makes without sample-specific information)

Config (`stage_config`); fields that inherit from config.cotrain when left at
their sentinel: num_frames (0), resolution (-1; cotrain's 0 = the frames' own
size), dependent_noise_beta (-1), schedule ({}), vae_path ("": cotrain's, i.e.
video_finetune's). encoder_from / unet_from / vae_path / the classifier paths
may name a stage (`stage:cotrain/unet`) that is absent from config.stages: it is
then read from the workdir, where it must have finished (`--config.stages=
"('evaluate',)"` re-evaluates a trained run). An empty classifier path skips its
metric. N of an N-way test is capped at C - 2 for a classifier with C classes
(n - 1 distractors outside the 3 ground-truth classes); the cap is logged and
recorded in metrics.json.

Determinism and sharding. The windows (all of `split`, or `max_samples` spread
over it) are padded to a whole number of global batches (batch_per_device x
devices) and split into one contiguous slice per process; each step generates
a global batch sharded over the mesh's batch axes. Sample seeds are per window:
the initial noise of stimulus TR r is drawn from fold_in(key(sample.seed), r),
so a window's reconstruction does not depend on the device count, the batch
size or its batch neighbours (generation.make_sampler with per-sample keys).
All metrics are computed from the merged per-sample results sorted by window,
with fixed seeds (N-way distractors: sample.seed; shuffled pairs: sample.seed).

Writes, under <workdir>/evaluate/:
  shards/process_<p>.npz  each process's windows: window, record, subject, caption, the uint8 ground
                          truth `real` and reconstruction `video` [n, T, H, W, 3], per-frame `ssim` /
                          `psnr` [n, T], classifier probabilities `image_probs` [n, T, C] /
                          `video_probs` [n, C] (and `*_gt` on the ground truth), and the same with a
                          `mean_fmri_` prefix for that baseline. No resumption: an interrupted
                          evaluation starts over.
  metrics.json            every number with its baselines, the capped Ns, per-subject numbers (with
                          more than one subject), timings and the resolved stage config
  report.html, gifs/      the page (brainjax.eval.report) and, for up to report.clips_per_subject
                          windows per subject, ground truth | reconstruction | mean-fMRI GIFs
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from brainjax import config as cfg
from brainjax import diffusion, generation, media
from brainjax.data import pipeline
from brainjax.eval import metrics as mt
from brainjax.eval import report as report_lib
from brainjax.models import vae, videomae, vit
from brainjax.models import video_unet as vu
from brainjax.stages import StageContext, common, cotrain, resolve_path, video_finetune
from brainjax.train import sharding as shd

CONFIG_KEYS = ("seed", "data")
BASELINES = ("shuffled", "mean_fmri")
SPLITS = ("train", "test")
PATH_FIELDS = ("encoder_from", "unet_from", "vae_path", "image_classifier_path", "video_classifier_path")
# field -> the sentinel meaning "config.cotrain's"
INHERITED = {"num_frames": 0, "resolution": -1, "dependent_noise_beta": -1.0}


def stage_config(**overrides) -> ml_collections.ConfigDict:
  stage = ml_collections.ConfigDict(dict(
      encoder_from="stage:cotrain", unet_from="stage:cotrain/unet",
      vae_path="",                # "" = cotrain's (cotrain.vae_path: video_finetune's)
      num_frames=0,               # 0 = config.cotrain.num_frames
      resolution=-1,              # -1 = config.cotrain.resolution (0: the frames' own size)
      dependent_noise_beta=-1.0,  # -1 = config.cotrain.dependent_noise_beta (NeuralFlix: 0.25)
      schedule={},                # {} = config.cotrain.schedule (the one the UNet was trained with)
      split="test", max_samples=0, batch_per_device=1,
      # MinD-Video: DDIM 200 steps, adversarial guidance 12.5 (negative: the mean test fMRI).
      sample=dict(sampler="ddim", num_steps=200, guidance_scale=12.5, eta=0.0, seed=0, adversarial=True),
      # Paper: copies of google/vit-base-patch16-224 and MCG-NJU/videomae-base-finetuned-kinetics;
      # demo: stage:classifier_fit/image_classifier, stage:classifier_fit/video_classifier. "" = skip.
      image_classifier_path="", video_classifier_path="",
      n_way=(2, 50), top_k=1, trials=100, baselines=BASELINES,
      report=dict(clips_per_subject=8),
      data_overrides={},
  ))
  stage.update(overrides)
  return stage


# --------------------------------------------------------------------------------------- config


def settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.evaluate with the inherited fields filled in from config.cotrain (see the module docstring)."""
  stage = ml_collections.ConfigDict(config.evaluate.to_dict())
  source = config.get("cotrain")
  for field, sentinel in INHERITED.items():
    if stage[field] == sentinel:
      if source is None:
        raise cfg.ConfigError(f"config.evaluate.{field} = {sentinel!r} means config.cotrain's, but the recipe has "
                              f"no config.cotrain; set config.evaluate.{field}.")
      stage[field] = source[field]
  if not stage.schedule.to_dict():
    if source is None:
      raise cfg.ConfigError("config.evaluate.schedule is empty (= config.cotrain's), but the recipe has no "
                            "config.cotrain; set the noise schedule the UNet was trained with.")
    stage.schedule = source.schedule.to_dict()
  if not stage.vae_path and source is not None:
    stage.vae_path = cotrain.vae_path(config)
  return stage


def fingerprint(config: ml_collections.ConfigDict, name: str) -> dict:
  """The data read and the settings with the inherited values resolved (a change in cotrain's
  num_frames changes what evaluate generates)."""
  out = common.effective_data_fingerprint(config, name)
  out[name] = settings(config).to_dict()
  return out


def validate(config: ml_collections.ConfigDict, name: str) -> None:
  del name
  stage = settings(config)
  where = "evaluate"
  for field in ("encoder_from", "unet_from", "vae_path"):
    if not stage[field]:
      hint = " (and there is no config.cotrain to take it from)" if field == "vae_path" else ""
      raise cfg.ConfigError(f"config.evaluate.{field} is empty{hint}; see brainjax/stages/evaluate.py for what it "
                            "reads (e.g. 'stage:cotrain').")
  for field in PATH_FIELDS:
    common.validate_stage_path(config, where, field, stage[field], allow_finished=True)
  common.stage_data_config(config, where)  # unknown data_overrides fail here
  resolved = ml_collections.ConfigDict({where: stage})
  cfg.require_positive_int(resolved, f"{where}.num_frames")
  cfg.require_positive_int(resolved, f"{where}.resolution", allow_zero=True)
  cfg.require_in_range(resolved, f"{where}.dependent_noise_beta", 0.0, 1.0)
  cfg.require_choice(resolved, f"{where}.split", SPLITS)
  cfg.require_positive_int(resolved, f"{where}.max_samples", allow_zero=True)
  cfg.require_positive_int(resolved, f"{where}.batch_per_device")
  sample = stage.sample
  cfg.require_choice(resolved, f"{where}.sample.sampler", diffusion.SAMPLERS)
  cfg.require_positive_int(resolved, f"{where}.sample.num_steps")
  cfg.require_positive(resolved, f"{where}.sample.guidance_scale", allow_zero=True)
  cfg.require_in_range(resolved, f"{where}.sample.eta", 0.0, 1.0)
  if sample.eta > 0 and sample.sampler != "ddim":
    raise cfg.ConfigError(f"config.evaluate.sample.eta = {sample.eta}: eta is DDIM's; set it to 0 for "
                          f"sampler {sample.sampler!r}.")
  cfg.require_positive_int(resolved, f"{where}.sample.seed", allow_zero=True)
  if not isinstance(sample.adversarial, bool):
    raise cfg.ConfigError(f"config.evaluate.sample.adversarial = {sample.adversarial!r}: must be True (guidance "
                          "with the mean test fMRI as negative, MinD-Video) or False (no guidance).")
  try:
    schedule = diffusion.NoiseSchedule.create(**stage.schedule.to_dict())
  except (ValueError, TypeError) as e:
    raise cfg.ConfigError(f"config.evaluate.schedule: {e}") from e
  if sample.num_steps > schedule.num_train_timesteps:
    raise cfg.ConfigError(f"config.evaluate.sample.num_steps = {sample.num_steps} exceeds the schedule's "
                          f"{schedule.num_train_timesteps} training timesteps.")
  _validate_n_way(stage)
  unknown = [b for b in stage.baselines if b not in BASELINES]
  if unknown or len(set(stage.baselines)) != len(stage.baselines):
    raise cfg.ConfigError(f"config.evaluate.baselines = {tuple(stage.baselines)!r}: choose distinct entries of "
                          f"{BASELINES} (chance is always reported).")
  cfg.require_positive_int(resolved, f"{where}.report.clips_per_subject", allow_zero=True)


def _validate_n_way(stage: ml_collections.ConfigDict) -> None:
  n_way = stage.n_way
  if isinstance(n_way, int) or not n_way:
    raise cfg.ConfigError(f"config.evaluate.n_way = {n_way!r}: give a non-empty tuple of N, e.g. (2, 50).")
  for i, n in enumerate(n_way):
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
      raise cfg.ConfigError(f"config.evaluate.n_way[{i}] = {n!r}: an N-way test needs N >= 2 (papers: 2 and 50).")
  k = stage.top_k
  if not isinstance(k, int) or isinstance(k, bool) or k < 1:
    raise cfg.ConfigError(f"config.evaluate.top_k = {k!r}: must be a positive integer (papers: 1).")
  if k >= min(n_way):
    raise cfg.ConfigError(f"config.evaluate.top_k = {k} must be smaller than every N of config.evaluate.n_way "
                          f"= {tuple(n_way)} (top-k of n candidates).")
  if not isinstance(stage.trials, int) or isinstance(stage.trials, bool) or stage.trials < 1:
    raise cfg.ConfigError(f"config.evaluate.trials = {stage.trials!r}: must be a positive integer (papers: 100).")


def capped_n_way(n_way, top_k: int, num_classes: int, what: str) -> tuple[list[tuple[int, int]], list[str]]:
  """[(requested n, n used)] for a classifier with `num_classes` classes, and notes on what was capped.

  n - 1 distractors must fit outside the 3 ground-truth classes: n <= C - 2. Requested Ns that cap to
  one already listed are dropped; an N that cannot exceed top_k is skipped.
  """
  limit = num_classes - mt.MINDVIDEO_GT_CLASSES + 1
  out, notes, used = [], [], set()
  for n in n_way:
    m = min(int(n), limit)
    if m <= top_k:
      notes.append(f"{what}: {n}-way top-{top_k} skipped: the classifier has {num_classes} classes, too few "
                   f"(N <= {limit} leaves no room above top_k).")
      continue
    if m != n:
      notes.append(f"{what}: {n}-way capped to {m}-way: {num_classes} classes leave {num_classes - 3} distractor "
                   f"candidates outside the 3 ground-truth classes.")
    if m not in used:
      used.add(m)
      out.append((int(n), m))
  return out, notes


# --------------------------------------------------------------------------------------- pieces


def mean_fmri_by_subject(source) -> dict[int, np.ndarray]:
  """MindVideo's `uncon_fmri` per subject: the mean fMRI window [window, V] of each subject's windows."""
  totals: dict[int, np.ndarray] = {}
  counts: dict[int, int] = {}
  for i in range(len(source)):
    ex = source[i]
    s = int(ex["subject"])
    x = ex["fmri"].astype(np.float64)
    totals[s] = x if s not in totals else totals[s] + x
    counts[s] = counts.get(s, 0) + 1
  return {s: (totals[s] / counts[s]).astype(np.float32) for s in totals}


def process_slices(num: int, global_batch: int, processes: int) -> tuple[int, int]:
  """(steps, rows per process per step): `num` windows padded to steps x global_batch, process p
  taking the contiguous slice [p * steps * local, (p + 1) * steps * local) of the padded list."""
  steps = max(1, -(-num // global_batch))
  return steps, global_batch // processes


def _local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in global order (replicas counted once)."""
  shards = {}
  for s in x.addressable_shards:
    shards.setdefault(s.index[0].start or 0, s.data)
  return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


def _load_image_classifier(ctx: StageContext, path: str):
  directory = resolve_path(ctx, path)
  module, params = vit.load_vit(directory)
  kw = _processor(directory, "image")
  size = kw.get("image_size", module.config.image_size)
  if size != module.config.image_size:
    raise ValueError(f"{directory}/preprocessor_config.json resizes to {size} but the ViT takes "
                     f"{module.config.image_size} x {module.config.image_size} images; fix one of them.")
  kw["image_size"] = module.config.image_size
  return module, params, kw


def _load_video_classifier(ctx: StageContext, path: str, num_frames: int):
  directory = resolve_path(ctx, path)
  module, params = videomae.load_videomae(directory, num_frames=num_frames)
  kw = _processor(directory, "video")
  size = module.config.image_size
  kw.setdefault("size", size)
  kw.setdefault("crop", size)
  if kw["crop"] != size:
    raise ValueError(f"{directory}/preprocessor_config.json crops to {kw['crop']} but the VideoMAE takes "
                     f"{size} x {size} frames; fix one of them.")
  return module, params, kw


def _processor(directory, kind: str) -> dict:
  try:
    return vit.processor_kwargs(directory)
  except FileNotFoundError:
    logging.warning("%s has no preprocessor_config.json: the %s classifier's inputs are resized to its "
                    "image_size and normalised with the defaults of preprocess_%ss.", directory, kind, kind)
    return {}


# --------------------------------------------------------------------------------------- run


def run(ctx: StageContext) -> dict:
  stage = settings(ctx.config)
  start = time.time()
  local = _generate_and_score(ctx, stage)
  generation_s = time.time() - start
  shard_dir = ctx.stage_dir / "shards"
  shard_dir.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  np.savez(buffer, **local)
  (shard_dir / f"process_{jax.process_index():05d}.npz").write_bytes(buffer.getvalue())
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("brainjax_evaluate_shards")
  if jax.process_index() != 0:
    return {"samples_this_process": int(len(local["window"]))}
  merged = merge_shards(shard_dir, jax.process_count())
  results = compute_metrics(merged, stage)
  results["setup"] = _setup(stage, merged)
  results["timing"] = {"generation_and_scoring_s": round(generation_s, 1),
                       "s_per_sample": round(generation_s / max(1, results["samples"]), 3),
                       "devices": int(ctx.mesh.size), "processes": jax.process_count()}
  results["config"] = stage.to_dict()
  (ctx.stage_dir / "metrics.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=float))
  write_report(ctx, stage, merged, results)
  return flat_summary(results)


def _generate_and_score(ctx: StageContext, stage: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Generates and scores this process's slice of the windows; per-sample results (valid rows only)."""
  encoder, encoder_params, meta = cotrain.load_encoder(resolve_path(ctx, stage.encoder_from))
  unet, unet_params = vu.load_video_unet(resolve_path(ctx, stage.unet_from))
  vae_module, vae_params = vae.load_vae(resolve_path(ctx, stage.vae_path))
  if unet.config.context_dim != encoder.head.out_dim:
    raise cfg.ConfigError(f"the fMRI encoder from {stage.encoder_from} makes a {encoder.head.out_dim}-wide condition "
                          f"but the UNet from {stage.unet_from} cross-attends to {unet.config.context_dim}; point "
                          "both at the same cotrain run.")
  data = common.stage_data_config(ctx.config, ctx.name)
  source = pipeline.make_source(data, stage.split)
  if source.num_voxels != meta["num_voxels"] or data.window != meta["window"]:
    raise cfg.ConfigError(f"the {stage.split} fMRI windows are {data.window} x {source.num_voxels} but the encoder "
                          f"from {stage.encoder_from} takes {meta['window']} x {meta['num_voxels']}; set "
                          "config.evaluate.data_overrides as the encoder's stages read the data.")
  picks = list(range(len(source))) if not stage.max_samples else generation.spread_records(source, stage.max_samples)
  means = mean_fmri_by_subject(source)
  per_subject = bool(encoder.encoder.num_subjects)

  image = _load_image_classifier(ctx, stage.image_classifier_path) if stage.image_classifier_path else None
  video = (_load_video_classifier(ctx, stage.video_classifier_path, stage.num_frames)
           if stage.video_classifier_path else None)

  first = source[picks[0]]["frames"]
  factor = vae_module.config.downsampling_factor
  height, width = (stage.resolution, stage.resolution) if stage.resolution else first.shape[1:3]
  if height % factor or width % factor:
    raise cfg.ConfigError(f"frames of {height} x {width} are not divisible by the VAE's downsampling factor "
                          f"{factor}; set config.evaluate.resolution (or config.cotrain.resolution) to a multiple.")
  latent_shape = (stage.num_frames, height // factor, width // factor, vae_module.config.latent_channels)

  rules = shd.rules_from_config(ctx.config.logical_axis_rules)
  batch = shd.batch_sharding(ctx.mesh, rules)
  replicated = shd.replicated(ctx.mesh)
  divisor = shd.batch_divisor(dict(ctx.mesh.shape), rules)
  global_batch = stage.batch_per_device * divisor
  params = jax.device_put({"encoder": encoder_params, "unet": unet_params, "vae": vae_params}, replicated)
  cls_params = jax.device_put({"image": image[1] if image else {}, "video": video[1] if video else {}}, replicated)

  schedule = diffusion.NoiseSchedule.create(**stage.schedule.to_dict())
  sampler = generation.make_sampler(unet, schedule, stage.sample, float(stage.dependent_noise_beta))
  seed = int(stage.sample.seed)

  def encode(p, fmri, subject):
    return encoder.apply({"params": p}, fmri, deterministic=True,
                         subject=subject if per_subject else None)["condition"]

  def generate(p, fmri, negative_fmri, subject, record, guided):
    cond = encode(p["encoder"], fmri, subject)
    negative = encode(p["encoder"], negative_fmri, subject) if guided else None
    # Per-sample seeds: the stimulus TR's, so every window starts from the same noise in any layout.
    keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(seed), r))(record)
    latents = sampler(p["unet"], cond, negative, keys, shape=(fmri.shape[0],) + latent_shape)
    return vae.to_uint8(vae.decode_video(vae_module, p["vae"], latents))

  def classify(p, videos):
    out = {}
    b, t = videos.shape[:2]
    if image:
      pixels = vit.preprocess_images(videos.reshape(b * t, *videos.shape[2:]), **image[2])
      logits = image[0].apply({"params": p["image"]}, pixels).logits
      out["image_probs"] = jax.nn.softmax(logits.astype(jnp.float32), -1).reshape(b, t, -1)
    if video:
      logits = video[0].apply({"params": p["video"]}, videomae.preprocess_videos(videos, **video[2])).logits
      out["video_probs"] = jax.nn.softmax(logits.astype(jnp.float32), -1)
    return out

  def pair_scores(recon, real):
    return {"ssim": mt.ssim(recon, real), "psnr": mt.psnr(recon, real)}

  gen_args = (replicated, batch, batch, batch, batch)
  # Guidance with negative == condition is the unguided prediction, so the mean-fMRI baseline runs
  # unguided (half the UNet calls) and gives what guided sampling of that condition gives.
  generate_guided = jax.jit(lambda *a: generate(*a, guided=stage.sample.adversarial), in_shardings=gen_args,
                            out_shardings=batch)
  generate_plain = jax.jit(lambda *a: generate(*a, guided=False), in_shardings=gen_args, out_shardings=batch)
  classify = jax.jit(classify, in_shardings=(replicated, batch), out_shardings=batch)
  pair_scores = jax.jit(pair_scores, in_shardings=(batch, batch), out_shardings=batch)
  to_global = lambda x: jax.make_array_from_process_local_data(batch, np.asarray(x))

  steps, per_process = process_slices(len(picks), global_batch, jax.process_count())
  padded = picks + [-1] * (steps * global_batch - len(picks))
  mine = padded[jax.process_index() * steps * per_process:(jax.process_index() + 1) * steps * per_process]
  baseline = "mean_fmri" in stage.baselines
  rows: dict[str, list] = {}
  bar = _progress(steps, len(picks), global_batch, ctx.mesh.size)
  for step in range(steps):
    windows = mine[step * per_process:(step + 1) * per_process]
    exs = [source[w if w >= 0 else picks[0]] for w in windows]  # padding: a copy of a real window, dropped
    subject = np.array([e["subject"] for e in exs], np.int32)
    record = np.array([e["record"] for e in exs], np.int32)
    fmri = np.stack([e["fmri"] for e in exs])
    mean = np.stack([means[int(s)] for s in subject])
    generated = generate_guided(params, to_global(fmri), to_global(mean), to_global(subject), to_global(record))
    recon = _local_rows(generated)
    real = generation.match_size(
        video_finetune.clip_frames(np.stack([e["frames"] for e in exs]), stage.num_frames, "the test stimuli"), recon)
    real_global = to_global(real)
    out = {"window": np.array(windows, np.int64), "record": record, "subject": subject,
           "caption": np.array([e["caption"] for e in exs]), "video": recon, "real": real}
    out.update(_fetch(pair_scores(generated, real_global)))
    out.update(_fetch(classify(cls_params, generated)))
    out.update({f"{k}_gt": v for k, v in _fetch(classify(cls_params, real_global)).items()})
    if baseline:
      plain = generate_plain(params, to_global(mean), to_global(mean), to_global(subject), to_global(record))
      out["mean_fmri_video"] = _local_rows(plain)
      out.update({f"mean_fmri_{k}": v for k, v in _fetch(pair_scores(plain, real_global)).items()})
      out.update({f"mean_fmri_{k}": v for k, v in _fetch(classify(cls_params, plain)).items()})
    for k, v in out.items():
      rows.setdefault(k, []).append(v)
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  local = {k: np.concatenate(v) for k, v in rows.items()}
  valid = local["window"] >= 0
  local = {k: v[valid] for k, v in local.items()}
  local["fps"] = np.float64(video_finetune.dataset_fps(data))
  local["num_classes_image"] = np.int64(image[0].config.num_labels if image else 0)
  local["num_classes_video"] = np.int64(video[0].config.num_labels if video else 0)
  return local


def _fetch(tree: dict) -> dict[str, np.ndarray]:
  return {k: _local_rows(v) for k, v in tree.items()}


def _progress(steps: int, samples: int, global_batch: int, devices: int):
  """A terminal progress bar on process 0 (tqdm), plus a log line for log files."""
  logging.info("evaluate: generating %d windows in %d steps of %d (%d devices)", samples, steps, global_batch,
               devices)
  if jax.process_index() != 0:
    return None
  from tqdm import tqdm
  return tqdm(total=steps, desc="evaluate: generating", unit="batch", mininterval=2.0)


# --------------------------------------------------------------------------------------- merge and metrics


PER_PROCESS_SCALARS = ("fps", "num_classes_image", "num_classes_video")


def merge_shards(directory, processes: int) -> dict[str, np.ndarray]:
  """Every process's shard, concatenated and sorted by window index (deterministic for any layout)."""
  parts = []
  for p in range(processes):
    path = directory / f"process_{p:05d}.npz"
    if not path.exists():
      raise FileNotFoundError(f"{path} is missing: process {p} did not write its evaluation shard.")
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as f:
      parts.append({k: f[k] for k in f.files})
  merged = {k: parts[0][k] for k in PER_PROCESS_SCALARS if k in parts[0]}
  for k in parts[0]:
    if k not in PER_PROCESS_SCALARS:
      merged[k] = np.concatenate([q[k] for q in parts])
  order = np.argsort(merged["window"], kind="stable")
  for k in list(merged):
    if k not in PER_PROCESS_SCALARS:
      merged[k] = merged[k][order]
  return merged


def shuffled_partner(records: np.ndarray, seed: int) -> np.ndarray | None:
  """For each sample, the index of a sample of ANOTHER stimulus TR (a derangement of the distinct records,
  so two subjects' windows of one clip never pair); None with fewer than 2 distinct records."""
  distinct = np.unique(records)
  if len(distinct) < 2:
    return None
  perm = mt.derangement(np.random.default_rng(seed), len(distinct))
  first = {int(r): int(np.flatnonzero(records == r)[0]) for r in distinct}
  position = {int(r): i for i, r in enumerate(distinct)}
  return np.array([first[int(distinct[perm[position[int(r)]]])] for r in records], np.int64)


def _score_block(scores: np.ndarray) -> dict:
  frame = mt.per_frame_index(scores)
  video = mt.per_video(scores)
  return {"mean": video.mean, "std": video.std,
          "per_frame_index": {"mean": frame.mean.tolist(), "std": frame.std.tolist()}}


def _nway_rng(seed: int, kind: str, n: int, t: int = 0) -> jax.Array:
  salt = {"image": 1, "video": 2}[kind]
  return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), salt), n), t)


def _nway(probs: np.ndarray, gt: np.ndarray, n: int, stage, kind: str) -> tuple[np.ndarray, float]:
  """Per-sample accuracy ([N, T] for frames, [N] for clips) and the mean binomial std."""
  k, trials, seed = int(stage.top_k), int(stage.trials), int(stage.sample.seed)
  if probs.ndim == 2:
    res = mt.n_way_top_k(probs, gt, n, k, trials, _nway_rng(seed, kind, n))
    return res.accuracy, res.binomial_std
  accs, stds = [], []
  for t in range(probs.shape[1]):  # MinD-Video: the image metric per frame index
    res = mt.n_way_top_k(probs[:, t], gt[:, t], n, k, trials, _nway_rng(seed, kind, n, t))
    accs.append(res.accuracy)
    stds.append(res.binomial_std)
  return np.stack(accs, 1), float(np.mean(stds))


def compute_metrics(merged: dict[str, np.ndarray], stage: ml_collections.ConfigDict) -> dict[str, Any]:
  """Every number of metrics.json from the merged per-sample results (pure: a function of its inputs)."""
  num = len(merged["window"])
  notes: list[str] = []
  seed = int(stage.sample.seed)
  partner = shuffled_partner(merged["record"], seed) if "shuffled" in stage.baselines else None
  if "shuffled" in stage.baselines and partner is None:
    notes.append("shuffled-pairs baseline skipped: it needs at least 2 distinct test clips.")
  has_mean = "mean_fmri_video" in merged
  out: dict[str, Any] = {"samples": num, "baselines": ["chance"] + list(stage.baselines), "notes": notes}

  for name, metric in (("ssim", mt.ssim), ("psnr", mt.psnr)):
    block = _score_block(merged[name])
    block["baselines"] = {}
    if partner is not None:
      block["baselines"]["shuffled"] = _score_block(mt.frame_scores(metric, merged["video"], merged["real"][partner]))
    if has_mean:
      block["baselines"]["mean_fmri"] = _score_block(merged[f"mean_fmri_{name}"])
    out[name] = block

  per_sample: dict[str, np.ndarray] = {}  # summary key -> per-sample value, for the per-subject table
  for kind in ("image", "video"):
    key = f"{kind}_probs"
    if key not in merged:
      continue
    num_classes = int(merged[f"num_classes_{kind}"])
    pairs, cap_notes = capped_n_way(stage.n_way, int(stage.top_k), num_classes, f"{kind} classifier")
    for note in cap_notes:
      logging.info("evaluate: %s", note)
    notes.extend(cap_notes)
    results = []
    for requested, n in pairs:
      acc, std = _nway(merged[key], merged[f"{key}_gt"], n, stage, kind)
      entry = {"requested": requested, "n": n, "top_k": int(stage.top_k), "trials": int(stage.trials),
               "mean": float(acc.mean()), "binomial_std": std, "chance": mt.n_way_chance(n, int(stage.top_k)),
               "baselines": {"chance": mt.n_way_chance(n, int(stage.top_k))}}
      if acc.ndim == 2:
        entry["per_frame_index"] = acc.mean(0).tolist()
      per_sample[f"{kind}_{n}way"] = acc.reshape(num, -1).mean(1)
      if partner is not None:
        entry["baselines"]["shuffled"] = float(_nway(merged[key], merged[f"{key}_gt"][partner], n, stage, kind)[0]
                                               .mean())
      if has_mean:
        mean_acc = _nway(merged[f"mean_fmri_{key}"], merged[f"{key}_gt"], n, stage, kind)[0]
        entry["baselines"]["mean_fmri"] = float(mean_acc.mean())
        per_sample[f"{kind}_{n}way_mean_fmri"] = mean_acc.reshape(num, -1).mean(1)
      results.append(entry)
    out[f"{kind}_nway"] = {"num_classes": num_classes, "results": results}

  subjects = np.unique(merged["subject"])
  if len(subjects) > 1:
    table = {"ssim": merged["ssim"].mean(1), "psnr": merged["psnr"].mean(1)}
    if has_mean:
      table.update(ssim_mean_fmri=merged["mean_fmri_ssim"].mean(1), psnr_mean_fmri=merged["mean_fmri_psnr"].mean(1))
    table.update(per_sample)
    out["per_subject"] = {
        str(int(s)): {"samples": int((merged["subject"] == s).sum()),
                      **{k: float(v[merged["subject"] == s].mean()) for k, v in table.items()}}
        for s in subjects}
  return out


def flat_summary(results: dict[str, Any]) -> dict[str, Any]:
  """The headline numbers as one flat dict (the stage's summary; brainjax.ablate tabulates it)."""
  out: dict[str, Any] = {"samples": results["samples"]}
  for name in ("ssim", "psnr"):
    block = results[name]
    out[name], out[f"{name}_std"] = block["mean"], block["std"]
    for b, v in block["baselines"].items():
      out[f"{name}_{b}"] = v["mean"]
  for kind in ("image", "video"):
    for entry in results.get(f"{kind}_nway", {}).get("results", []):
      key = f"{kind}_{entry['n']}way"
      out[key], out[f"{key}_std"] = entry["mean"], entry["binomial_std"]
      for b, v in entry["baselines"].items():
        out[f"{key}_{b}"] = v
  if "timing" in results:
    out["s_per_sample"] = results["timing"]["s_per_sample"]
  return out


# --------------------------------------------------------------------------------------- report


def _setup(stage: ml_collections.ConfigDict, merged: dict[str, np.ndarray]) -> dict[str, Any]:
  """How the clips were made, in a line of the report."""
  s = stage.sample
  return {"subjects": sorted(int(x) for x in np.unique(merged["subject"])), "frames": int(merged["video"].shape[1]),
          "size": f"{merged['video'].shape[2]}x{merged['video'].shape[3]}",
          "sampler": f"{s.sampler} {s.num_steps} steps",
          "guidance": f"adversarial, scale {s.guidance_scale}" if s.adversarial else "none",
          "dependent noise beta": stage.dependent_noise_beta, "seed": s.seed}


def report_picks(merged: dict[str, np.ndarray], per_subject: int) -> list[int]:
  """Up to `per_subject` samples of each subject, spread evenly over its windows."""
  picks = []
  for s in np.unique(merged["subject"]):
    rows = np.flatnonzero(merged["subject"] == s)
    if per_subject and len(rows):
      picks += sorted(set(rows[np.linspace(0, len(rows) - 1, min(per_subject, len(rows))).astype(int)].tolist()))
  return picks


def write_report(ctx: StageContext, stage: ml_collections.ConfigDict, merged: dict[str, np.ndarray],
                 results: dict[str, Any]) -> None:
  """gifs/ and report.html (process 0)."""
  fps = float(merged["fps"])
  has_mean = "mean_fmri_video" in merged
  clips = []
  for i in report_picks(merged, int(stage.report.clips_per_subject)):
    panels = [merged["real"][i], merged["video"][i]] + ([merged["mean_fmri_video"][i]] if has_mean else [])
    name = f"gifs/subject{int(merged['subject'][i])}_window{int(merged['window'][i])}.gif"
    media.write_gif(ctx.stage_dir / name, media.side_by_side(panels), fps, scale=2)
    clips.append({"gif": name, "subject": int(merged["subject"][i]), "record": int(merged["record"][i]),
                  "caption": str(merged["caption"][i]), "ssim": float(merged["ssim"][i].mean()),
                  "psnr": float(merged["psnr"][i].mean())})
  panels = ("ground truth", "reconstruction") + (("mean-fMRI baseline",) if has_mean else ())
  report_lib.write_report(ctx.stage_dir / "report.html", results, clips,
                          {"evaluate": stage.to_dict(), "recipe": json.loads(ctx.config.to_json_best_effort())},
                          panels=panels, title=f"brainjax evaluation: {ctx.workdir}")
