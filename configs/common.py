"""Helpers the recipes share (loaded by path: `cfg.sibling_recipe("common", __file__)`); not a recipe."""

import ml_collections

from brainjax.train.sharding import DEFAULT_LOGICAL_AXIS_RULES


def base_config() -> ml_collections.ConfigDict:
  """Fields every recipe has: seed, mesh, logical-axis rules."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Device mesh: one axis may be -1 (all remaining devices). Pure FSDP scales the
  # ViT/UNet sizes of the papers; tensor parallelism is there for larger decoders.
  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  config.logical_axis_rules = [list(rule) for rule in DEFAULT_LOGICAL_AXIS_RULES]
  return config
