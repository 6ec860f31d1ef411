"""Runs a recipe: validate, build the mesh, run each stage once.

Kept apart from `main.py` (flags only) so tests and notebooks call
`run(config, workdir)` directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging as logging_lib
import uuid

import jax
import ml_collections
from absl import logging
from etils import epath

from brainjax import config as cfg
from brainjax import preflight
from brainjax import stages
from brainjax.train import sharding as shd
from brainjax.train import timing
from brainjax.train.loop import Preempted  # re-exported for main.py

__all__ = ["run", "validate", "Preempted"]


class _LibraryInfoFilter(logging_lib.Filter):
  """Keeps brainjax's INFO lines and everyone's warnings; drops the checkpoint
  and data libraries' per-save INFO chatter that would bury the progress lines."""

  _NOISY = ("/orbax/", "/grain/", "/tensorflow_datasets/", "/etils/")

  def filter(self, record: logging_lib.LogRecord) -> bool:
    return record.levelno >= logging_lib.WARNING or not any(n in record.pathname for n in self._NOISY)


def quiet_library_logs() -> None:
  """For command-line entry points: hide library INFO logs (warnings still show)."""
  logging.get_absl_handler().addFilter(_LibraryInfoFilter())


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the whole recipe before anything runs; errors name the field."""
  if not config.get("stages"):
    raise cfg.ConfigError("config.stages is empty; list the stages to run, e.g. ['mbm_pretrain'].")
  seen = set()
  for name in config.stages:
    if name in seen:
      raise cfg.ConfigError(f"config.stages lists {name!r} twice.")
    seen.add(name)
    stages.get_stage(name)  # unknown names fail here
  cfg.require_positive_int(config, "seed", allow_zero=True)
  shd.rules_from_config(cfg.get_path(config, "logical_axis_rules"))
  shd.mesh_shape(cfg.get_path(config, "mesh").to_dict(), jax.device_count())
  if "data" in config:
    from brainjax.data import pipeline
    pipeline.validate_data(config)
  preflight.check(config)  # every missing weight / dataset at once, before the stages stop at their first
  for name in config.stages:
    stage = stages.get_stage(name)
    if name not in config:
      raise cfg.ConfigError(f"config.{name} is missing: stage {name!r} is listed in config.stages but the "
                            "recipe has no settings for it.")
    stage.validate(config, name)
  check_input_kinds(config)


def check_input_kinds(config: ml_collections.ConfigDict) -> None:
  """Every `stage:` reference a stage's INPUTS field holds must name an output of that stage (its OUTPUTS)
  of a kind the field accepts: e.g. cotrain's encoder_from a `fmri_encoder`, not a UNet."""
  for name in config.stages:
    for field, kinds in getattr(stages.get_stage(name), "INPUTS", {}).items():
      try:
        value = cfg.get_path(config, f"{name}.{field}")
      except cfg.ConfigError:
        continue  # a field this recipe leaves out: the stage's own validation speaks for it
      source = stages.stage_source(value) if isinstance(value, str) else None
      if not source or source[0] not in stages.REGISTRY:
        continue  # a plain path (its loader checks its format) or an unknown stage (validation names it)
      outputs = getattr(stages.get_stage(source[0]), "OUTPUTS", None)
      if outputs is None:
        continue
      sub = source[1].strip("/")
      if sub not in outputs:
        listed = ", ".join(f"'stage:{source[0]}{'/' + k if k else ''}' ({v})" for k, v in outputs.items()) or "none"
        raise cfg.ConfigError(f"config.{name}.{field} = {value!r}: stage {source[0]!r} writes no {sub!r}; its "
                              f"outputs are {listed}.")
      if outputs[sub] not in kinds:
        raise cfg.ConfigError(f"config.{name}.{field} = {value!r} is a {outputs[sub]} but {name}.{field} reads "
                              f"a {' or '.join(kinds)}; point it at a stage that makes one.")


def stage_fingerprint(config: ml_collections.ConfigDict, name: str) -> str:
  """Canonical JSON of the settings stage `name`'s outputs depend on.

  A stage module may narrow it with `fingerprint(config, name) -> dict` (e.g.
  MBM does not depend on the fMRI window of later stages); by default it is
  its CONFIG_KEYS plus its own `config.<name>`.
  """
  stage = stages.get_stage(name)
  if hasattr(stage, "fingerprint"):
    return json.dumps(stage.fingerprint(config, name), sort_keys=True, default=str)
  return cfg.subtree_json(config, (*stage.CONFIG_KEYS, name))


# How often a stage logs and checkpoints, and how many checkpoints it keeps, do not change what it makes
# (a resumed run ends with the parameters of an uninterrupted one), so they may differ on a re-run: e.g. a
# run moved to preemptible machines checkpoints more often. They stay in the fingerprint, which older
# workdirs' config.json files hold; only the comparison leaves them out.
RUN_CONTROL_FIELDS = ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints")


# Where a dataset lives is not what it is: a dataset copied to another disk or bucket (`data_dir`, at any
# depth of the fingerprint) makes the same outputs; its name, builder config and spec still count.
LOCATION_FIELDS = ("data_dir",)


def changed_settings(old: str, new: str, name: str) -> list[str]:
  """The dotted fields in which two fingerprints of stage `name` differ, less its RUN_CONTROL_FIELDS
  and every LOCATION_FIELDS entry."""
  if old == new:
    return []
  ignored = {f"{name}.{field}" for field in RUN_CONTROL_FIELDS}
  return sorted(f for f in _diff(json.loads(old), json.loads(new)) - ignored
                if f.rpartition(".")[2] not in LOCATION_FIELDS)


def stage_inputs(config: ml_collections.ConfigDict, name: str) -> list[str]:
  """The stages whose outputs stage `name` reads: every `stage:<name>` reference in its settings, plus the
  module's REQUIRES (outputs it reads without a config field), in config.stages order where listed."""
  found = list(getattr(stages.get_stage(name), "REQUIRES", ()))

  def walk(value):
    if isinstance(value, str):
      source = stages.stage_source(value)
      if source and source[0] != name:
        found.append(source[0])
    elif isinstance(value, (dict, ml_collections.ConfigDict)):
      for v in value.values():
        walk(v)
    elif isinstance(value, (list, tuple)):
      for v in value:
        walk(v)

  walk(config.get(name, {}))
  order = {s: i for i, s in enumerate(config.stages)}
  return sorted(set(found), key=lambda s: (order.get(s, len(order)), s))


def run_id(stage_dir: epath.Path) -> str | None:
  """The id of the finished run whose outputs are in `stage_dir` (provenance.json), None if unrecorded."""
  path = stage_dir / "provenance.json"
  return json.loads(path.read_text())["run_id"] if path.exists() else None


def _stale_inputs(stage_dir: epath.Path, current: dict[str, str | None]) -> list[str]:
  """The inputs redone since stage_dir's run started from them (its inputs.json), oldest first."""
  path = stage_dir / "inputs.json"
  if not path.exists():
    return []
  recorded = json.loads(path.read_text())
  return [s for s, rid in current.items() if s in recorded and rid is not None and recorded[s] != rid]


def _set_aside(stage_dir: epath.Path) -> epath.Path:
  """Moves a stale stage directory to `<name>.stale-<n>` (never deleted: its outputs may still be wanted)."""
  n = 1
  while stage_dir.parent.joinpath(f"{stage_dir.name}.stale-{n}").exists():
    n += 1
  target = stage_dir.parent / f"{stage_dir.name}.stale-{n}"
  stage_dir.rename(target)
  return target


def _write_provenance(stage_dir: epath.Path, name: str, fingerprint: str, inputs: dict[str, str | None]) -> None:
  """provenance.json: this run's id (what dependents record), its settings' hash and its inputs' run ids."""
  (stage_dir / "provenance.json").write_text(json.dumps({
      "stage": name, "run_id": uuid.uuid4().hex, "inputs": inputs,
      "settings_sha256": hashlib.sha256(fingerprint.encode()).hexdigest()}, indent=2, sort_keys=True))


def _sync(tag: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(tag)


def _check_stage_config(stage_dir: epath.Path, fingerprint: str, name: str) -> None:
  """Refuses to mix outputs made with different settings in one stage directory."""
  path = stage_dir / "config.json"
  if path.exists() and not _produced_anything(stage_dir):
    # A run that failed before its first checkpoint made nothing the new settings could be mixed with.
    if changed_settings(path.read_text(), fingerprint, name) and jax.process_index() == 0:
      logging.info("stage %s: its last run stopped before producing anything; starting with the new settings", name)
      path.write_text(fingerprint)
  elif path.exists():
    changed = changed_settings(path.read_text(), fingerprint, name)
    if changed:
      raise cfg.ConfigError(
          f"{stage_dir} was made with different settings for stage {name!r} (changed: {', '.join(changed)}). "
          "Use a new --workdir, or delete that directory to redo the stage.")
  else:
    stage_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
      path.write_text(fingerprint)


def _produced_anything(stage_dir: epath.Path) -> bool:
  """Whether a run left outputs to resume or reuse: DONE.json or a checkpoint."""
  checkpoints = stage_dir / "checkpoints"
  return (stage_dir / "DONE.json").exists() or (checkpoints.exists() and any(checkpoints.iterdir()))


def _diff(old, new, prefix="") -> set[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    out = set()
    for k in set(old) | set(new):
      out |= _diff(old.get(k), new.get(k), f"{prefix}{k}.")
    return out
  return set() if old == new else {prefix.rstrip(".")}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  """Runs every stage of `config.stages` not yet finished in `workdir`."""
  validate(config)
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = shd.make_mesh(config.mesh.to_dict())
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count())
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  summaries = {}
  for name in config.stages:
    stage = stages.get_stage(name)
    ctx = stages.StageContext(name=name, config=config, workdir=workdir, mesh=mesh)
    done = ctx.stage_dir / "DONE.json"
    inputs = {source: run_id(workdir / source) for source in stage_inputs(config, name)}
    stale = _stale_inputs(ctx.stage_dir, inputs)
    if stale:
      if jax.process_index() == 0:
        moved = _set_aside(ctx.stage_dir)
        logging.warning("stage %s: its input%s %s %s redone since it ran from %s; running it again (the previous "
                        "outputs are kept in %s)", name, "s" * (len(stale) > 1), ", ".join(stale),
                        "were" if len(stale) > 1 else "was", "them" if len(stale) > 1 else "it", moved)
      _sync(f"brainjax_stale_{name}")
    fingerprint = stage_fingerprint(config, name)
    _check_stage_config(ctx.stage_dir, fingerprint, name)
    if jax.process_index() == 0 and not (ctx.stage_dir / "inputs.json").exists():
      (ctx.stage_dir / "inputs.json").write_text(json.dumps(inputs, indent=2, sort_keys=True))
    if done.exists():
      logging.info("stage %s: already done (%s), skipping", name, done)
      summaries[name] = timing.without_details(json.loads(done.read_text()))
      continue
    logging.info("stage %s: starting", name)
    with timing.StageTimer(ctx.stage_dir) as timer:  # every invocation's time, in <stage>/timing.json
      summary = dict(stage.run(dataclasses.replace(ctx, timer=timer)))
    summary.update(timer.summary())  # wall_time_s: the sum over invocations; + invocations, invocation_wall_times_s
    if jax.process_index() == 0:
      done.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    if jax.process_index() == 0:
      _write_provenance(ctx.stage_dir, name, fingerprint, inputs)
    logging.info("stage %s: done in %.1f s: %s", name, summary["wall_time_s"], summary)
    summaries[name] = timing.without_details(summary)
  return summaries
