"""Stage `align`: contrastive alignment of the windowed fMRI encoder with CLIP.

The encoder (initialised from `mbm_pretrain`) and its 77-token projection head
are trained so that the pooled fMRI embedding lands next to the CLIP
embeddings of what was seen. Every published variant is a config switch:

  MinD-Video   modalities ('text', 'image'), L = (L_text + L_image) / 2 with a
               learnable logit scale; the image is a random frame of the TR;
               20% of voxels zeroed at random (sparsify_rate); head dropout 0.6.
               Ablations: ('text',), ('image',), () (no contrastive step).
  NeuralFlix   + spatial masking (γ_spa of the token dims) and temporal
               interpolation (Eq. 1, γ_tem) of the fMRI tokens, each contrasted
               with the unaugmented embedding: L = μ_spa L_spa + μ_tem L_tem + L_emb
               (Eqs. 2-3; L_emb sums text and image). Eq. 2 as printed pairs
               L_spa with the temporally augmented view and vice versa; with
               μ_spa = μ_tem (the paper's setting) the two readings coincide;
               here L_spa uses the spatially masked view.
  Brain Netflix  modalities ('text',) with a fixed temperature (0.9), trained
               jointly over several datasets and all their subjects
               (`extra_datasets`, with encoder.per_subject_patch_embed: a shared
               encoder with one patch embedding per (dataset, subject)).

The contrastive loss sees the global batch: negatives come from every device.
At the end the stage reports 300-way top-1 retrieval fMRI->image and
image->fMRI on the test set (split into groups of 300 windows, as NeuroClips
and CineNeuron do; chance 1/300).

Several datasets (`config.align.extra_datasets`, format in
brainjax/stages/common.py): the stage reads a mixture with global subject ids
and per-example voxel counts (padding never reaches the encoder's output).
`clip_embed` caches the CLIP embeddings of `config.data`'s stimuli; those of
each extra dataset are computed here once, with the same towers, into
`align/clip_embed/dataset_<i>/`. Retrieval is reported over all test windows
and per dataset. Starting from an MBM checkpoint, per-subject patch-embedding
rows are matched by [dataset, subject] (the MBM's `subject_table`).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from brainjax import artifacts, augment, losses
from brainjax import config as cfg
from brainjax.data import pipeline
from brainjax.eval import retrieval
from brainjax.features import clip_cache
from brainjax.models import fmri_encoder
from brainjax.stages import StageContext, common, resolve_path
from brainjax.train.optim import optim_config

CONFIG_KEYS = ("seed", "data")
# Artifact kinds: what its path fields read and what it writes (checked before anything runs).
INPUTS = {"init_from": ("mbm",)}
OUTPUTS = {"": "fmri_encoder"}
REQUIRES = ("clip_embed",)  # read without a config field: the CLIP embeddings of config.data's stimuli


def fingerprint(config: ml_collections.ConfigDict, name: str) -> dict:
  """CONFIG_KEYS + config.align (as by default) plus the extra datasets read, if any."""
  base = {k: config[k].to_dict() if isinstance(config[k], ml_collections.ConfigDict) else config[k]
          for k in (*CONFIG_KEYS, name) if k in config}
  return common.datasets_fingerprint(config, name, base)


def stage_config(**overrides) -> ml_collections.ConfigDict:
  """MinD-Video's settings; recipes override what differs."""
  stage = ml_collections.ConfigDict(dict(
      init_from="stage:mbm_pretrain",      # or '' to start from scratch
      encoder=dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=1.0, remat=False,
                   per_subject_patch_embed=False),
      # readout_rank > 0: brainjax's caption readout (models/fmri_encoder.py), which cotrain's readout_fit fits.
      head=dict(out_tokens=77, out_dim=768, dropout=0.6, use_norm=False, readout_rank=0),
      modalities=("text", "image"),
      emb_reduction="mean",                # MinD-Video averages L_text and L_image; NeuralFlix sums them
      temperature=0.07,                    # initial (learned) or fixed temperature
      learn_temperature=True,              # Brain Netflix: False with temperature 0.9
      sparsify_rate=0.2,
      spatial_mask_ratio=0.0, temporal_interp_ratio=0.0, mu_spa=0.0, mu_tem=0.0,
      optim=optim_config(lr=1e-4, weight_decay=0.05, warmup_steps=100, grad_clip_norm=1.0),
      batch_size=64, num_steps=2000, log_every_steps=50, checkpoint_every_steps=500, keep_checkpoints=2,
      retrieval_candidates=300,
      # Brain Netflix: more datasets read jointly with config.data (dicts of config.data fields, each
      # with its `subjects`; see brainjax/stages/common.py) and optional fixed proportions.
      extra_datasets=(),
      dataset_weights=(),
  ))
  stage.update(overrides)
  return stage


def build(stage: ml_collections.ConfigDict, num_voxels: int, window: int, clip_dim: int,
          num_subjects: int = 1) -> fmri_encoder.FmriAligner:
  """The encoder this stage trains, from config.align (`num_subjects` rows with per_subject_patch_embed)."""
  return fmri_encoder.aligner(stage.encoder.to_dict(), stage.head.to_dict(), num_voxels=num_voxels, window=window,
                              clip_dim=clip_dim, num_subjects=num_subjects, temperature=stage.temperature,
                              learn_temperature=stage.learn_temperature)


def validate(config: ml_collections.ConfigDict, name: str) -> None:
  del name
  common.validate_train(config, "align")
  stage = config.align
  for m in stage.modalities:
    if m not in ("text", "image"):
      raise cfg.ConfigError(f"config.align.modalities = {tuple(stage.modalities)}: entries must be 'text' or 'image'.")
  cfg.require_choice(config, "align.emb_reduction", ("mean", "sum"))
  cfg.require_positive(config, "align.temperature")
  cfg.require_positive_int(config, "align.head.readout_rank", allow_zero=True)
  for field in ("sparsify_rate", "spatial_mask_ratio", "temporal_interp_ratio", "head.dropout"):
    cfg.require_in_range(config, f"align.{field}", 0.0, 0.99)
  for field in ("mu_spa", "mu_tem"):
    cfg.require_positive(config, f"align.{field}", allow_zero=True)
  if not stage.modalities and not stage.mu_spa and not stage.mu_tem:
    raise cfg.ConfigError("config.align has no loss: modalities is empty and mu_spa = mu_tem = 0. For the "
                          "'no contrastive learning' ablation remove 'align' from config.stages instead.")
  common.validate_init_from(config, "align")
  overrides = stage.get("data_overrides") or {}
  changed = [k for k in common.DATASET_IDENTITY if k in overrides]
  if changed:
    raise cfg.ConfigError(f"config.align.data_overrides.{changed[0]}: align reads the CLIP embeddings stage "
                          "clip_embed caches for config.data's stimuli; change config.data, or add the dataset "
                          "to config.align.extra_datasets.")
  common.validate_datasets(config, "align", splits=("train", "test"))
  if "clip_embed" not in config.stages or config.stages.index("clip_embed") > config.stages.index("align"):
    raise cfg.ConfigError("stage 'align' reads cached CLIP embeddings: put 'clip_embed' before it in config.stages.")


def _with_embeddings(cache: dict[str, np.ndarray] | list[dict[str, np.ndarray]]):
  """Adds the cached CLIP embeddings of each example's stimulus TR (of its dataset, with a list of caches)."""
  caches = [cache] if isinstance(cache, dict) else list(cache)

  def transform(ex):
    r, c = int(ex["record"]), caches[int(ex.get("dataset", 0))]
    out = {"fmri": ex["fmri"], "text_embed": c["text_embeds"][r], "image_embeds": c["image_embeds"][r],
           "clip_id": ex["clip_id"], "subject": ex["subject"]}
    if "num_voxels" in ex:
      out["num_voxels"] = ex["num_voxels"]
    return out
  return transform


def contrastive_loss(model: fmri_encoder.FmriAligner, stage, params, batch, rng) -> tuple[jax.Array, dict]:
  """The configured variant of the alignment loss (see the module docstring)."""
  r_sparse, r_drop, r_frame, r_spa, r_tem, r_drop2, r_drop3 = jax.random.split(rng, 7)
  fmri = augment.sparsify(r_sparse, batch["fmri"], stage.sparsify_rate)
  apply = lambda drop_rng, **kw: model.apply({"params": params}, fmri, deterministic=False,
                                             rngs={"dropout": drop_rng}, subject=batch.get("subject"),
                                             num_voxels=batch.get("num_voxels"), **kw)
  out = apply(r_drop)
  f, scale = out["embed"], out["scale"]
  parts = {}
  if "text" in stage.modalities:
    parts["loss_text"] = losses.clip_loss(f, batch["text_embed"], scale)
  if "image" in stage.modalities:
    images = batch["image_embeds"]
    pick = jax.random.randint(r_frame, (images.shape[0],), 0, images.shape[1])  # a random frame of the TR
    parts["loss_image"] = losses.clip_loss(f, images[jnp.arange(images.shape[0]), pick], scale)
  emb = sum(parts.values()) if parts else 0.0
  if parts and stage.emb_reduction == "mean":
    emb = emb / len(parts)
  total = emb
  if stage.mu_spa:
    spa = apply(r_drop2, token_transform=lambda t: augment.spatial_mask(r_spa, t, stage.spatial_mask_ratio))
    parts["loss_spa"] = losses.clip_loss(f, spa["embed"], scale)
    total = total + stage.mu_spa * parts["loss_spa"]
  if stage.mu_tem:
    tem = apply(r_drop3, token_transform=lambda t: augment.temporal_interpolate(r_tem, t, stage.temporal_interp_ratio))
    parts["loss_tem"] = losses.clip_loss(f, tem["embed"], scale)
    total = total + stage.mu_tem * parts["loss_tem"]
  parts["logit_scale"] = jnp.asarray(scale)
  return total, parts


def model_and_loss(config: ml_collections.ConfigDict, num_voxels: int, clip_dim: int, frames_per_tr: int,
                   num_subjects: int = 1, variable_voxels: bool = False):
  """(model, init_variables, loss_fn, batch ShapeDtypeStructs): what training and planning share.

  `variable_voxels`: batches carry each example's real voxel count (`num_voxels`, a mixture).
  """
  stage, window = config.align, config.data.window
  model = build(stage, num_voxels, window, clip_dim, num_subjects)
  per_subject = bool(model.encoder.num_subjects)
  dummy = jnp.zeros((1, window, num_voxels), jnp.float32)

  def init_variables(rng):
    return model.init({"params": rng, "dropout": rng}, dummy,
                      subject=jnp.zeros((1,), jnp.int32) if per_subject else None)

  def loss_fn(params, model_state, batch, rng):
    loss, parts = contrastive_loss(model, stage, params, batch, rng)
    return loss, (parts, model_state)

  b = stage.batch_size
  batch = {"fmri": jax.ShapeDtypeStruct((b, window, num_voxels), jnp.float32),
           "text_embed": jax.ShapeDtypeStruct((b, clip_dim), jnp.float32),
           "image_embeds": jax.ShapeDtypeStruct((b, frames_per_tr, clip_dim), jnp.float32)}
  if per_subject:
    batch["subject"] = jax.ShapeDtypeStruct((b,), jnp.int32)
  if variable_voxels:
    batch["num_voxels"] = jax.ShapeDtypeStruct((b,), jnp.int32)
  return model, init_variables, loss_fn, batch


def clip_caches(ctx: StageContext, datasets: list[ml_collections.ConfigDict], split: str) -> list[dict]:
  """The CLIP embedding cache of `split` for every dataset the stage reads.

  Dataset 0's is stage clip_embed's. Each extra dataset's is computed once,
  with the same towers and code (clip_cache.embed_stimuli), into
  `<stage>/clip_embed/dataset_<i>/`; a marker records the tower settings and
  the dataset, and a cache made with other ones is recomputed.
  """
  caches = [clip_cache.load_cache(ctx.output_of("clip_embed"), split)]
  for i, data in enumerate(datasets[1:], 1):
    directory = ctx.stage_dir / "clip_embed" / f"dataset_{i}"
    marker = directory / "DONE.json"
    expected = json.dumps({"clip_embed": ctx.config.clip_embed.to_dict(), "data": data.to_dict()},
                          sort_keys=True, default=str)
    if not (marker.exists() and marker.read_text() == expected):
      logging.info("stage %s: CLIP embeddings of extra dataset %d (%s)", ctx.name, i, data.get("name"))
      towers = ctx.config.clip_embed
      directory.mkdir(parents=True, exist_ok=True)
      clip_cache.embed_stimuli(resolve_path(ctx, towers.text_path), resolve_path(ctx, towers.vision_path), data,
                               directory, batch_size=towers.batch_size, store_text_hidden=towers.store_text_hidden)
      if jax.process_index() == 0:
        marker.write_text(expected)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"brainjax_{ctx.name}_clip_cache_{i}")
    caches.append(clip_cache.load_cache(directory, split))
  frames = {int(c["image_embeds"].shape[1]) for c in caches}
  if len(frames) > 1:
    raise cfg.ConfigError(f"config.{ctx.name}: the datasets show different numbers of frames per TR "
                          f"({[int(c['image_embeds'].shape[1]) for c in caches]}); the image loss needs one "
                          "count: choose datasets with the same fps * tr_s.")
  return caches


def run(ctx: StageContext) -> dict:
  stage = ctx.config.align
  datasets = common.stage_datasets(ctx.config, ctx.name)
  source = common.make_stage_source(ctx.config, ctx.name, "train")
  variable = getattr(source, "variable_voxels", False)
  train_caches = clip_caches(ctx, datasets, "train")
  clip_dim = int(train_caches[0]["text_embeds"].shape[-1])
  model, init_variables, loss_fn, batch = model_and_loss(ctx.config, source.num_voxels, clip_dim,
                                                         int(train_caches[0]["image_embeds"].shape[1]),
                                                         source.dataset_subjects, variable)
  table = common.subject_table(ctx.config, ctx.name, source)
  initial = None
  if stage.init_from:
    mbm_params, mbm_meta = artifacts.load_params(resolve_path(ctx, stage.init_from), kinds=("mbm",))
    initial = lambda p: dict(p, encoder=fmri_encoder.init_from_mbm(
        p["encoder"], common.match_subjects(mbm_params, mbm_meta, p["encoder"], table)))
  iterator = pipeline.make_iterator(source, batch_size=stage.batch_size, seed=ctx.config.seed,
                                    transform=_with_embeddings(train_caches))
  state = common.train(ctx, init_variables=init_variables, loss_fn=loss_fn, iterator=iterator,
                       batch_keys=tuple(batch), initial_params=initial)
  params = jax.device_get(state.params)
  fmri_encoder.save(ctx.stage_dir, model, params, subject_table=table, variable_voxels=variable,
                    trained_by=ctx.name, config=stage.to_dict())
  test = common.make_stage_source(ctx.config, ctx.name, "test", weighted=False)
  scores = retrieval.retrieval(model, params, test, clip_caches(ctx, datasets, "test"), stage.retrieval_candidates)
  summary = {"steps": int(jax.device_get(state.step)), "train_windows": len(source), **scores}
  if variable:
    summary.update(num_datasets=len(datasets), num_subjects_total=source.dataset_subjects)
  return summary
