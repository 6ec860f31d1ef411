r"""Plan a train step for a device mesh before booking it.

  python -m brainjax.plan --config=configs/mindvideo.py --stage=mbm_pretrain \
      --num_voxels=4656 --num_devices=8 --config.mesh.data=1 --config.mesh.fsdp=-1
  python -m brainjax.plan --config=configs/mindvideo.py --stage=align --topology=v5e:4x4   # needs libtpu

  # the paper-size video UNets (diffusion loss + backward + AdamW), fsdp over 8 simulated devices
  python -m brainjax.plan --config=configs/mindvideo.py --model=mindvideo_unet \
      --config.mesh.data=1 --config.mesh.fsdp=-1 --batch_size=8            # 6 frames at 256x256
  python -m brainjax.plan --config=configs/mindvideo.py --model=zeroscope_unet \
      --config.mesh.data=1 --config.mesh.fsdp=-1 --batch_size=8 --frames=24 --height=320 --width=576 \
      --bf16 --remat

Builds the model, optimizer and jitted step exactly as training does,
compiles it ahead of time for the mesh (simulated CPU devices, or abstract TPU
devices of a topology through libtpu) without allocating anything, and prints
parameter counts (total and trainable), FLOPs per step (XLA's cost analysis of
the compiled step: per device, and summed over the mesh) and per-device memory
(arguments, temporaries, outputs).

--stage plans a recipe stage (its model, loss, batch and optimizer come from
the config). --model plans a video UNet's fine-tuning step: the epsilon-prediction
diffusion loss on VAE latents (pixels / 8) conditioned on [batch, context_len,
cross_attention_dim] states, with Stable Diffusion's noise schedule and AdamW: the
recipe's `video_finetune` optimizer for mindvideo_unet when the recipe has that stage,
else unet_optim() (lr 2e-5 as MinD-Video fine-tunes; betas 0.9/0.999, weight decay
1e-2, clip 1.0, diffusers' defaults):
  mindvideo_unet   SD 1.5's UNet inflated to video (brainjax.models.video_unet, variant 'mindvideo':
                   sparse-causal attn1 + temporal attention), cross-attention 768; trains
                   video_unet.trainable_pattern('mindvideo') (attn1, attn2, attn_temp, norm_temp)
                   unless --trainable says otherwise; 6 frames at 256x256 by default
  zeroscope_unet   Zeroscope v2 576w's UNet3DConditionModel (brainjax.models.unet3d.zeroscope_config(),
                   cross-attention 1024); trains everything by default; 24 frames at 576x320 by default
Otherwise the recipe supplies the mesh and the logical-axis rules (--config.mesh.*).
--unet_config='{"block_out_channels": [32, 64], ...}' overrides fields of the UNet config
(diffusers' config.json names), e.g. for a small test.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import app, flags
from ml_collections import config_flags

UNET_MODELS = ("mindvideo_unet", "zeroscope_unet")
# (frames, height, width) in pixels: MinD-Video makes 6 frames at 256x256 (3 FPS), Zeroscope v2 576w
# 576x320 clips (24 frames is its usual length).
UNET_DEFAULT_SHAPES = {"mindvideo_unet": (6, 256, 256), "zeroscope_unet": (24, 320, 576)}
VAE_FACTOR = 8  # SD's and Zeroscope's VAE: latents are pixels / 8, 4 channels


def _define_flags() -> None:
  """Command-line flags; defined only when run as a program, so importing this module is side-effect free."""
  global _CONFIG, _STAGE, _MODEL, _NUM_VOXELS, _CLIP_DIM, _FRAMES, _NUM_DEVICES, _TOPOLOGY
  global _BATCH, _VIDEO_FRAMES, _HEIGHT, _WIDTH, _CONTEXT_LEN, _REMAT, _BF16, _TRAINABLE, _UNET_CONFIG, _QUERY_CHUNK
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/mindvideo.py:paper.")
  _STAGE = flags.DEFINE_enum("stage", None, ["mbm_pretrain", "align"], "Training stage to plan.")
  _MODEL = flags.DEFINE_enum("model", None, list(UNET_MODELS), "Video UNet fine-tuning step to plan.")
  _NUM_VOXELS = flags.DEFINE_integer("num_voxels", 4656, "Voxels per volume after padding (a multiple of 16).")
  _CLIP_DIM = flags.DEFINE_integer("clip_dim", 768, "CLIP embedding width (align).")
  _FRAMES = flags.DEFINE_integer("frames_per_tr", 6, "Frames per TR (align).")
  _NUM_DEVICES = flags.DEFINE_integer("num_devices", 8, "Simulated CPU devices when no --topology is given.")
  _TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:4x4 (abstract devices via libtpu).")
  _BATCH = flags.DEFINE_integer("batch_size", 8, "Clips per global batch (--model).")
  _VIDEO_FRAMES = flags.DEFINE_integer("frames", None, "Frames per clip (--model; default 6 / 24).")
  _HEIGHT = flags.DEFINE_integer("height", None, "Frame height in pixels (--model; default 256 / 320).")
  _WIDTH = flags.DEFINE_integer("width", None, "Frame width in pixels (--model; default 256 / 576).")
  _CONTEXT_LEN = flags.DEFINE_integer("context_len", 77, "Condition tokens per clip (--model).")
  _REMAT = flags.DEFINE_bool("remat", False, "Recompute resnet / transformer activations in the backward (--model).")
  _QUERY_CHUNK = flags.DEFINE_integer("attention_query_chunk", 0, "Spatial attention queries per chunk; 0: all at "
                                      "once (--model; see unet.query_chunked_attention).")
  _BF16 = flags.DEFINE_bool("bf16", False, "bfloat16 compute with float32 params and optimizer state (--model).")
  _TRAINABLE = flags.DEFINE_string("trainable", None, "Regex of the trained params, or 'all' (--model; default: "
                                   "the paper's subset for mindvideo_unet, all for zeroscope_unet).")
  _UNET_CONFIG = flags.DEFINE_string("unet_config", None, "JSON dict overriding UNet config fields (--model).")
  flags.mark_flags_as_required(["config"])
  flags.mark_flags_as_mutual_exclusive(["stage", "model"], required=True)


def _compile_step(config, devices, init_variables, loss_fn, batch: Mapping[str, Any],
                  make_tx: Callable[[Any], Any], trainable: Sequence[str]) -> dict:
  """Compiles the sharded train step of (init_variables, loss_fn, batch) on `devices`; sizes, FLOPs, memory."""
  import jax
  import numpy as np

  from brainjax.train import sharding as shd
  from brainjax.train.optim import trainable_mask
  from brainjax.train.state import make_train_step, plan_train_state

  mesh = shd.make_mesh(config.mesh.to_dict(), devices)
  rules = shd.rules_from_config(config.logical_axis_rules)
  _, abstract, shardings, tx = plan_train_state(init_variables, make_tx, jax.random.PRNGKey(0), mesh, rules)
  batch_sharding = shd.batch_sharding(mesh, rules)
  mask = trainable_mask(abstract.params, list(trainable))
  step = make_train_step(loss_fn, tx, shardings, {k: batch_sharding for k in batch}, mesh, rules, trainable=mask)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding) for k, v in batch.items()}
  start = time.time()
  compiled = step.lower(abstract, batch).compile()
  compile_s = time.time() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  size = lambda x: int(np.prod(x.shape))
  num_params = sum(size(x) for x in jax.tree.leaves(abstract.params))
  num_trainable = sum(size(x) for x, train in zip(jax.tree.leaves(abstract.params), jax.tree.leaves(mask)) if train)
  # The compiled program is one device's share of the SPMD-partitioned step.
  flops_device = float(cost.get("flops", float("nan"))) if cost else float("nan")
  return {
      "mesh": dict(mesh.shape), "devices": f"{len(devices)} x {devices[0].device_kind}",
      "batch_size": int(next(iter(batch.values())).shape[0]), "params": num_params, "trainable_params": num_trainable,
      "flops_per_step": flops_device * len(devices), "flops_per_step_per_device": flops_device,
      "per_device_bytes": {
          "arguments": int(memory.argument_size_in_bytes), "outputs": int(memory.output_size_in_bytes),
          "temporaries": int(memory.temp_size_in_bytes),
          "total": int(memory.argument_size_in_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes
                       - memory.alias_size_in_bytes)} if memory else None,
      "compile_s": round(compile_s, 1),
  }


def plan(config, stage: str, devices, *, num_voxels: int, clip_dim: int = 768, frames_per_tr: int = 6) -> dict:
  """Compiles `stage`'s train step for `devices` and returns its size, FLOPs and memory."""
  from brainjax.stages import align, mbm_pretrain
  from brainjax.train.optim import make_optimizer

  if stage == "mbm_pretrain":
    _, init_variables, loss_fn, batch = mbm_pretrain.model_and_loss(config, num_voxels)
  else:
    _, init_variables, loss_fn, batch = align.model_and_loss(config, num_voxels, clip_dim, frames_per_tr)
  settings = config[stage]
  result = _compile_step(config, devices, init_variables, loss_fn, batch,
                         lambda p: make_optimizer(settings.optim, settings.num_steps, p),
                         settings.optim.get("trainable", ()))
  return {"stage": stage, **result}


def unet_optim(trainable: Sequence[str] = ()):
  """A video UNet fine-tuning optimizer when no recipe stage gives one (Zeroscope; the benchmarks):
  AdamW lr 2e-5 (MinD-Video's), diffusers' training defaults for betas (0.9, 0.999), weight decay 1e-2, clip 1.0."""
  from brainjax.train.optim import optim_config
  return optim_config(lr=2e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2, grad_clip_norm=1.0,
                      schedule="constant", warmup_steps=0, trainable=tuple(trainable))


def unet_model_and_loss(model: str, *, batch_size: int, frames: int | None = None, height: int | None = None,
                        width: int | None = None, context_len: int = 77, remat: bool = False, bf16: bool = False,
                        trainable: str | None = None, unet_config: Mapping[str, Any] | None = None,
                        attention_query_chunk: int = 0):
  """(module, init_variables, loss_fn, batch ShapeDtypeStructs, trainable regexes) of a video UNet's train step.

  The loss is brainjax.diffusion.diffusion_loss (epsilon prediction, SD's scaled-linear betas) of
  the UNet on latents [batch, frames, height / 8, width / 8, 4] conditioned on
  [batch, context_len, cross_attention_dim]. `unet_config` overrides UNet config fields;
  `attention_query_chunk` > 0 runs the spatial attentions' queries in chunks of that many.
  """
  import jax
  import jax.numpy as jnp

  from brainjax.diffusion import NoiseSchedule, diffusion_loss
  from brainjax.models import unet, unet3d, video_unet

  if model not in UNET_MODELS:
    raise ValueError(f"model {model!r}: choose one of {list(UNET_MODELS)}.")
  default_frames, default_height, default_width = UNET_DEFAULT_SHAPES[model]
  frames, height, width = frames or default_frames, height or default_height, width or default_width
  kw = dict(remat=remat, dtype=jnp.bfloat16 if bf16 else jnp.float32, param_dtype=jnp.float32)
  if model == "mindvideo_unet":
    # SD 1.5's unet/config.json: diffusers' defaults except cross_attention_dim 768 (CLIP ViT-L/14).
    config = unet.UNetConfig.from_dict({**unet.UNetConfig(sample_size=64, cross_attention_dim=768).to_dict(),
                                        **dict(unet_config or {})})
    module = video_unet.VideoUNet(config, video_unet.video_spec("mindvideo"),
                                  attention_query_chunk=attention_query_chunk, **kw)
    default_trainable = video_unet.trainable_pattern("mindvideo")
  else:
    config = unet3d.UNet3DConfig.from_dict({**unet3d.zeroscope_config().to_dict(), **dict(unet_config or {})})
    module = unet3d.UNet3DConditionModel(config, parts=unet.UNetParts(attention_query_chunk=attention_query_chunk),
                                         **kw)
    default_trainable = "all"
  trainable = trainable or default_trainable
  patterns = () if trainable == "all" else (trainable,)
  if height % VAE_FACTOR or width % VAE_FACTOR:
    raise ValueError(f"height {height} and width {width} must be multiples of the VAE's factor {VAE_FACTOR}.")
  dummy = module.dummy_inputs()
  schedule = NoiseSchedule.create()  # SD 1.5's and Zeroscope's betas (scaled_linear 0.00085..0.012)

  def init_variables(rng):
    return module.init(rng, *dummy)

  def loss_fn(params, model_state, batch, rng):
    predict = lambda x, t, cond: module.apply({"params": params}, x, t, cond)
    loss = diffusion_loss(schedule, predict, batch["latents"], batch["cond"], rng)
    return loss, ({}, model_state)

  batch = {
      "latents": jax.ShapeDtypeStruct(
          (batch_size, frames, height // VAE_FACTOR, width // VAE_FACTOR, config.in_channels), jnp.float32),
      "cond": jax.ShapeDtypeStruct((batch_size, context_len, config.context_dim), jnp.float32),
  }
  return module, init_variables, loss_fn, batch, patterns


def plan_unet(config, model: str, devices, *, batch_size: int = 8, frames: int | None = None,
              height: int | None = None, width: int | None = None, context_len: int = 77, remat: bool = False,
              bf16: bool = False, trainable: str | None = None, unet_config: Mapping[str, Any] | None = None,
              num_steps: int = 10_000, attention_query_chunk: int = 0) -> dict:
  """Compiles a video UNet's sharded fine-tuning step (diffusion loss, backward, AdamW) for `devices`.

  `config` supplies the mesh and the logical-axis rules, and for mindvideo_unet the optimizer of its
  `video_finetune` stage when it has one (else unet_optim); see unet_model_and_loss for the rest.
  """
  import ml_collections

  from brainjax.train.optim import make_optimizer

  _, init_variables, loss_fn, batch, patterns = unet_model_and_loss(
      model, batch_size=batch_size, frames=frames, height=height, width=width, context_len=context_len,
      remat=remat, bf16=bf16, trainable=trainable, unet_config=unet_config,
      attention_query_chunk=attention_query_chunk)
  stage = config.get("video_finetune") if model == "mindvideo_unet" else None
  if stage is not None:  # the recipe's fine-tuning optimizer, with the trainable set asked for here
    optim = ml_collections.ConfigDict(stage.optim.to_dict())
    optim.trainable = tuple(patterns)
  else:
    optim = unet_optim(patterns)
  result = _compile_step(config, devices, init_variables, loss_fn, batch,
                         lambda p: make_optimizer(optim, num_steps, p), patterns)
  if attention_query_chunk:
    # XLA's cost analysis counts a loop's body once, and the chunked attention is a loop over the chunks:
    # its figure would leave out most of the attention. The step's FLOPs are those of the run without
    # chunking plus the attention forward that each chunk recomputes in the backward pass.
    result.update(flops_per_step=None, flops_per_step_per_device=None,
                  flops_note="not counted with --attention_query_chunk (XLA counts a loop body once); run without "
                             "it for the FLOPs")
  return {"model": model, "latents": list(batch["latents"].shape), "cond": list(batch["cond"].shape),
          "trainable": list(patterns) or "all", "remat": remat, "attention_query_chunk": attention_query_chunk,
          "compute_dtype": "bfloat16" if bf16 else "float32", **result}


def _devices():
  import jax
  if _TOPOLOGY.value:
    from jax.experimental import topologies
    return topologies.get_topology_desc(platform="tpu", topology_name=_TOPOLOGY.value).devices
  return jax.devices()[: _NUM_DEVICES.value]


def main(argv) -> None:
  del argv
  if _MODEL.value:
    result = plan_unet(_CONFIG.value, _MODEL.value, _devices(), batch_size=_BATCH.value, frames=_VIDEO_FRAMES.value,
                       height=_HEIGHT.value, width=_WIDTH.value, context_len=_CONTEXT_LEN.value, remat=_REMAT.value,
                       bf16=_BF16.value, trainable=_TRAINABLE.value, attention_query_chunk=_QUERY_CHUNK.value,
                       unet_config=json.loads(_UNET_CONFIG.value) if _UNET_CONFIG.value else None)
  else:
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
