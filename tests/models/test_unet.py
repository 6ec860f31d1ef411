"""SD 1.x UNet: parity with diffusers' PyTorch UNet2DConditionModel on tiny random configs, weights in/out,
timesteps, errors, logical axes."""

import copy
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel as TorchUNet
from diffusers.utils import logging as diffusers_logging
from safetensors.numpy import load_file, save_file

from brainjax.weights import CheckpointError, ConversionError
from brainjax.models import unet
from tests import parity
from tests import torch_reference as torch_ref

diffusers_logging.set_verbosity_error()

CD, D, CU, U = "CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"
SEQ = 7  # encoder sequence length
# (name, diffusers UNet2DConditionModel kwargs, sample shape [N, H, W, C])
CASES = [
    # SD 1.5's layout in miniature: conv projections, attention_head_dim = number of heads (8 heads of 4 / 8).
    ("2blocks-32-64-conv-8heads", dict(
        block_out_channels=(32, 64), down_block_types=(CD, D), up_block_types=(U, CU), layers_per_block=1,
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8), (2, 16, 16, 4)),
    # Three levels, two layers per block, linear projections, per-block heads (2, 4, 2 -> reversed going up),
    # a non-default freq_shift and an odd height (18 -> 9 -> 5 -> up to 9 -> 18: the sized upsampling path).
    ("3blocks-32-32-64-linear-2layers", dict(
        block_out_channels=(32, 32, 64), down_block_types=(CD, CD, D), up_block_types=(U, CU, CU),
        layers_per_block=2, cross_attention_dim=32, attention_head_dim=(2, 4, 2), use_linear_projection=True,
        norm_num_groups=16, freq_shift=1, transformer_layers_per_block=(1, 2, 1)), (3, 18, 24, 4)),
    # All cross-attention blocks (so the mid block's heads come from the last entry), only_cross_attention,
    # upcast_attention (a no-op in float32), gelu act, out_channels != in_channels, 3 heads over 32 channels
    # (inner_dim 30 < 32, as diffusers rounds), mid_block_scale_factor.
    ("2blocks-allcross-onlycross-gelu", dict(
        block_out_channels=(32, 48), down_block_types=(CD, CD), up_block_types=(CU, CU), layers_per_block=1,
        cross_attention_dim=16, attention_head_dim=3, norm_num_groups=16, only_cross_attention=(True, False),
        upcast_attention=True, act_fn="gelu", in_channels=3, out_channels=5, mid_block_scale_factor=1.5,
        flip_sin_to_cos=False), (2, 32, 32, 3)),
]
MAX_REL_ERR = 1e-4


def _torch_unet(cfg: dict, seed: int = 0) -> TorchUNet:
  torch.manual_seed(seed)
  model = TorchUNet(sample_size=16, **cfg).eval()
  # torch's default init leaves the norms at identity; random affine params make the test see them.
  return torch_ref.randomize_norms_(model)





def _inputs(shape, context_dim, seed=0):
  rng = np.random.default_rng(seed)
  sample = rng.standard_normal(shape).astype(np.float32)
  context = rng.standard_normal((shape[0], SEQ, context_dim)).astype(np.float32)
  return sample, context


@functools.partial(jax.jit, static_argnums=0)
def _apply(module, params, sample, timesteps, context):
  return module.apply({"params": params}, sample, timesteps, context)


def _torch_out(model, sample, timesteps, context) -> np.ndarray:
  t = torch.as_tensor(timesteps) if isinstance(timesteps, np.ndarray) else timesteps
  with torch.no_grad():
    return torch_ref.nhwc(model(torch_ref.nchw(sample), t, torch.from_numpy(context)).sample)


# ------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("name,cfg,shape", CASES, ids=[c[0] for c in CASES])
def test_parity_with_diffusers(tmp_path, name, cfg, shape):
  model = _torch_unet(cfg)
  module, params = unet.load_unet(torch_ref.save_pretrained(tmp_path, model))
  assert module.config.block_out_channels == cfg["block_out_channels"]
  sample, context = _inputs(shape, cfg["cross_attention_dim"])
  t = np.array([3, 500, 999][:shape[0]], np.int64)  # one timestep per sample
  print(f"\nunet {name}:")
  parity.assert_rel_close("forward, per-sample t", _torch_out(model, sample, t, context),
                          _apply(module, params, sample, t, context), MAX_REL_ERR)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """CASES[0] as (torch model, flax module, params, sample, context)."""
  _, cfg, shape = CASES[0]
  model = _torch_unet(cfg, seed=1)
  module, params = unet.load_unet(torch_ref.save_pretrained(tmp_path_factory.mktemp("small"), model))
  return (model, module, params, *_inputs(shape, cfg["cross_attention_dim"], seed=1))


def test_scalar_timesteps_broadcast_over_the_batch(small):
  model, module, params, sample, context = small
  n = sample.shape[0]

  @jax.jit
  def run(params):  # one compilation for the three timestep forms
    return [module.apply({"params": params}, sample, t, context)
            for t in (981, 17.5, jnp.full((n,), 981, jnp.int32))]

  as_int, as_float, as_vector = run(params)
  print("\nscalar timesteps:")
  parity.assert_rel_close("scalar int t=981 vs diffusers", _torch_out(model, sample, 981, context), as_int,
                          MAX_REL_ERR)
  parity.assert_rel_close("scalar float t=17.5 vs diffusers", _torch_out(model, sample, 17.5, context), as_float,
                          MAX_REL_ERR)
  np.testing.assert_array_equal(as_int, as_vector)


def test_timestep_embedding_matches_diffusers():
  from diffusers.models.embeddings import get_timestep_embedding
  t = np.array([0, 1, 17, 250, 999], np.int64)
  for dim, flip, shift in ((32, True, 0), (33, False, 1), (320, True, 0)):
    ref = get_timestep_embedding(torch.from_numpy(t), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift).numpy()
    got = unet.timestep_embedding(jnp.asarray(t), dim, flip, shift)
    np.testing.assert_allclose(got, ref, atol=2e-4)  # sin/cos of args up to ~1000 in float32


def test_nearest_resize_matches_torch():
  x = np.random.default_rng(0).standard_normal((1, 5, 3, 2)).astype(np.float32)
  for size in ((10, 6), (9, 5), (7, 4), (5, 3)):
    ref = torch_ref.nhwc(torch.nn.functional.interpolate(torch_ref.nchw(x), size=size, mode="nearest"))
    np.testing.assert_array_equal(unet.resize_nearest(jnp.asarray(x), size), ref)


# ------------------------------------------------------------------------------ weights in and out


def test_state_dict_round_trip_is_bitwise(tmp_path):
  for i, (_, cfg, _) in enumerate(CASES):
    sd = load_file(os.path.join(torch_ref.save_pretrained(tmp_path / str(i), _torch_unet(cfg)), "diffusion_pytorch_model.safetensors"))
    back = unet.UNET_TABLE.to_torch(unet.UNET_TABLE.to_flax(sd))
    assert sorted(back) == sorted(sd)
    for k in sd:
      assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape and back[k].tobytes() == sd[k].tobytes()


def test_save_then_diffusers_from_pretrained_reproduces_the_model(tmp_path, small):
  model, module, params, _, _ = small
  unet.save_unet(tmp_path, module, {"params": params})
  assert sorted(os.listdir(tmp_path)) == ["config.json", "diffusion_pytorch_model.safetensors"]
  reloaded, info = TorchUNet.from_pretrained(tmp_path, output_loading_info=True)
  assert not any(info.values()), info  # no missing / unexpected / mismatched keys
  public = lambda c: {k: list(v) if isinstance(v, tuple) else v for k, v in dict(c).items() if not k.startswith("_")}
  assert public(reloaded.config) == public(model.config)
  for k, v in model.state_dict().items():
    assert torch.equal(v, reloaded.state_dict()[k]), k


def test_export_of_flax_initialised_params_matches_in_diffusers(tmp_path, small):
  """The export direction on its own: params born in Flax (all random, so a misplaced tensor shows), run by diffusers."""
  _, module, _, sample, context = small
  params = parity.random_flax_params(unet.abstract_params(module))
  unet.save_unet(tmp_path, module.config, params)
  model, info = TorchUNet.from_pretrained(tmp_path, output_loading_info=True)
  assert not any(info.values()), info
  t = np.array([10, 700], np.int64)
  print("\nexport from flax init:")
  parity.assert_rel_close("forward", _torch_out(model.eval(), sample, t, context),
                          _apply(module, params, sample, t, context), MAX_REL_ERR)


def test_load_from_gcs_pipeline_directory(fake_gcs, small):
  """A copy of a whole pipeline on GCS (model_index.json + unet/): load_unet finds the unet/ folder."""
  model, module, params, _, _ = small
  root = os.path.join(fake_gcs, "bucket", "sd15")
  torch_ref.save_pretrained(os.path.join(root, "unet"), model)
  with open(os.path.join(root, "model_index.json"), "w") as f:
    json.dump({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}, f)
  loaded_module, loaded = unet.load_unet("gs://bucket/sd15", remat=True)
  assert loaded_module.remat and loaded_module.config == module.config
  jax.tree.map(np.testing.assert_array_equal, params, loaded)


# ------------------------------------------------------------------------------ errors


def test_unsupported_configs_are_explained(tmp_path):
  with pytest.raises(ValueError, match=r"block type\(s\) \['SimpleCrossAttnDownBlock2D'\] are not supported"):
    unet.UNetConfig(down_block_types=("SimpleCrossAttnDownBlock2D", CD, CD, D))
  with pytest.raises(ValueError, match=r"block type\(s\) \['AttnUpBlock2D'\] are not supported"):
    unet.UNetConfig(up_block_types=(U, CU, CU, "AttnUpBlock2D"))
  with pytest.raises(ValueError, match=r"mid_block_type = 'UNetMidBlock2DSimpleCrossAttn' is not supported"):
    unet.UNetConfig(mid_block_type="UNetMidBlock2DSimpleCrossAttn")
  with pytest.raises(ValueError, match=r"num_attention_heads = 8: diffusers' UNet2DConditionModel refuses it"):
    unet.UNetConfig(num_attention_heads=8)
  with pytest.raises(ValueError):  # diffusers refuses it too
    TorchUNet(num_attention_heads=8)
  with pytest.raises(ValueError, match=r"class_embed_type = 'timestep': class embeddings .* not supported"):
    unet.UNetConfig(class_embed_type="timestep")
  with pytest.raises(ValueError, match=r"addition_embed_type = 'text_time': added embeddings \(SDXL"):
    unet.UNetConfig.from_dict({"addition_embed_type": "text_time"})
  with pytest.raises(ValueError, match=r"up_block_types has 4 entries but block_out_channels has 2"):
    unet.UNetConfig(block_out_channels=(32, 64), down_block_types=(CD, D))
  with pytest.raises(ValueError, match=r"attention_head_dim has 3 entries but there are 4 down blocks"):
    unet.UNetConfig(attention_head_dim=(5, 10, 20))
  with pytest.raises(ValueError, match=r"block_out_channels\[1\] = 40 is not divisible by norm_num_groups 32"):
    unet.UNetConfig(block_out_channels=(32, 40, 64, 64))
  with pytest.raises(ValueError, match=r"diffusers' UNet3DConditionModel, not UNet2DConditionModel"):
    unet.UNetConfig.from_dict({"_class_name": "UNet3DConditionModel"})
  # From a checkpoint directory: the config is checked before any weight is read.
  path = torch_ref.save_pretrained(tmp_path, _torch_unet(CASES[0][1]))
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "down_block_types": ["CrossAttnDownBlock2D",
                                                                                   "AttnDownBlock2D"]}))
  with pytest.raises(ValueError, match=r"\['AttnDownBlock2D'\] are not supported"):
    unet.load_unet(path)
  # The config round-trips, with diffusers' private entries ignored.
  assert unet.UNetConfig.from_dict({**config, "_name_or_path": "x"}).to_dict() == {
      k: v for k, v in config.items() if k != "_diffusers_version"}


def test_bad_inputs_are_explained(small):
  _, module, params, sample, context = small
  with pytest.raises(ValueError, match=r"encoder_hidden_states have shape \(2, 7, 32\); the UNet expects "
                                       r"\[N, S, 16\] \(cross_attention_dim = 16\)"):
    module.apply({"params": params}, sample, 1, np.zeros((2, SEQ, 32), np.float32))
  with pytest.raises(ValueError, match=r"encoder_hidden_states have batch 1 but sample has batch 2"):
    module.apply({"params": params}, sample, 1, context[:1])
  with pytest.raises(ValueError, match=r"looks channels-first \(NCHW"):
    module.apply({"params": params}, np.zeros((2, 4, 16, 8), np.float32), 1, context)
  with pytest.raises(ValueError, match=r"timesteps have shape \(3,\); give a scalar or one per sample, shape \(2,\)"):
    module.apply({"params": params}, sample, np.arange(3), context)


def test_weight_mismatches_name_the_file_and_the_keys(tmp_path):
  path = torch_ref.save_pretrained(tmp_path, _torch_unet(CASES[0][1]))
  weights = os.path.join(path, "diffusion_pytorch_model.safetensors")
  sd = load_file(weights)
  key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.bias"  # diffusers' to_q has no bias
  save_file({**sd, key: np.zeros(32, np.float32)}, weights, metadata={"format": "pt"})
  with pytest.raises(ConversionError, match=rf"1 key\(s\) in {weights} match no rule.*\n  "
                                            + key.replace(".", r"\.")):
    unet.load_unet(path)
  # A conv-projection checkpoint with use_linear_projection=True in its config.
  save_file(sd, weights, metadata={"format": "pt"})
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "use_linear_projection": True}))
  with pytest.raises(ConversionError, match=r"shape mismatch.*\n  .*proj_in.weight -> .*proj_in/kernel: got "
                                            r"\(1, 1, 32, 32\), the model expects \(32, 32\)"):
    unet.load_unet(path)
  os.remove(weights)
  with pytest.raises(CheckpointError, match=r"no weights in .*: expected diffusion_pytorch_model.safetensors"):
    unet.load_unet(path)


# ------------------------------------------------------------------------------ axes, remat, extension point


def test_logical_axes(small):
  _, module, _, _, _ = small
  specs = nn.get_partition_spec(unet.abstract_params(module, boxed=True))
  block = specs["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]
  assert tuple(block["attn1"]["to_q"]["kernel"]) == ("embed", "heads")
  assert tuple(block["attn2"]["to_out_0"]["kernel"]) == ("heads", "embed")
  assert tuple(block["ff"]["net_0"]["proj"]["kernel"]) == ("embed", "mlp")
  assert tuple(block["ff"]["net_2"]["kernel"]) == ("mlp", "embed")
  assert tuple(block["norm1"]["scale"]) == ("embed",)
  assert tuple(specs["down_blocks_0"]["resnets_0"]["conv1"]["kernel"]) == (None, None, None, "embed")
  assert tuple(specs["down_blocks_0"]["resnets_0"]["time_emb_proj"]["kernel"]) == ("mlp", "embed")
  assert tuple(specs["time_embedding"]["linear_1"]["kernel"]) == ("embed", "mlp")
  assert tuple(specs["conv_out"]["kernel"]) == (None, None, None, None)


def test_extension_point_swaps_self_attention_and_adds_layers(small):
  """A video block's recipe: attn1 of another class (same params), plus a new layer; the rest unchanged."""
  _, module, params, sample, context = small

  class MarkedAttention(unet.Attention):
    def attend(self, q, k, v):  # the same attention, computed by brainjax.models.layers.attention
      from brainjax.models import layers
      split = lambda a: a.reshape(*a.shape[:2], self.heads, self.head_dim)
      return layers.attention(split(q), split(k), split(v)).reshape(q.shape)

  class BlockWithExtra(unet.BasicTransformerBlock):
    self_attention_cls: type = MarkedAttention
    extra_width: int = 0

    def setup(self):
      super().setup()
      self.attn_temp = nn.Dense(self.extra_width, name="attn_temp")

    def __call__(self, x, context):
      self.attn_temp(x)  # creates params only; the output is left unchanged
      return super().__call__(x, context)

  parts = unet.UNetParts(transformer_block=BlockWithExtra, transformer_block_kwargs=(("extra_width", 3),))
  video = unet.UNet2DConditionModel(module.config, parts=parts)
  shapes = unet.abstract_params(video)
  assert shapes["mid_block"]["attentions_0"]["transformer_blocks_0"]["attn_temp"]["kernel"].shape == (64, 3)
  merged = _merge(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), params)
  t = np.array([10, 700], np.int64)
  parity.assert_rel_close("swapped attn1 + extra layer", _apply(module, params, sample, t, context),
                          _apply(video, merged, sample, t, context), 1e-5)


def _merge(new, old):
  """`new`'s tree with every param `old` also has taken from `old`."""
  return {k: (_merge(v, old[k]) if isinstance(v, dict) else old[k]) if k in old else v for k, v in new.items()}


def test_remat_and_bf16(small):
  """remat: same numbers; bf16 params and compute: about as far from float32 as diffusers' own bf16 run."""
  model, module, params, sample, context = small
  t = np.array([10, 700], np.int64)
  ref = _apply(module, params, sample, t, context)
  remat = unet.UNet2DConditionModel(module.config, remat=True)
  parity.assert_rel_close("remat forward", ref, _apply(remat, params, sample, t, context), 1e-6)
  module16 = unet.UNet2DConditionModel(module.config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  out = _apply(module16, jax.tree.map(lambda p: p.astype(jnp.bfloat16), params), sample, t, context)
  assert out.dtype == jnp.bfloat16

  with torch.no_grad():
    torch16 = torch_ref.nhwc(copy.deepcopy(model).to(torch.bfloat16)(torch_ref.nchw(sample).to(torch.bfloat16), torch.from_numpy(t),
                                                            torch.from_numpy(context).to(torch.bfloat16)).sample.float())
  err, torch_err = parity.rel_err(ref, np.asarray(out, np.float32)), parity.rel_err(ref, torch16)
  print(f"\n  bf16 forward: max rel err {err:.2e} (diffusers in bf16: {torch_err:.2e})")
  assert err < 2 * torch_err


@pytest.mark.parametrize("length,chunk,masked", [(37, 8, True), (64, 16, False)])
def test_query_chunked_attention_equals_full_attention_forward_and_backward(length, chunk, masked):
  """Chunks of queries (the last one padded) give the same outputs and the same q/k/v gradients."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for shape in
             ((3, length, 16), (3, 20, 16), (3, 20, 16)))
  mask = jnp.asarray(rng.random((length, 20)) > 0.3) if masked else None

  def value_and_grads(query_chunk):
    loss = lambda q, k, v: jnp.sum(jnp.sin(unet.multi_head_attention(q, k, v, 4, mask=mask, query_chunk=query_chunk)))
    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)

  ref, chunked = value_and_grads(0), value_and_grads(chunk)
  for name, a, b in zip(("loss", "dq", "dk", "dv"), jax.tree.leaves(ref), jax.tree.leaves(chunked)):
    parity.assert_rel_close(name, a, b, 1e-5)
  with pytest.raises(ValueError, match="query_chunk = -1: give a positive number"):
    unet.multi_head_attention(q, k, v, 4, query_chunk=-1)


def test_query_chunked_attention_bounds_the_memory_of_the_scores():
  """What chunking is for: the compiled forward + backward never holds the whole [L, S] scores."""
  length, heads = 2048, 2
  q = jax.ShapeDtypeStruct((2, length, 32), jnp.float32)

  def temporaries(query_chunk):
    loss = lambda q, k, v: jnp.sum(unet.multi_head_attention(q, k, v, heads, query_chunk=query_chunk) ** 2)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, q, q).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  scores_bytes = 2 * heads * length * length * 4  # one float32 [N, h, L, S] buffer: 64 MiB
  full, chunked = temporaries(0), temporaries(256)
  print(f"\n  temporaries: full {full / 2**20:.0f} MiB, chunks of 256 queries {chunked / 2**20:.0f} MiB")
  assert full >= 2 * scores_bytes  # the scores and their softmax, at least
  assert chunked < full / 4


def test_query_chunk_option_reaches_every_spatial_attention(small):
  """UNetParts(attention_query_chunk=...): same outputs and parameter gradients as the unchunked UNet."""
  _, module, params, sample, context = small
  t = np.array([10, 700], np.int64)
  chunked = unet.UNet2DConditionModel(module.config, parts=unet.UNetParts(attention_query_chunk=16))

  def loss(m, p):
    return jnp.sum(m.apply({"params": p}, sample, t, context) ** 2)

  ref, got = (jax.jit(jax.value_and_grad(functools.partial(loss, m)))(params) for m in (module, chunked))
  parity.assert_rel_close("loss", ref[0], got[0], 1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref[1]), jax.tree.leaves(got[1])):
    parity.assert_rel_close(jax.tree_util.keystr(path), a, b, 1e-4)
  # The option is live: the chunked program has a loop (lax.map) the plain one has not.
  jaxpr = str(jax.make_jaxpr(functools.partial(loss, chunked))(params))
  assert "scan" in jaxpr and "scan" not in str(jax.make_jaxpr(functools.partial(loss, module))(params))
