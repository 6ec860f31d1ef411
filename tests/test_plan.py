"""The planning tool compiles a paper-width train step sharded over 8 simulated devices."""

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
