r"""Plan a stage's train step for a device mesh before booking it.

  python -m brainjax.plan --config=configs/mindvideo.py --stage=mbm_pretrain \
      --num_voxels=4656 --num_devices=8 --config.mesh.data=1 --config.mesh.fsdp=-1
  python -m brainjax.plan --config=configs/mindvideo.py --stage=align --topology=v5e:4x4   # needs libtpu

Builds the stage's model, optimizer and jitted step exactly as training does,
compiles it ahead of time for the mesh (simulated CPU devices, or abstract TPU
devices of a topology through libtpu) without allocating anything, and prints
parameter counts, FLOPs per step (XLA's cost analysis of the compiled step)
and per-device memory (arguments, temporaries, outputs).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags



def _define_flags() -> None:
  """Command-line flags; defined only when run as a program, so importing this module is side-effect free."""
  global _CONFIG, _STAGE, _NUM_VOXELS, _CLIP_DIM, _FRAMES, _NUM_DEVICES, _TOPOLOGY
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/mindvideo.py:paper.")
  _STAGE = flags.DEFINE_enum("stage", None, ["mbm_pretrain", "align"], "Training stage to plan.")
  _NUM_VOXELS = flags.DEFINE_integer("num_voxels", 4656, "Voxels per volume after padding (a multiple of 16).")
  _CLIP_DIM = flags.DEFINE_integer("clip_dim", 768, "CLIP embedding width (align).")
  _FRAMES = flags.DEFINE_integer("frames_per_tr", 6, "Frames per TR (align).")
  _NUM_DEVICES = flags.DEFINE_integer("num_devices", 8, "Simulated CPU devices when no --topology is given.")
  _TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:4x4 (abstract devices via libtpu).")
  flags.mark_flags_as_required(["config", "stage"])


def plan(config, stage: str, devices, *, num_voxels: int, clip_dim: int = 768, frames_per_tr: int = 6) -> dict:
  """Compiles `stage`'s train step for `devices` and returns its size, FLOPs and memory."""
  import jax
  import numpy as np

  from brainjax.stages import align, mbm_pretrain
  from brainjax.train import sharding as shd
  from brainjax.train.optim import make_optimizer
  from brainjax.train.state import make_train_step, plan_train_state

  if stage == "mbm_pretrain":
    _, init_variables, loss_fn, batch = mbm_pretrain.model_and_loss(config, num_voxels)
  else:
    _, init_variables, loss_fn, batch = align.model_and_loss(config, num_voxels, clip_dim, frames_per_tr)
  settings = config[stage]
  mesh = shd.make_mesh(config.mesh.to_dict(), devices)
  rules = shd.rules_from_config(config.logical_axis_rules)
  _, abstract, shardings, tx = plan_train_state(
      init_variables, lambda p: make_optimizer(settings.optim, settings.num_steps, p), jax.random.PRNGKey(0),
      mesh, rules)
  batch_sharding = shd.batch_sharding(mesh, rules)
  step = make_train_step(loss_fn, tx, shardings, {k: batch_sharding for k in batch}, mesh, rules)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding) for k, v in batch.items()}
  start = time.time()
  compiled = step.lower(abstract, batch).compile()
  compile_s = time.time() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  return {
      "stage": stage, "mesh": dict(mesh.shape), "devices": f"{len(devices)} x {devices[0].device_kind}",
      "batch_size": settings.batch_size, "params": num_params,
      "flops_per_step": float(cost.get("flops", float("nan"))) if cost else float("nan"),
      "per_device_bytes": {
          "arguments": int(memory.argument_size_in_bytes), "outputs": int(memory.output_size_in_bytes),
          "temporaries": int(memory.temp_size_in_bytes),
          "total": int(memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
                       - memory.alias_size_in_bytes)} if memory else None,
      "compile_s": round(compile_s, 1),
  }


def _devices():
  import jax
  if _TOPOLOGY.value:
    from jax.experimental import topologies
    return topologies.get_topology_desc(platform="tpu", topology_name=_TOPOLOGY.value).devices
  return jax.devices()[: _NUM_DEVICES.value]


def main(argv) -> None:
  del argv
  result = plan(_CONFIG.value, _STAGE.value, _devices(), num_voxels=_NUM_VOXELS.value, clip_dim=_CLIP_DIM.value,
                frames_per_tr=_FRAMES.value)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  _define_flags()
  # Simulated CPU devices must be requested before jax starts.
  if "--topology" not in " ".join(sys.argv):
    count = next((a.split("=")[1] for a in sys.argv if a.startswith("--num_devices=")), "8")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={count}").strip()
  app.run(main)
