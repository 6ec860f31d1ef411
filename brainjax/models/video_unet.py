r"""Video UNets inflated from SD 1.x's UNet2DConditionModel: MinD-Video, Tune-A-Video and NeuralFlix.

All three start from a pretrained text-to-image UNet (brainjax.models.unet) and
keep every one of its parameters under the same name; frames are folded into
the batch for everything spatial, and a few layers mix information across
frames. Which layers, and how, is a `VideoSpec` (named variants in VARIANTS):

                      attn1 keys/values          temporal attention        pseudo-3D convs
  mindvideo           frames i-2, i-1            after the feed-forward,   no
                      (clamped at 0)             all frames of the clip
  tuneavideo          frames 0, i-1              after the feed-forward,   no
                                                 all frames
  neuralflix          frames i-2, i-1            after attn1, frame i      conv1/conv2 of every resnet,
                                                 sees frames i-2..i        temporal kernel 3

  kv_frames               attn1 ('sparse-causal attention'): the queries of frame i attend to the
                          concatenated tokens of two earlier frames, never to later ones and not to
                          frame i itself (except through the clamping at frames 0 and 1). MindVideo's
                          `SparseCausalAttention` uses (i-2, i-1); Tune-A-Video's uses (0, i-1).
                          'self' keeps the 2-D per-frame self-attention.
  temporal_attention      `attn_temp` (diffusers Attention params: to_q/k/v, to_out_0) with pre-norm
                          `norm_temp` (LayerNorm) and a residual, over the frames at each spatial position
                          ('(b f) d c -> (b d) f c'), with no temporal position embedding (as MindVideo and
                          Tune-A-Video). to_out_0 starts at zero (kernel and bias: Tune-A-Video zeroes
                          only the kernel, leaving torch's random bias; zeroing both makes the inflated
                          UNet start exactly at the 2-D one).
  temporal_past_frames    None: every frame attends to every frame of the clip (MinD-Video); k: frame i
                          attends to frames i-k..i (NeuralFlix: "each visual token attends to tokens from
                          the previous two frames"; the frame itself is included so frame 0 has a key).
  pseudo3d_convs          NeuralFlix's "2-D convolutions converted to pseudo 3-D": after each resnet's
                          3x3 conv1 / conv2, a full-channel temporal convolution of kernel 3 over frames
                          (`conv1_temp` / `conv2_temp`, zero padding at the clip's ends) initialised to the
                          identity, so it starts as a no-op. conv_in, conv_out, the 1x1 shortcuts and the
                          up/down samplers stay per-frame (the paper does not say; the resnets carry the
                          features).

What the inflation does NOT change, following the MindVideo / Tune-A-Video code: the resnets' GroupNorms
and conv_norm_out take statistics over all frames of a clip (torch GroupNorm on [B, C, F, H, W]); the
transformers' GroupNorm is per frame; the condition tokens and the timestep are the clip's, repeated per
frame.

  VideoUNet(config, video)          __call__(sample [B, T, H, W, C], timesteps (scalar or [B]),
                                    encoder_hidden_states [B, S, D]) -> [B, T, H, W, out_channels]
  inflate(video_module, params_2d, rng)   params of the video UNet: the 2-D UNet's, plus freshly
                                    initialised temporal layers (zero / identity: output unchanged)
  load_video_unet(path, video)      from a diffusers SD `unet/` directory (inflated on the fly) or from a
                                    MindVideo-layout directory that already has the temporal layers
  save_video_unet(path, module, params)   the MindVideo `unet/` layout: SD names plus
                                    `...transformer_blocks.{k}.attn_temp.*` / `norm_temp.*` (and, for
                                    NeuralFlix, `...resnets.{j}.conv{1,2}_temp.*`); config.json is the
                                    2-D UNet's with a "brainjax_video" entry recording the VideoSpec
  trainable_pattern(video)          the regex of the params each paper fine-tunes (brainjax.train.optim)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from brainjax.weights import checkpoint_io
from brainjax.weights import mapping as mp
from brainjax.weights import params as params_lib
from brainjax.models import unet

Dtype = Any

KV_FRAMES = ("previous_two", "first_and_previous", "self")
TEMPORAL_PLACEMENTS = ("after_feed_forward", "after_self_attention", "none")


@dataclasses.dataclass(frozen=True)
class VideoSpec:
  """How a 2-D UNet is inflated to video (see the module docstring)."""
  kv_frames: str = "previous_two"
  temporal_attention: str = "after_feed_forward"
  temporal_past_frames: int | None = None
  pseudo3d_convs: bool = False
  trainable: str = r"attn1|attn2|attn_temp|norm_temp"

  def __post_init__(self):
    if self.kv_frames not in KV_FRAMES:
      raise ValueError(f"VideoSpec.kv_frames = {self.kv_frames!r}; choose one of {KV_FRAMES}.")
    if self.temporal_attention not in TEMPORAL_PLACEMENTS:
      raise ValueError(f"VideoSpec.temporal_attention = {self.temporal_attention!r}; choose one of "
                       f"{TEMPORAL_PLACEMENTS}.")
    past = self.temporal_past_frames
    if past is not None and (not isinstance(past, int) or isinstance(past, bool) or past < 0):
      raise ValueError(f"VideoSpec.temporal_past_frames = {past!r}; give None (all frames) or a count >= 0.")

  @property
  def has_temporal_attention(self) -> bool:
    return self.temporal_attention != "none"

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> VideoSpec:
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown VideoSpec field(s) {sorted(unknown)}; the fields are "
                       f"{[f.name for f in dataclasses.fields(cls)]}.")
    return cls(**d)


VARIANTS: dict[str, VideoSpec] = {
    # MindVideo trains the spatial and temporal attention (paper, supplement B).
    "mindvideo": VideoSpec(),
    # Tune-A-Video's trainable set: the query projections of attn1 / attn2, and the temporal attention.
    "tuneavideo": VideoSpec(kv_frames="first_and_previous", trainable=r"attn1/to_q|attn2/to_q|attn_temp|norm_temp"),
    # NeuralFlix fine-tunes spatial self-attention, cross-attention and the temporal layers it adds.
    "neuralflix": VideoSpec(temporal_attention="after_self_attention", temporal_past_frames=2, pseudo3d_convs=True,
                            trainable=r"attn1|attn2|attn_temp|norm_temp|conv[12]_temp"),
}


def video_spec(video: str | VideoSpec | Mapping[str, Any]) -> VideoSpec:
  """A VideoSpec from a variant name, a dict of fields or a VideoSpec."""
  if isinstance(video, VideoSpec):
    return video
  if isinstance(video, str):
    if video not in VARIANTS:
      raise ValueError(f"unknown video UNet variant {video!r}; choose one of {sorted(VARIANTS)} or give a VideoSpec.")
    return VARIANTS[video]
  return VideoSpec.from_dict(dict(video))


def trainable_pattern(video: str | VideoSpec) -> str:
  """The regex (over '/'-joined param paths) of the params the variant's paper fine-tunes."""
  return video_spec(video).trainable


# --------------------------------------------------------------------------------------- layers


def kv_frame_indices(frames: int, kv_frames: str) -> np.ndarray:
  """[frames, 2]: the two frames whose tokens are attn1's keys/values for each frame (indices clamped at 0)."""
  i = np.arange(frames)
  if kv_frames == "previous_two":
    return np.stack([np.maximum(i - 2, 0), np.maximum(i - 1, 0)], axis=1)
  if kv_frames == "first_and_previous":
    return np.stack([np.zeros_like(i), np.maximum(i - 1, 0)], axis=1)
  raise ValueError(f"kv_frames {kv_frames!r} has no frame indices")


def temporal_mask(frames: int, past_frames: int | None) -> np.ndarray | None:
  """[frames, frames] True where frame i may attend to frame j: j in [i - past_frames, i]; None = all."""
  if past_frames is None:
    return None
  i, j = np.arange(frames)[:, None], np.arange(frames)[None, :]
  return (j <= i) & (j >= i - past_frames)


class SparseCausalAttention(unet.Attention):
  """attn1 of the inflated UNets: frame i's queries attend to the tokens of two earlier frames.

  Tokens arrive as [B * frames, L, C] (frames of a clip consecutive); keys and
  values are projected per frame and then gathered, as MindVideo does.
  """
  frames: int = 1
  kv_frames: str = "previous_two"

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    if self.kv_frames == "self":
      return super().attend(q, k, v)
    n, length, inner = k.shape
    index = kv_frame_indices(self.frames, self.kv_frames)  # [T, 2]

    def gather(a: jax.Array) -> jax.Array:
      a = a.reshape(n // self.frames, self.frames, length, inner)
      return a[:, index].reshape(n, 2 * length, inner)  # [B, T, 2, L, C] -> [(B T), 2L, C]

    return super().attend(q, gather(k), gather(v))


class TemporalAttention(unet.Attention):
  """attn_temp: self-attention over frames (tokens [N, T, C]), optionally limited to the last few frames."""
  past_frames: int | None = None

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    mask = temporal_mask(q.shape[1], self.past_frames)
    return unet.multi_head_attention(q, k, v, self.heads, self.upcast,
                                     mask=None if mask is None else jnp.asarray(mask))


class VideoTransformerBlock(unet.BasicTransformerBlock):
  """BasicTransformerBlock with sparse-causal attn1 and a temporal attention placed as `video` says."""
  video: VideoSpec = VideoSpec()

  @nn.nowrap
  def make_self_attention(self, **attn: Any) -> nn.Module:
    return SparseCausalAttention(frames=self.frames, kv_frames=self.video.kv_frames, **attn)

  def setup(self):
    super().setup()
    if self.video.has_temporal_attention:
      kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
      self.norm_temp = unet._layer_norm(**kw)
      self.attn_temp = TemporalAttention(heads=self.heads, head_dim=self.head_dim, upcast=self.upcast_attention,
                                         zero_init_out=True, past_frames=self.video.temporal_past_frames, **kw)

  def temporal(self, x: jax.Array) -> jax.Array:
    """x + attn_temp(norm_temp(x)) over the frames at each token position: [(B T), L, C] -> same."""
    n, length, c = x.shape
    b, t = n // self.frames, self.frames
    y = x.reshape(b, t, length, c).transpose(0, 2, 1, 3).reshape(b * length, t, c)
    y = y + self.attn_temp(self.norm_temp(y))
    return y.reshape(b, length, t, c).transpose(0, 2, 1, 3).reshape(n, length, c)

  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    x = self.self_attention(x, context)
    if self.video.temporal_attention == "after_self_attention":
      x = self.temporal(x)
    x = self.feed_forward(self.cross_attention(x, context))
    if self.video.temporal_attention == "after_feed_forward":
      x = self.temporal(x)
    return nn.with_logical_constraint(x, ("act_batch", "act_tokens", "act_embed"))


def _identity_temporal_kernel(key, shape, dtype=jnp.float32):
  """(3, C, C) kernel whose centre tap is the identity: the temporal conv starts as a no-op."""
  del key
  kernel = np.zeros(shape, np.float32)
  kernel[shape[0] // 2] = np.eye(shape[1], shape[2], dtype=np.float32)
  return jnp.asarray(kernel, dtype)


class TemporalConv(nn.Module):
  """A kernel-3 convolution over frames at every pixel, full channels: [(B T), H, W, C] -> same."""
  frames: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    b, t = n // self.frames, self.frames
    y = x.reshape(b, t, h * w, c).transpose(0, 2, 1, 3).reshape(b * h * w, t, c)
    y = nn.Conv(c, (3,), padding=((1, 1),), dtype=self.dtype, param_dtype=self.param_dtype, name="conv",
                kernel_init=nn.with_logical_partitioning(_identity_temporal_kernel, (None, None, "embed")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))(y)
    return y.reshape(b, h * w, t, c).transpose(0, 2, 1, 3).reshape(n, h, w, c)


class VideoResnetBlock(unet.ResnetBlock2D):
  """ResnetBlock2D whose 3x3 convs are followed by a temporal conv when the spec asks for pseudo-3D convs."""
  video: VideoSpec = VideoSpec()

  @nn.nowrap
  def after_conv(self, name: str):
    if not self.video.pseudo3d_convs:
      return super().after_conv(name)
    return TemporalConv(self.frames, dtype=self.dtype, param_dtype=self.param_dtype, name=f"{name}_temp")


# --------------------------------------------------------------------------------------- the UNet


def _video_parts(video: VideoSpec, frames: int, attention_query_chunk: int = 0) -> unet.UNetParts:
  return unet.UNetParts(resnet=VideoResnetBlock, transformer_block=VideoTransformerBlock,
                        resnet_kwargs=(("video", video),), transformer_block_kwargs=(("video", video),),
                        frames=frames, attention_query_chunk=attention_query_chunk)


class VideoUNet(nn.Module):
  """An SD 1.x UNet inflated to video as `video` says; params = the 2-D UNet's + the temporal layers.

  __call__(sample [B, T, H, W, in], timesteps (scalar or [B]), encoder_hidden_states [B, S, D])
  -> [B, T, H, W, out]. Any number of frames T works with the same params.
  """
  config: unet.UNetConfig
  video: VideoSpec = VideoSpec()
  remat: bool = False
  attention_query_chunk: int = 0  # > 0: attn1 / attn2 queries in chunks (unet.UNetParts); params unchanged
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, sample: jax.Array, timesteps: jax.Array | float, encoder_hidden_states: jax.Array) -> jax.Array:
    c = self.config
    if sample.ndim != 5 or sample.shape[-1] != c.in_channels:
      hint = ""
      if sample.ndim == 5 and sample.shape[1] == c.in_channels:
        hint = " It looks channels-first ([B, C, T, H, W], PyTorch's layout); use x.transpose(0, 2, 3, 4, 1)."
      elif sample.ndim == 4:
        hint = " A batch of images: add a frames axis (x[:, None]) or use the 2-D UNet."
      raise ValueError(f"sample has shape {tuple(sample.shape)}; the video UNet expects latents "
                       f"[B, T, H, W, {c.in_channels}].{hint}")
    b, t = sample.shape[:2]
    if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != b:
      raise ValueError(f"encoder_hidden_states have shape {tuple(encoder_hidden_states.shape)}; give one "
                       f"condition per clip, [{b}, S, {c.context_dim}] (it is repeated for each frame).")
    timesteps = jnp.asarray(timesteps)
    if timesteps.ndim == 0:
      timesteps = jnp.broadcast_to(timesteps, (b,))
    elif timesteps.shape != (b,):
      raise ValueError(f"timesteps have shape {tuple(timesteps.shape)}; give a scalar or one per clip, ({b},).")
    inner = unet.UNet2DConditionModel(c, parts=_video_parts(self.video, t, self.attention_query_chunk),
                                      remat=self.remat, dtype=self.dtype, param_dtype=self.param_dtype)
    nn.share_scope(self, inner)  # the 2-D UNet's param names, at the top level
    out = inner(sample.reshape(b * t, *sample.shape[2:]), jnp.repeat(timesteps, t),
                jnp.repeat(encoder_hidden_states, t, axis=0))
    return out.reshape(b, t, *out.shape[1:])

  def dummy_inputs(self, frames: int = 2) -> tuple[jax.Array, ...]:
    f = self.config.downsampling_factor
    return (jnp.zeros((1, frames, f, f, self.config.in_channels), jnp.float32), jnp.zeros((), jnp.int32),
            jnp.zeros((1, 1, self.config.context_dim), jnp.float32))


def abstract_params(module: VideoUNet, *, boxed: bool = False) -> Any:
  """The param tree as ShapeDtypeStructs (boxed=True keeps the logical axis names for sharding)."""
  variables = jax.eval_shape(module.init, jax.random.key(0), *module.dummy_inputs())
  return variables["params"] if boxed else nn.meta.unbox(variables)["params"]


@functools.partial(jax.jit, static_argnums=0, static_argnames="temporal_only")
def _init(module: VideoUNet, rng: jax.Array, temporal_only: bool = False) -> Any:
  params = nn.meta.unbox(module.init(rng, *module.dummy_inputs()))["params"]
  if temporal_only:
    # Only these leave the program, so XLA drops the 2-D initialisers and the
    # init's forward pass: a smaller compile, and no fresh copy of SD's 860 M
    # params that inflation would throw away. Flax derives each param's rng
    # from its path, so the values are those of the full init.
    params = mp.unflatten({k: v for k, v in mp.flatten(params).items() if is_temporal(k)})
  return params


def init_params(module: VideoUNet, rng: jax.Array) -> Any:
  """Freshly initialised params (compiled once per module config)."""
  return _init(module, rng)


def inflate(module: VideoUNet, params_2d: Any, rng: jax.Array) -> Any:
  """The video UNet's params: every 2-D param from `params_2d`, the temporal layers freshly initialised.

  The fresh temporal layers are no-ops (attn_temp's output projection is zero,
  the temporal convs are the identity), so on a clip of identical frames the
  inflated UNet computes exactly what the 2-D UNet computes per frame.
  """
  return _inflate(module, params_2d, rng, abstract_params(module))


def _inflate(module: VideoUNet, params_2d: Any, rng: jax.Array, expected: Any) -> Any:
  """inflate, given the module's abstract params (load_video_unet has traced them already)."""
  two_d = mp.flatten(_two_d_part(expected))
  missing = set(two_d) - set(mp.flatten(params_2d))
  if missing:
    raise ValueError(f"the 2-D params lack {len(missing)} param(s) of the video UNet's 2-D part, e.g. "
                     f"{sorted(missing)[:3]}; were they made for another UNet config?")
  fresh = {**two_d, **mp.flatten(_init(module, rng, temporal_only=True))}
  return params_lib.overlay(mp.unflatten(fresh), params_2d, hint="the 2-D UNet config differs from the video UNet's")


def is_temporal(path: str) -> bool:
  """Whether a '/'-joined param path belongs to a layer the inflation adds."""
  return any(part in ("attn_temp", "norm_temp") or part.endswith("_temp") for part in path.split("/"))


def _two_d_part(params: Any) -> dict:
  return mp.unflatten({k: v for k, v in mp.flatten(params).items() if not is_temporal(k)})


# --------------------------------------------------------------------------------------- weights


def _temporal_conv_transform() -> mp.Transform:
  # torch Conv1d (out, in, k) <-> flax (k, in, out)
  return mp.Transform("Conv1d (out, in, k) <-> (k, in, out)", lambda x: np.transpose(x, (2, 1, 0)),
                      lambda x: np.transpose(x, (2, 1, 0)))


def video_rules() -> list[mp.Rule]:
  """UNet rules plus the temporal layers (all variants' names; a variant simply has fewer params)."""
  conv1d = _temporal_conv_transform()
  return unet.unet_rules(
      resnet_rules=[mp.Rule("conv{n:1|2}_temp.weight", "conv{n:1|2}_temp/conv/kernel", conv1d),
                    mp.Rule("conv{n:1|2}_temp.bias", "conv{n:1|2}_temp/conv/bias")],
      transformer_block_rules=[*mp.norm("norm_temp", "norm_temp"),
                               *mp.linear("attn_temp.to_{p:q|k|v}", "attn_temp/to_{p:q|k|v}", bias=False),
                               *mp.linear("attn_temp.to_out.0", "attn_temp/to_out_0")])


VIDEO_TABLE = mp.Table(rules=video_rules())
VIDEO_CONFIG_KEY = "brainjax_video"


def load_video_unet(path: str | epath.PathLike, video: str | VideoSpec | None = None, *,
                    rng: jax.Array | None = None, remat: bool = False, attention_query_chunk: int = 0,
                    dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> tuple[VideoUNet, Any]:
  """(module, params) from a `unet/` directory (local or gs://).

  A Stable Diffusion `unet/` (no temporal layers) is inflated: its params plus
  fresh no-op temporal layers (from `rng`). A directory written by
  save_video_unet (the MindVideo layout) has them all; a directory with only
  some of them is an error. `video` defaults to the spec recorded in the
  directory's config.json, else MinD-Video's; a given spec must agree with a
  recorded one.
  """
  directory = unet._unet_directory(path)
  ckpt = checkpoint_io.read_checkpoint(directory, unet._WHAT, weights_names=unet.WEIGHTS_NAMES)
  config = dict(ckpt.config)
  recorded = config.pop(VIDEO_CONFIG_KEY, None)
  spec = video_spec(video if video is not None else (recorded or "mindvideo"))
  if recorded is not None and video is not None and video_spec(recorded) != spec:
    raise ValueError(f"{directory} holds a video UNet made with {video_spec(recorded)}, but {spec} was asked for; "
                     "omit `video` to use the recorded one.")
  module = VideoUNet(_config_2d(config), spec, remat=remat, attention_query_chunk=attention_query_chunk, dtype=dtype,
                     param_dtype=param_dtype)
  expected = abstract_params(module)
  temporal = {k for k in mp.flatten(expected) if is_temporal(k)}
  state = dict(ckpt.state_dict)
  loaded = mp.flatten(VIDEO_TABLE.to_flax(state, None, origin=ckpt.origin))
  present = temporal & set(loaded)
  if present and present != temporal:
    raise mp.ConversionError(f"{ckpt.origin} has {len(present)} of the {len(temporal)} temporal params of a "
                             f"{spec} video UNet (e.g. missing {sorted(temporal - present)[:2]}); it was saved "
                             "from a different video variant. Pass the matching `video` spec.")
  if present:
    params = VIDEO_TABLE.to_flax(state, expected, origin=ckpt.origin)
  else:
    params_2d = VIDEO_TABLE.to_flax(state, _two_d_part(expected), origin=ckpt.origin)
    params = _inflate(module, params_2d, jax.random.key(0) if rng is None else rng, expected)
  return module, jax.tree.map(lambda x: jnp.asarray(x, param_dtype), params)


def _config_2d(config: Mapping[str, Any]) -> unet.UNetConfig:
  """The 2-D UNet config of a `unet/` config.json; MindVideo's 3-D block names map to the 2-D ones."""
  config = dict(config)
  for key in ("down_block_types", "up_block_types"):
    if key in config:
      config[key] = [name.replace("3D", "2D") for name in config[key]]
  if config.get("mid_block_type") == "UNetMidBlock3DCrossAttn":
    config["mid_block_type"] = "UNetMidBlock2DCrossAttn"
  config["_class_name"] = "UNet2DConditionModel"
  return unet.UNetConfig.from_dict(config)


def save_video_unet(path: str | epath.PathLike, module: VideoUNet, params: Any) -> epath.Path:
  """Writes the MindVideo `unet/` layout: SD names + attn_temp / norm_temp (+ conv*_temp); returns the directory.

  `diffusers.UNet2DConditionModel.from_pretrained` reads the 2-D part (it
  reports the temporal keys as unused); MindVideo's
  `UNet3DConditionModel.from_pretrained_2d` reads all of it.
  """
  params = params["params"] if set(params) == {"params"} else params
  config = module.config.to_dict()
  config[VIDEO_CONFIG_KEY] = module.video.to_dict()
  return checkpoint_io.write_checkpoint(path, config, VIDEO_TABLE.to_torch(params),
                                       weights_name=checkpoint_io.DIFFUSERS_WEIGHTS)

