"""Config helpers shared by every recipe: presets, validation with clear errors.

Recipes (`configs/<method>.py`) are plain Python files with `get_config(preset)`.
Validation runs before anything is built so that a bad value fails in the first
second with a message that names the field and says how to fix it, instead of
deep inside a jitted step an hour into a pod reservation.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config value is missing or out of range. The message names the field."""


def select_preset(preset: str | None, presets: dict[str, Callable[[], ml_collections.ConfigDict]],
                  recipe: str) -> ml_collections.ConfigDict:
  """Returns `presets[preset]()`; unknown names list the known ones."""
  name = preset or "paper"
  if name not in presets:
    error = ConfigError(
        f"{recipe}: unknown preset {name!r}; choose one of {sorted(presets)} "
        f"(e.g. --config=configs/{recipe}.py:demo)")
    error.presets = list(presets)  # for `python -m brainjax.main --help`, which lists them
    raise error
  config = presets[name]()
  config.preset = name
  return config


def sibling_recipe(name: str, near: str) -> types.ModuleType:
  """The recipe file `<name>.py` in the directory of `near` (a recipe's `__file__`).

  One recipe builds on another this way (NeuralFlix is MinD-Video's pipeline with
  augmentations and dependent noise) without `configs/` having to be importable:
  config files are loaded by path, from wherever the user keeps them.
  """
  path = pathlib.Path(near).with_name(f"{name}.py")
  if not path.exists():
    raise ConfigError(f"recipe {name!r} not found at {path}; keep the recipe files of configs/ together.")
  spec = importlib.util.spec_from_file_location(f"brainjax_recipe_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _field(path: str, value: Any) -> str:
  return f"config.{path} = {value!r}"


def require_positive_int(config: ml_collections.ConfigDict, path: str, *, allow_zero: bool = False) -> int:
  value = get_path(config, path)
  ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
  if not ok:
    bound = "a non-negative" if allow_zero else "a positive"
    raise ConfigError(f"{_field(path, value)}: must be {bound} integer.")
  return value


def require_positive(config: ml_collections.ConfigDict, path: str, *, allow_zero: bool = False) -> float:
  value = get_path(config, path)
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
      value >= 0 if allow_zero else value > 0)
  if not ok:
    bound = "non-negative" if allow_zero else "positive"
    raise ConfigError(f"{_field(path, value)}: must be a {bound} number.")
  return float(value)


def require_in_range(config: ml_collections.ConfigDict, path: str, low: float, high: float) -> float:
  value = get_path(config, path)
  if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
    raise ConfigError(f"{_field(path, value)}: must be a number in [{low}, {high}].")
  return float(value)


def require_choice(config: ml_collections.ConfigDict, path: str, choices: Iterable[Any]) -> Any:
  value = get_path(config, path)
  choices = list(choices)
  if value not in choices:
    raise ConfigError(f"{_field(path, value)}: must be one of {choices}.")
  return value


def get_path(config: ml_collections.ConfigDict, path: str) -> Any:
  """`get_path(c, 'a.b')` is `c.a.b`, with an error naming the missing field."""
  node: Any = config
  walked = []
  for key in path.split("."):
    walked.append(key)
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or key not in node:
      raise ConfigError(f"config.{'.'.join(walked)} is missing; the recipe must define it.")
    node = node[key]
  return node


def subtree_json(config: ml_collections.ConfigDict, keys: Sequence[str]) -> str:
  """Canonical JSON of the named top-level fields: what a stage's outputs depend on."""
  picked = {k: (config[k].to_dict() if isinstance(config[k], ml_collections.ConfigDict) else config[k])
            for k in keys if k in config}
  return json.dumps(picked, sort_keys=True, default=str)
