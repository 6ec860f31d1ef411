"""Tiny recipes for tests: the demo recipe shrunk to seconds."""

from __future__ import annotations

import ml_collections

from brainjax import config as config_lib

# A simulator spec small enough to generate in a few seconds.
TINY_SPEC = dict(seed=3, resolution=32, num_subjects=2, voxels_per_subject=(250, 310), train_segments=2,
                 test_segments=1, segment_trs=40, test_repeats=4, rest_runs=2, rest_trs=60)


def load_recipe(name: str, preset: str = "demo") -> ml_collections.ConfigDict:
  return config_lib.sibling_recipe(name, "configs/_.py").get_config(preset)


def base_config() -> ml_collections.ConfigDict:
  """The fields every recipe has (configs/common.py): seed, mesh, logical-axis rules."""
  return config_lib.sibling_recipe("common", "configs/_.py").base_config()


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
    config.align.head.update(out_tokens=8, out_dim=16, readout_rank=0)
    config.cotrain.readout_fit.alpha = 0.0  # the caption readout needs out_tokens = the text length; see tiny_video_config
    config.align.retrieval_candidates = 20
  return config


def tiny_video_config(data_dir: str, steps: int = 6) -> ml_collections.ConfigDict:
  """The demo's video stages (clip_fit ... cotrain) on top of `tiny_mindvideo_config`, shrunk to seconds
  each (tests/stages/test_video_stages.py, tests/stages/test_evaluate.py)."""
  config = tiny_mindvideo_config(data_dir, steps=steps)
  with config.unlocked():
    config.stages = ("clip_fit", "clip_embed", "align", "vae_fit", "unet_fit", "video_finetune", "cotrain")
    config.align.init_from = ""
    config.vae_fit.model.update(block_out_channels=(16, 16, 16), norm_num_groups=8)
    config.vae_fit.update(batch_size=8, num_steps=steps, checkpoint_every_steps=steps, log_every_steps=2)
    config.vae_fit.optim.warmup_steps = 1
    image = config.unet_fit
    image.unet.update(block_out_channels=(16, 32), attention_head_dim=2, cross_attention_dim=16, norm_num_groups=8,
                      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    image.update(batch_size=8, num_steps=steps, checkpoint_every_steps=steps, log_every_steps=2)
    image.optim.warmup_steps = 1
    image.sample.update(count=3, num_steps=4)
    stage = config.video_finetune
    stage.num_frames = 4
    stage.update(batch_size=8, num_steps=steps, checkpoint_every_steps=steps, log_every_steps=2)
    stage.optim.warmup_steps = 1
    stage.sample.update(count=3, num_steps=4)
    # The caption readout: 32 condition tokens, the tiny CLIP's text length, fitted before co-training.
    config.align.head.update(out_tokens=32, readout_rank=8)
    co = config.cotrain
    co.readout_fit.alpha = 1.0
    co.update(num_frames=4, batch_size=8, num_steps=steps, checkpoint_every_steps=steps, log_every_steps=2)
    co.optim.warmup_steps = 1
    co.sample.update(count=2, num_steps=3)
  return config


def train_video_stages(root) -> tuple:
  """Runs the tiny recipe clip_embed -> ... -> cotrain once (conftest's session fixture `video_run`, shared
  with tests/stages/test_evaluate.py): (config, workdir, summaries)."""
  from etils import epath

  from brainjax import runner

  config = tiny_video_config(str(root / "data"))
  clip_dir = save_random_clip(str(root / "clip"))
  with config.unlocked():
    config.stages = tuple(s for s in config.stages if s != "clip_fit")
    config.clip_embed.update(text_path=f"{clip_dir}/text", vision_path=f"{clip_dir}/vision")
    config.video_finetune.eval_vision_path = f"{clip_dir}/vision"
  summaries = runner.run(config, str(root / "run"))
  return config, epath.Path(root / "run"), summaries


# A second tiny dataset for the multi-dataset tests: another seed, one subject with its own voxel count.
TINY_SPEC_B = dict(seed=11, resolution=32, num_subjects=1, voxels_per_subject=(200,), train_segments=2,
                   test_segments=1, segment_trs=40, test_repeats=4, rest_runs=2, rest_trs=60)


def save_random_clip(directory: str, resolution: int = 32) -> str:
  """Untrained tiny CLIP towers (+ tokenizer) in the transformers layout, as clip_fit would save them:
  lets clip_embed run without the clip_fit stage. Returns `directory`."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from etils import epath

  from brainjax.data.tokenizer import WordTokenizer
  from brainjax.models import clip
  from brainjax.stages import clip_fit

  stage = tiny_mindvideo_config(directory).clip_fit
  tokenizer = WordTokenizer.for_synthetic_captions(stage.max_length)
  model = clip_fit.build(stage, resolution, tokenizer)
  ids = jnp.zeros((1, tokenizer.max_length), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids),
                                    jnp.zeros((1, resolution, resolution, 3)))["params"])
  root = epath.Path(directory)
  clip.save_clip_text(root / "text", model.text_config, params["text"])
  clip.save_clip_vision(root / "vision", model.vision_config, params["vision"])
  tokenizer.save(root / "text")
  return directory


def tiny_multidataset_config(data_dir: str, *, steps: int = 6, clip_dir: str | None = None) -> ml_collections.ConfigDict:
  """Brain Netflix-style joint training, shrunk: mbm_pretrain and align over TINY_SPEC (subjects 0, 1)
  and TINY_SPEC_B (subject 0), 3 subjects in total, with per-subject patch embeddings. With
  `clip_dir` (see `save_random_clip`) clip_embed reads towers from there and clip_fit is skipped."""
  config = tiny_mindvideo_config(data_dir, steps=steps)
  with config.unlocked():
    config.stages = ["mbm_pretrain", "clip_embed", "align"] if clip_dir else [
        "mbm_pretrain", "clip_fit", "clip_embed", "align"]
    for name in [k for k in ("mbm_finetune", "vae_fit", "video_finetune") if k in config]:
      del config[name]  # stages of the MinD-Video recipe this test does not run
    if clip_dir:
      del config["clip_fit"]
      config.clip_embed.update(text_path=f"{clip_dir}/text", vision_path=f"{clip_dir}/vision")
    config.data.subjects = [0, 1]
    extra = dict(name="synthetic", spec=TINY_SPEC_B, subjects=[0])
    config.mbm_pretrain.data_overrides.subjects = [0, 1]
    config.mbm_pretrain.extra_datasets = [extra]
    config.mbm_pretrain.model.per_subject_patch_embed = True
    config.mbm_pretrain.model.depth = 1
    config.align.extra_datasets = [extra]
    config.align.encoder.per_subject_patch_embed = True
    config.align.encoder.depth = 1
    config.align.init_from = "stage:mbm_pretrain"
    config.align.update(modalities=("text",), temperature=0.9, learn_temperature=False)
    config.align.retrieval_candidates = 10
  return config


class SignalAtDeviceStep:
  """Wraps a train step; a thread sends SIGTERM once step `at - 1`'s outputs are ready (the device starts
  step `at`; polling `is_ready()` does not synchronise the host) and records in `device_step` the step the
  device was on then (tests/train/test_train_robustness.py, bench/train_loop_inflight.py). `first_step`: the
  step the wrapped loop starts from."""

  def __init__(self, train_step, at: int, first_step: int = 0):
    import threading
    self.at, self.outputs, self.device_step, self.sent = at, {}, None, threading.Event()
    self._train_step, self._count, self._done = train_step, first_step, False
    self._thread = threading.Thread(target=self._watch, daemon=True)
    self._thread.start()

  def __call__(self, state, batch):
    state, metrics = self._train_step(state, batch)
    self._count += 1
    self.outputs[self._count] = metrics["loss"]
    return state, metrics

  def _watch(self):
    import os
    import signal
    import time
    while not self._done:
      out = self.outputs.get(self.at - 1)
      if out is not None and out.is_ready():
        j = self.at - 1
        while j + 1 in self.outputs and self.outputs[j + 1].is_ready():
          j += 1
        self.device_step = j + 1
        self.sent.set()
        os.kill(os.getpid(), signal.SIGTERM)
        return
      time.sleep(0.0002)

  def close(self):
    self._done = True
