"""What the training stages share: data for a stage, the train-loop wiring, artifacts.

Data a stage reads. Dataset 0 is `config.data` with `config.<stage>.data_overrides`
applied (`stage_data_config`). A stage that trains on several datasets at once
(Brain Netflix: MBM and alignment jointly over HCP, BMD, HAD, CC2017, all their
subjects) lists the others in `config.<stage>.extra_datasets`, each a dict of
`config.data` fields that override dataset 0's:

  config.mbm_pretrain.extra_datasets = [
      dict(name="synthetic", spec=dict(seed=7, num_subjects=1, voxels_per_subject=(200,)), subjects=[0]),
      dict(name="synthetic", builder_config="demo", subjects=[0, 1, 2], hrf_shift_trs=3),
  ]
  config.mbm_pretrain.dataset_weights = (1.0, 1.0, 2.0)   # optional; () = in proportion to size

An entry must name its `subjects`; it names its dataset with `name`,
`builder_config`, `spec` (not inherited from dataset 0: unset ones take the
defaults of `pipeline.data_config`) and inherits everything else (data_dir,
hrf_shift_trs, temporal_average, stride, repeats, voxel_padding), which it may
override. `window`, `num_voxels` and `pad_multiple` are the mixture's, set on
dataset 0 only. The stage then reads a `pipeline.MixtureSource`: global subject
ids (dataset 0's subjects first; a per-subject patch embedding has one row per
(dataset, subject)), every example padded to one voxel count with its own
`num_voxels`, which the models use to keep padding out of attention and losses.
`dataset_weights` (one per dataset, dataset 0 first) interleaves the datasets in
fixed proportions instead of concatenating them. Which datasets a stage read is
part of its fingerprint, so a finished stage refuses a changed list; the
subject table (row -> [dataset key, subject]) is saved in its model.json, and a
later stage that starts from it (`init_from`) re-indexes the per-subject rows
to its own table (subjects it lacks start from a fresh init).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from brainjax import artifacts, diffusion
from brainjax import config as cfg
from brainjax.models import video_unet as vu
from brainjax.weights import params as params_lib
from brainjax.stages import REGISTRY, StageContext, stage_source
from brainjax.train import sharding as shd
from brainjax.train.checkpoint import Checkpointer
from brainjax.train.loop import StopSignal, restore_latest, run_train_loop
from brainjax.train.metric_writer import create_writer
from brainjax.train.optim import make_optimizer, trainable_mask
from brainjax.train.state import TrainState, make_train_step, plan_train_state


def stage_data_config(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
  """`config.data` with the stage's `data_overrides` applied (e.g. MBM reads resting state)."""
  data = ml_collections.ConfigDict(config.data.to_dict())
  overrides = config[stage].get("data_overrides") or {}
  for key, value in (overrides.to_dict() if hasattr(overrides, "to_dict") else overrides).items():
    if key not in data:
      raise cfg.ConfigError(f"config.{stage}.data_overrides.{key}: not a field of config.data.")
    data[key] = value
  return data


DATASET_IDENTITY = ("name", "builder_config", "data_dir", "spec")


def dataset_fingerprint(config: ml_collections.ConfigDict, name: str) -> dict:
  """For stages that read only the stimuli: which dataset, not how fMRI is windowed."""
  return {"seed": config.seed, "dataset": {k: config.data.get(k) for k in DATASET_IDENTITY},
          name: config[name].to_dict()}


def effective_data_fingerprint(config: ml_collections.ConfigDict, name: str) -> dict:
  """For stages whose `data_overrides` decide the fMRI they read."""
  return {"seed": config.seed, "data": stage_data_config(config, name).to_dict(), name: config[name].to_dict()}


# Fields every dataset of a stage shares (the mixture's shape); set on dataset 0 only.
MIXTURE_SHARED = ("window", "num_voxels", "pad_multiple")
MULTI_DATA_FIELDS = ("extra_datasets", "dataset_weights")


def _extra_overrides(config: ml_collections.ConfigDict, stage: str) -> list[dict]:
  extras = config[stage].get("extra_datasets") or ()
  return [e.to_dict() if isinstance(e, ml_collections.ConfigDict) else dict(e) for e in extras]


def stage_datasets(config: ml_collections.ConfigDict, stage: str) -> list[ml_collections.ConfigDict]:
  """The data configs stage `stage` reads: dataset 0 (`stage_data_config`), then one per
  `config.<stage>.extra_datasets` entry (see the module docstring for what is inherited)."""
  from brainjax.data import pipeline
  main = stage_data_config(config, stage)
  datasets = [main]
  defaults = pipeline.data_config()
  for i, extra in enumerate(_extra_overrides(config, stage)):
    data = main.to_dict()
    data.update({k: defaults[k] for k in DATASET_IDENTITY if k != "data_dir"})
    for key, value in extra.items():
      if key not in data:
        raise cfg.ConfigError(f"config.{stage}.extra_datasets[{i}].{key}: not a field of config.data; "
                              f"the fields are {sorted(data)}.")
      data[key] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    datasets.append(ml_collections.ConfigDict(data))
  return datasets


def dataset_weights(config: ml_collections.ConfigDict, stage: str) -> tuple[float, ...] | None:
  weights = config[stage].get("dataset_weights") or ()
  return tuple(float(w) for w in weights) or None


def make_stage_source(config: ml_collections.ConfigDict, stage: str, split: str, *, weighted: bool = True):
  """Dataset 0's FmriWindowSource, or with extra datasets a MixtureSource over all of them
  (`weighted=False` ignores dataset_weights, e.g. for evaluation: every window once)."""
  from brainjax.data import pipeline
  datasets = stage_datasets(config, stage)
  if len(datasets) == 1:
    return pipeline.make_source(datasets[0], split)
  return pipeline.make_mixture_source(datasets, split, weights=dataset_weights(config, stage) if weighted else None)


def subject_table(config: ml_collections.ConfigDict, stage: str, source) -> list[list]:
  """Row g of a per-subject patch embedding -> [dataset key, subject index within that dataset]."""
  if hasattr(source, "subject_table"):
    return source.subject_table
  from brainjax.data import pipeline
  key = pipeline.dataset_key(stage_data_config(config, stage))
  return [[key, s] for s in range(source.dataset_subjects)]


def _relabel(message: str, where: str) -> str:
  return re.sub(r"config\.data\b", lambda _: where, message)


def validate_datasets(config: ml_collections.ConfigDict, stage: str, splits: Sequence[str]) -> None:
  """Checks `config.<stage>.extra_datasets` and `dataset_weights` without touching files; errors
  name `config.<stage>.extra_datasets[i].<field>`. (Dataset 0 is checked by the stage itself.)"""
  from brainjax.data import pipeline
  extras = config[stage].get("extra_datasets") or ()
  if not isinstance(extras, (list, tuple)):
    raise cfg.ConfigError(f"config.{stage}.extra_datasets is a {type(extras).__name__}: it must be a list of "
                          "dicts of config.data fields (one per extra dataset), e.g. "
                          "[dict(name='synthetic', spec=..., subjects=[0])].")
  for i, extra in enumerate(extras):
    where = f"config.{stage}.extra_datasets[{i}]"
    if not isinstance(extra, (dict, ml_collections.ConfigDict)):
      raise cfg.ConfigError(f"{where} is a {type(extra).__name__}: it must be a dict of config.data fields "
                            "naming the dataset and its subjects.")
    for key in extra:
      if key in MIXTURE_SHARED:
        raise cfg.ConfigError(f"{where}.{key}: every dataset of a stage shares config.data.{key} (the batch "
                              f"shape); remove it here and set it in config.data or config.{stage}.data_overrides.")
    if "subjects" not in extra:
      raise cfg.ConfigError(f"{where}.subjects is missing: list the subjects to read from this dataset, "
                            "e.g. subjects=[0, 1].")
  datasets = stage_datasets(config, stage)  # unknown fields fail here
  keys = [pipeline.dataset_key(datasets[0])]
  for i, data in enumerate(datasets[1:]):
    where = f"config.{stage}.extra_datasets[{i}]"
    try:
      pipeline.validate_data(ml_collections.ConfigDict({"data": data}), splits=splits)
    except cfg.ConfigError as e:
      raise cfg.ConfigError(_relabel(str(e), where)) from None
    except (TypeError, ValueError) as e:  # the synthetic spec's own checks
      raise cfg.ConfigError(f"{where}.spec: {e}") from None
    key = pipeline.dataset_key(data)
    if key in keys:
      other = "config.data" if keys.index(key) == 0 else f"config.{stage}.extra_datasets[{keys.index(key) - 1}]"
      raise cfg.ConfigError(f"{where} names the same dataset as {other} ({key}); list all its subjects in one "
                            "entry instead (a subject read twice would get two patch-embedding rows).")
    keys.append(key)
  weights = config[stage].get("dataset_weights") or ()
  if weights:
    if len(extras) == 0 or not isinstance(weights, (list, tuple)) or len(weights) != len(datasets):
      raise cfg.ConfigError(f"config.{stage}.dataset_weights = {weights!r}: give one weight per dataset "
                            f"({len(datasets)}: config.data first, then each extra_datasets entry), or () to "
                            "sample in proportion to their sizes.")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in weights):
      raise cfg.ConfigError(f"config.{stage}.dataset_weights = {weights!r}: weights must be positive numbers.")


def datasets_fingerprint(config: ml_collections.ConfigDict, name: str, base: dict) -> dict:
  """`base` (a stage fingerprint) plus the resolved data configs of its extra datasets.

  Empty `extra_datasets` / `dataset_weights` are left out, so stages finished
  before multi-dataset support keep their fingerprint.
  """
  stage = dict(base.get(name, config[name].to_dict()))
  for field in MULTI_DATA_FIELDS:
    if field in stage and not stage[field]:
      del stage[field]
  out = dict(base, **{name: stage})
  datasets = stage_datasets(config, name)
  if len(datasets) > 1:
    from brainjax.data import pipeline
    out["extra_datasets"] = [dict(d.to_dict(), key=pipeline.dataset_key(d)) for d in datasets[1:]]
  return out


def effective_datasets_fingerprint(config: ml_collections.ConfigDict, name: str) -> dict:
  """`effective_data_fingerprint` with the stage's extra datasets (see `datasets_fingerprint`)."""
  return datasets_fingerprint(config, name, effective_data_fingerprint(config, name))


def remap_subject_rows(tree: Any, source_table: Sequence, target_table: Sequence, fresh: Any) -> tuple[Any, int]:
  """Per-subject leaves (leading axis: rows of `source_table`) re-indexed to `target_table`.

  Rows whose [dataset key, subject] the source lacks come from `fresh` (the
  target's own initialisation). Returns (tree, number of such rows).
  """
  index = {tuple(k): i for i, k in enumerate(source_table)}
  rows = [index.get(tuple(k)) for k in target_table]

  def leaf(src, init):
    out = np.array(init, copy=True)
    for t, r in enumerate(rows):
      if r is not None:
        out[t] = np.asarray(src)[r]
    return out

  return jax.tree.map(leaf, tree, fresh), sum(r is None for r in rows)


def match_subjects(source: dict, source_meta: dict, target: dict, target_table: Sequence) -> dict:
  """`source` params with their per-subject patch embedding re-indexed to `target_table`.

  A no-op unless both trees have per-subject patch embeddings and the source's
  model.json records its subject table (older ones do not: rows stay by position).
  """
  src, dst = source.get("patch_embed"), target.get("patch_embed")
  table = source_meta.get("subject_table")
  if src is None or dst is None or table is None or np.ndim(src["kernel"]) != 3 or np.ndim(dst["kernel"]) != 3:
    return source
  if [list(k) for k in table] == [list(k) for k in target_table]:
    return source
  remapped, fresh = remap_subject_rows(src, table, target_table, dst)
  if fresh:
    logging.warning("%d of %d subjects have no patch embedding in the initial checkpoint (it was trained on "
                    "other datasets/subjects); they start from a fresh initialisation.", fresh, len(target_table))
  return dict(source, patch_embed=remapped)


def initial_params_matching_subjects(ctx: StageContext, init_from: str,
                                     table: Sequence) -> Callable[[Any], Any] | None:
  """`initial_params_from`, with per-subject patch-embedding rows matched by subject (`match_subjects`)."""
  if not init_from:
    return None
  from brainjax.stages import resolve_path
  source, meta = artifacts.load_params(resolve_path(ctx, init_from))
  return lambda params: params_lib.overlay(params, match_subjects(source, meta, params, table))


def validate_stage_path(config: ml_collections.ConfigDict, stage: str, field: str, path: str, *,
                        allow_finished: bool = False) -> None:
  """A 'stage:<name>/...' path in config.<stage>.<field> must name a stage that runs before `stage`.

  allow_finished=True also accepts a stage absent from config.stages, to be read from a workdir
  where it has finished (`--config.stages="('evaluate',)"` on a trained run); StageContext.output_of
  says so clearly at run time if it has not. A source listed AFTER `stage` is still an error, and
  the name must be a known stage.
  """
  if stage_source(path):
    source = stage_source(path)[0]
    if allow_finished and source not in config.stages:
      if source not in REGISTRY:
        raise cfg.ConfigError(f"config.{stage}.{field} = {path!r} names stage {source!r}, which does not exist; "
                              f"known stages are {sorted(REGISTRY)}.")
      return
    if source not in config.stages or config.stages.index(source) > config.stages.index(stage):
      raise cfg.ConfigError(f"config.{stage}.{field} = {path!r} needs stage {source!r} to run before {stage!r} "
                            "in config.stages.")


def validate_init_from(config: ml_collections.ConfigDict, stage: str) -> None:
  """`config.<stage>.init_from = 'stage:<earlier>'` must name a stage that runs earlier."""
  init_from = config[stage].get("init_from", "")
  if init_from and stage_source(init_from):
    source = stage_source(init_from)[0]
    if source not in config.stages or config.stages.index(source) > config.stages.index(stage):
      raise cfg.ConfigError(f"config.{stage}.init_from = {init_from!r} needs stage {source!r} before {stage!r} "
                            "in config.stages.")


def initial_params_from(ctx: StageContext, init_from: str) -> Callable[[Any], Any] | None:
  """Params of an earlier stage (`stage:<name>`) or directory overlaid on a fresh init, or None."""
  if not init_from:
    return None
  from brainjax.stages import resolve_path
  source, _ = artifacts.load_params(resolve_path(ctx, init_from))
  return lambda params: params_lib.overlay(params, source)


def validate_train(config: ml_collections.ConfigDict, stage: str) -> None:
  """The fields every training stage has."""
  from brainjax.train.optim import validate_optim
  for field in ("batch_size", "num_steps", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    cfg.require_positive_int(config, f"{stage}.{field}")
  validate_optim(config, f"{stage}.optim")
  warmup = config[stage].optim.warmup_steps
  if warmup >= config[stage].num_steps and config[stage].optim.schedule == "cosine":
    raise cfg.ConfigError(f"config.{stage}.optim.warmup_steps = {warmup} must be smaller than "
                          f"config.{stage}.num_steps = {config[stage].num_steps}.")
  rules = shd.rules_from_config(config.logical_axis_rules)
  mesh_sizes = dict(zip(shd.MESH_AXES, shd.mesh_shape(config.mesh.to_dict(), jax.device_count())))
  divisor = shd.batch_divisor(mesh_sizes, rules)
  if config[stage].batch_size % divisor:
    raise cfg.ConfigError(f"config.{stage}.batch_size = {config[stage].batch_size} must be a multiple of the "
                          f"{divisor} devices the batch is split over (mesh {mesh_sizes}).")


def train(
    ctx: StageContext,
    *,
    init_variables: Callable[[jax.Array], Any],
    loss_fn,
    iterator,
    batch_keys: tuple[str, ...],
    initial_params: Callable[[Any], Any] | None = None,
    params: Any = None,
) -> TrainState:
  """Builds the sharded state, resumes if possible, and runs the loop to `num_steps`.

  Training starts from `params` when given (every parameter, e.g. an earlier
  stage's weights: the model's random init is then never run), else from the
  random init, to which `initial_params(params) -> params` may apply changes
  (e.g. overlay an encoder on a fresh head). A resumed run takes everything
  from its checkpoint instead.
  """
  if params is not None and initial_params is not None:
    raise ValueError("give train() either the complete `params` or an `initial_params` overlay, not both")
  stage = ctx.config[ctx.name]
  rules = shd.rules_from_config(ctx.config.logical_axis_rules)
  init, abstract, shardings, tx = plan_train_state(
      init_variables, lambda p: make_optimizer(stage.optim, stage.num_steps, p),
      jax.random.PRNGKey(ctx.config.seed), ctx.mesh, rules)
  batch_sharding = shd.batch_sharding(ctx.mesh, rules)
  step_fn = make_train_step(loss_fn, tx, shardings, {k: batch_sharding for k in batch_keys}, ctx.mesh, rules,
                            trainable=trainable_mask(abstract.params, list(stage.optim.get("trainable", ()))))
  checkpointer = Checkpointer(ctx.stage_dir / "checkpoints", every_steps=stage.checkpoint_every_steps,
                              keep=stage.keep_checkpoints)
  state = restore_latest(abstract, checkpointer, iterator)
  if state is None:
    state = init(params)
    if initial_params is not None:
      state = state.replace(params=jax.device_put(initial_params(jax.device_get(state.params)), shardings.params))
  writer = create_writer(ctx.stage_dir / "metrics")
  writer.write_hparams(stage.to_dict())
  try:
    with StopSignal() as stop:
      state = run_train_loop(
          state=state, train_step=step_fn, data_iterator=iterator,
          to_device=lambda b: shd.global_batch({k: b[k] for k in batch_keys}, batch_sharding),
          num_steps=stage.num_steps, checkpointer=checkpointer, writer=writer, stop=stop,
          log_every_steps=stage.log_every_steps, name=ctx.name,
          on_progress=None if ctx.timer is None else lambda force: ctx.timer.tick(force=force))
  finally:
    checkpointer.close()
    writer.close()
  return state


def validate_video_training(config: ml_collections.ConfigDict, name: str) -> None:
  """The fields every stage that trains and samples the video UNet has (video_finetune, cotrain)."""
  stage = config[name]
  validate_train(config, name)
  cfg.require_positive_int(config, f"{name}.num_frames")
  cfg.require_positive_int(config, f"{name}.resolution", allow_zero=True)
  cfg.require_positive_int(config, f"{name}.attention_query_chunk", allow_zero=True)
  cfg.require_in_range(config, f"{name}.dependent_noise_beta", 0.0, 1.0)
  validate_diffusion_fields(config, name)
  if stage.variant not in vu.VARIANTS:
    raise cfg.ConfigError(f"config.{name}.variant = {stage.variant!r}; choose one of {sorted(vu.VARIANTS)}.")


def validate_diffusion_fields(config: ml_collections.ConfigDict, name: str) -> None:
  """The diffusion fields of every stage that trains and samples a UNet (unet_fit too)."""
  cfg.require_positive(config, f"{name}.snr_gamma", allow_zero=True)
  cfg.require_positive_int(config, f"{name}.sample.count", allow_zero=True)
  cfg.require_positive_int(config, f"{name}.sample.num_steps")
  cfg.require_choice(config, f"{name}.sample.sampler", diffusion.SAMPLERS)
  try:
    diffusion.NoiseSchedule.create(**config[name].schedule.to_dict())
  except (ValueError, TypeError) as e:
    raise cfg.ConfigError(f"config.{name}.schedule: {e}") from e
