"""Preflight: every input a recipe reads from outside the workdir, checked at once.

`runner.validate` calls `check(config)` after the recipe-wide checks (stages,
seed, mesh, config.data) and before its loop over the stages' `validate`, so a
recipe whose weights or data are not there yet (the `paper` presets, until
their paths are set) fails in the first seconds with ONE error that lists every
missing input, instead of stopping at the first one, or an hour in, when the
last stage opens its weights. (A stage setting that is wrong in another way and
comes first in run order is raised instead, as that loop would.)

What is checked, generically over the config tree:
  * every path field (a name ending in `_path`, `_from`, `_cache`, `weights`
    or `weights_dir`: `init_from`, `text_cache`, `unet_path`, ...) of every stage in
    `config.stages` (and of any other non-stage group) that is set must exist
    (local paths, and gs:// ones through etils.epath where that can be reached;
    an unreachable bucket is logged, not failed). `stage:<name>/...` paths are
    made by earlier stages and are skipped (the stages check their order).
  * an empty path field counts as missing when the stage itself requires it:
    the stage's own `validate` decides, and is re-run with a placeholder in
    each field it complains about, so its message (which says what to point the
    field at) is collected for every empty field, not just the first.
  * every real dataset a stage reads (`config.data`, each stage's
    `data_overrides` and `extra_datasets`) must be built in its data_dir
    (`pipeline.load_builder`'s check; the synthetic benchmark is generated on
    first use and never missing).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging as logging_lib
import re
from collections.abc import Iterator
from typing import Any

import ml_collections
from absl import logging
from etils import epath

from brainjax import config as cfg

__all__ = ["MissingInputs", "missing_inputs", "check", "is_path_field"]

# Field names that hold a path to read: *_path, *_from (init_from, unet_from), *_cache (text_cache), weights,
# *weights_dir. (Not every *_dir: an output directory need not exist yet.)
_PATH_FIELD = re.compile(r"(_path|_from|_cache|weights|weights_dir)$")
# Sub-trees of a stage that name datasets rather than files: checked as datasets.
_DATASET_FIELDS = ("data_overrides", "extra_datasets")
_PLACEHOLDER = "<preflight placeholder>"

DEMO_HINT = "configs/<recipe>.py"  # the recipe file in the hint to its demo preset; the CLI names the real one


class MissingInputs(cfg.ConfigError):
  """Inputs of a run are missing (`problems`: one line each); the message points to the demo preset."""

  def __init__(self, message: str, problems: list[str]):
    super().__init__(message)
    self.problems = problems

  def for_recipe(self, recipe: str | None) -> str:
    """The message, with the hint naming `recipe` (the --config file) instead of a placeholder."""
    return str(self).replace(f"--config={DEMO_HINT}:demo", f"--config={recipe}:demo") if recipe else str(self)


def is_path_field(key: str) -> bool:
  return bool(_PATH_FIELD.search(key))


def _path_fields(node: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
  """(dotted key relative to `node`, value) of every string-valued path field below `node`."""
  items = node.items() if isinstance(node, (ml_collections.ConfigDict, dict)) else ()
  for key, value in items:
    if key in _DATASET_FIELDS:
      continue
    dotted = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from _path_fields(value, dotted + ".")
    elif isinstance(value, str) and is_path_field(key):
      yield dotted, value


def _groups(config: ml_collections.ConfigDict) -> list[str]:
  """Top-level fields whose path fields the run reads: the stages it runs and any non-stage group
  (not config.data, whose data_dir is checked with its datasets, nor the stages it does not run)."""
  from brainjax import stages
  run = list(config.get("stages") or ())
  others = [k for k in config.keys() if k not in stages.REGISTRY and k not in ("data", "ablations")]
  return [k for k in run if k in config] + others


def _exists(path: str) -> bool | None:
  """Whether `path` exists; None when that cannot be told here (e.g. gs:// without credentials or network)."""
  try:
    return epath.Path(path).expanduser().exists()
  except Exception as e:  # noqa: BLE001 (gcsfs / tf.io raise many kinds)
    logging.warning("preflight: cannot check %s (%s: %s); it is read when its stage runs.", path,
                    type(e).__name__, e)
    return None


def _set(node: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split(".")
  for key in parents:
    node = node[key]
  node[leaf] = value


def _empty_required(config: ml_collections.ConfigDict) -> tuple[list[str], cfg.ConfigError | None]:
  """The stages' own complaints about empty path fields, every one of them, and the first other ConfigError
  of a stage's validate if it comes before all of them in run order (else None).

  Each stage's `validate` stops at its first problem; here it runs on a copy in which every empty path field
  it names is given a placeholder, until it passes or stops on something else. Stages are probed in run
  order on one copy, so a field inherited from an earlier stage (cotrain's vae_path is video_finetune's when
  empty) is reported once, where it is set.
  """
  from brainjax import stages
  probe = copy.deepcopy(config)
  problems, other = [], None
  for name in config.get("stages") or ():
    if name not in probe or name not in stages.REGISTRY:
      continue  # runner.validate says so
    stage = stages.get_stage(name)
    for _ in range(64):
      empty = [key for key, value in _path_fields(probe[name]) if not value]
      try:
        stage.validate(probe, name)
        break
      except cfg.ConfigError as e:
        message = str(e)
        if _PLACEHOLDER in message:
          break  # about a placeholder, not the user's config: runner.validate reports the empty field itself
        named = ([k for k in empty if f"config.{name}.{k}" in message]
                 or [k for k in empty if re.search(rf"(?<![\w.]){re.escape(k.rsplit('.', 1)[-1])}\b", message)])
        if not named:
          # A wrong setting, not a missing input: check() raises it if it comes before every missing input,
          # as runner.validate's loop would.
          other = other or (e if not problems else None)
          break
        problems.append(_one_line(message))
        _set(probe[name], named[0], _PLACEHOLDER)
      except Exception:  # noqa: BLE001 (runner.validate raises it again, with its traceback)
        break
  return problems, other


def _one_line(message: str) -> str:
  return " ".join(message.split())


def _missing_paths(config: ml_collections.ConfigDict) -> list[str]:
  from brainjax.stages import stage_source
  problems = []
  for group in _groups(config):
    for key, value in _path_fields(config[group]):
      if not value or stage_source(value) or value == _PLACEHOLDER:
        continue
      if _exists(value) is False:
        problems.append(f"config.{group}.{key} = {value!r} does not exist; point it at an existing "
                        "directory (a local path or gs://...), or fix the typo.")
  return problems


def _datasets(config: ml_collections.ConfigDict) -> Iterator[tuple[str, ml_collections.ConfigDict]]:
  """(where it is named, data config) of every dataset the run reads, each once."""
  from brainjax.stages import common
  if "data" not in config:
    return
  seen = set()

  def once(where, data):
    key = json.dumps({k: data.get(k) for k in common.DATASET_IDENTITY}, sort_keys=True, default=str)
    if key not in seen:
      seen.add(key)
      yield where, data

  yield from once("config.data", config.data)
  for name in config.get("stages") or ():
    if name not in config or not isinstance(config[name], ml_collections.ConfigDict):
      continue
    try:
      datasets = common.stage_datasets(config, name)
    except (cfg.ConfigError, KeyError, TypeError, AttributeError):
      continue  # a malformed data_overrides / extra_datasets: the stage's validate says what is wrong
    for i, data in enumerate(datasets):
      where = f"config.{name}.data_overrides" if i == 0 else f"config.{name}.extra_datasets[{i - 1}]"
      yield from once(where, data)


class _DropTfdsWarnings(logging_lib.Filter):
  def filter(self, record: logging_lib.LogRecord) -> bool:
    return record.levelno >= logging_lib.ERROR or "/tensorflow_datasets/" not in record.pathname


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS warns about the folders of an unbuilt dataset ("Variant folder ... has no dataset_info.json")
  before the check below says the same thing with the command that builds it."""
  handler, dropped = logging.get_absl_handler(), _DropTfdsWarnings()
  handler.addFilter(dropped)
  try:
    yield
  finally:
    handler.removeFilter(dropped)


def _missing_datasets(config: ml_collections.ConfigDict) -> list[str]:
  from brainjax.data import pipeline
  problems = []
  for where, data in _datasets(config):
    if data.get("name") not in pipeline.REAL_DATASETS:
      continue  # the synthetic benchmark is generated on first use; an unknown name is validation's to report
    try:
      with _quiet_tfds():
        pipeline.load_builder(data)
    except cfg.ConfigError as e:
      problems.append(f"{where} (dataset {data.name!r}): {_one_line(str(e))}")
    except Exception as e:  # noqa: BLE001 (an unreachable gs:// data_dir)
      logging.warning("preflight: cannot check dataset %s in %s (%s: %s); it is read when its stage runs.",
                      data.name, data.get("data_dir") or "the default TFDS data_dir", type(e).__name__, e)
  return problems


def missing_inputs(config: ml_collections.ConfigDict) -> list[str]:
  """One line per missing input of the run: required path fields left empty, paths that do not exist, and
  real datasets not built in their data_dir. [] when everything the run reads from outside the workdir is
  there (or cannot be checked from here)."""
  return _empty_required(config)[0] + _missing_paths(config) + _missing_datasets(config)


def _demo_hint(config: ml_collections.ConfigDict) -> str:
  if config.get("preset") in (None, "demo"):
    return ""  # the demo itself, or a config built in code
  return f" (for the synthetic demo run --config={DEMO_HINT}:demo)"


def check(config: ml_collections.ConfigDict) -> None:
  """Raises one ConfigError listing every missing input (`missing_inputs`): the problem itself when there is
  one, else a line saying how many and one indented line per problem.

  A stage setting that is wrong in another way (its validate fails on something other than an empty path)
  before any missing input is found, in run order, is raised instead, as runner.validate's loop would: some
  inputs (a real dataset for a demo-only stage) only matter once it is fixed.
  """
  problems, other = _empty_required(config)
  if other is not None:
    raise other
  problems += _missing_paths(config) + _missing_datasets(config)
  if len(problems) == 1:
    raise MissingInputs(problems[0] + _demo_hint(config), problems)
  if problems:
    preset = f" of preset {config.preset!r}" if config.get("preset") else ""
    lines = "\n".join(f"  {p}" for p in problems)
    raise MissingInputs(f"{len(problems)} inputs{preset} are missing; set these fields (or build the data) "
                        f"before anything runs{_demo_hint(config)}:\n{lines}", problems)
