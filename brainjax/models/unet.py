r"""Stable Diffusion 1.x's `UNet2DConditionModel` in Flax, numerically matching diffusers' PyTorch one.

diffusers removed its Flax models in 0.40, so brainjax owns this UNet;
diffusers' PyTorch `UNet2DConditionModel` is the checkpoint format and the
numerical reference. Module and parameter names mirror diffusers', so the
conversion table is nearly literal
(`down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight` <->
`down_blocks_0/attentions_1/transformer_blocks_0/attn2/to_k/kernel`).
Layout is NHWC (channels last) throughout; diffusers' is NCHW.

  UNetConfig                            diffusers' UNet2DConditionModel config.json fields (from_dict / to_dict)
  UNet2DConditionModel(config, parts)   __call__(sample [N, H, W, in], timesteps (scalar or [N]),
                                        encoder_hidden_states [N, S, cross_attention_dim]) -> [N, H, W, out]
  load_unet(path) -> (module, params)   from a diffusers `unet/` directory (config.json +
                                        diffusion_pytorch_model.safetensors), local or gs://, or from a
                                        pipeline directory holding one
  save_unet(path, config, params)       a directory `diffusers.UNet2DConditionModel.from_pretrained` loads
  UNET_TABLE / unet_rules()             the two-way weight mapping (brainjax.weights.mapping); a video
                                        variant extends unet_rules() with its extra layers
  timestep_embedding(t, dim, ...)       diffusers' get_timestep_embedding (sinusoidal, float32)

Architecture (SD 1.x family; every name below is a param scope):
  time_embedding   Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift) -> linear_1 -> act_fn ->
                   linear_2 (-> timestep_post_act); time_embedding_act_fn is applied once afterwards
  conv_in          k x k conv to block_out_channels[0]
  down_blocks_i    CrossAttnDownBlock2D (resnets_j, attentions_j interleaved) or DownBlock2D (resnets_j);
                   then downsamplers_0 (3x3 stride-2 conv) except in the last block. Every resnet output
                   and the downsampler output are kept as skip connections.
  mid_block        UNetMidBlock2DCrossAttn: resnets_0, then (attentions_0, resnets_1)
  up_blocks_i      CrossAttnUpBlock2D / UpBlock2D with layers_per_block + 1 resnets, each fed
                   concat([x, skip.pop()], channels); then upsamplers_0 (nearest x2 to the skip's size,
                   3x3 conv) except in the last block
  conv_norm_out -> act_fn -> conv_out
  ResnetBlock2D    (x' + conv2(act(norm2(conv1(act(norm1(x))) + time_emb_proj(act(temb)))))) / scale,
                   x' = conv_shortcut(x) (1x1) when channels change
  Transformer2DModel  GroupNorm(eps 1e-6) -> proj_in (Dense if use_linear_projection, else 1x1 conv) ->
                   transformer_blocks_k -> proj_out -> + residual
  BasicTransformerBlock  x + attn1(norm1(x)); x + attn2(norm2(x), context); x + ff(norm3(x)); LayerNorms
                   eps 1e-5 (diffusers does not pass norm_eps down), ff = GEGLU (net_0/proj) -> net_2
  Attention        to_q/to_k/to_v without bias, to_out_0 with bias; scale head_dim ** -0.5

Heads: `attention_head_dim` is, for this model, the NUMBER of heads per block (diffusers' historical
naming; head width = channels // heads). `num_attention_heads` is refused, as diffusers refuses it.

Extension point for video variants (MindVideo / Tune-A-Video sparse-causal + temporal attention,
NeuralFlix pseudo-3D convs): `UNet2DConditionModel(config, parts=UNetParts(...))`.
  UNetParts.transformer_block   the class built for every transformer layer, with the keyword arguments
                                of BasicTransformerBlock plus UNetParts.transformer_block_kwargs
  UNetParts.resnet              the class built for every resnet, with ResnetBlock2D's arguments plus
                                UNetParts.resnet_kwargs
The kwargs are tuples of (name, value) pairs so the module stays hashable (a jit static argument),
e.g. (("num_frames", 6),). BasicTransformerBlock builds its layers in `setup` and runs them through
three small methods (self_attention, cross_attention, feed_forward) over tokens [N, L, C]: a video
block subclasses it, swaps `attn1` by passing another class as `self_attention_cls` (same to_q/k/v/out
params, different keys/values: the first and previous frame), and adds `norm_temp` / `attn_temp` in
its own setup and __call__. With frames folded into the batch (N = B * T, context repeated per frame),
the rest of the UNet is unchanged; its weight table is `Table([*unet_rules(), *extra_rules])`.

Logical axis names of the params (see brainjax.train.sharding):
  conv kernels [kh, kw, in, out]  (None, None, None, 'embed'), biases ('embed',); conv_out: None (4 channels)
  GroupNorm / LayerNorm           ('embed',)
  attention to_q/to_k/to_v        ('embed', 'heads'); to_out_0 ('heads', 'embed')
  ff net_0/proj ('embed', 'mlp'); net_2 ('mlp', 'embed')
  proj_in / proj_out (linear)     (None, 'embed'), as the 1x1 conv they replace
  time_embedding linear_1         ('embed', 'mlp'), linear_2 (None, 'mlp'); resnets' time_emb_proj
                                  ('mlp', 'embed'): the time embedding lives on the 'mlp' axis

Options: `dtype` (compute, e.g. bf16; attention softmax and norm statistics stay float32; with
upcast_attention q/k/v go to float32 first), `param_dtype`, `remat` (every resnet and every
Transformer2DModel recompute their activations in the backward pass; param names unchanged),
`UNetParts(attention_query_chunk=n)` (attn1 / attn2 run their queries n at a time, each chunk recomputed in
the backward pass: the attention scores, a video UNet's largest buffers, exist for one chunk at a time).

Not supported (errors name the option): block types other than CrossAttnDownBlock2D / DownBlock2D /
CrossAttnUpBlock2D / UpBlock2D, mid blocks other than UNetMidBlock2DCrossAttn, class / addition /
encoder_hid embeddings (SD 2 unCLIP, SDXL, Kandinsky), time_cond_proj_dim (LCM), fourier time
embeddings, scale_shift resnets, dual cross attention, gated (GLIGEN) attention, dropout > 0,
cross-attention norms, asymmetric transformer layer counts, attention masks, ControlNet residuals.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from brainjax.weights import checkpoint_io
from brainjax.weights import mapping as mp
from brainjax.models import layers, vae

Dtype = Any

# Reused from the VAE: the activation table (diffusers' get_activation), the torch-padded conv with
# logical names, the feature-map constraint and the remat helper are identical in the UNet.
ACTIVATIONS = vae.ACTIVATIONS
_conv = vae._conv
_constrain = vae._constrain
_maybe_remat = vae._maybe_remat

CROSS_DOWN, DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, UP = "CrossAttnUpBlock2D", "UpBlock2D"
CROSS_MID = "UNetMidBlock2DCrossAttn"
TRANSFORMER_GROUP_NORM_EPS = 1e-6  # Transformer2DModel hard-codes its GroupNorm eps
TRANSFORMER_LAYER_NORM_EPS = 1e-5  # UNet2DConditionModel never passes norm_eps to Transformer2DModel

# --------------------------------------------------------------------------------------- config

# Options diffusers accepts that this port does not implement, with the value that is supported.
# (field, supported value, what the option is for)
_UNSUPPORTED: tuple[tuple[str, Any, str], ...] = (
    ("encoder_hid_dim", None, "projects encoder_hidden_states (Kandinsky / IF)"),
    ("encoder_hid_dim_type", None, "projects encoder_hidden_states (Kandinsky / IF)"),
    ("class_embed_type", None, "class embeddings (SD 2 upscaler, unCLIP)"),
    ("num_class_embeds", None, "class embeddings"),
    ("addition_embed_type", None, "added embeddings (SDXL, Kandinsky)"),
    ("addition_time_embed_dim", None, "SDXL's added time ids"),
    ("time_cond_proj_dim", None, "guidance-scale conditioning (LCM)"),
    ("time_embedding_type", "positional", "fourier time embeddings"),
    ("resnet_time_scale_shift", "default", "scale-shift time conditioning"),
    ("resnet_skip_time_act", False, "skipping the activation before time_emb_proj"),
    ("dual_cross_attention", False, "DualTransformer2DModel"),
    ("attention_type", "default", "gated (GLIGEN) attention"),
    ("class_embeddings_concat", False, "concatenated class embeddings"),
    ("cross_attention_norm", None, "a norm on encoder_hidden_states inside attention"),
    ("reverse_transformer_layers_per_block", None, "asymmetric transformer depths"),
    ("dropout", 0.0, "dropout (brainjax's UNet is deterministic)"),
)


def validate_levels(config: Any, down_types: Sequence[str], up_types: Sequence[str], example: str,
                    family: str) -> int:
  """Checks a UNet config's per-level fields (norm groups, widths, block types); returns the level count.

  Shared by UNetConfig and unet3d.UNet3DConfig: errors name the config class, the field and the fix.
  """
  name = type(config).__name__
  _positive_int("norm_num_groups", config.norm_num_groups)
  n = len(config.block_out_channels)
  if n == 0:
    raise ValueError(f"{name}.block_out_channels is empty; give one width per resolution level, e.g. "
                     f"(320, 640, 1280, 1280) as in {example}.")
  for i, width in enumerate(config.block_out_channels):
    _positive_int(f"block_out_channels[{i}]", width)
    if width % config.norm_num_groups:
      raise ValueError(f"{name}.block_out_channels[{i}] = {width} is not divisible by norm_num_groups "
                       f"{config.norm_num_groups} (GroupNorm needs whole groups); change one of them.")
  for field, supported in (("down_block_types", tuple(down_types)), ("up_block_types", tuple(up_types))):
    types = getattr(config, field)
    if len(types) != n:
      raise ValueError(f"{name}.{field} has {len(types)} entries but block_out_channels has {n}; give one "
                       f"block type per resolution level.")
    bad = sorted({t for t in types if t not in supported})
    if bad:
      model = name.replace("Config", "ConditionModel").replace("UNetConditionModel", "UNet2DConditionModel")
      raise ValueError(f"{name}.{field} = {list(types)}: block type(s) {bad} are not supported; brainjax's "
                       f"{model} implements {list(supported)} ({family}'s blocks).")
  return n


def _tuple(value: Any) -> Any:
  return tuple(_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _positive_int(name: str, value: Any) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ValueError(f"UNetConfig.{name} = {value!r}: must be a positive integer.")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """diffusers' UNet2DConditionModel config (same field names and defaults).

  Per-block fields (layers_per_block, attention_head_dim, cross_attention_dim,
  only_cross_attention, transformer_layers_per_block) take one value or one per
  down block; the up blocks use them reversed, as diffusers does. Fields that
  configure unsupported options must keep their default (see _UNSUPPORTED).
  """
  sample_size: int | tuple[int, int] | None = None
  in_channels: int = 4
  out_channels: int = 4
  center_input_sample: bool = False
  flip_sin_to_cos: bool = True
  freq_shift: float = 0
  down_block_types: tuple[str, ...] = (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, DOWN)
  mid_block_type: str | None = CROSS_MID
  up_block_types: tuple[str, ...] = (UP, CROSS_UP, CROSS_UP, CROSS_UP)
  only_cross_attention: bool | tuple[bool, ...] = False
  block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
  layers_per_block: int | tuple[int, ...] = 2
  downsample_padding: int = 1
  mid_block_scale_factor: float = 1
  dropout: float = 0.0
  act_fn: str = "silu"
  norm_num_groups: int | None = 32
  norm_eps: float = 1e-5
  cross_attention_dim: int | tuple[int, ...] = 1280
  transformer_layers_per_block: int | tuple[int, ...] = 1
  reverse_transformer_layers_per_block: Any = None
  encoder_hid_dim: int | None = None
  encoder_hid_dim_type: str | None = None
  attention_head_dim: int | tuple[int, ...] = 8
  num_attention_heads: int | tuple[int, ...] | None = None
  dual_cross_attention: bool = False
  use_linear_projection: bool = False
  class_embed_type: str | None = None
  addition_embed_type: str | None = None
  addition_time_embed_dim: int | None = None
  num_class_embeds: int | None = None
  upcast_attention: bool = False
  resnet_time_scale_shift: str = "default"
  resnet_skip_time_act: bool = False
  resnet_out_scale_factor: float = 1.0
  time_embedding_type: str = "positional"
  time_embedding_dim: int | None = None
  time_embedding_act_fn: str | None = None
  timestep_post_act: str | None = None
  time_cond_proj_dim: int | None = None
  conv_in_kernel: int = 3
  conv_out_kernel: int = 3
  projection_class_embeddings_input_dim: int | None = None
  attention_type: str = "default"
  class_embeddings_concat: bool = False
  mid_block_only_cross_attention: bool | None = None
  cross_attention_norm: str | None = None
  addition_embed_type_num_heads: int = 64

  class_name: ClassVar[str] = "UNet2DConditionModel"

  def __post_init__(self):
    # config.json gives lists; tuples keep the config hashable (the module is a jit static argument).
    for f in dataclasses.fields(self):
      object.__setattr__(self, f.name, _tuple(getattr(self, f.name)))
    self._validate()

  # ----------------------------------------------------------------- validation

  def _validate(self) -> None:
    for name, supported, what in _UNSUPPORTED:
      if getattr(self, name) != supported:
        raise ValueError(f"UNetConfig.{name} = {getattr(self, name)!r}: {what} is not supported by brainjax's "
                         f"UNet2DConditionModel (the Stable Diffusion 1.x family); it needs {name} = {supported!r}.")
    if self.num_attention_heads is not None:
      # diffusers itself raises here; its `attention_head_dim` already is the number of heads.
      raise ValueError(f"UNetConfig.num_attention_heads = {self.num_attention_heads!r}: diffusers' "
                       f"UNet2DConditionModel refuses it (its `attention_head_dim` is the number of heads, see "
                       f"diffusers issue 2011); set attention_head_dim to the number of heads instead.")
    for name in ("in_channels", "out_channels", "conv_in_kernel", "conv_out_kernel"):
      _positive_int(name, getattr(self, name))
    for name in ("conv_in_kernel", "conv_out_kernel"):
      if getattr(self, name) % 2 == 0:
        raise ValueError(f"UNetConfig.{name} = {getattr(self, name)}: only odd kernels keep the size "
                         f"(diffusers pads (k - 1) // 2); use 3.")
    if self.norm_num_groups is None:
      raise ValueError("UNetConfig.norm_num_groups = None (no output norm) is not supported; SD uses 32.")
    n = validate_levels(self, (CROSS_DOWN, DOWN), (CROSS_UP, UP), "Stable Diffusion 1.5", "Stable Diffusion 1.x")
    if self.mid_block_type != CROSS_MID:
      raise ValueError(f"UNetConfig.mid_block_type = {self.mid_block_type!r} is not supported; brainjax's "
                       f"UNet2DConditionModel implements {CROSS_MID!r} only.")
    for field in ("layers_per_block", "attention_head_dim", "cross_attention_dim", "only_cross_attention",
                  "transformer_layers_per_block"):
      values = self.per_block(field)
      if len(values) != n:
        raise ValueError(f"UNetConfig.{field} has {len(values)} entries but there are {n} down blocks; give one "
                         f"value, or one per block.")
      for i, v in enumerate(values):
        if field == "only_cross_attention":
          if not isinstance(v, bool):
            raise ValueError(f"UNetConfig.only_cross_attention = {self.only_cross_attention!r}: must be true/false.")
        else:
          _positive_int(f"{field}[{i}]" if isinstance(getattr(self, field), tuple) else field, v)
    if len(set(self.per_block("cross_attention_dim"))) > 1:
      raise ValueError(f"UNetConfig.cross_attention_dim = {self.cross_attention_dim!r}: one encoder_hidden_states "
                       f"feeds every block, so all blocks need the same width; give one integer.")
    for i, (width, heads) in enumerate(zip(self.block_out_channels, self.per_block("attention_head_dim"))):
      if heads > width:
        raise ValueError(f"UNetConfig.attention_head_dim[{i}] = {heads} heads (diffusers' attention_head_dim is "
                         f"the number of heads) exceed the {width} channels of block {i}; use fewer heads.")
    for name in ("act_fn", "time_embedding_act_fn", "timestep_post_act"):
      value = getattr(self, name)
      if value is not None and value not in ACTIVATIONS:
        raise ValueError(f"UNetConfig.{name} = {value!r} is not supported; use one of {sorted(ACTIVATIONS)}.")
    if self.downsample_padding not in (0, 1):
      raise ValueError(f"UNetConfig.downsample_padding = {self.downsample_padding!r}: use 1 (SD) or 0.")
    if self.time_embedding_dim is not None:
      _positive_int("time_embedding_dim", self.time_embedding_dim)
    for name in ("center_input_sample", "flip_sin_to_cos", "use_linear_projection", "upcast_attention"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"UNetConfig.{name} = {getattr(self, name)!r}: must be true or false.")

  # ----------------------------------------------------------------- derived values

  def per_block(self, field: str) -> tuple[Any, ...]:
    """A per-block field as one value per down block (diffusers broadcasts a single value)."""
    value = getattr(self, field)
    return value if isinstance(value, tuple) else (value,) * len(self.block_out_channels)

  @property
  def time_embed_dim(self) -> int:
    return self.time_embedding_dim or 4 * self.block_out_channels[0]

  @property
  def context_dim(self) -> int:
    """The width encoder_hidden_states must have (768 for SD 1.x's CLIP ViT-L/14)."""
    return self.per_block("cross_attention_dim")[0]

  @property
  def downsampling_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  # ----------------------------------------------------------------- config.json

  @classmethod
  def from_dict(cls, config: Mapping[str, Any]) -> UNetConfig:
    """From a diffusers config.json dict. Missing entries take diffusers' defaults.

    Entries that are not UNet2DConditionModel arguments (`_class_name`,
    `_diffusers_version`, `_name_or_path`, ...) are ignored, as diffusers does. A
    config of another class (UNet3DConditionModel, UNetMotionModel, ...) is refused.
    """
    class_name = config.get("_class_name", cls.class_name)
    if class_name != cls.class_name:
      raise ValueError(f"the config is for diffusers' {class_name}, not {cls.class_name}; brainjax's "
                       f"UNet2DConditionModel loads Stable Diffusion 1.x-style UNets only.")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in names})

  def to_dict(self) -> dict[str, Any]:
    """diffusers' config.json entries (lists, as diffusers writes them)."""
    def listed(v: Any) -> Any:
      return [listed(x) for x in v] if isinstance(v, tuple) else v
    return {"_class_name": self.class_name, **{k: listed(v) for k, v in dataclasses.asdict(self).items()}}


# --------------------------------------------------------------------------------------- layers


def _group_norm(groups: int, eps: float, name: str, *, frames: int = 1, dtype: Dtype,
                param_dtype: Dtype) -> Callable[[jax.Array], jax.Array]:
  """GroupNorm over [N, H, W, C]; with frames > 1 the statistics pool the `frames` consecutive batch entries.

  The inflated video UNets (Tune-A-Video, MindVideo) apply torch's GroupNorm to
  [B, C, F, H, W] in their resnets and conv_norm_out, so one video's frames share
  statistics; with frames folded into the batch that is a norm over [B, F*H, W, C].
  """
  # Two-pass variance as torch computes it (flax's fast E[x^2]-E[x]^2 loses precision).
  norm = nn.GroupNorm(
      num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))
  if frames == 1:
    return norm
  return lambda x: norm(x.reshape(x.shape[0] // frames, frames * x.shape[1], *x.shape[2:])).reshape(x.shape)


def _layer_norm(name: str | None = None, *, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=TRANSFORMER_LAYER_NORM_EPS, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))


def timestep_embedding(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0, max_period: int = 10000) -> jax.Array:
  """diffusers' get_timestep_embedding: [N] timesteps -> [N, dim] float32 sinusoids.

  Frequencies exp(-ln(max_period) * i / (dim/2 - freq_shift)); [sin, cos], or
  [cos, sin] with flip_sin_to_cos; a zero column is appended for odd dims.
  """
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if flip_sin_to_cos:
    emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class TimestepEmbedding(nn.Module):
  """linear_1 -> act -> linear_2 (-> post_act): the sinusoids to the resnets' time embedding."""
  features: int
  act_fn: str
  post_act_fn: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = ACTIVATIONS[self.act_fn](layers.dense(self.features, ("embed", "mlp"), name="linear_1", **kw)(x))
    x = layers.dense(self.features, (None, "mlp"), name="linear_2", **kw)(x)
    return x if self.post_act_fn is None else ACTIVATIONS[self.post_act_fn](x)


class ResnetBlock2D(nn.Module):
  """diffusers' ResnetBlock2D with a time embedding (time_embedding_norm 'default', pre-norm).

  `frames` > 1: the batch holds videos' frames back to back and the GroupNorms pool
  each video's frames (the inflated UNets' convention). `after_conv(name)` is the
  hook a pseudo-3D resnet uses to add a temporal layer after conv1 / conv2.
  """
  out_channels: int
  groups: int
  eps: float
  act_fn: str
  output_scale_factor: float = 1.0
  frames: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.nowrap
  def after_conv(self, name: str) -> Callable[[jax.Array], jax.Array]:
    """What runs after the 3x3 conv `name` ('conv1' / 'conv2'); nothing in 2-D."""
    del name
    return lambda h: h

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    act = ACTIVATIONS[self.act_fn]
    norm = lambda name: _group_norm(self.groups, self.eps, name, frames=self.frames, **kw)
    h = act(norm("norm1")(x))
    h = self.after_conv("conv1")(_conv(self.out_channels, 3, "conv1", **kw)(h))
    t = layers.dense(self.out_channels, ("mlp", "embed"), name="time_emb_proj", **kw)(act(temb))
    h = h + t[:, None, None, :]
    h = act(norm("norm2")(h))
    h = self.after_conv("conv2")(_conv(self.out_channels, 3, "conv2", **kw)(h))  # dropout 0
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, "conv_shortcut", **kw)(x)
    out = x + h
    return _constrain(out if self.output_scale_factor == 1 else out / self.output_scale_factor)


class Downsample2D(nn.Module):
  """3x3 stride-2 conv; padding 1 on every side (SD), or diffusers' padding=0 path (pad bottom/right by one)."""
  padding: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad = ((0, 1), (0, 1)) if self.padding == 0 else self.padding
    return _conv(x.shape[-1], 3, "conv", stride=2, padding=pad, dtype=self.dtype, param_dtype=self.param_dtype)(x)


def _nearest_indices(size_in: int, size_out: int) -> np.ndarray:
  """torch's F.interpolate(mode='nearest') source rows: floor(i * in / out) in float32, clamped."""
  if size_out == 2 * size_in:
    return np.arange(size_out) // 2
  scale = np.float32(size_in) / np.float32(size_out)
  return np.minimum(np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64), size_in - 1)


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Nearest-neighbour resize of [N, H, W, C] to `size`, as torch's F.interpolate(size=..., mode='nearest')."""
  h, w = x.shape[1:3]
  if size == (2 * h, 2 * w):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return jnp.take(jnp.take(x, _nearest_indices(h, size[0]), axis=1), _nearest_indices(w, size[1]), axis=2)


class Upsample2D(nn.Module):
  """Nearest-neighbour upsampling to `size` (x2 unless the skip connection is odd-sized), then a 3x3 conv."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
    x = resize_nearest(x, size or (2 * x.shape[1], 2 * x.shape[2]))
    return _conv(x.shape[-1], 3, "conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)


def multi_head_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, upcast: bool = False,
                         mask: jax.Array | None = None, query_chunk: int = 0) -> jax.Array:
  """Softmax attention on q [N, L, h*d], k/v [N, S, h*d] -> [N, L, h*d], scale d ** -0.5.

  jax.nn.dot_product_attention keeps logits and softmax in float32 for bf16
  inputs; `upcast` (diffusers' upcast_attention) also runs the products in float32.
  `mask` [L, S] (True = may attend) restricts which keys each query sees.
  `query_chunk` > 0 runs the queries in chunks of that many (see
  `query_chunked_attention`): same result, scores [chunk, S] instead of [L, S].
  """
  if query_chunk < 0:
    raise ValueError(f"query_chunk = {query_chunk}: give a positive number of queries per chunk, or 0 for all.")
  if query_chunk and q.shape[1] > query_chunk:
    return query_chunked_attention(q, k, v, heads, upcast, mask, query_chunk)
  n, length, inner = q.shape
  dtype = q.dtype
  if upcast:
    q, k, v = (a.astype(jnp.float32) for a in (q, k, v))
  split = lambda a: a.reshape(a.shape[0], a.shape[1], heads, inner // heads)
  out = jax.nn.dot_product_attention(split(q), split(k), split(v), scale=(inner // heads) ** -0.5,
                                     mask=None if mask is None else mask[None, None])
  return out.reshape(n, length, inner).astype(dtype)


def query_chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, upcast: bool,
                            mask: jax.Array | None, chunk: int) -> jax.Array:
  """multi_head_attention over `chunk` queries at a time, each chunk recomputed in the backward pass.

  Each query's softmax row is independent of the others, so the result is the
  same up to float32 rounding. The score tensors, which dominate a video UNet's
  memory (SD's attn1 at 32x32 with MinD-Video's two key frames: [8 heads,
  1024, 2048] per frame), only ever exist for one chunk: in the forward pass
  and, because the chunk is rematerialised, in the backward pass too. The
  last chunk is padded with zero queries whose rows are dropped.
  """
  n, length, inner = q.shape
  chunks = -(-length // chunk)
  pad = chunks * chunk - length
  q = jnp.pad(q, ((0, 0), (0, pad), (0, 0))).reshape(n, chunks, chunk, inner).swapaxes(0, 1)
  if mask is not None:
    mask = jnp.pad(mask, ((0, pad), (0, 0)), constant_values=True).reshape(chunks, chunk, mask.shape[-1])

  @jax.checkpoint
  def one_chunk(args):
    q_chunk, mask_chunk = args
    return multi_head_attention(q_chunk, k, v, heads, upcast, mask_chunk)

  out = jax.lax.map(one_chunk, (q, mask))  # [chunks, N, chunk, h*d]
  return out.swapaxes(0, 1).reshape(n, chunks * chunk, inner)[:, :length]


class Attention(nn.Module):
  """diffusers' Attention as BasicTransformerBlock builds it: bias-free q/k/v, to_out_0 with bias.

  Self-attention when `context` is None, cross-attention to `context` otherwise.
  The output width is heads * head_dim, which is the block's width in
  BasicTransformerBlock. A subclass can change which keys/values each query
  sees (e.g. sparse-causal attention over frames) by overriding `attend`; the
  params stay the same.
  """
  heads: int
  head_dim: int
  upcast: bool = False
  zero_init_out: bool = False  # to_out_0 starts at zero: a new residual branch starts as the identity
  query_chunk: int = 0  # > 0: queries in chunks of this many (multi_head_attention); no effect on params
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def attend(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """q [N, L, h*d], k/v [N, S, h*d] -> [N, L, h*d]."""
    return multi_head_attention(q, k, v, self.heads, self.upcast, query_chunk=self.query_chunk)

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    inner = self.heads * self.head_dim
    context = x if context is None else context
    q, k, v = (layers.dense(inner, ("embed", "heads"), use_bias=False, name=f"to_{p}", **kw)(y)
               for p, y in zip("qkv", (x, context, context)))
    out = nn.with_logical_constraint(self.attend(q, k, v), ("act_batch", "act_tokens", "act_heads"))
    return layers.dense(inner, ("heads", "embed"), name="to_out_0", zero_init=self.zero_init_out, **kw)(out)


class FeedForward(nn.Module):
  """GEGLU feed-forward: net_0/proj to 2 * 4 * dim, hidden * gelu(gate), net_2 back to dim."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  mult: int = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d = x.shape[-1]
    inner = d * self.mult
    h = GEGLU(inner, name="net_0", **kw)(x)
    h = nn.with_logical_constraint(h, ("act_batch", "act_tokens", "act_mlp"))
    return layers.dense(d, ("mlp", "embed"), name="net_2", **kw)(h)


class GEGLU(nn.Module):
  """proj to 2 * features; the first half times the exact (erf) GELU of the second half."""
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = layers.dense(2 * self.features, ("embed", "mlp"), name="proj", dtype=self.dtype,
                     param_dtype=self.param_dtype)(x)
    hidden, gate = jnp.split(h, 2, axis=-1)
    return hidden * jax.nn.gelu(gate, approximate=False)


class BasicTransformerBlock(nn.Module):
  """diffusers' BasicTransformerBlock (norm_type 'layer_norm', GEGLU) on tokens [N, L, dim].

  x + attn1(norm1(x)); x + attn2(norm2(x), context); x + ff(norm3(x)).
  With only_cross_attention, attn1 attends to the context as well.
  This is the extension point for video blocks (see the module docstring):
  `self_attention_cls` swaps attn1's class (or a subclass overrides
  `make_self_attention`); a subclass adds layers in `setup` (after
  super().setup()) and reorders the three steps in `__call__`. `frames` is the
  number of frames folded into the batch (video blocks use it; 2-D ignores it).
  """
  dim: int
  heads: int
  head_dim: int
  cross_attention_dim: int
  only_cross_attention: bool = False
  upcast_attention: bool = False
  self_attention_cls: type[nn.Module] = Attention
  frames: int = 1
  attention_query_chunk: int = 0  # Attention.query_chunk of attn1 / attn2
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.nowrap
  def make_self_attention(self, **attn: Any) -> nn.Module:
    """attn1, built from Attention's keyword arguments."""
    return self.self_attention_cls(**attn)

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn = dict(heads=self.heads, head_dim=self.head_dim, upcast=self.upcast_attention,
                query_chunk=self.attention_query_chunk, **kw)
    self.norm1 = _layer_norm(**kw)
    self.attn1 = self.make_self_attention(**attn)
    self.norm2 = _layer_norm(**kw)
    self.attn2 = Attention(**attn)
    self.norm3 = _layer_norm(**kw)
    self.ff = FeedForward(**kw)

  def self_attention(self, x: jax.Array, context: jax.Array) -> jax.Array:
    return x + self.attn1(self.norm1(x), context if self.only_cross_attention else None)

  def cross_attention(self, x: jax.Array, context: jax.Array) -> jax.Array:
    return x + self.attn2(self.norm2(x), context)

  def feed_forward(self, x: jax.Array) -> jax.Array:
    return x + self.ff(self.norm3(x))

  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    x = self.cross_attention(self.self_attention(x, context), context)
    return nn.with_logical_constraint(self.feed_forward(x), ("act_batch", "act_tokens", "act_embed"))


@dataclasses.dataclass(frozen=True)
class UNetParts:
  """Which classes the UNet builds for its resnets and transformer layers (the video extension point).

  `resnet` is built as resnet(out_channels, groups, eps, act_fn, output_scale_factor, dtype=..., param_dtype=...,
  name=..., **resnet_kwargs) and called (x, temb); `transformer_block` as transformer_block(dim=, heads=,
  head_dim=, cross_attention_dim=, only_cross_attention=, upcast_attention=, frames=, attention_query_chunk=,
  dtype=, param_dtype=, name=, **transformer_block_kwargs) and called (tokens [N, L, dim], context
  [N, S, D]). The kwargs are tuples of (name, value) pairs so that the parts, and the module holding them,
  stay hashable.
  `frames` (> 1 for a video UNet with frames folded into the batch) reaches every resnet and transformer
  block as their `frames` argument and makes conv_norm_out pool each video's frames.
  `attention_query_chunk` (> 0) reaches every transformer block: its attn1 / attn2 run the queries in chunks
  of that many (`query_chunked_attention`), which bounds the memory of the attention scores.
  """
  resnet: type[nn.Module] = ResnetBlock2D
  transformer_block: type[nn.Module] = BasicTransformerBlock
  resnet_kwargs: tuple[tuple[str, Any], ...] = ()
  transformer_block_kwargs: tuple[tuple[str, Any], ...] = ()
  frames: int = 1
  attention_query_chunk: int = 0


class Transformer2DModel(nn.Module):
  """GroupNorm -> proj_in -> transformer_blocks_k -> proj_out, plus the input (continuous-input path)."""
  heads: int
  num_layers: int
  groups: int
  cross_attention_dim: int
  use_linear_projection: bool = False
  only_cross_attention: bool = False
  upcast_attention: bool = False
  parts: UNetParts = UNetParts()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  head_dim: int | None = None  # None: channels // heads (the 2D UNet); the 3D UNet fixes it (unet3d.py)

  def _proj(self, features: int, name: str) -> nn.Module:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.use_linear_projection:
      return layers.dense(features, (None, "embed"), name=name, **kw)
    return _conv(features, 1, name, **kw)

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    n, h, w, c = x.shape
    head_dim = self.head_dim or c // self.heads
    inner = self.heads * head_dim  # diffusers' inner_dim; smaller than c when heads does not divide c
    y = _group_norm(self.groups, TRANSFORMER_GROUP_NORM_EPS, "norm", **kw)(x)
    # A 1x1 conv and a Dense on the flattened pixels are the same map; only the param layout differs.
    y = self._proj(inner, "proj_in")(y).reshape(n, h * w, inner)
    for k in range(self.num_layers):
      y = self.parts.transformer_block(
          dim=inner, heads=self.heads, head_dim=head_dim, cross_attention_dim=self.cross_attention_dim,
          only_cross_attention=self.only_cross_attention, upcast_attention=self.upcast_attention,
          frames=self.parts.frames, attention_query_chunk=self.parts.attention_query_chunk,
          name=f"transformer_blocks_{k}", **kw,
          **dict(self.parts.transformer_block_kwargs))(y, context)
    y = self._proj(c, "proj_out")(y.reshape(n, h, w, inner))
    return _constrain(y + x)


@dataclasses.dataclass(frozen=True)
class _Level:
  """One resolution level's settings, as diffusers derives them from the config."""
  block_type: str
  out_channels: int
  num_layers: int
  heads: int
  cross_attention_dim: int
  only_cross_attention: bool
  transformer_layers: int
  head_dim: int | None = None  # None: out_channels // heads (see Transformer2DModel.head_dim)


class _BlockBase(nn.Module):
  """Shared construction of resnets / attentions for the down, mid and up blocks."""
  config: UNetConfig
  level: _Level
  parts: UNetParts = UNetParts()
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.nowrap
  def _kw(self) -> dict[str, Any]:
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)

  @nn.nowrap
  def _resnet(self, name: str, scale: float | None = None) -> nn.Module:
    c = self.config
    (cls,) = _maybe_remat(self.remat, self.parts.resnet)
    return cls(self.level.out_channels, c.norm_num_groups, c.norm_eps, c.act_fn,
               c.resnet_out_scale_factor if scale is None else scale, frames=self.parts.frames, name=name,
               **self._kw(), **dict(self.parts.resnet_kwargs))

  @nn.nowrap
  def _attention(self, name: str, only_cross_attention: bool | None = None) -> nn.Module:
    c, lv = self.config, self.level
    (cls,) = _maybe_remat(self.remat, Transformer2DModel)
    return cls(lv.heads, lv.transformer_layers, c.norm_num_groups, lv.cross_attention_dim, c.use_linear_projection,
               lv.only_cross_attention if only_cross_attention is None else only_cross_attention,
               c.upcast_attention, self.parts, head_dim=lv.head_dim, name=name, **self._kw())

  @nn.nowrap
  def _has_attention(self) -> bool:
    return self.level.block_type in (CROSS_DOWN, CROSS_UP)


class DownBlock(_BlockBase):
  """CrossAttnDownBlock2D / DownBlock2D: (resnet[, attention]) x num_layers, then the downsampler.

  Returns the output and the skip connections (every layer's output, then the downsampler's).
  """
  add_downsample: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    skips = []
    for j in range(self.level.num_layers):
      x = self._resnet(f"resnets_{j}")(x, temb)
      if self._has_attention():
        x = self._attention(f"attentions_{j}")(x, context)
      skips.append(x)
    if self.add_downsample:
      x = Downsample2D(self.config.downsample_padding, name="downsamplers_0", **self._kw())(x)
      skips.append(x)
    return x, skips


class MidBlock(_BlockBase):
  """UNetMidBlock2DCrossAttn: resnets_0, then (attentions_0, resnets_1); resnets scaled by mid_block_scale_factor.

  diffusers does not pass only_cross_attention to this block: its attention is always self + cross.
  """

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array) -> jax.Array:
    scale = self.config.mid_block_scale_factor
    x = self._resnet("resnets_0", scale)(x, temb)
    # UNet2DConditionModel builds this block with num_layers=1: one (attention, resnet) pair.
    x = self._attention("attentions_0", only_cross_attention=False)(x, context)
    return self._resnet("resnets_1", scale)(x, temb)


class UpBlock(_BlockBase):
  """CrossAttnUpBlock2D / UpBlock2D: (concat skip, resnet[, attention]) x num_layers, then the upsampler."""
  add_upsample: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, skips: Sequence[jax.Array], temb: jax.Array, context: jax.Array,
               upsample_size: tuple[int, int] | None = None) -> jax.Array:
    skips = list(skips)
    for j in range(self.level.num_layers):
      x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = self._resnet(f"resnets_{j}")(x, temb)
      if self._has_attention():
        x = self._attention(f"attentions_{j}")(x, context)
    if self.add_upsample:
      x = Upsample2D(name="upsamplers_0", **self._kw())(x, upsample_size)
    return x


def _levels(config: UNetConfig) -> tuple[list[_Level], _Level, list[_Level]]:
  """Per-level settings of the down blocks, the mid block and the up blocks (reversed lists), as diffusers."""
  c = config
  heads, cross = c.per_block("attention_head_dim"), c.per_block("cross_attention_dim")
  only, depth = c.per_block("only_cross_attention"), c.per_block("transformer_layers_per_block")
  num_layers = c.per_block("layers_per_block")
  down = [_Level(t, w, num_layers[i], heads[i], cross[i], only[i], depth[i])
          for i, (t, w) in enumerate(zip(c.down_block_types, c.block_out_channels))]
  mid = _Level(CROSS_MID, c.block_out_channels[-1], 1, heads[-1], cross[-1], False, depth[-1])
  r = lambda v: tuple(reversed(v))
  up = [_Level(t, w, r(num_layers)[i] + 1, r(heads)[i], r(cross)[i], r(only)[i], r(depth)[i])
        for i, (t, w) in enumerate(zip(c.up_block_types, r(c.block_out_channels)))]
  return down, mid, up


class UNet2DConditionModel(nn.Module):
  """diffusers' UNet2DConditionModel (SD 1.x family) on NHWC arrays.

  __call__(sample [N, H, W, in_channels], timesteps (a scalar, or one per sample [N]),
  encoder_hidden_states [N, S, cross_attention_dim]) -> the prediction [N, H, W, out_channels].
  """
  config: UNetConfig
  parts: UNetParts = UNetParts()
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, sample: jax.Array, timesteps: jax.Array | float,
               encoder_hidden_states: jax.Array) -> jax.Array:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    _check_inputs(c, sample, encoder_hidden_states)
    n = sample.shape[0]
    timesteps = jnp.asarray(timesteps)
    if timesteps.ndim == 0:
      timesteps = jnp.broadcast_to(timesteps, (n,))
    elif timesteps.shape != (n,):
      raise ValueError(f"timesteps have shape {tuple(timesteps.shape)}; give a scalar or one per sample, "
                       f"shape ({n},).")
    if c.center_input_sample:
      sample = 2 * sample - 1.0

    t = timestep_embedding(timesteps, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)
    emb = TimestepEmbedding(c.time_embed_dim, c.act_fn, c.timestep_post_act, name="time_embedding",
                            **kw)(t.astype(self.dtype))
    if c.time_embedding_act_fn is not None:
      emb = ACTIVATIONS[c.time_embedding_act_fn](emb)

    context = encoder_hidden_states.astype(self.dtype)
    x = _conv(c.block_out_channels[0], c.conv_in_kernel, "conv_in", **kw)(sample.astype(self.dtype))
    down, mid, up = _levels(c)
    blocks = dict(config=c, parts=self.parts, remat=self.remat, **kw)
    skips = [x]
    for i, level in enumerate(down):
      x, res = DownBlock(level=level, add_downsample=i != len(down) - 1, name=f"down_blocks_{i}", **blocks)(
          x, emb, context)
      skips += res
    x = MidBlock(level=mid, name="mid_block", **blocks)(x, emb, context)
    for i, level in enumerate(up):
      res, skips = skips[-level.num_layers:], skips[:-level.num_layers]
      last = i == len(up) - 1
      # Upsample to the next skip's size: x2 normally, the exact size when a downsampler rounded up.
      size = None if last else tuple(skips[-1].shape[1:3])
      x = UpBlock(level=level, add_upsample=not last, name=f"up_blocks_{i}", **blocks)(x, res, emb, context, size)
    x = _group_norm(c.norm_num_groups, c.norm_eps, "conv_norm_out", frames=self.parts.frames, **kw)(x)
    x = ACTIVATIONS[c.act_fn](x)
    return _conv(c.out_channels, c.conv_out_kernel, "conv_out", out_axis=None, **kw)(x)

  def dummy_inputs(self) -> tuple[jax.Array, ...]:
    f = self.config.downsampling_factor
    return (jnp.zeros((1, f, f, self.config.in_channels), jnp.float32), jnp.zeros((), jnp.int32),
            jnp.zeros((1, 1, self.config.context_dim), jnp.float32))


def _check_inputs(config: UNetConfig, sample: jax.Array, context: jax.Array) -> None:
  if sample.ndim != 4 or sample.shape[-1] != config.in_channels:
    hint = ""
    if sample.ndim == 4 and sample.shape[1] == config.in_channels:
      hint = " It looks channels-first (NCHW, PyTorch's layout); transpose it with x.transpose(0, 2, 3, 1)."
    elif sample.ndim == 5:
      hint = " Fold video frames into the batch ([B * T, H, W, C]) or use a video UNet."
    raise ValueError(f"sample has shape {tuple(sample.shape)}; the UNet expects NHWC latents "
                     f"[N, H, W, {config.in_channels}].{hint}")
  if context.ndim != 3 or context.shape[-1] != config.context_dim:
    raise ValueError(f"encoder_hidden_states have shape {tuple(context.shape)}; the UNet expects "
                     f"[N, S, {config.context_dim}] (cross_attention_dim = {config.context_dim}). Check that the "
                     f"conditioning comes from the text encoder / fMRI projection this UNet was trained with "
                     f"(SD 1.x: CLIP ViT-L/14, 768 wide).")
  if context.shape[0] != sample.shape[0]:
    raise ValueError(f"encoder_hidden_states have batch {context.shape[0]} but sample has batch "
                     f"{sample.shape[0]}; give one conditioning sequence per sample.")


def abstract_params(module: UNet2DConditionModel, *, boxed: bool = False) -> Any:
  """The param tree as jax.ShapeDtypeStructs, without computing anything.

  boxed=True keeps the logical-axis metadata: nn.get_partition_spec(...) of it
  gives the specs to shard the UNet over a mesh.
  """
  variables = jax.eval_shape(module.init, jax.random.key(0), *module.dummy_inputs())
  return variables["params"] if boxed else nn.meta.unbox(variables)["params"]


# --------------------------------------------------------------------------------------- weights


def _linear_or_conv(x: np.ndarray, to_flax: bool) -> np.ndarray:
  transform = mp.LINEAR if x.ndim == 2 else mp.CONV
  return transform.to_flax(x) if to_flax else transform.to_torch(x)


# proj_in / proj_out are Linear (use_linear_projection) or 1x1 Conv2d: the tensor's rank says which, in
# both layouts (2-D (out, in) <-> (in, out); 4-D OIHW <-> HWIO), so one table serves both configs.
PROJECTION = mp.Transform("linear or 1x1 conv, by rank", lambda x: _linear_or_conv(x, True),
                          lambda x: _linear_or_conv(x, False))

_BLOCKS = r"{blocks:down_blocks|up_blocks}"


def _resnet_rules() -> list[mp.Rule]:
  return [*mp.norm("norm{n:1|2}", "norm{n:1|2}"), *mp.conv("conv{n:1|2}", "conv{n:1|2}"),
          *mp.conv("conv_shortcut", "conv_shortcut"), *mp.linear("time_emb_proj", "time_emb_proj")]


def _transformer_block_rules() -> list[mp.Rule]:
  return [
      *mp.norm("norm{n:1|2|3}", "norm{n:1|2|3}"),
      *mp.linear("attn{a:1|2}.to_{p:q|k|v}", "attn{a:1|2}/to_{p:q|k|v}", bias=False),
      *mp.linear("attn{a:1|2}.to_out.0", "attn{a:1|2}/to_out_0"),
      *mp.linear("ff.net.0.proj", "ff/net_0/proj"),
      *mp.linear("ff.net.2", "ff/net_2"),
  ]


def _transformer_rules(block_rules: Sequence[mp.Rule] = ()) -> list[mp.Rule]:
  return [
      *mp.norm("norm", "norm"),
      mp.Rule("proj_{io:in|out}.weight", "proj_{io:in|out}/kernel", PROJECTION),
      mp.Rule("proj_{io:in|out}.bias", "proj_{io:in|out}/bias"),
      *mp.prefixed([*_transformer_block_rules(), *block_rules], r"transformer_blocks.{k:\d+}.",
                   r"transformer_blocks_{k:\d+}/"),
  ]


def unet_rules(*, resnet_rules: Sequence[mp.Rule] = (),
               transformer_block_rules: Sequence[mp.Rule] = ()) -> list[mp.Rule]:
  """The rules of UNET_TABLE; a video UNet adds the rules of its extra resnet / transformer-block layers
  (relative to a resnet / a transformer block, e.g. attn_temp.to_q <-> attn_temp/to_q)."""
  resnet = [*_resnet_rules(), *resnet_rules]
  transformer = _transformer_rules(transformer_block_rules)
  return [
      *mp.conv("conv_{io:in|out}", "conv_{io:in|out}"),
      *mp.norm("conv_norm_out", "conv_norm_out"),
      *mp.linear("time_embedding.linear_{n:1|2}", "time_embedding/linear_{n:1|2}"),
      *mp.prefixed(resnet, _BLOCKS + r".{i:\d+}.resnets.{j:\d+}.", _BLOCKS + r"_{i:\d+}/resnets_{j:\d+}/"),
      *mp.prefixed(resnet, r"mid_block.resnets.{j:\d+}.", r"mid_block/resnets_{j:\d+}/"),
      *mp.prefixed(transformer, _BLOCKS + r".{i:\d+}.attentions.{j:\d+}.",
                   _BLOCKS + r"_{i:\d+}/attentions_{j:\d+}/"),
      *mp.prefixed(transformer, r"mid_block.attentions.{j:\d+}.", r"mid_block/attentions_{j:\d+}/"),
      *mp.conv(r"down_blocks.{i:\d+}.downsamplers.0.conv", r"down_blocks_{i:\d+}/downsamplers_0/conv"),
      *mp.conv(r"up_blocks.{i:\d+}.upsamplers.0.conv", r"up_blocks_{i:\d+}/upsamplers_0/conv"),
  ]


UNET_TABLE = mp.Table(rules=unet_rules())

WEIGHTS_NAMES = (checkpoint_io.DIFFUSERS_WEIGHTS, "diffusion_pytorch_model.fp16.safetensors")
_WHAT = ("a diffusers UNet2DConditionModel directory with config.json and diffusion_pytorch_model.safetensors "
         "(e.g. stable-diffusion-v1-5/unet)")


def _unet_directory(path: str | epath.PathLike) -> epath.Path:
  """`path`, or its `unet/` subfolder when `path` is a whole diffusers pipeline (model_index.json)."""
  directory = epath.Path(path)
  if (not (directory / "config.json").exists() and (directory / "model_index.json").exists()
      and (directory / "unet" / "config.json").exists()):
    return directory / "unet"
  return directory


def load_unet(path: str | epath.PathLike, *, parts: UNetParts = UNetParts(), remat: bool = False,
              dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> tuple[UNet2DConditionModel, Any]:
  """(module, params) from a diffusers UNet2DConditionModel directory (local or gs://).

  `path` is the `unet/` directory, or a pipeline directory holding one (a copy of
  stable-diffusion-v1-5). Reads diffusion_pytorch_model.safetensors (or its .fp16
  variant, or a sharded index); params are cast to param_dtype.
  """
  ckpt = checkpoint_io.read_checkpoint(_unet_directory(path), _WHAT, weights_names=WEIGHTS_NAMES)
  module = UNet2DConditionModel(UNetConfig.from_dict(ckpt.config), parts=parts, remat=remat, dtype=dtype,
                                param_dtype=param_dtype)
  params = UNET_TABLE.to_flax(ckpt.state_dict, abstract_params(module), origin=ckpt.origin)
  return module, jax.tree.map(lambda x: jnp.asarray(x, param_dtype), params)


def save_unet(path: str | epath.PathLike, config: UNetConfig | UNet2DConditionModel, params: Any) -> epath.Path:
  """Writes config.json + diffusion_pytorch_model.safetensors for `diffusers.UNet2DConditionModel.from_pretrained`.

  Tensors keep the params' dtype. Returns the directory.
  """
  config = getattr(config, "config", config)  # a module is accepted for its config
  params = params["params"] if set(params) == {"params"} else params  # accept flax variables too
  return checkpoint_io.write_checkpoint(path, config.to_dict(), UNET_TABLE.to_torch(params),
                                       weights_name=checkpoint_io.DIFFUSERS_WEIGHTS)
