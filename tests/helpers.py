"""Tiny recipes for tests: the demo recipe shrunk to seconds."""

from __future__ import annotations

import importlib.util

import ml_collections

# A simulator spec small enough to generate in a few seconds.
TINY_SPEC = dict(seed=3, resolution=32, num_subjects=2, voxels_per_subject=(250, 310), train_segments=2,
                 test_segments=1, segment_trs=40, test_repeats=4, rest_runs=2, rest_trs=60)


def load_recipe(name: str, preset: str = "demo") -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(f"{name}_recipe", f"configs/{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def tiny_mbm_config(data_dir: str, *, num_steps: int = 40, checkpoint_every: int = 10) -> ml_collections.ConfigDict:
  config = load_recipe("mindvideo", "demo")
  with config.unlocked():
    config.data.data_dir = data_dir
    config.data.spec = TINY_SPEC
    config.data.subjects = [0]
    stage = config.mbm_pretrain
    stage.data_overrides.subjects = [0, 1]
    stage.data_overrides.temporal_average = 2
    stage.data_overrides.stride = 2
    stage.model.update(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                       decoder_num_heads=2)
    stage.optim.warmup_steps = 2
    # Adam maps gradients at float32 noise level to full +-lr steps whose sign
    # depends on reduction order; eps 1e-4 keeps cross-layout comparisons about
    # the layout rather than that amplification.
    stage.optim.eps = 1e-4
    stage.batch_size = 16
    stage.num_steps = num_steps
    stage.log_every_steps = 5
    stage.checkpoint_every_steps = checkpoint_every
  return config
