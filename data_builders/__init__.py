"""TFDS builders of brainjax's datasets, one package per dataset, imported lazily by name.

The table of datasets and the lazy import live in brainjax.data.registry (brainjax
reaches the builders through it; this package imports brainjax, never the reverse).
"""

from brainjax.data.registry import (
    DATASETS,
    NAMES,
    REAL_NAMES,
    builder_class,
    builder_config_names,
    builder_module,
    check_name,
)

__all__ = ["DATASETS", "NAMES", "REAL_NAMES", "builder_class", "builder_config_names", "builder_module", "check_name"]
