"""Which datasets brainjax knows, and where their TFDS builders live.

The builders are packages of `data_builders/` (one per dataset), imported by name
only when asked (a real builder pulls in nibabel, PyAV, ...; the synthetic
benchmark needs none of it): brainjax finds them through this table and never
imports `data_builders` statically, which imports brainjax. `DATASETS` holds what
is known about each dataset without its files (the record layout and response
kind of data_builders/common.py), so configs can be validated before anything is built.
"""

from __future__ import annotations

import importlib

BUILDERS_PACKAGE = "data_builders"

# Static facts of each dataset (datasets.md §8): the record layout and whether responses are a BOLD time series
# or one beta per trial. The builders write the same values into their metadata; the pipeline checks configs
# against these before the dataset exists.
DATASETS = {
    "synthetic": {"layout": "shared", "response": "bold"},
    "cc2017": {"layout": "shared", "response": "bold"},
    "hcp": {"layout": "per_subject", "response": "bold"},
    "bmd": {"layout": "shared", "response": "beta"},
    "had": {"layout": "per_subject", "response": "beta"},
    "cinebrain": {"layout": "per_subject", "response": "bold"},
}
NAMES = tuple(DATASETS)
REAL_NAMES = tuple(n for n in NAMES if n != "synthetic")


def check_name(name: str) -> str:
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {list(NAMES)}.")
  return name


def builder_module(name: str):
  """The package `data_builders.<name>` (imported on first use)."""
  check_name(name)
  try:
    return importlib.import_module(f"{BUILDERS_PACKAGE}.{name}")
  except ModuleNotFoundError as e:
    if e.name == f"{BUILDERS_PACKAGE}.{name}":
      raise ValueError(f"dataset {name!r}: its builder (data_builders/{name}/) is not installed in this "
                       "version of brainjax.") from e
    raise


def builder_class(name: str):
  """The TFDS `Builder` class of dataset `name`."""
  return builder_module(name).Builder


def builder_config_names(name: str) -> list[str]:
  """The preset builder configs of dataset `name` (its BUILDER_CONFIGS), first = default."""
  return [c.name for c in builder_class(name).BUILDER_CONFIGS]
