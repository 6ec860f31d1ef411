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
    config.stages = ["mbm_pretrain"]
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


def tiny_mindvideo_config(data_dir: str, *, steps: int = 20) -> ml_collections.ConfigDict:
  """Every demo stage, shrunk to seconds each."""
  config = tiny_mbm_config(data_dir, num_steps=steps, checkpoint_every=steps)
  with config.unlocked():
    config.stages = ["mbm_pretrain", "mbm_finetune", "clip_fit", "clip_embed", "align"]
    config.data.voxel_padding = "wrap"
    config.mbm_finetune.model = config.mbm_pretrain.model
    config.mbm_finetune.optim.eps = 1e-4
    for name in ("mbm_finetune", "clip_fit", "align"):
      stage = config[name]
      stage.batch_size = 16
      stage.num_steps = steps
      stage.log_every_steps = 5
      stage.checkpoint_every_steps = steps
      stage.optim.warmup_steps = 2
    config.clip_fit.text.update(hidden_size=16, intermediate_size=32, projection_dim=16, num_hidden_layers=1,
                                num_attention_heads=2)
    config.clip_fit.vision.update(hidden_size=16, intermediate_size=32, projection_dim=16, num_hidden_layers=1,
                                  num_attention_heads=2)
    model = config.mbm_pretrain.model
    config.align.encoder.update(embed_dim=model.embed_dim, depth=model.depth, num_heads=model.num_heads)
    config.align.head.update(out_tokens=8, out_dim=16)
    config.align.retrieval_candidates = 20
  return config
