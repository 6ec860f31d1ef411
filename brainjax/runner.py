"""Runs a recipe: validate, build the mesh, run each stage once.

Kept apart from `main.py` (flags only) so tests and notebooks call
`run(config, workdir)` directly.
"""

from __future__ import annotations

import json
import logging as logging_lib
import time

import jax
import ml_collections
from absl import logging
from etils import epath

from brainjax import config as cfg
from brainjax import stages
from brainjax.train import sharding as shd
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
  for name in config.stages:
    stage = stages.get_stage(name)
    if name not in config:
      raise cfg.ConfigError(f"config.{name} is missing: stage {name!r} is listed in config.stages but the "
                            "recipe has no settings for it.")
    stage.validate(config, name)


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


def changed_settings(old: str, new: str, name: str) -> list[str]:
  """The dotted fields in which two fingerprints of stage `name` differ, less its RUN_CONTROL_FIELDS."""
  if old == new:
    return []
  ignored = {f"{name}.{field}" for field in RUN_CONTROL_FIELDS}
  return sorted(_diff(json.loads(old), json.loads(new)) - ignored)


def _check_stage_config(stage_dir: epath.Path, fingerprint: str, name: str) -> None:
  """Refuses to mix outputs made with different settings in one stage directory."""
  path = stage_dir / "config.json"
  if path.exists():
    changed = changed_settings(path.read_text(), fingerprint, name)
    if changed:
      raise cfg.ConfigError(
          f"{stage_dir} was made with different settings for stage {name!r} (changed: {', '.join(changed)}). "
          "Use a new --workdir, or delete that directory to redo the stage.")
  else:
    stage_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
      path.write_text(fingerprint)


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
    _check_stage_config(ctx.stage_dir, stage_fingerprint(config, name), name)
    if done.exists():
      logging.info("stage %s: already done (%s), skipping", name, done)
      summaries[name] = json.loads(done.read_text())
      continue
    logging.info("stage %s: starting", name)
    start = time.time()
    summary = dict(stage.run(ctx))
    summary["wall_time_s"] = round(time.time() - start, 1)
    if jax.process_index() == 0:
      done.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    logging.info("stage %s: done in %.1f s: %s", name, summary["wall_time_s"], summary)
    summaries[name] = summary
  return summaries
