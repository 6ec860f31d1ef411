"""Stages: the steps of a recipe, run in `config.stages` order.

A stage is a module (one module may serve several stage names, reading
`config.<name>`) with

  CONFIG_KEYS: tuple[str, ...]    shared config fields its outputs depend on
                                  (its own `config.<name>` always counts)
  validate(config, name) -> None  raise ConfigError early
  run(ctx: StageContext) -> dict  do the work, return a JSON-able summary
  REQUIRES: tuple[str, ...]       (optional) stages whose outputs it reads without naming
                                  them in a `stage:` field of its settings
  INPUTS: dict[str, tuple]        (optional) dotted path field -> the artifact kinds it reads
  OUTPUTS: dict[str, str]         (optional) sub-path of its directory ("" itself) -> the kind
                                  written there; the runner checks every `stage:` reference of
                                  an INPUTS field against the named stage's OUTPUTS up front

Each stage reads what earlier stages wrote in the workdir and writes under
`workdir/<stage>/`. A finished stage leaves `DONE.json` and `provenance.json`
(a run id) and is skipped on re-run; an interrupted one resumes from its latest
checkpoint. Its inputs are the stages its `stage:` fields name (and REQUIRES):
the run ids it started from are kept in `inputs.json`, and a stage whose input
was redone since runs again (the runner sets the old outputs aside).
"""

from __future__ import annotations

import dataclasses
import importlib
import types
from typing import Any

import ml_collections
from etils import epath
from jax.sharding import Mesh

from brainjax.config import ConfigError

# name -> module path. Imported lazily: a recipe pays only for the stages it runs.
REGISTRY: dict[str, str] = {
    "mbm_pretrain": "brainjax.stages.mbm_pretrain",
    "mbm_finetune": "brainjax.stages.mbm_pretrain",  # the same stage on target-dataset fMRI
    "clip_fit": "brainjax.stages.clip_fit",
    "clip_embed": "brainjax.stages.clip_embed",
    "align": "brainjax.stages.align",
    "vae_fit": "brainjax.stages.vae_fit",
    "unet_fit": "brainjax.stages.unet_fit",
    "video_finetune": "brainjax.stages.video_finetune",
    "cotrain": "brainjax.stages.cotrain",
    "evaluate": "brainjax.stages.evaluate",
    "classifier_fit": "brainjax.stages.classifier_fit",
}


@dataclasses.dataclass(frozen=True)
class StageContext:
  name: str
  config: ml_collections.ConfigDict
  workdir: epath.Path
  mesh: Mesh
  timer: Any = None  # the runner's train.timing.StageTimer for this invocation (the train loop ticks it)

  @property
  def stage_dir(self) -> epath.Path:
    return self.workdir / self.name

  def output_of(self, stage: str) -> epath.Path:
    """Where an earlier stage wrote its outputs (error if it has not finished)."""
    path = self.workdir / stage
    if not (path / "DONE.json").exists():
      raise FileNotFoundError(
          f"stage {self.name!r} needs the outputs of stage {stage!r}, but {path}/DONE.json does not exist; "
          f"add {stage!r} before {self.name!r} in config.stages or point --workdir at a run that has it.")
    return path


def stage_source(path: str) -> tuple[str, str] | None:
  """(stage, sub-path) of a 'stage:<stage>[/<sub>]' path (sub '' when absent); None for any other path."""
  if not path.startswith("stage:"):
    return None
  stage, _, sub = path[len("stage:"):].partition("/")
  return stage, sub


def resolve_path(ctx: "StageContext", path: str) -> epath.Path:
  """'stage:<name>/<sub>' is <workdir>/<name>/<sub> of a finished stage; anything else is a path."""
  source = stage_source(path)
  if source:
    return ctx.output_of(source[0]) / source[1]
  return epath.Path(path).expanduser()


def get_stage(name: str) -> types.ModuleType:
  if name not in REGISTRY:
    raise ConfigError(f"config.stages: unknown stage {name!r}; known stages are {sorted(REGISTRY)}.")
  return importlib.import_module(REGISTRY[name])
