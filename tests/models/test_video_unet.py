"""Inflated video UNets (MinD-Video, Tune-A-Video, NeuralFlix): reduction to the 2-D UNet, causality,
a PyTorch re-statement of MindVideo's transformer block, frame-pooled GroupNorm, weights in/out, errors."""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel as TorchUNet
from diffusers.utils import logging as diffusers_logging
from safetensors.numpy import load_file

from brainjax.weights import ConversionError
from brainjax.weights import mapping as mp
from brainjax.models import unet
from brainjax.models import video_unet as vu
from brainjax.train.optim import trainable_labels

diffusers_logging.set_verbosity_error()

CFG = dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, cross_attention_dim=16,
           attention_head_dim=4, norm_num_groups=8)
CONFIG = unet.UNetConfig.from_dict(CFG)


@functools.partial(jax.jit, static_argnums=0)
def _apply(module, params, *inputs):
  """One compiled forward per module config (bound-method jits would recompile for equal modules)."""
  return module.apply({"params": params}, *inputs)


def _jitter(params, scale=0.3, seed=1):
  """Every param moved off its init (so zero biases / unit norms / zero-init outputs are all exercised)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def params_2d():
  module = unet.UNet2DConditionModel(CONFIG)
  return _jitter(nn.meta.unbox(jax.jit(module.init)(jax.random.key(0), *module.dummy_inputs()))["params"], 0.1)


def _inputs(b=2, t=4, seed=0, hw=8):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((b, t, hw, hw, 4)).astype(np.float32),
          rng.standard_normal((b, 5, 16)).astype(np.float32))


# tuneavideo differs from mindvideo only in attn1's frame indices (tested above): two variants suffice here.
@pytest.mark.parametrize("variant", ["mindvideo", "neuralflix"])
def test_fresh_inflation_on_identical_frames_equals_the_2d_unet(params_2d, variant):
  """Zero-initialised temporal attention, identity temporal convs, sparse-causal attn1 over copies of one
  frame, frame-pooled GroupNorm over copies: the video UNet is the 2-D UNet applied per frame."""
  module = vu.VideoUNet(CONFIG, vu.video_spec(variant))
  params = vu.inflate(module, params_2d, jax.random.key(3))
  frame, context = _inputs(b=2, t=1)
  video = np.repeat(frame, 5, axis=1)
  t = np.array([3, 800])
  out = _apply(module, params, video, t, context)
  ref = _apply(unet.UNet2DConditionModel(CONFIG), params_2d, frame[:, 0], t, context)
  assert out.shape == (2, 5, 8, 8, 4)
  np.testing.assert_allclose(out, np.repeat(np.asarray(ref)[:, None], 5, axis=1), rtol=1e-5, atol=1e-5)
  # ... and on a real video the temporal layers are live once trained (non-zero): outputs differ per frame.
  moved = _jitter(params, 0.05, seed=7)
  varied, _ = _inputs(b=2, t=5, seed=2)
  out = np.asarray(_apply(module, moved, varied, t, context))
  assert np.isfinite(out).all() and not np.allclose(out[:, 0], out[:, 1])


def test_chunked_attention_queries_give_the_same_video(params_2d):
  """attention_query_chunk reaches the sparse-causal attn1 (and attn2): same output, with a loop inside."""
  module = vu.VideoUNet(CONFIG, vu.video_spec("mindvideo"))
  chunked = vu.VideoUNet(CONFIG, vu.video_spec("mindvideo"), attention_query_chunk=24)  # 64 tokens: 24+24+16
  params = _jitter(vu.inflate(module, params_2d, jax.random.key(3)), 0.05, seed=4)
  video, context = _inputs(b=2, t=3)
  t = np.array([3, 800])
  np.testing.assert_allclose(_apply(chunked, params, video, t, context), _apply(module, params, video, t, context),
                             rtol=1e-5, atol=1e-5)
  assert "while" in jax.jit(functools.partial(_apply, chunked)).lower(params, video, t, context).as_text()


def test_kv_frames_are_mindvideos_and_tuneavideos():
  # MindVideo: former_frame_index_2 = arange - 2 with [0] = [1] = 0; former_frame_index = arange - 1 with [0] = 0.
  np.testing.assert_array_equal(vu.kv_frame_indices(6, "previous_two"),
                                [[0, 0], [0, 0], [0, 1], [1, 2], [2, 3], [3, 4]])
  np.testing.assert_array_equal(vu.kv_frame_indices(4, "first_and_previous"), [[0, 0], [0, 0], [0, 1], [0, 2]])
  np.testing.assert_array_equal(vu.temporal_mask(4, 2), [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1]])
  assert vu.temporal_mask(4, None) is None


def _block(spec, frames, dim=16, heads=2):
  return vu.VideoTransformerBlock(dim=dim, heads=heads, head_dim=dim // heads, cross_attention_dim=12, frames=frames,
                                  video=spec)


@pytest.mark.parametrize("kv", ["previous_two", "first_and_previous"])
def test_sparse_causal_attention_never_reads_a_later_frame(kv):
  frames, tokens, dim = 5, 6, 16
  attn = vu.SparseCausalAttention(heads=2, head_dim=8, frames=frames, kv_frames=kv)
  x = np.random.default_rng(0).standard_normal((2 * frames, tokens, dim)).astype(np.float32)
  params = attn.init(jax.random.key(0), x)
  base = np.asarray(attn.apply(params, x))
  for i in range(frames - 1):
    y = x.copy()
    y[i + 1::frames] += 3.0  # perturb frame i+1 of every clip
    out = np.asarray(attn.apply(params, y))
    for clip in range(2):
      np.testing.assert_array_equal(out[clip * frames: clip * frames + i + 1], base[clip * frames: clip * frames + i + 1])
      assert not np.allclose(out[clip * frames + i + 1], base[clip * frames + i + 1])


def test_neuralflix_block_is_causal_and_mindvideos_temporal_attention_is_not():
  frames = 4
  x = np.random.default_rng(1).standard_normal((frames, 6, 16)).astype(np.float32)
  ctx = np.random.default_rng(2).standard_normal((frames, 3, 12)).astype(np.float32)
  y = x.copy()
  y[3] += np.random.default_rng(3).standard_normal(y[3].shape).astype(np.float32)  # not a constant: LayerNorms
  for name, causal in (("neuralflix", True), ("mindvideo", False)):
    block = _block(vu.video_spec(name), frames)
    params = _jitter(block.init(jax.random.key(0), x, ctx))  # attn_temp no longer zero
    a, b = np.asarray(block.apply(params, x, ctx)), np.asarray(block.apply(params, y, ctx))
    if causal:
      np.testing.assert_array_equal(a[:3], b[:3])
    else:  # full temporal attention: earlier frames see the later one
      assert not np.allclose(a[:3], b[:3])


def _torch_mindvideo_block(p, x, ctx, frames, heads, kv="previous_two", placement="after_feed_forward", past=None):
  """MindVideo's BasicTransformerBlock forward, restated in PyTorch from its source (models/attention.py):
  attn1 = SparseCausalAttention (keys/values of frames i-2, i-1), attn2, ff, then attn_temp over
  '(b f) d c -> (b d) f c'."""
  t = lambda a: torch.from_numpy(np.array(a))
  lin = lambda h, q, bias=True: h @ t(q["kernel"]) + (t(q["bias"]) if bias and "bias" in q else 0)
  ln = lambda h, q: torch.nn.functional.layer_norm(h, h.shape[-1:], t(q["scale"]), t(q["bias"]), 1e-5)

  def attention(q_in, kv_in, q, mask=None):
    qq, kk, vv = lin(q_in, q["to_q"]), lin(kv_in, q["to_k"]), lin(kv_in, q["to_v"])
    n, length, inner = qq.shape
    split = lambda a: a.reshape(n, a.shape[1], heads, inner // heads).transpose(1, 2)
    logits = split(qq) @ split(kk).transpose(-1, -2) * (inner // heads) ** -0.5
    if mask is not None:
      logits = logits.masked_fill(~t(mask), float("-inf"))
    out = (logits.softmax(-1) @ split(vv)).transpose(1, 2).reshape(n, length, inner)
    return lin(out, q["to_out_0"])

  def sparse_causal(h):
    n, length, c = h.shape
    key = lin(h, p["attn1"]["to_k"]).reshape(n // frames, frames, length, c)
    val = lin(h, p["attn1"]["to_v"]).reshape(n // frames, frames, length, c)
    if kv == "previous_two":
      idx2 = torch.arange(frames) - 2
      idx2[0] = idx2[1] = 0
      idx1 = torch.arange(frames) - 1
      idx1[0] = 0
      key, val = (torch.cat([a[:, idx2], a[:, idx1]], dim=2).reshape(n, 2 * length, c) for a in (key, val))
    q = lin(h, p["attn1"]["to_q"])
    split = lambda a: a.reshape(n, a.shape[1], heads, c // heads).transpose(1, 2)
    w = (split(q) @ split(key).transpose(-1, -2) * (c // heads) ** -0.5).softmax(-1)
    return lin((w @ split(val)).transpose(1, 2).reshape(n, length, c), p["attn1"]["to_out_0"])

  def temporal(h):
    n, d, c = h.shape
    h = h.reshape(n // frames, frames, d, c).transpose(1, 2).reshape(-1, frames, c)
    h = attention(ln(h, p["norm_temp"]), ln(h, p["norm_temp"]), p["attn_temp"], vu.temporal_mask(frames, past)) + h
    return h.reshape(n // frames, d, frames, c).transpose(1, 2).reshape(n, d, c)

  h, ctx = t(x), t(ctx)
  h = sparse_causal(ln(h, p["norm1"])) + h
  if placement == "after_self_attention":
    h = temporal(h)
  h = attention(ln(h, p["norm2"]), ctx, p["attn2"]) + h
  hidden, gate = lin(ln(h, p["norm3"]), p["ff"]["net_0"]["proj"]).chunk(2, dim=-1)
  h = lin(hidden * torch.nn.functional.gelu(gate), p["ff"]["net_2"]) + h
  if placement == "after_feed_forward":
    h = temporal(h)
  return h.numpy()


@pytest.mark.parametrize("variant", ["mindvideo", "neuralflix"])
def test_transformer_block_matches_a_pytorch_restatement_of_mindvideo(variant):
  frames, heads = 5, 2
  spec = vu.video_spec(variant)
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2 * frames, 6, 16)).astype(np.float32)
  ctx = rng.standard_normal((2 * frames, 3, 12)).astype(np.float32)
  block = _block(spec, frames, heads=heads)
  params = nn.meta.unbox(_jitter(block.init(jax.random.key(0), x, ctx)))["params"]
  ours = np.asarray(block.apply({"params": params}, x, ctx))
  ref = _torch_mindvideo_block(jax.tree.map(np.asarray, params), x, ctx, frames, heads, spec.kv_frames,
                               spec.temporal_attention, spec.temporal_past_frames)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_resnet_group_norm_pools_a_clips_frames_like_torch_on_5d():
  """torch GroupNorm on [B, C, F, H, W] (MindVideo's resnets and conv_norm_out) == brainjax with frames=F."""
  b, f, h, w, c = 2, 3, 4, 5, 16
  x = np.random.default_rng(0).standard_normal((b * f, h, w, c)).astype(np.float32) * 2 + 1

  class Holder(nn.Module):
    @nn.compact
    def __call__(self, y):
      return unet._group_norm(4, 1e-5, "norm", frames=f, dtype=jnp.float32, param_dtype=jnp.float32)(y)

  holder = Holder()
  ours = np.asarray(holder.apply(holder.init(jax.random.key(0), x), x))
  ref = torch.nn.GroupNorm(4, c, eps=1e-5)(torch.from_numpy(x.reshape(b, f, h, w, c).transpose(0, 4, 1, 2, 3)))
  ref = ref.detach().numpy().transpose(0, 2, 3, 4, 1).reshape(b * f, h, w, c)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_temporal_conv_starts_as_identity_and_mixes_only_neighbouring_frames():
  conv = vu.TemporalConv(frames=4)
  x = np.random.default_rng(0).standard_normal((8, 3, 3, 6)).astype(np.float32)
  params = conv.init(jax.random.key(0), x)
  np.testing.assert_array_equal(conv.apply(params, x), x)
  moved = _jitter(params)
  y = x.copy()
  y[3] += 1.0  # the last frame of clip 0
  a, b = np.asarray(conv.apply(moved, x)), np.asarray(conv.apply(moved, y))
  np.testing.assert_array_equal(a[:2], b[:2])  # kernel 3: frames 0 and 1 do not see frame 3
  np.testing.assert_array_equal(a[4:], b[4:])  # nor does the other clip
  assert not np.allclose(a[2], b[2])


def test_every_param_has_logical_axes_and_the_trainable_sets_are_the_papers():
  for name in vu.VARIANTS:
    module = vu.VideoUNet(CONFIG, vu.video_spec(name))
    specs = mp.flatten(nn.get_partition_spec(vu.abstract_params(module, boxed=True)))
    assert all(spec is not None for spec in specs.values())
    assert tuple(specs["mid_block/attentions_0/transformer_blocks_0/attn_temp/to_q/kernel"]) == ("embed", "heads")
    if name == "neuralflix":
      assert tuple(specs["down_blocks_0/resnets_0/conv1_temp/conv/kernel"]) == (None, None, "embed")
    params = vu.abstract_params(module)
    labels = mp.flatten(trainable_labels(params, [vu.trainable_pattern(name)]))
    trained = {k for k, v in labels.items() if v == "train"}
    block = "down_blocks_0/attentions_0/transformer_blocks_0/"
    assert block + "attn_temp/to_v/kernel" in trained and block + "norm_temp/scale" in trained
    assert block + "attn2/to_q/kernel" in trained and block + "ff/net_2/kernel" not in trained
    assert "conv_in/kernel" not in trained and "down_blocks_0/resnets_0/conv1/kernel" not in trained
    assert (block + "attn1/to_k/kernel" in trained) == (name != "tuneavideo")


def test_inflation_initialises_only_the_temporal_layers_with_the_full_inits_values(params_2d):
  """inflate compiles an init that returns the temporal layers alone; they equal the full init's (Flax
  derives each param's rng from its path), and the 2-D part is params_2d's, untouched."""
  module = vu.VideoUNet(CONFIG, vu.video_spec("neuralflix"))
  inflated = mp.flatten(vu.inflate(module, params_2d, jax.random.key(7)))
  full = mp.flatten(vu.init_params(module, jax.random.key(7)))
  assert set(inflated) == set(full)
  temporal = [k for k in full if vu.is_temporal(k)]
  assert temporal and any(np.asarray(full[k]).std() > 0 for k in temporal)  # random kernels, not only zeros
  flat_2d = mp.flatten(params_2d)
  for k, v in inflated.items():
    expected = full[k] if vu.is_temporal(k) else flat_2d[k]
    np.testing.assert_array_equal(v, expected, err_msg=k)


def test_weights_in_and_out(tmp_path, params_2d):
  """SD unet/ -> inflated; save (MindVideo layout) -> load exactly; diffusers reads the 2-D part."""
  sd = unet.save_unet(tmp_path / "sd", CONFIG, params_2d)
  module, params = vu.load_video_unet(sd, "neuralflix", rng=jax.random.key(5))
  fresh = vu.inflate(module, params_2d, jax.random.key(5))
  jax.tree.map(np.testing.assert_array_equal, params, fresh)

  moved = _jitter(params, 0.05, seed=11)
  out_dir = vu.save_video_unet(tmp_path / "video", module, moved)
  tensors = load_file(str(out_dir / "diffusion_pytorch_model.safetensors"))
  assert "down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_out.0.weight" in tensors
  assert "up_blocks.1.attentions.0.transformer_blocks.0.norm_temp.weight" in tensors
  assert tensors["down_blocks.0.resnets.0.conv1_temp.weight"].shape == (32, 32, 3)  # Conv1d (out, in, k)
  assert json.loads((out_dir / "config.json").read_text())["brainjax_video"]["pseudo3d_convs"] is True

  again, reloaded = vu.load_video_unet(out_dir)  # the recorded spec is used
  assert again.video == module.video
  jax.tree.map(np.testing.assert_array_equal, reloaded, moved)
  video, context = _inputs(b=1, t=3)
  np.testing.assert_array_equal(_apply(again, reloaded, video, 9, context), _apply(module, moved, video, 9, context))

  # diffusers' 2-D UNet loads the export (ignoring the temporal keys): same per-frame output on a still clip
  # for the fresh inflation (temporal layers no-ops).
  fresh_dir = vu.save_video_unet(tmp_path / "fresh", vu.VideoUNet(CONFIG, vu.video_spec("mindvideo")),
                                 vu.inflate(vu.VideoUNet(CONFIG), params_2d, jax.random.key(0)))
  torch_unet = TorchUNet.from_pretrained(str(fresh_dir)).eval()
  frame = video[:, :1]
  with torch.no_grad():
    ref = torch_unet(torch.from_numpy(frame[:, 0].transpose(0, 3, 1, 2).copy()), 9,
                     torch.from_numpy(context)).sample.numpy().transpose(0, 2, 3, 1)
  mind = vu.VideoUNet(CONFIG)
  ours = _apply(mind, vu.load_video_unet(fresh_dir)[1], np.repeat(frame, 2, axis=1), 9, context)
  np.testing.assert_allclose(ours[:, 1], ref, rtol=1e-4, atol=1e-4)


def test_loading_refuses_partial_temporal_layers_and_a_conflicting_spec(tmp_path, params_2d):
  module = vu.VideoUNet(CONFIG, vu.video_spec("neuralflix"))
  params = vu.inflate(module, params_2d, jax.random.key(0))
  out_dir = vu.save_video_unet(tmp_path / "nf", module, params)
  with pytest.raises(ValueError, match="video UNet made with"):
    vu.load_video_unet(out_dir, "mindvideo")
  # Strip the recorded spec: a MindVideo-spec load then finds temporal convs it does not have.
  config = json.loads((out_dir / "config.json").read_text())
  del config["brainjax_video"]
  (out_dir / "config.json").write_text(json.dumps(config))
  with pytest.raises(ConversionError, match="map to params the Flax model does not have"):
    vu.load_video_unet(out_dir, "mindvideo")
  # Drop one temporal tensor: partial temporal layers are refused with the variant hint.
  mind = vu.VideoUNet(CONFIG)
  mind_dir = vu.save_video_unet(tmp_path / "mv", mind, vu.inflate(mind, params_2d, jax.random.key(0)))
  tensors = load_file(str(mind_dir / "diffusion_pytorch_model.safetensors"))
  del tensors["mid_block.attentions.0.transformer_blocks.0.attn_temp.to_q.weight"]
  from safetensors.numpy import save_file
  save_file(tensors, str(mind_dir / "diffusion_pytorch_model.safetensors"))
  with pytest.raises(ConversionError, match="temporal params"):
    vu.load_video_unet(mind_dir)


def test_bad_inputs_and_specs():
  module = vu.VideoUNet(CONFIG)
  params = vu.abstract_params(module)
  video, context = _inputs(b=2, t=2)
  run = lambda s, c, t=1: jax.eval_shape(lambda p: module.apply({"params": p}, s, t, c), params)
  with pytest.raises(ValueError, match="add a frames axis"):
    run(video[:, 0], context)
  with pytest.raises(ValueError, match="channels-first"):
    run(video.transpose(0, 4, 1, 2, 3), context)
  with pytest.raises(ValueError, match="one condition per clip"):
    run(video, context[:1])
  with pytest.raises(ValueError, match="one per clip"):
    run(video, context, np.zeros(4))
  with pytest.raises(ValueError, match="kv_frames"):
    vu.VideoSpec(kv_frames="all")
  with pytest.raises(ValueError, match="unknown video UNet variant"):
    vu.video_spec("animatediff")
  with pytest.raises(ValueError, match="temporal_past_frames"):
    vu.VideoSpec(temporal_past_frames=-1)
