r"""ModelScope / Zeroscope's `UNet3DConditionModel` in Flax, numerically matching diffusers' PyTorch one.

The video UNet of ModelScope text-to-video and its Zeroscope fine-tunes
(`cerspense/zeroscope_v2_576w`, used by Brain Netflix for video-to-video
reconstruction). It is Stable Diffusion's 2D UNet with frames folded into the
batch, plus temporal layers that mix information across frames: a temporal
transformer after conv_in, a temporal conv stack after every resnet and a
temporal transformer after every spatial transformer. The 2D layers are
brainjax.models.unet's, imported, not copied; param names mirror diffusers'
with `_` for `.` (`down_blocks.0.temp_convs.1.conv2.3.weight` <->
`down_blocks_0/temp_convs_1/conv2_3/kernel`).

Layout: sample [B, T, H, W, C] (channels last, frames on axis 1); diffusers' is [B, C, T, H, W].
Spatial layers see [B * T, H, W, C] (frame t of video b at row b * T + t, as diffusers folds them).

  UNet3DConfig                          diffusers' UNet3DConditionModel config.json fields (from_dict / to_dict)
  zeroscope_config()                    the config of zeroscope_v2_576w's unet/ (ModelScope text-to-video-ms-1.7b's)
  UNet3DConditionModel(config)          __call__(sample [B, T, H, W, in], timesteps (scalar or [B]),
                                        encoder_hidden_states [B, S, cross_attention_dim]) -> [B, T, H, W, out]
  load_unet3d(path) -> (module, params) from a diffusers `unet/` directory, local or gs://, or a pipeline
                                        directory holding one (a copy of zeroscope_v2_576w)
  save_unet3d(path, config, params)     a directory `diffusers.UNet3DConditionModel.from_pretrained` loads
  UNET3D_TABLE / unet3d_rules()         the two-way weight mapping: unet.unet_rules() plus the temporal layers
  abstract_params(module, boxed=False)  the param tree as ShapeDtypeStructs (boxed: with logical axis names)

Architecture (every name is a param scope; N = B * T):
  time_embedding   sinusoids of block_out_channels[0] (flip_sin_to_cos, shift 0, fixed by diffusers) -> linear_1
                   -> act_fn -> linear_2; then repeated per frame, as is encoder_hidden_states
  conv_in          3x3 conv to block_out_channels[0], per frame
  transformer_in   TransformerTemporalModel with 8 heads of `attention_head_dim` channels (so its width,
                   8 * attention_head_dim, need not equal block_out_channels[0])
  down_blocks_i    CrossAttnDownBlock3D: (resnets_j, temp_convs_j, attentions_j, temp_attentions_j) per layer;
                   DownBlock3D: (resnets_j, temp_convs_j); then downsamplers_0 except in the last block.
                   Skips as in the 2D UNet.
  mid_block        UNetMidBlock3DCrossAttn: resnets_0, temp_convs_0, attentions_0, temp_attentions_0, resnets_1,
                   temp_convs_1 (resnets scaled by mid_block_scale_factor)
  up_blocks_i      CrossAttnUpBlock3D / UpBlock3D: layers_per_block + 1 of (concat skip, resnets_j, temp_convs_j
                   [, attentions_j, temp_attentions_j]); then upsamplers_0 except in the last block
  conv_norm_out -> SiLU (always SiLU, whatever act_fn: diffusers hard-codes it) -> conv_out
  resnets / attentions / down- and upsamplers   unet.ResnetBlock2D / unet.Transformer2DModel (linear
                   projections: diffusers' get_down_block default) / unet.Downsample2D / unet.Upsample2D, per frame
  TemporalConvLayer (temp_convs_j)   x + conv4(conv3(conv2(conv1(x)))) over [B, T, H, W, C]; each convK =
                   GroupNorm (convK_0, eps 1e-5: torch's default, diffusers does not pass norm_eps) -> SiLU ->
                   Conv3d with kernel (3, 1, 1), frames zero-padded by one (conv1_2, conv2_3, conv3_3, conv4_3;
                   conv4_3 is zero-initialised, so a fresh layer is the identity). GroupNorm statistics are
                   per video: over all frames, pixels and the group's channels.
  TransformerTemporalModel (transformer_in, temp_attentions_j)   GroupNorm (norm, eps 1e-6, per video over all
                   frames) -> proj_in (Dense) -> transformer_blocks_0 over the T frames of each pixel
                   ([B * H * W, T, width] tokens) -> proj_out (Dense) -> + input. The block is
                   unet.BasicTransformerBlock with diffusers' double_self_attention: attn2 attends to the tokens
                   themselves (it is called with no context), never to encoder_hidden_states.

Heads: here `attention_head_dim` really is the width of every attention head, despite the 2D UNet's
convention. diffusers' UNet3DConditionModel sets num_attention_heads = attention_head_dim (the 2D naming fix),
but its 3D blocks then build Transformer2DModel / TransformerTemporalModel(out_channels // num_attention_heads,
num_attention_heads, ...), whose first two arguments are (num_attention_heads, attention_head_dim): the swap
undoes the fix. So a block of C channels has C // attention_head_dim heads of attention_head_dim channels (width
heads * attention_head_dim, less than C when it does not divide C), and transformer_in 8 heads of it:
zeroscope's 64 gives 5 / 10 / 20 / 20 heads of 64 channels. It must be one integer (diffusers fails on per-block
values); `num_attention_heads` is refused, as diffusers refuses it.

Logical axis names of the params: those of brainjax.models.unet (see its docstring), and
  temporal conv kernels [3, 1, 1, in, out]  (None, None, None, None, 'embed'), biases ('embed',)
  temporal GroupNorms / LayerNorms          ('embed',)
  temporal proj_in / proj_out               (None, 'embed'); attention and feed-forward as in unet.py

Options: `dtype` (compute, e.g. bf16), `param_dtype`, `remat` (every resnet, transformer, temporal conv and
temporal transformer recomputes its activations in the backward pass; param names unchanged), `parts`
(unet.UNetParts: the classes of the spatial resnets and transformer blocks, the 2D UNet's extension point;
its `frames` must stay 1, since this model's spatial layers normalise each frame on its own).

Not supported (errors name the option): `num_attention_heads` (diffusers refuses it too), `time_cond_proj_dim`
(a guidance-scale embedding added to the time embedding), per-block `attention_head_dim` / `layers_per_block` /
`cross_attention_dim` (diffusers' UNet3DConditionModel fails on them), `norm_num_groups = None`, block types other
than the four 3D ones (e.g. SVD's *SpatioTemporal blocks). Also not implemented: the forward's attention_mask
(diffusers ignores it as well), timestep_cond, ControlNet residuals, FreeU, and the temporal convs' dropout (0.1
when diffusers trains; brainjax's UNet is deterministic).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from etils import epath

from brainjax.weights import checkpoint_io
from brainjax.weights import mapping as mp
from brainjax.models import layers, unet

Dtype = Any

ACTIVATIONS = unet.ACTIVATIONS
CROSS_DOWN, DOWN = "CrossAttnDownBlock3D", "DownBlock3D"
CROSS_UP, UP = "CrossAttnUpBlock3D", "UpBlock3D"
CROSS_MID = "UNetMidBlock3DCrossAttn"
# The 2D block each 3D block extends (its resnets, attentions and resamplers are the 2D UNet's).
_AS_2D = {CROSS_DOWN: unet.CROSS_DOWN, DOWN: unet.DOWN, CROSS_UP: unet.CROSS_UP, UP: unet.UP}
TEMPORAL_CONV_NORM_EPS = 1e-5  # TemporalConvLayer's nn.GroupNorm(groups, dim): torch's default eps
TEMPORAL_GROUP_NORM_EPS = 1e-6  # TransformerTemporalModel hard-codes its GroupNorm eps
TRANSFORMER_IN_HEADS = 8  # UNet3DConditionModel builds transformer_in with 8 heads of attention_head_dim

# --------------------------------------------------------------------------------------- config

# (field, supported value, what the option is for), as unet._UNSUPPORTED.
_UNSUPPORTED: tuple[tuple[str, Any, str], ...] = (
    ("time_cond_proj_dim", None, "a guidance-scale embedding added to the time embedding (timestep_cond)"),
)


def _positive_int(name: str, value: Any) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ValueError(f"UNet3DConfig.{name} = {value!r}: must be a positive integer.")


@dataclasses.dataclass(frozen=True)
class UNet3DConfig:
  """diffusers' UNet3DConditionModel config (same field names and defaults, which are zeroscope's but sample_size).

  Unlike the 2D UNet's, attention_head_dim (here the width of each head, see the module docstring),
  layers_per_block and cross_attention_dim take one value for all blocks, as diffusers'
  UNet3DConditionModel requires.
  """
  sample_size: int | tuple[int, int] | None = None
  in_channels: int = 4
  out_channels: int = 4
  down_block_types: tuple[str, ...] = (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, DOWN)
  up_block_types: tuple[str, ...] = (UP, CROSS_UP, CROSS_UP, CROSS_UP)
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  layers_per_block: int = 2
  downsample_padding: int = 1
  mid_block_scale_factor: float = 1
  act_fn: str = "silu"
  norm_num_groups: int | None = 32
  norm_eps: float = 1e-5
  cross_attention_dim: int = 1024
  attention_head_dim: int = 64
  num_attention_heads: int | None = None
  time_cond_proj_dim: int | None = None

  class_name: ClassVar[str] = "UNet3DConditionModel"

  def __post_init__(self):
    for f in dataclasses.fields(self):  # config.json gives lists; tuples keep the config hashable
      object.__setattr__(self, f.name, unet._tuple(getattr(self, f.name)))
    self._validate()
    # The spatial layers' settings as the 2D UNet's config; its per-level derivation (unet._levels) is reused.
    object.__setattr__(self, "_spatial", unet.UNetConfig(
        sample_size=self.sample_size, in_channels=self.in_channels, out_channels=self.out_channels,
        flip_sin_to_cos=True, freq_shift=0,
        down_block_types=tuple(_AS_2D[t] for t in self.down_block_types),
        up_block_types=tuple(_AS_2D[t] for t in self.up_block_types),
        block_out_channels=self.block_out_channels, layers_per_block=self.layers_per_block,
        downsample_padding=self.downsample_padding, mid_block_scale_factor=self.mid_block_scale_factor,
        act_fn=self.act_fn, norm_num_groups=self.norm_num_groups, norm_eps=self.norm_eps,
        cross_attention_dim=self.cross_attention_dim, attention_head_dim=self.heads,
        use_linear_projection=True))

  def _validate(self) -> None:
    for name, supported, what in _UNSUPPORTED:
      if getattr(self, name) != supported:
        raise ValueError(f"UNet3DConfig.{name} = {getattr(self, name)!r}: {what} is not supported by brainjax's "
                         f"UNet3DConditionModel; it needs {name} = {supported!r}.")
    if self.num_attention_heads is not None:
      raise ValueError(f"UNet3DConfig.num_attention_heads = {self.num_attention_heads!r}: diffusers' "
                       f"UNet3DConditionModel refuses it (diffusers issue 2011); set attention_head_dim instead, "
                       f"the width of every head (a block of C channels gets C // attention_head_dim heads).")
    for name in ("attention_head_dim", "layers_per_block", "cross_attention_dim"):
      value = getattr(self, name)
      if isinstance(value, tuple):
        why = (" (it also sets transformer_in's head width)" if name == "attention_head_dim" else "")
        raise ValueError(f"UNet3DConfig.{name} = {value!r}: per-block values are not supported; diffusers' "
                         f"UNet3DConditionModel fails on them{why}. Give one integer.")
      _positive_int(name, value)
    for name in ("in_channels", "out_channels"):
      _positive_int(name, getattr(self, name))
    if self.norm_num_groups is None:
      raise ValueError("UNet3DConfig.norm_num_groups = None is not supported (diffusers' resnets and temporal "
                       "layers need GroupNorm groups); zeroscope uses 32.")
    unet.validate_levels(self, (CROSS_DOWN, DOWN), (CROSS_UP, UP), "zeroscope", "ModelScope / Zeroscope")
    for i, width in enumerate(self.block_out_channels):
      if self.attention_head_dim > width:
        raise ValueError(f"UNet3DConfig.attention_head_dim = {self.attention_head_dim} (the width of every "
                         f"attention head) exceeds the {width} channels of block {i}, which would get no head; "
                         f"use narrower heads.")
    if self.act_fn not in ACTIVATIONS:
      raise ValueError(f"UNet3DConfig.act_fn = {self.act_fn!r} is not supported; use one of {sorted(ACTIVATIONS)}.")
    if self.downsample_padding not in (0, 1):
      raise ValueError(f"UNet3DConfig.downsample_padding = {self.downsample_padding!r}: use 1 (zeroscope) or 0.")
    for name in ("norm_eps", "mid_block_scale_factor"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"UNet3DConfig.{name} = {value!r}: must be a positive number.")

  # ----------------------------------------------------------------- derived values

  @property
  def spatial(self) -> unet.UNetConfig:
    """The 2D UNet config that builds the spatial layers: linear projections, and attention_head_dim in the 2D
    meaning (heads per block, `heads`); unet3d._levels adds the head width to its levels."""
    return self._spatial

  @property
  def heads(self) -> tuple[int, ...]:
    """Heads of each block's spatial and temporal attentions: channels // attention_head_dim (rounded down)."""
    return tuple(width // self.attention_head_dim for width in self.block_out_channels)

  @property
  def time_embed_dim(self) -> int:
    return 4 * self.block_out_channels[0]

  @property
  def context_dim(self) -> int:
    """The width encoder_hidden_states must have (1024 for zeroscope's OpenCLIP ViT-H/14 text encoder)."""
    return self.cross_attention_dim

  @property
  def downsampling_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  # ----------------------------------------------------------------- config.json

  @classmethod
  def from_dict(cls, config: Mapping[str, Any]) -> UNet3DConfig:
    """From a diffusers config.json dict; missing entries take diffusers' defaults.

    Entries that are not UNet3DConditionModel arguments (`_class_name`, `_diffusers_version`,
    and keys such as `flip_sin_to_cos` that ModelScope's config.json carries but diffusers
    ignores) are ignored, as diffusers does. A config of another class is refused.
    """
    class_name = config.get("_class_name", cls.class_name)
    if class_name != cls.class_name:
      raise ValueError(f"the config is for diffusers' {class_name}, not {cls.class_name}; load a Stable Diffusion "
                       f"UNet2DConditionModel with brainjax.models.unet.load_unet instead."
                       if class_name == unet.UNetConfig.class_name else
                       f"the config is for diffusers' {class_name}, not {cls.class_name}; brainjax's "
                       f"UNet3DConditionModel loads ModelScope / Zeroscope video UNets only.")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in names})

  def to_dict(self) -> dict[str, Any]:
    """diffusers' config.json entries (lists, as diffusers writes them)."""
    def listed(v: Any) -> Any:
      return [listed(x) for x in v] if isinstance(v, tuple) else v
    return {"_class_name": self.class_name, **{k: listed(v) for k, v in dataclasses.asdict(self).items()}}


def zeroscope_config() -> UNet3DConfig:
  """`cerspense/zeroscope_v2_576w`'s unet/config.json: ModelScope text-to-video-ms-1.7b's architecture.

  diffusers' defaults, which are this model: 320/640/1280/1280 channels, 2 layers per block,
  heads of 64 channels (5/10/20/20 heads), cross-attention to 1024-wide OpenCLIP ViT-H/14 text
  states, GroupNorm 32 groups eps 1e-5, 3 CrossAttnDownBlock3D + DownBlock3D, UpBlock3D + 3
  CrossAttnUpBlock3D, 4 latent channels (1.41B params). sample_size 32 is ModelScope's config
  value, metadata only: the forward takes any size (zeroscope makes 576x320 frames, 72x40 latents).
  """
  return UNet3DConfig(sample_size=32)


# --------------------------------------------------------------------------------------- layers


def _temporal_conv(features: int, name: str, *, zero: bool = False, dtype: Dtype, param_dtype: Dtype) -> nn.Conv:
  """Conv3d with kernel (3, 1, 1) over [B, T, H, W, C], frames zero-padded by one: a 3-tap conv along time."""
  kernel_init = nn.initializers.zeros_init() if zero else nn.initializers.lecun_normal()
  return nn.Conv(
      features, (3, 1, 1), padding=((1, 1), (0, 0), (0, 0)), dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(kernel_init, (None, None, None, None, "embed")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))


def _videos(x: jax.Array, num_frames: int) -> jax.Array:
  """[B * T, H, W, C] -> [B, T, H, W, C]."""
  if x.shape[0] % num_frames:
    raise ValueError(f"{x.shape[0]} frames are not a whole number of {num_frames}-frame videos.")
  return nn.with_logical_constraint(x.reshape(x.shape[0] // num_frames, num_frames, *x.shape[1:]),
                                    ("act_batch", None, None, None, "act_embed"))


class TemporalConvLayer(nn.Module):
  """diffusers' TemporalConvLayer on frames [B * T, H, W, C]: x + four (GroupNorm, SiLU, (3, 1, 1) conv) stages.

  Stage k's norm is `conv{k}_0`, its conv `conv1_2` / `conv{k}_3` (diffusers' nn.Sequential indices;
  the later stages hold a Dropout at index 2). The last conv starts at zero.
  """
  groups: int
  num_frames: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    identity = _videos(x, self.num_frames)
    h, c = identity, x.shape[-1]
    for k in range(1, 5):
      h = nn.silu(unet._group_norm(self.groups, TEMPORAL_CONV_NORM_EPS, f"conv{k}_0", **kw)(h))
      h = _temporal_conv(c, f"conv{k}_{2 if k == 1 else 3}", zero=k == 4, **kw)(h)  # dropout: eval only
    return unet._constrain((identity + h).reshape(x.shape))


class TransformerTemporalModel(nn.Module):
  """diffusers' TransformerTemporalModel on frames [B * T, H, W, C]: attention along time at every pixel.

  GroupNorm over each whole video -> proj_in -> transformer_blocks_k over [B * H * W, T, heads * head_dim]
  tokens (double self-attention, no encoder_hidden_states) -> proj_out -> + input.
  """
  heads: int
  head_dim: int
  groups: int
  num_frames: int
  num_layers: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    n, h, w, c = x.shape
    t, inner = self.num_frames, self.heads * self.head_dim
    y = unet._group_norm(self.groups, TEMPORAL_GROUP_NORM_EPS, "norm", **kw)(_videos(x, t))
    y = y.transpose(0, 2, 3, 1, 4).reshape(n // t * h * w, t, c)  # [B, T, H, W, C] -> [B * H * W, T, C]
    y = layers.dense(inner, (None, "embed"), name="proj_in", **kw)(y)
    for k in range(self.num_layers):
      # context None: attn1 and attn2 both attend to the frames themselves (diffusers' double_self_attention).
      y = unet.BasicTransformerBlock(dim=inner, heads=self.heads, head_dim=self.head_dim, cross_attention_dim=inner,
                                     name=f"transformer_blocks_{k}", **kw)(y, None)
    y = layers.dense(c, (None, "embed"), name="proj_out", **kw)(y)
    y = y.reshape(n // t, h, w, t, c).transpose(0, 3, 1, 2, 4).reshape(x.shape)
    return unet._constrain(y + x)


class _Block3DBase(unet._BlockBase):
  """unet's block base (resnets, attentions from the 2D config) plus the temporal layers."""
  num_frames: int = 1

  @nn.nowrap
  def _temp_conv(self, name: str) -> nn.Module:
    (cls,) = unet._maybe_remat(self.remat, TemporalConvLayer)
    return cls(self.config.norm_num_groups, self.num_frames, name=name, **self._kw())

  @nn.nowrap
  def _temp_attention(self, name: str) -> nn.Module:
    (cls,) = unet._maybe_remat(self.remat, TransformerTemporalModel)
    return cls(self.level.heads, self.level.head_dim, self.config.norm_num_groups, self.num_frames, name=name,
               **self._kw())

  @nn.nowrap
  def _layer(self, j: int, x: jax.Array, temb: jax.Array, context: jax.Array) -> jax.Array:
    """resnets_j -> temp_convs_j [-> attentions_j -> temp_attentions_j], the order of every 3D block."""
    x = self._temp_conv(f"temp_convs_{j}")(self._resnet(f"resnets_{j}")(x, temb))
    if self._has_attention():
      x = self._attention(f"attentions_{j}")(x, context)
      x = self._temp_attention(f"temp_attentions_{j}")(x)
    return x


class DownBlock3D(_Block3DBase):
  """CrossAttnDownBlock3D / DownBlock3D. Returns the output and the skips (every layer's, then the downsampler's)."""
  add_downsample: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    skips = []
    for j in range(self.level.num_layers):
      x = self._layer(j, x, temb, context)
      skips.append(x)
    if self.add_downsample:
      x = unet.Downsample2D(self.config.downsample_padding, name="downsamplers_0", **self._kw())(x)
      skips.append(x)
    return x, skips


class MidBlock3D(_Block3DBase):
  """UNetMidBlock3DCrossAttn: resnets_0, temp_convs_0, attentions_0, temp_attentions_0, resnets_1, temp_convs_1."""

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array) -> jax.Array:
    scale = self.config.mid_block_scale_factor
    x = self._temp_conv("temp_convs_0")(self._resnet("resnets_0", scale)(x, temb))
    x = self._attention("attentions_0", only_cross_attention=False)(x, context)
    x = self._temp_attention("temp_attentions_0")(x)
    return self._temp_conv("temp_convs_1")(self._resnet("resnets_1", scale)(x, temb))


class UpBlock3D(_Block3DBase):
  """CrossAttnUpBlock3D / UpBlock3D: (concat skip, layer) x num_layers, then the upsampler."""
  add_upsample: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, skips: Sequence[jax.Array], temb: jax.Array, context: jax.Array,
               upsample_size: tuple[int, int] | None = None) -> jax.Array:
    skips = list(skips)
    for j in range(self.level.num_layers):
      x = self._layer(j, jnp.concatenate([x, skips.pop()], axis=-1), temb, context)
    if self.add_upsample:
      x = unet.Upsample2D(name="upsamplers_0", **self._kw())(x, upsample_size)
    return x


def _levels(config: UNet3DConfig) -> tuple[list[unet._Level], unet._Level, list[unet._Level]]:
  """unet._levels of the spatial config, with every head attention_head_dim wide (diffusers' 3D blocks)."""
  with_width = lambda lv: dataclasses.replace(lv, head_dim=config.attention_head_dim)
  down, mid, up = unet._levels(config.spatial)
  return [with_width(lv) for lv in down], with_width(mid), [with_width(lv) for lv in up]


class UNet3DConditionModel(nn.Module):
  """diffusers' UNet3DConditionModel (ModelScope / Zeroscope) on channels-last videos.

  __call__(sample [B, T, H, W, in_channels], timesteps (a scalar, or one per video [B]),
  encoder_hidden_states [B, S, cross_attention_dim]) -> the prediction [B, T, H, W, out_channels].
  """
  config: UNet3DConfig
  parts: unet.UNetParts = unet.UNetParts()
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, sample: jax.Array, timesteps: jax.Array | float,
               encoder_hidden_states: jax.Array) -> jax.Array:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    _check_inputs(c, sample, encoder_hidden_states)
    b, t = sample.shape[:2]
    timesteps = jnp.asarray(timesteps)
    if timesteps.ndim == 0:
      timesteps = jnp.broadcast_to(timesteps, (b,))
    elif timesteps.shape != (b,):
      raise ValueError(f"timesteps have shape {tuple(timesteps.shape)}; give a scalar or one per video, "
                       f"shape ({b},).")

    emb = unet.timestep_embedding(timesteps, c.block_out_channels[0], flip_sin_to_cos=True, freq_shift=0)
    emb = unet.TimestepEmbedding(c.time_embed_dim, c.act_fn, name="time_embedding", **kw)(emb.astype(self.dtype))
    # Frames fold into the batch (video b's frame f at row b * T + f); time and text repeat per frame.
    emb = jnp.repeat(emb, t, axis=0)
    context = jnp.repeat(encoder_hidden_states.astype(self.dtype), t, axis=0)
    x = unet._constrain(sample.astype(self.dtype).reshape(b * t, *sample.shape[2:]))

    x = unet._conv(c.block_out_channels[0], 3, "conv_in", **kw)(x)
    (temporal,) = unet._maybe_remat(self.remat, TransformerTemporalModel)
    x = temporal(TRANSFORMER_IN_HEADS, c.attention_head_dim, c.norm_num_groups, t, name="transformer_in", **kw)(x)
    if self.parts.frames != 1:
      raise ValueError(f"UNet3DConditionModel(parts=UNetParts(frames={self.parts.frames})): the 3D UNet's spatial "
                       f"layers normalise each frame on its own (its temporal layers see the frames); use frames=1.")
    down, mid, up = _levels(c)
    blocks = dict(config=c.spatial, parts=self.parts, remat=self.remat, num_frames=t, **kw)
    skips = [x]
    for i, level in enumerate(down):
      x, res = DownBlock3D(level=level, add_downsample=i != len(down) - 1, name=f"down_blocks_{i}", **blocks)(
          x, emb, context)
      skips += res
    x = MidBlock3D(level=mid, name="mid_block", **blocks)(x, emb, context)
    for i, level in enumerate(up):
      res, skips = skips[-level.num_layers:], skips[:-level.num_layers]
      last = i == len(up) - 1
      # Upsample to the next skip's size: x2 normally, the exact size when a downsampler rounded up.
      size = None if last else tuple(skips[-1].shape[1:3])
      x = UpBlock3D(level=level, add_upsample=not last, name=f"up_blocks_{i}", **blocks)(x, res, emb, context, size)
    x = nn.silu(unet._group_norm(c.norm_num_groups, c.norm_eps, "conv_norm_out", **kw)(x))
    x = unet._conv(c.out_channels, 3, "conv_out", out_axis=None, **kw)(x)
    return x.reshape(b, t, *x.shape[1:])

  def dummy_inputs(self) -> tuple[jax.Array, ...]:
    f = self.config.downsampling_factor
    return (jnp.zeros((1, 1, f, f, self.config.in_channels), jnp.float32), jnp.zeros((), jnp.int32),
            jnp.zeros((1, 1, self.config.context_dim), jnp.float32))


def _check_inputs(config: UNet3DConfig, sample: jax.Array, context: jax.Array) -> None:
  channels = config.in_channels
  if sample.ndim != 5 or sample.shape[-1] != channels:
    hint = ""
    if sample.ndim == 4:
      hint = (" This looks like a batch of images; add a frames axis (sample[:, None] for one frame per video), "
              "or use brainjax.models.unet for single images.")
    elif sample.ndim == 5 and sample.shape[1] == channels:
      hint = (" It looks channels-first ([B, C, T, H, W], diffusers' layout); transpose it with "
              "x.transpose(0, 2, 3, 4, 1).")
    elif sample.ndim == 5 and sample.shape[2] == channels:
      hint = (" It looks like [B, T, C, H, W] (frames, then channels-first images); transpose it with "
              "x.transpose(0, 1, 3, 4, 2).")
    raise ValueError(f"sample has shape {tuple(sample.shape)}; the video UNet expects channels-last latent videos "
                     f"[B, T, H, W, {channels}].{hint}")
  if context.ndim != 3 or context.shape[-1] != config.context_dim:
    raise ValueError(f"encoder_hidden_states have shape {tuple(context.shape)}; the video UNet expects "
                     f"[B, S, {config.context_dim}] (cross_attention_dim = {config.context_dim}), one sequence per "
                     f"video. Check that the conditioning comes from the text encoder / fMRI projection this UNet "
                     f"was trained with (zeroscope: OpenCLIP ViT-H/14, 1024 wide).")
  if context.shape[0] != sample.shape[0]:
    raise ValueError(f"encoder_hidden_states have batch {context.shape[0]} but sample has batch {sample.shape[0]} "
                     f"videos; give one conditioning sequence per video (it is repeated over the frames).")


def abstract_params(module: UNet3DConditionModel, *, boxed: bool = False) -> Any:
  """The param tree as jax.ShapeDtypeStructs, without computing anything (boxed: with logical axis names)."""
  return unet.abstract_params(module, boxed=boxed)


# --------------------------------------------------------------------------------------- weights

_BLOCKS = unet._BLOCKS


def _temporal_conv_rules() -> list[mp.Rule]:
  # diffusers' nn.Sequential indices: conv1 = (GroupNorm, SiLU, Conv3d), conv2..4 = (GroupNorm, SiLU, Dropout, Conv3d).
  return [*mp.norm("conv{k:1|2|3|4}.0", "conv{k:1|2|3|4}_0"), *mp.conv("conv1.2", "conv1_2"),
          *mp.conv("conv{k:2|3|4}.3", "conv{k:2|3|4}_3")]


def unet3d_rules() -> list[mp.Rule]:
  """unet.unet_rules() (every 2D layer keeps its name) plus transformer_in, temp_convs and temp_attentions.

  A TransformerTemporalModel has Transformer2DModel's param names (norm, proj_in / proj_out as Linear,
  transformer_blocks_k), so unet's transformer rules serve it.
  """
  return [
      *unet.unet_rules(),
      *mp.prefixed(unet._transformer_rules(), "transformer_in.", "transformer_in/"),
      *mp.prefixed(unet._transformer_rules(), _BLOCKS + r".{i:\d+}.temp_attentions.{j:\d+}.",
                   _BLOCKS + r"_{i:\d+}/temp_attentions_{j:\d+}/"),
      *mp.prefixed(unet._transformer_rules(), r"mid_block.temp_attentions.{j:\d+}.",
                   r"mid_block/temp_attentions_{j:\d+}/"),
      *mp.prefixed(_temporal_conv_rules(), _BLOCKS + r".{i:\d+}.temp_convs.{j:\d+}.",
                   _BLOCKS + r"_{i:\d+}/temp_convs_{j:\d+}/"),
      *mp.prefixed(_temporal_conv_rules(), r"mid_block.temp_convs.{j:\d+}.", r"mid_block/temp_convs_{j:\d+}/"),
  ]


UNET3D_TABLE = mp.Table(rules=unet3d_rules())

WEIGHTS_NAMES = unet.WEIGHTS_NAMES
_WHAT = ("a diffusers UNet3DConditionModel directory with config.json and diffusion_pytorch_model.safetensors "
         "(e.g. zeroscope_v2_576w/unet)")


def load_unet3d(path: str | epath.PathLike, *, parts: unet.UNetParts = unet.UNetParts(), remat: bool = False,
                dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> tuple[UNet3DConditionModel, Any]:
  """(module, params) from a diffusers UNet3DConditionModel directory (local or gs://).

  `path` is the `unet/` directory, or a pipeline directory holding one (a copy of
  zeroscope_v2_576w). Reads diffusion_pytorch_model.safetensors (or its .fp16 variant,
  or a sharded index); the config is checked before any weight is read; params are
  cast to param_dtype.
  """
  directory = unet._unet_directory(path)
  module = UNet3DConditionModel(UNet3DConfig.from_dict(checkpoint_io.read_config(directory, _WHAT)), parts=parts,
                                remat=remat, dtype=dtype, param_dtype=param_dtype)
  state_dict, origin = checkpoint_io.read_state_dict(directory, _WHAT, weights_names=WEIGHTS_NAMES)
  params = UNET3D_TABLE.to_flax(state_dict, abstract_params(module), origin=origin)
  return module, jax.tree.map(lambda x: jnp.asarray(x, param_dtype), params)


def save_unet3d(path: str | epath.PathLike, config: UNet3DConfig | UNet3DConditionModel, params: Any) -> epath.Path:
  """Writes config.json + diffusion_pytorch_model.safetensors for `diffusers.UNet3DConditionModel.from_pretrained`.

  Tensors keep the params' dtype. Returns the directory.
  """
  config = getattr(config, "config", config)  # a module is accepted for its config
  params = params["params"] if set(params) == {"params"} else params  # accept flax variables too
  return checkpoint_io.write_checkpoint(path, config.to_dict(), UNET3D_TABLE.to_torch(params),
                                       weights_name=checkpoint_io.DIFFUSERS_WEIGHTS)
