"""A stage's product on disk: `params/` (Orbax) and `model.json`, which says what it is.

`model.json` always has a `kind` (what the parameters are: `mbm`, `fmri_encoder`, ...)
and whatever else is needed to rebuild the module from it alone, so a later stage, the
converter or a notebook reads a model from its directory without the recipe that made it.
An imported checkpoint and a trained one of the same model have the same kind.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


class ArtifactError(ValueError):
  """A directory is not the artifact a reader expects (missing, unreadable, or of another kind)."""


def save_params(directory: str | epath.PathLike, params: Any, meta: dict) -> None:
  """Writes `params/` (Orbax) and `model.json`; `meta` must name the artifact's `kind`."""
  if not meta.get("kind"):
    raise ValueError("an artifact's model.json needs a 'kind' (e.g. 'fmri_encoder'): what its params are")
  directory = epath.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / "params", params, force=True)
  if jax.process_index() == 0:
    (directory / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def read_meta(directory: str | epath.PathLike, kinds: Iterable[str] | None = None) -> dict:
  """`model.json` of the artifact in `directory`, checked to be one of `kinds` (when given)."""
  directory = epath.Path(directory)
  path = directory / "model.json"
  if not path.exists():
    raise ArtifactError(f"{directory} is not a brainjax artifact: it has no model.json; point the config at a "
                        "stage's output directory (or a converted checkpoint: python -m brainjax.convert.mbm).")
  try:
    meta = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ArtifactError(f"{path} is not valid JSON ({e}); the artifact is damaged: redo the stage that wrote it.")
  kinds = tuple(kinds or ())
  if kinds and meta.get("kind") not in kinds:
    raise ArtifactError(f"{directory} holds a {meta.get('kind')!r} artifact, not {' or '.join(map(repr, kinds))}; "
                        "point the config at the right stage's output.")
  return meta


def load_params(directory: str | epath.PathLike, kinds: Iterable[str] | None = None) -> tuple[Any, dict]:
  """(params, model.json) of the artifact in `directory` (see `read_meta` for `kinds`)."""
  directory = epath.Path(directory)
  meta = read_meta(directory, kinds)
  if not (directory / "params").exists():
    raise ArtifactError(f"{directory} has model.json but no params/; the artifact is incomplete: redo the stage "
                        "that wrote it.")
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(directory / "params")
  return params, meta
