"""ModelScope / Zeroscope video UNet: parity with diffusers' PyTorch UNet3DConditionModel on tiny random configs,
weights in/out, errors, logical axes."""

import dataclasses
import functools
import inspect
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet3DConditionModel as TorchUNet3D
from diffusers.utils import logging as diffusers_logging
from safetensors.numpy import load_file

from brainjax.models import unet, unet3d
from tests import parity
from tests import torch_reference as torch_ref

diffusers_logging.set_verbosity_error()

CD, D, CU, U = "CrossAttnDownBlock3D", "DownBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"
SEQ = 5  # encoder sequence length
# (name, diffusers UNet3DConditionModel kwargs, sample shape [B, T, H, W, C], timesteps)
CASES = [
    # Zeroscope's layout in miniature: heads of attention_head_dim = 4 channels (8 and 16 heads; transformer_in
    # 8 x 4), 3 frames, an odd-sized latent (9 x 11 -> 5 x 6 -> upsampled to the skips' sizes), one t per video.
    ("2blocks-32-64-head4-3frames-odd", dict(
        block_out_channels=(32, 64), down_block_types=(CD, D), up_block_types=(U, CU), layers_per_block=1,
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8), (2, 3, 9, 11, 4), np.array([3, 700])),
    # Three levels, two layers per block, heads 8 wide (4 / 4 / 8 heads; transformer_in 64 wide on 32 channels),
    # gelu act_fn (conv_act stays SiLU), mid_block_scale_factor, downsample_padding 0, 4 frames, a scalar t.
    ("3blocks-2layers-head8-gelu-4frames", dict(
        block_out_channels=(32, 32, 64), down_block_types=(CD, CD, D), up_block_types=(U, CU, CU),
        layers_per_block=2, cross_attention_dim=24, attention_head_dim=8, norm_num_groups=16, act_fn="gelu",
        mid_block_scale_factor=1.5, downsample_padding=0), (2, 4, 8, 8, 4), 981),
    # Cross-attention everywhere, heads 5 wide that do not divide the channels (6 heads = 30 of 32 channels, 9 = 45
    # of 48), other in/out channels, a single frame (the temporal layers see T = 1), three videos.
    ("2blocks-allcross-head5-1frame", dict(
        block_out_channels=(32, 48), down_block_types=(CD, CD), up_block_types=(CU, CU), layers_per_block=1,
        cross_attention_dim=16, attention_head_dim=5, norm_num_groups=16, in_channels=3, out_channels=5),
     (3, 1, 8, 8, 3), np.array([0, 250, 999])),
]
MAX_REL_ERR = 1e-4


def _torch_unet(cfg: dict, seed: int = 0) -> TorchUNet3D:
  """A random diffusers model whose every path is live: random norm affines, and the zero-initialised
  tensors (temporal convs' last stage, conv biases) drawn at random too."""
  torch.manual_seed(seed)
  model = TorchUNet3D(sample_size=16, **cfg).eval()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
        module.weight.copy_(torch.randn_like(module.weight) * 0.5 + 1.0)
        module.bias.copy_(torch.randn_like(module.bias) * 0.5)
    for _, p in model.named_parameters():
      if not p.any():
        fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 1
        p.copy_(torch.randn_like(p) / np.sqrt(fan_in) * (1.0 if p.ndim > 1 else 0.1))
  return model



def _to_torch_layout(x) -> torch.Tensor:  # [B, T, H, W, C] -> [B, C, T, H, W]
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 4, 1, 2, 3)))


def _inputs(shape, context_dim, seed=0):
  rng = np.random.default_rng(seed)
  sample = rng.standard_normal(shape).astype(np.float32)
  context = rng.standard_normal((shape[0], SEQ, context_dim)).astype(np.float32)
  return sample, context


# XLA's cheapest backend optimisation level: compiling each tiny UNet is most of this file's run time, and running
# it is milliseconds either way.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@functools.partial(jax.jit, static_argnums=0, compiler_options=_FAST_COMPILE)
def _apply(module, params, sample, timesteps, context):
  return module.apply({"params": params}, sample, timesteps, context)


def _torch_out(model, sample, timesteps, context) -> np.ndarray:
  t = torch.as_tensor(timesteps) if isinstance(timesteps, np.ndarray) else timesteps
  with torch.no_grad():
    out = model(_to_torch_layout(sample), t, torch.from_numpy(context)).sample
  return out.numpy().transpose(0, 2, 3, 4, 1)


# ------------------------------------------------------------------------------ parity


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
  """The tiny reference models run fastest on one torch thread: with XLA's compiler threads on the same cores,
  torch's spinning intra-op workers made a forward up to 100x slower."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)



@pytest.mark.parametrize("name,cfg,shape,t", CASES, ids=[c[0] for c in CASES])
def test_parity_with_diffusers(tmp_path, name, cfg, shape, t):
  model = _torch_unet(cfg)
  module, params = unet3d.load_unet3d(torch_ref.save_pretrained(tmp_path, model))
  assert module.config.block_out_channels == cfg["block_out_channels"]
  sample, context = _inputs(shape, cfg["cross_attention_dim"])
  print(f"\nunet3d {name}:")
  parity.assert_rel_close("forward", _torch_out(model, sample, t, context), _apply(module, params, sample, t, context),
                          MAX_REL_ERR)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """CASES[0] as (torch model, flax module, params, sample, context, timesteps, saved directory)."""
  _, cfg, shape, t = CASES[0]
  model = _torch_unet(cfg, seed=1)
  path = torch_ref.save_pretrained(tmp_path_factory.mktemp("small"), model)
  module, params = unet3d.load_unet3d(path)
  return (model, module, params, *_inputs(shape, cfg["cross_attention_dim"], seed=1), t, path)


# ------------------------------------------------------------------------------ weights in and out


def test_load_then_save_reproduces_the_safetensors_exactly(tmp_path, small):
  _, module, params, *_, path = small
  unet3d.save_unet3d(tmp_path, module, {"params": params})
  assert sorted(os.listdir(tmp_path)) == ["config.json", "diffusion_pytorch_model.safetensors"]
  sd = load_file(os.path.join(path, "diffusion_pytorch_model.safetensors"))
  back = load_file(os.path.join(tmp_path, "diffusion_pytorch_model.safetensors"))
  assert sorted(back) == sorted(sd)
  for k in sd:
    assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape and back[k].tobytes() == sd[k].tobytes(), k
  # Every config's table round trip (the temporal convs' 5-D kernels, linear projections, ...) is bitwise too.
  for i, (_, cfg, _, _) in enumerate(CASES[1:]):
    sd = {k: v.numpy() for k, v in _torch_unet(cfg).state_dict().items()}
    back = unet3d.UNET3D_TABLE.to_torch(unet3d.UNET3D_TABLE.to_flax(sd))
    assert sorted(back) == sorted(sd)
    assert all(back[k].tobytes() == sd[k].tobytes() and back[k].shape == sd[k].shape for k in sd)


def test_export_of_flax_params_runs_the_same_in_diffusers(tmp_path, small):
  """Params born in Flax (all random, so a misplaced tensor shows) -> save_unet3d -> diffusers from_pretrained."""
  model, module, _, sample, context, t, _ = small
  params = parity.random_flax_params(unet3d.abstract_params(module))
  unet3d.save_unet3d(tmp_path, module.config, params)
  reloaded, info = TorchUNet3D.from_pretrained(tmp_path, output_loading_info=True)
  assert not any(info.values()), info  # no missing / unexpected / mismatched keys
  public = lambda c: {k: list(v) if isinstance(v, tuple) else v for k, v in dict(c).items() if not k.startswith("_")}
  assert public(reloaded.config) == public(model.config)
  print("\nexport from flax params:")
  parity.assert_rel_close("forward", _torch_out(reloaded.eval(), sample, t, context),
                          _apply(module, params, sample, t, context), MAX_REL_ERR)


def test_load_from_gcs_pipeline_directory(fake_gcs, small):
  """A copy of a whole pipeline on GCS (model_index.json + unet/): load_unet3d finds the unet/ folder."""
  model, module, params, *_ = small
  root = os.path.join(fake_gcs, "bucket", "zeroscope")
  torch_ref.save_pretrained(os.path.join(root, "unet"), model)
  with open(os.path.join(root, "model_index.json"), "w") as f:
    json.dump({"_class_name": "TextToVideoSDPipeline", "unet": ["diffusers", "UNet3DConditionModel"]}, f)
  loaded_module, loaded = unet3d.load_unet3d("gs://bucket/zeroscope", remat=True)
  assert loaded_module.remat and loaded_module.config == module.config
  jax.tree.map(np.testing.assert_array_equal, params, loaded)


def test_zeroscope_config_is_the_full_size_model():
  """zeroscope_config(): diffusers' defaults, and the same tensors (names mapped, shapes) as diffusers builds."""
  config = unet3d.zeroscope_config()
  defaults = {k: p.default for k, p in inspect.signature(TorchUNet3D.__init__).parameters.items() if k != "self"}
  assert {f.name: getattr(config, f.name) for f in dataclasses.fields(config)} == {**defaults, "sample_size": 32}
  assert config.heads == (5, 10, 20, 20)
  with torch.device("meta"):
    shapes = {k: tuple(v.shape) for k, v in TorchUNet3D(**config.to_dict()).state_dict().items()}
  # The abstract Flax params through the table, as zero-byte arrays (a structured dtype with no fields).
  empty = jax.tree.map(lambda s: np.empty(s.shape, np.dtype([])),
                       unet3d.abstract_params(unet3d.UNet3DConditionModel(config)))
  assert {k: v.shape for k, v in unet3d.UNET3D_TABLE.to_torch(empty).items()} == shapes
  print(f"\nzeroscope unet: {sum(np.prod(s) for s in shapes.values()) / 1e9:.3f}B params")


# ------------------------------------------------------------------------------ errors


def test_unsupported_configs_are_explained(tmp_path):
  with pytest.raises(ValueError, match=r"num_attention_heads = 8: diffusers' UNet3DConditionModel refuses it"):
    unet3d.UNet3DConfig(num_attention_heads=8)
  with pytest.raises(NotImplementedError):  # diffusers refuses it too
    TorchUNet3D(num_attention_heads=8)
  with pytest.raises(ValueError, match=r"time_cond_proj_dim = 256: a guidance-scale embedding .* not supported"):
    unet3d.UNet3DConfig(time_cond_proj_dim=256)
  with pytest.raises(ValueError, match=r"attention_head_dim = \(8, 16, 32, 32\): per-block values are not "
                                       r"supported; diffusers' UNet3DConditionModel fails on them"):
    unet3d.UNet3DConfig.from_dict({"attention_head_dim": [8, 16, 32, 32]})
  with pytest.raises(TypeError):  # diffusers fails on it too
    TorchUNet3D(attention_head_dim=(8, 16, 32, 32))
  with pytest.raises(ValueError, match=r"block type\(s\) \['CrossAttnDownBlockSpatioTemporal'\] are not supported"):
    unet3d.UNet3DConfig(down_block_types=("CrossAttnDownBlockSpatioTemporal", CD, CD, D))
  with pytest.raises(ValueError, match=r"up_block_types has 4 entries but block_out_channels has 2"):
    unet3d.UNet3DConfig(block_out_channels=(32, 64), down_block_types=(CD, D))
  with pytest.raises(ValueError, match=r"norm_num_groups = None is not supported"):
    unet3d.UNet3DConfig(norm_num_groups=None)
  with pytest.raises(ValueError, match=r"block_out_channels\[1\] = 40 is not divisible by norm_num_groups 32"):
    unet3d.UNet3DConfig(block_out_channels=(32, 40, 64, 64))
  with pytest.raises(ValueError, match=r"attention_head_dim = 64 \(the width of every attention head\) exceeds "
                                       r"the 32 channels of block 0"):
    unet3d.UNet3DConfig(block_out_channels=(32, 64, 64, 64))
  with pytest.raises(ValueError, match=r"config is for diffusers' UNet2DConditionModel.*unet.load_unet"):
    unet3d.UNet3DConfig.from_dict({"_class_name": "UNet2DConditionModel"})
  with pytest.raises(ValueError, match=r"parts=UNetParts\(frames=2\)"):
    unet3d.abstract_params(unet3d.UNet3DConditionModel(unet3d.UNet3DConfig(), parts=unet.UNetParts(frames=2)))
  # From a checkpoint directory: the config is checked before any weight is read.
  path = torch_ref.save_pretrained(tmp_path, _torch_unet(CASES[0][1]))
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "time_cond_proj_dim": 32}))
  os.remove(tmp_path / "diffusion_pytorch_model.safetensors")
  with pytest.raises(ValueError, match=r"time_cond_proj_dim = 32"):
    unet3d.load_unet3d(path)
  # The config round-trips, with diffusers' private entries (and keys diffusers ignores) ignored.
  assert unet3d.UNet3DConfig.from_dict({**config, "_name_or_path": "x", "flip_sin_to_cos": True}).to_dict() == {
      k: v for k, v in config.items() if k not in ("_diffusers_version", "_use_default_values")}


def test_bad_inputs_are_explained(small):
  _, module, params, sample, context, *_ = small  # sample [2, 3, 9, 11, 4], context [2, 5, 16]
  run = lambda x, t=1, ctx=context: module.apply({"params": params}, x, t, ctx)
  with pytest.raises(ValueError, match=r"sample has shape \(2, 9, 11, 4\); .* \[B, T, H, W, 4\]\. This looks like a "
                                       r"batch of images; add a frames axis \(sample\[:, None\]"):
    run(sample[:, 0])
  with pytest.raises(ValueError, match=r"looks channels-first \(\[B, C, T, H, W\], diffusers' layout\); transpose "
                                       r"it with x.transpose\(0, 2, 3, 4, 1\)"):
    run(sample.transpose(0, 4, 1, 2, 3))
  with pytest.raises(ValueError, match=r"looks like \[B, T, C, H, W\].*x.transpose\(0, 1, 3, 4, 2\)"):
    run(sample.transpose(0, 1, 4, 2, 3))
  with pytest.raises(ValueError, match=r"encoder_hidden_states have shape \(2, 5, 32\); the video UNet expects "
                                       r"\[B, S, 16\] \(cross_attention_dim = 16\)"):
    run(sample, ctx=np.zeros((2, SEQ, 32), np.float32))
  with pytest.raises(ValueError, match=r"encoder_hidden_states have batch 6 but sample has batch 2 videos; give one "
                                       r"conditioning sequence per video"):
    run(sample, ctx=np.repeat(context, 3, axis=0))  # one per frame: diffusers repeats them itself
  with pytest.raises(ValueError, match=r"timesteps have shape \(6,\); give a scalar or one per video, shape \(2,\)"):
    run(sample, t=np.arange(6))


# ------------------------------------------------------------------------------ axes


def test_logical_axes(small):
  _, module, *_ = small
  boxed = unet3d.abstract_params(module, boxed=True)
  leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  unnamed = [jax.tree_util.keystr(p) for p, leaf in leaves
             if not isinstance(leaf, nn.LogicallyPartitioned) or len(leaf.names) != leaf.value.ndim]
  assert not unnamed, unnamed
  specs = nn.get_partition_spec(boxed)
  conv = specs["down_blocks_0"]["temp_convs_0"]
  assert tuple(conv["conv1_2"]["kernel"]) == (None, None, None, None, "embed")
  assert tuple(conv["conv4_3"]["bias"]) == ("embed",)
  assert tuple(conv["conv2_0"]["scale"]) == ("embed",)
  temporal = specs["mid_block"]["temp_attentions_0"]
  assert tuple(temporal["proj_in"]["kernel"]) == (None, "embed")
  assert tuple(temporal["transformer_blocks_0"]["attn2"]["to_k"]["kernel"]) == ("embed", "heads")
  assert tuple(specs["transformer_in"]["transformer_blocks_0"]["ff"]["net_2"]["kernel"]) == ("mlp", "embed")
  assert tuple(specs["down_blocks_0"]["resnets_0"]["conv1"]["kernel"]) == (None, None, None, "embed")
  assert tuple(specs["conv_out"]["kernel"]) == (None, None, None, None)


def test_remat_and_bf16_trace_with_the_same_params(small):
  """remat (every resnet / transformer / temporal layer) and bf16 keep the param tree; traced only (no compile:
  remat changes only what the backward pass stores)."""
  _, module, params, sample, context, t, _ = small
  video = unet3d.UNet3DConditionModel(module.config, remat=True, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.bfloat16), params)  # the float32 model's names
  out = jax.eval_shape(lambda p: video.apply({"params": p}, sample, t, context), shapes)
  assert out.shape == sample.shape and out.dtype == jnp.bfloat16
