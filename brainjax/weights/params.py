"""Parameter-tree utilities shared by models and stages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def overlay(target: Any, source: Any, *, hint: str = "the two model configs differ",
            path: tuple[str, ...] = ()) -> Any:
  """`target` with every leaf that `source` also has replaced by source's.

  Leaves only `target` has (e.g. new temporal layers) keep their values;
  leaves only `source` has are ignored. A shape mismatch is an error naming
  the parameter, both shapes and `hint` (what to check).
  """
  if not isinstance(target, dict):
    if tuple(source.shape) != tuple(target.shape):
      raise ValueError(f"parameter {'/'.join(path)} has shape {tuple(source.shape)} in the checkpoint but "
                       f"{tuple(target.shape)} in the model; {hint}.")
    return source
  return {k: overlay(v, source[k], hint=hint, path=path + (k,)) if k in source else v for k, v in target.items()}


def mismatches(have: Mapping[str, Any], want: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
  """Between flat {path: array} dicts: (paths missing from `have`, paths `want` lacks, shared paths whose
  shapes differ), each sorted."""
  missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
  wrong = sorted(p for p in set(have) & set(want) if tuple(have[p].shape) != tuple(want[p].shape))
  return missing, extra, wrong
