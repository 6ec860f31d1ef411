"""Stages `mbm_pretrain` and `mbm_finetune`: masked brain modelling.

`mbm_pretrain` reads `config.data` with `config.mbm_pretrain.data_overrides`
(by default the resting-state split averaged over ~8 s, all subjects
wrap-padded to one length: the HCP stand-in). `mbm_finetune` is the same
stage on the target dataset's own fMRI (MinD-Video's stage A2), starting from
`init_from` (the pretrained weights). Each trains `MaskedBrainModel` and writes
`<stage>/params` plus `model.json`, and reports how well masked patches of
held-out test fMRI are reconstructed (mean Pearson r between predicted and
true voxels of masked patches), the number MinD-Vis tracks.

Several datasets at once (Brain Netflix's joint MBM): `extra_datasets` lists
more datasets (see brainjax/stages/common.py for the entry format and what is
inherited; `dataset_weights` optionally fixes their proportions). The stage
then reads a mixture with global subject ids; with
`model.per_subject_patch_embed` the patch embedding has one row per (dataset,
subject), and `model.json` records that table (`subject_table`). Every
example carries its real voxel count, so padding never enters the masked-patch
loss or the reported correlation (per dataset as well).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from brainjax import artifacts
from brainjax import config as cfg
from brainjax.data import pipeline
from brainjax.models import mbm
from brainjax.stages import StageContext
from brainjax.stages import common
from brainjax.train.optim import optim_config

CONFIG_KEYS = ("seed", "data")
# Artifact kinds: what its path fields read and what it writes (checked before anything runs).
INPUTS = {"init_from": ("mbm",)}
OUTPUTS = {"": "mbm"}
fingerprint = common.effective_datasets_fingerprint


def stage_config(**overrides) -> ml_collections.ConfigDict:
  """`config.mbm_pretrain` at the paper's settings; recipes override what differs."""
  stage = ml_collections.ConfigDict(dict(
      split="rest",
      eval_split="test",                   # masked-patch correlation reported on it; "" = none (HCP has no test)
      init_from="",                        # 'stage:mbm_pretrain' for mbm_finetune
      # MBM reads single volumes averaged over ~8 s (4 TRs of 2 s), non-overlapping,
      # every subject wrap-padded to one length (MinD-Vis lineage).
      data_overrides=dict(window=1, hrf_shift_trs=0, temporal_average=4, stride=4, voxel_padding="wrap",
                          repeats="each"),
      # More datasets read jointly with the one above (Brain Netflix): dicts of config.data fields,
      # each with its `subjects`; see brainjax/stages/common.py.
      extra_datasets=(),
      dataset_weights=(),                  # () = in proportion to size; else one per dataset, main first
      model=mbm.model_config(),
      optim=optim_config(),
      batch_size=500,
      num_steps=100_000,
      log_every_steps=100,
      checkpoint_every_steps=2000,
      keep_checkpoints=2,
  ))
  stage.update(overrides)
  return stage


def validate(config: ml_collections.ConfigDict, name: str = "mbm_pretrain") -> None:
  data = common.stage_data_config(config, name)
  cfg.require_choice(config, f"{name}.split", ("rest", "train"))
  cfg.require_choice(config, f"{name}.eval_split", ("", "test", "train", "rest"))
  splits = tuple(s for s in (config[name].split, config[name].eval_split) if s)
  pipeline.validate_data(ml_collections.ConfigDict({"data": data}), splits=splits)
  common.validate_train(config, name)
  if data.window != 1:
    raise cfg.ConfigError(f"config.{name}.data_overrides.window = {data.window}: MBM reads single "
                          "volumes; set it to 1.")
  model = config[name].model
  for field in ("patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
                "decoder_num_heads"):
    cfg.require_positive_int(config, f"{name}.model.{field}")
  cfg.require_in_range(config, f"{name}.model.mask_ratio", 0.0, 0.99)
  if model.embed_dim % model.num_heads or model.decoder_embed_dim % model.decoder_num_heads:
    raise cfg.ConfigError(f"config.{name}.model: embed_dim must be divisible by num_heads and "
                          "decoder_embed_dim by decoder_num_heads.")
  if data.pad_multiple % model.patch_size:
    raise cfg.ConfigError(f"config.data.pad_multiple = {data.pad_multiple} must be a multiple of "
                          f"config.{name}.model.patch_size = {model.patch_size}.")
  common.validate_init_from(config, name)
  common.validate_datasets(config, name, splits=splits)


def model_and_loss(config: ml_collections.ConfigDict, num_voxels: int, name: str = "mbm_pretrain",
                   num_subjects: int = 1, variable_voxels: bool = False):
  """(model, init_variables, loss_fn, batch ShapeDtypeStructs): what training and planning share.

  `variable_voxels`: batches carry each example's real voxel count (`num_voxels`, a multi-dataset
  mixture), which the model uses to keep padding out of the loss.
  """
  stage = config[name]
  model = mbm.build(stage.model, num_voxels, num_subjects)
  dummy = jnp.zeros((1, num_voxels), jnp.float32)
  per_subject = bool(model.num_subjects)

  def init_variables(rng):
    params_rng, mask_rng = jax.random.split(rng)
    return model.init({"params": params_rng}, dummy, mask_rng, jnp.zeros((1,), jnp.int32) if per_subject else None)

  def loss_fn(params, model_state, batch, rng):
    out = model.apply({"params": params}, batch["fmri"][:, 0], rng, batch["subject"] if per_subject else None,
                      batch.get("num_voxels"))
    return out["loss"], ({}, model_state)

  batch = {"fmri": jax.ShapeDtypeStruct((stage.batch_size, 1, num_voxels), jnp.float32)}
  if per_subject:
    batch["subject"] = jax.ShapeDtypeStruct((stage.batch_size,), jnp.int32)
  if variable_voxels:
    batch["num_voxels"] = jax.ShapeDtypeStruct((stage.batch_size,), jnp.int32)
  return model, init_variables, loss_fn, batch


def run(ctx: StageContext) -> dict:
  stage = ctx.config[ctx.name]
  source = common.make_stage_source(ctx.config, ctx.name, stage.split)
  variable = getattr(source, "variable_voxels", False)
  model, init_variables, loss_fn, batch = model_and_loss(ctx.config, source.num_voxels, ctx.name,
                                                         source.dataset_subjects, variable)
  table = common.subject_table(ctx.config, ctx.name, source)
  iterator = pipeline.make_iterator(source, batch_size=stage.batch_size, seed=ctx.config.seed)
  state = common.train(ctx, init_variables=init_variables, loss_fn=loss_fn, iterator=iterator,
                       batch_keys=tuple(batch),
                       initial_params=common.initial_params_matching_subjects(ctx, stage.init_from, table))
  params = jax.device_get(state.params)
  artifacts.save_params(ctx.stage_dir, params, {"kind": "mbm", "num_voxels": source.num_voxels,
                                             "num_subjects": model.num_subjects, "model": stage.model.to_dict(),
                                             "subject_table": table, "variable_voxels": variable})
  summary = {"steps": int(jax.device_get(state.step)), "num_voxels": source.num_voxels,
             "train_windows": len(source)}
  if not stage.eval_split:
    return summary
  test = common.make_stage_source(ctx.config, ctx.name, stage.eval_split, weighted=False)
  corr = masked_patch_correlation(model, params, test, seed=ctx.config.seed, by_dataset=variable)
  summary[f"{stage.eval_split}_masked_patch_corr"] = corr["all"] if variable else corr
  if variable:
    summary.update(num_datasets=len(source.sources), num_subjects_total=source.dataset_subjects,
                   **{f"{stage.eval_split}_masked_patch_corr_by_dataset": corr["by_dataset"]})
  return summary


def masked_patch_correlation(model: mbm.MaskedBrainModel, params, source, *, seed: int,
                             max_examples: int = 512, batch_size: int = 64, by_dataset: bool = False):
  """Mean over samples of Pearson r between predicted and true voxels of the masked patches.

  Examples with `num_voxels` (a mixture) count their real voxels only, and are
  drawn evenly over the whole source (not its first windows, which would all be
  dataset 0's); `by_dataset` returns {"all": r, "by_dataset": [r per dataset]}.
  """
  variable = getattr(source, "variable_voxels", False)
  apply = jax.jit(lambda p, x, r, s, v: model.apply({"params": p}, x, r, s if model.num_subjects else None, v))
  n = min(len(source), max_examples)
  indices = np.linspace(0, len(source) - 1, n).round().astype(int) if variable else np.arange(n)
  rs, datasets = [], []
  for start in range(0, n, batch_size):
    exs = [source[int(i)] for i in indices[start:start + batch_size]]
    x = np.stack([e["fmri"][0] for e in exs])
    counts = np.stack([e["num_voxels"] for e in exs]) if variable else None
    out = jax.device_get(apply(params, x, jax.random.PRNGKey(seed + start), np.stack([e["subject"] for e in exs]),
                               counts))
    for k, (pred, target, mask) in enumerate(zip(out["pred"], out["target"], out["mask"])):
      masked = mask.astype(bool)
      if variable:  # [N, patch]: masked patches' real voxels
        masked = masked[:, None] & out["valid"][k].astype(bool)
      rs.append(np.corrcoef(pred[masked].ravel(), target[masked].ravel())[0, 1])
      datasets.append(int(exs[k].get("dataset", 0)))
  if not by_dataset:
    return float(np.mean(rs))
  rs, datasets = np.asarray(rs), np.asarray(datasets)
  per = [float(rs[datasets == d].mean()) if np.any(datasets == d) else float("nan")
         for d in range(max(datasets.max() + 1, len(getattr(source, "sources", [0]))))]
  return {"all": float(rs.mean()), "by_dataset": per}
