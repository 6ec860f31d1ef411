"""The planning tool compiles a paper-width train step, and a video UNet's, sharded over 8 simulated devices."""

import flax.linen as nn
import jax
import pytest

from brainjax import plan
from tests import helpers


@pytest.mark.parametrize("stage", ["mbm_pretrain", "align"])
def test_plan_compiles_fsdp_sharded_step(stage):
  config = helpers.load_recipe("mindvideo", "paper")
  with config.unlocked():
    config.mesh.update(data=1, fsdp=-1)
    # Paper widths (1024, 16 heads, 77 x 768 head) at reduced depth: compile time, not the
    # layout, grows with depth. `python -m brainjax.plan` runs the full depth.
    config.mbm_pretrain.model.update(depth=2, decoder_depth=1)
    config.mbm_pretrain.batch_size = 16
    config.align.encoder.depth = 2
    config.align.batch_size = 16
  out = plan.plan(config, stage, jax.devices(), num_voxels=4656)
  assert out["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert out["flops_per_step"] > 1e9
  assert out["params"] > 2 * (4 * 1024 * 1024 + 2 * 1024 * 1024)  # two blocks of width 1024
  # Parameters and Adam moments are split 8 ways: a device holds ~1/8 of them.
  param_bytes = 4 * out["params"] * 3
  assert out["per_device_bytes"]["arguments"] < param_bytes / 4


# A one-level UNet (down, mid and up block, one layer each): the layout of the paper UNets at a size that
# compiles in seconds. Overrides use diffusers' config.json names.
TINY_VIDEO_UNET = dict(block_out_channels=[32], down_block_types=["CrossAttnDownBlock2D"],
                       up_block_types=["CrossAttnUpBlock2D"], layers_per_block=1, attention_head_dim=4,
                       cross_attention_dim=32, norm_num_groups=8)


def test_plan_compiles_fsdp_sharded_video_unet_step():
  config = helpers.load_recipe("mindvideo", "paper")
  with config.unlocked():
    config.mesh.update(data=1, fsdp=-1)
  out = plan.plan_unet(config, "mindvideo_unet", jax.devices(), batch_size=8, frames=3, height=32, width=32,
                       context_len=8, unet_config=TINY_VIDEO_UNET)
  assert out["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert out["latents"] == [8, 3, 4, 4, 4] and out["cond"] == [8, 8, 32]
  # MinD-Video fine-tunes attn1, attn2 and the temporal attention only.
  assert 0 < out["trainable_params"] < out["params"]
  assert out["flops_per_step"] == 8 * out["flops_per_step_per_device"] > 0
  memory = out["per_device_bytes"]
  assert min(memory.values()) > 0
  # Params (float32) and the trainable params' two Adam moments are split 8 ways.
  state_bytes = 4 * out["params"] + 8 * out["trainable_params"]
  assert memory["arguments"] < state_bytes / 4


def test_zeroscope_plan_inputs_are_the_paper_model():
  """The Zeroscope path's model and batch, abstractly (the paper-size compile is `python -m brainjax.plan`)."""
  _, init_variables, _, batch, patterns = plan.unet_model_and_loss("zeroscope_unet", batch_size=2)
  assert batch["latents"].shape == (2, 24, 40, 72, 4)  # 24 frames of 576x320 through the VAE's 8x
  assert batch["cond"].shape == (2, 77, 1024)  # OpenCLIP ViT-H/14 text states
  assert patterns == ()  # trained in full
  params = jax.eval_shape(init_variables, jax.random.key(0))["params"]
  num_params = sum(x.size for x in jax.tree.leaves(nn.meta.unbox(params)))
  assert 1.40e9 < num_params < 1.42e9  # zeroscope_v2_576w's unet: 1.41 B


def test_plan_with_chunked_attention_does_not_report_undercounted_flops():
  """XLA counts a loop body once: with the chunked attention's loop the FLOPs would be too low; not reported."""
  config = helpers.load_recipe("mindvideo", "paper")
  with config.unlocked():
    config.mesh.update(data=1, fsdp=-1)
  out = plan.plan_unet(config, "mindvideo_unet", jax.devices(), batch_size=8, frames=2, height=32, width=32,
                       context_len=8, unet_config=TINY_VIDEO_UNET, attention_query_chunk=8)
  assert out["attention_query_chunk"] == 8
  assert out["flops_per_step"] is None and "without it" in out["flops_note"]
  assert out["per_device_bytes"]["temporaries"] > 0
