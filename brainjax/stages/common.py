"""What the training stages share: data for a stage, the train-loop wiring, artifacts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from brainjax import config as cfg
from brainjax.models import params as params_lib
from brainjax.stages import StageContext
from brainjax.train import sharding as shd
from brainjax.train.checkpoint import Checkpointer
from brainjax.train.loop import StopSignal, restore_or_init, run_train_loop
from brainjax.train.metric_writer import create_writer
from brainjax.train.optim import make_optimizer
from brainjax.train.state import TrainState, create_train_state, make_train_step


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


def validate_init_from(config: ml_collections.ConfigDict, stage: str) -> None:
  """`config.<stage>.init_from = 'stage:<earlier>'` must name a stage that runs earlier."""
  init_from = config[stage].get("init_from", "")
  if init_from and init_from.startswith("stage:"):
    source = init_from[len("stage:"):].split("/")[0]
    if source not in config.stages or config.stages.index(source) > config.stages.index(stage):
      raise cfg.ConfigError(f"config.{stage}.init_from = {init_from!r} needs stage {source!r} before {stage!r} "
                            "in config.stages.")


def initial_params_from(ctx: StageContext, init_from: str) -> Callable[[Any], Any] | None:
  """Params of an earlier stage (`stage:<name>`) or directory overlaid on a fresh init, or None."""
  if not init_from:
    return None
  from brainjax.stages import resolve_path
  source, _ = load_params(resolve_path(ctx, init_from))
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
) -> TrainState:
  """Builds the sharded state, resumes if possible, and runs the loop to `num_steps`.

  `initial_params(params) -> params` replaces freshly initialised parameters
  (e.g. with an earlier stage's weights) before the first step; a resumed run
  takes everything from its checkpoint instead.
  """
  stage = ctx.config[ctx.name]
  rules = shd.rules_from_config(ctx.config.logical_axis_rules)
  state, shardings, tx = create_train_state(
      init_variables, lambda params: make_optimizer(stage.optim, stage.num_steps, params),
      jax.random.PRNGKey(ctx.config.seed), ctx.mesh, rules)
  batch_sharding = shd.batch_sharding(ctx.mesh, rules)
  step_fn = make_train_step(loss_fn, tx, shardings, {k: batch_sharding for k in batch_keys}, ctx.mesh, rules)
  checkpointer = Checkpointer(ctx.stage_dir / "checkpoints", every_steps=stage.checkpoint_every_steps,
                              keep=stage.keep_checkpoints)
  if initial_params is not None:
    state = state.replace(params=jax.device_put(initial_params(jax.device_get(state.params)), shardings.params))
  state = restore_or_init(state, shardings, checkpointer, iterator)
  writer = create_writer(ctx.stage_dir / "metrics")
  writer.write_hparams(stage.to_dict())
  try:
    with StopSignal() as stop:
      state = run_train_loop(
          state=state, train_step=step_fn, data_iterator=iterator,
          to_device=lambda b: shd.global_batch({k: b[k] for k in batch_keys}, batch_sharding),
          num_steps=stage.num_steps, checkpointer=checkpointer, writer=writer, stop=stop,
          log_every_steps=stage.log_every_steps, name=ctx.name)
  finally:
    checkpointer.close()
    writer.close()
  return state


def save_params(directory: epath.Path, params: Any, meta: dict) -> None:
  """A stage's product: `params/` (Orbax) and `model.json` (what is needed to rebuild the module)."""
  directory.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / "params", params, force=True)
  if jax.process_index() == 0:
    (directory / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def load_params(directory: epath.Path) -> tuple[Any, dict]:
  meta = json.loads((directory / "model.json").read_text())
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(directory / "params")
  return params, meta
