r"""Stable Diffusion's `AutoencoderKL` in Flax, numerically matching diffusers' PyTorch one.

diffusers removed its Flax models in 0.40, so brainjax owns this VAE;
diffusers' PyTorch `AutoencoderKL` is the checkpoint format and the numerical
reference. Module and parameter names mirror diffusers', so the conversion
table below is nearly literal
(`encoder.down_blocks.1.resnets.0.conv1.weight` <-> `encoder/down_blocks_1/resnets_0/conv1/kernel`).
Layout is NHWC (channels last) throughout; diffusers' is NCHW.

  VAEConfig                            diffusers' AutoencoderKL config.json fields (VAEConfig.from_dict)
  AutoencoderKL(config)                .encode(x) -> DiagonalGaussian (a (mean, logvar) NamedTuple),
                                       .decode(z) -> x, __call__(x, sample_posterior=False, rng=None) -> x
  encode_latents(module, params, images, rng=None, sample=False) -> latents, scaled for the diffusion model
  decode_latents(module, params, latents) -> images in [-1, 1] (unclipped decoder output)
  encode_video / decode_video          the same per frame on [B, T, H, W, C], frames folded into the
                                       batch; `chunk_size` bounds memory: chunk_size frames of every
                                       video (B * chunk_size images) per call, looped with lax.map
  to_uint8(images)                     [-1, 1] floats -> uint8, as diffusers' VaeImageProcessor.postprocess
  load_vae(path) -> (module, params)   from a diffusers `vae/` directory (config.json +
                                       diffusion_pytorch_model.safetensors), local or gs://, or from
                                       a pipeline directory holding one; pre-0.14 attention names
                                       (query/key/value/proj_attn) are read too
  save_vae(path, config, params)       a directory `diffusers.AutoencoderKL.from_pretrained` loads
  VAE_TABLE                            the two-way weight mapping (brainjax.weights.mapping)

Architecture (diffusers' Encoder / Decoder with DownEncoderBlock2D / UpDecoderBlock2D):
  encoder  conv_in 3x3 -> down_blocks_i (layers_per_block ResnetBlock2D, then a Downsample2D
           except in the last block) -> mid_block (resnet, [attention, resnet]) -> GroupNorm, SiLU,
           conv_out 3x3 to 2*latent_channels -> quant_conv 1x1 (if use_quant_conv)
  decoder  post_quant_conv 1x1 (if use_post_quant_conv) -> conv_in -> mid_block -> up_blocks_i
           (layers_per_block + 1 resnets, then an Upsample2D except in the last block) ->
           GroupNorm, SiLU, conv_out 3x3
  ResnetBlock2D  x + conv2(act(norm2(conv1(act(norm1(x)))))), a 1x1 conv_shortcut when channels change
  Downsample2D   zero-pad bottom/right by one, then a 3x3 stride-2 conv (diffusers' padding=0 branch)
  Upsample2D     nearest-neighbour x2, then a 3x3 conv
  attention      GroupNorm, one head with head dim = channels (diffusers passes
                 attention_head_dim=block_out_channels[-1]), to_q/to_k/to_v/to_out_0, residual
All GroupNorms use norm_num_groups groups and eps 1e-6. `act_fn` is the resnets'
activation; the encoder's and decoder's final activation is always SiLU, as diffusers
hard-codes `nn.SiLU()` there.

Logical axis names of the params (see brainjax.train.sharding):
  conv kernels [kh, kw, in, out]  (None, None, None, 'embed'), biases ('embed',)
  GroupNorm scale/bias            ('embed',)
  attention to_q/to_k/to_v        ('embed', 'heads'); to_out_0 ('heads', 'embed')
'embed' (the channel width, 128..512 in SD) is what fsdp shards. The convs whose
output is the latent or the image (encoder/conv_out, quant_conv, post_quant_conv,
decoder/conv_out: 3..8 channels) have output axis None: they are tiny, and 3 or 8
channels would not split evenly over a mesh axis.

Options: `dtype` (compute, e.g. bf16; attention logits/softmax and GroupNorm statistics stay
float32), `param_dtype`, `remat` (each ResnetBlock2D and the attention recompute their
activations in the backward pass; param names are unchanged).

Not supported (not used by SD-style VAEs): Attn*EncoderBlock2D / Attn*DecoderBlock2D
block types, diffusers' tiled and sliced encoding (brainjax bounds memory by
chunking frames instead), the KL / NLL losses of the posterior.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from brainjax.weights import checkpoint_io
from brainjax.weights import mapping as mp
from brainjax.models import layers

Dtype = Any

GROUP_NORM_EPS = 1e-6  # diffusers' Encoder/Decoder pass resnet_eps=1e-6 everywhere
LOGVAR_RANGE = (-30.0, 20.0)  # DiagonalGaussianDistribution clamps the log-variance to this

# diffusers.models.activations.ACT2CLS (torch's nn.GELU is the exact, erf-based GELU).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
}
DOWN_BLOCK = "DownEncoderBlock2D"
UP_BLOCK = "UpDecoderBlock2D"

# --------------------------------------------------------------------------------------- config


def _positive_int(name: str, value: Any) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ValueError(f"VAEConfig.{name} = {value!r}: must be a positive integer.")


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """diffusers' AutoencoderKL config (same field names and defaults).

  latents_mean / latents_std are carried for round trips only: AutoencoderKL
  never applies them (some pipelines do). force_upcast is likewise metadata:
  diffusers' pipelines run such a VAE in float32; in brainjax the precision is
  the module's `dtype`, float32 unless asked otherwise.
  """
  in_channels: int = 3
  out_channels: int = 3
  down_block_types: tuple[str, ...] = (DOWN_BLOCK,)
  up_block_types: tuple[str, ...] = (UP_BLOCK,)
  block_out_channels: tuple[int, ...] = (64,)
  layers_per_block: int = 1
  act_fn: str = "silu"
  latent_channels: int = 4
  norm_num_groups: int = 32
  sample_size: int | tuple[int, ...] = 32
  scaling_factor: float = 0.18215
  shift_factor: float | None = None
  latents_mean: tuple[float, ...] | None = None
  latents_std: tuple[float, ...] | None = None
  force_upcast: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True

  class_name: ClassVar[str] = "AutoencoderKL"

  def __post_init__(self):
    # config.json gives lists; tuples keep the config hashable (the module is a jit static argument).
    for field in ("down_block_types", "up_block_types", "block_out_channels", "sample_size", "latents_mean",
                  "latents_std"):
      value = getattr(self, field)
      if isinstance(value, list):
        object.__setattr__(self, field, tuple(value))
    self._validate()

  def _validate(self) -> None:
    for field in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
      _positive_int(field, getattr(self, field))
    if not self.block_out_channels:
      raise ValueError("VAEConfig.block_out_channels is empty; give one width per resolution level, e.g. "
                       "(128, 256, 512, 512) as in Stable Diffusion.")
    for i, width in enumerate(self.block_out_channels):
      _positive_int(f"block_out_channels[{i}]", width)
      if width % self.norm_num_groups:
        raise ValueError(f"VAEConfig.block_out_channels[{i}] = {width} is not divisible by norm_num_groups "
                         f"{self.norm_num_groups} (GroupNorm needs whole groups); change one of them.")
    for field, supported in (("down_block_types", DOWN_BLOCK), ("up_block_types", UP_BLOCK)):
      types = getattr(self, field)
      if len(types) != len(self.block_out_channels):
        raise ValueError(f"VAEConfig.{field} has {len(types)} entries but block_out_channels has "
                         f"{len(self.block_out_channels)}; give one block type per resolution level.")
      bad = sorted({t for t in types if t != supported})
      if bad:
        raise ValueError(f"VAEConfig.{field} = {list(types)}: block type(s) {bad} are not supported; brainjax's "
                         f"AutoencoderKL implements {supported!r} only (the Stable Diffusion VAE's; the "
                         f"attention variants are not implemented).")
    if self.act_fn not in ACTIVATIONS:
      raise ValueError(f"VAEConfig.act_fn = {self.act_fn!r} is not supported; use one of {sorted(ACTIVATIONS)}.")
    if not isinstance(self.scaling_factor, (int, float)) or self.scaling_factor <= 0:
      raise ValueError(f"VAEConfig.scaling_factor = {self.scaling_factor!r}: must be a positive number "
                       f"(0.18215 for SD 1.x/2.x).")
    if self.shift_factor is not None and not isinstance(self.shift_factor, (int, float)):
      raise ValueError(f"VAEConfig.shift_factor = {self.shift_factor!r}: must be a number or None.")
    for field in ("force_upcast", "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"):
      if not isinstance(getattr(self, field), bool):
        raise ValueError(f"VAEConfig.{field} = {getattr(self, field)!r}: must be true or false.")

  @property
  def downsampling_factor(self) -> int:
    """Pixels per latent cell along each side (8 for SD)."""
    return 2 ** (len(self.block_out_channels) - 1)

  @classmethod
  def from_dict(cls, config: Mapping[str, Any]) -> VAEConfig:
    """From a diffusers config.json dict. Missing entries take diffusers' defaults.

    Entries that are not AutoencoderKL arguments (`_class_name`,
    `_diffusers_version`, `_name_or_path`, ...) are ignored, as diffusers does. A config of
    another class (AutoencoderTiny, AutoencoderKLTemporalDecoder, ...) is refused.
    """
    class_name = config.get("_class_name", cls.class_name)
    if class_name != cls.class_name:
      raise ValueError(f"the config is for diffusers' {class_name}, not {cls.class_name}; brainjax's VAE "
                       f"implements AutoencoderKL only (the Stable Diffusion / Zeroscope VAE).")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in names})

  def to_dict(self) -> dict[str, Any]:
    """diffusers' config.json entries (lists, as diffusers writes them)."""
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
    return {"_class_name": self.class_name, **out}


# --------------------------------------------------------------------------------------- layers


def _conv(features: int, kernel: int, name: str, *, stride: int = 1, padding: Any = None,
          out_axis: str | None = "embed", dtype: Dtype, param_dtype: Dtype) -> nn.Conv:
  """A conv with torch's default 'same' padding for odd kernels (k // 2 on every side)."""
  pad = kernel // 2 if padding is None else padding
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride),
      padding=((pad, pad), (pad, pad)) if isinstance(pad, int) else pad,
      dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, None, out_axis)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (out_axis,)))


def _group_norm(groups: int, name: str, *, dtype: Dtype, param_dtype: Dtype) -> nn.GroupNorm:
  # Two-pass variance, as torch computes it (flax's fast E[x^2]-E[x]^2 loses precision).
  return nn.GroupNorm(
      num_groups=groups, epsilon=GROUP_NORM_EPS, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype,
      name=name, scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))


def _constrain(x: jax.Array) -> jax.Array:
  """Feature maps [N, H, W, C]: batch split like any batch, spatial and channel axes unsplit."""
  return nn.with_logical_constraint(x, ("act_batch", None, None, "act_embed"))


def _maybe_remat(remat: bool, *classes: type[nn.Module]) -> tuple[type[nn.Module], ...]:
  """Recompute each block's activations in the backward pass instead of storing them (names unchanged)."""
  return tuple(nn.remat(cls) if remat else cls for cls in classes)


class ResnetBlock2D(nn.Module):
  """diffusers' ResnetBlock2D without a time embedding (temb_channels=None), output_scale_factor 1."""
  out_channels: int
  groups: int
  act_fn: str
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    act = ACTIVATIONS[self.act_fn]
    h = act(_group_norm(self.groups, "norm1", **kw)(x))
    h = _conv(self.out_channels, 3, "conv1", **kw)(h)
    h = act(_group_norm(self.groups, "norm2", **kw)(h))
    h = _conv(self.out_channels, 3, "conv2", **kw)(h)  # dropout 0 in the VAE
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, "conv_shortcut", **kw)(x)
    return _constrain(x + h)


class Downsample2D(nn.Module):
  """Zero-pad one row/column at the bottom/right, then a 3x3 stride-2 conv (diffusers' padding=0 path)."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Asymmetric: torch's F.pad(x, (0, 1, 0, 1)) then an unpadded conv.
    return _conv(x.shape[-1], 3, "conv", stride=2, padding=((0, 1), (0, 1)), dtype=self.dtype,
                 param_dtype=self.param_dtype)(x)


class Upsample2D(nn.Module):
  """Nearest-neighbour x2 (F.interpolate(scale_factor=2, mode='nearest')), then a 3x3 conv."""
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(x.shape[-1], 3, "conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class MidBlockAttention(nn.Module):
  """diffusers' Attention as the VAE mid block builds it: GroupNorm, one head over all channels, residual.

  heads = channels // attention_head_dim with attention_head_dim = channels, so
  always a single head of width C (scale C**-0.5). Logits and softmax are float32
  (diffusers sets upcast_softmax); jax.nn.dot_product_attention does that for
  bf16 inputs.
  """
  groups: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, h, w, c = x.shape
    y = _group_norm(self.groups, "group_norm", **kw)(x).reshape(b, h * w, 1, c)  # [B, T, heads=1, C]
    q, k, v = (layers.dense(c, ("embed", "heads"), name=f"to_{p}", **kw)(y) for p in "qkv")
    out = jax.nn.dot_product_attention(q, k, v).reshape(b, h * w, c)
    out = layers.dense(c, ("heads", "embed"), name="to_out_0", **kw)(out)
    return _constrain(x + out.reshape(b, h, w, c))  # rescale_output_factor 1


class UNetMidBlock2D(nn.Module):
  """resnet, then (attention, resnet); the attention is left out if add_attention is False."""
  groups: int
  act_fn: str
  add_attention: bool = True
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    resnet_cls, attention_cls = _maybe_remat(self.remat, ResnetBlock2D, MidBlockAttention)
    c = x.shape[-1]
    x = resnet_cls(c, self.groups, self.act_fn, name="resnets_0", **kw)(x)
    if self.add_attention:
      x = attention_cls(self.groups, name="attentions_0", **kw)(x)
    return resnet_cls(c, self.groups, self.act_fn, name="resnets_1", **kw)(x)


class DownEncoderBlock2D(nn.Module):
  """num_layers resnets at one resolution, then (except in the last block) a Downsample2D."""
  out_channels: int
  num_layers: int
  groups: int
  act_fn: str
  add_downsample: bool = True
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    (resnet_cls,) = _maybe_remat(self.remat, ResnetBlock2D)
    for j in range(self.num_layers):
      x = resnet_cls(self.out_channels, self.groups, self.act_fn, name=f"resnets_{j}", **kw)(x)
    return Downsample2D(name="downsamplers_0", **kw)(x) if self.add_downsample else x


class UpDecoderBlock2D(nn.Module):
  """num_layers resnets at one resolution, then (except in the last block) an Upsample2D."""
  out_channels: int
  num_layers: int
  groups: int
  act_fn: str
  add_upsample: bool = True
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    (resnet_cls,) = _maybe_remat(self.remat, ResnetBlock2D)
    for j in range(self.num_layers):
      x = resnet_cls(self.out_channels, self.groups, self.act_fn, name=f"resnets_{j}", **kw)(x)
    return Upsample2D(name="upsamplers_0", **kw)(x) if self.add_upsample else x


class Encoder(nn.Module):
  """Images [N, H, W, in_channels] -> moments [N, H/f, W/f, 2 * latent_channels] (before quant_conv)."""
  config: VAEConfig
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = _conv(c.block_out_channels[0], 3, "conv_in", **kw)(x)
    last = len(c.block_out_channels) - 1
    for i, width in enumerate(c.block_out_channels):
      x = DownEncoderBlock2D(width, c.layers_per_block, c.norm_num_groups, c.act_fn, add_downsample=i != last,
                             remat=self.remat, name=f"down_blocks_{i}", **kw)(x)
    x = UNetMidBlock2D(c.norm_num_groups, c.act_fn, c.mid_block_add_attention, self.remat, name="mid_block",
                       **kw)(x)
    x = jax.nn.silu(_group_norm(c.norm_num_groups, "conv_norm_out", **kw)(x))  # SiLU whatever act_fn says
    return _conv(2 * c.latent_channels, 3, "conv_out", out_axis=None, **kw)(x)


class Decoder(nn.Module):
  """Latents [N, h, w, latent_channels] (after post_quant_conv) -> images [N, h*f, w*f, out_channels]."""
  config: VAEConfig
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    widths = tuple(reversed(c.block_out_channels))
    x = _conv(widths[0], 3, "conv_in", **kw)(z)
    x = UNetMidBlock2D(c.norm_num_groups, c.act_fn, c.mid_block_add_attention, self.remat, name="mid_block",
                       **kw)(x)
    for i, width in enumerate(widths):
      # The decoder has one resnet more per block than the encoder (diffusers: layers_per_block + 1).
      x = UpDecoderBlock2D(width, c.layers_per_block + 1, c.norm_num_groups, c.act_fn,
                           add_upsample=i != len(widths) - 1, remat=self.remat, name=f"up_blocks_{i}", **kw)(x)
    x = jax.nn.silu(_group_norm(c.norm_num_groups, "conv_norm_out", **kw)(x))
    return _conv(c.out_channels, 3, "conv_out", out_axis=None, **kw)(x)


class DiagonalGaussian(NamedTuple):
  """diffusers' DiagonalGaussianDistribution: unpacks as (mean, logvar); logvar already clamped."""
  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, moments: jax.Array) -> DiagonalGaussian:
    """The encoder's [..., 2C] output: first C channels the mean, the rest the log-variance (clamped)."""
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return cls(mean, jnp.clip(logvar, *LOGVAR_RANGE))

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  @property
  def var(self) -> jax.Array:
    return jnp.exp(self.logvar)

  def sample(self, rng: jax.Array) -> jax.Array:
    """mean + std * eps with eps ~ N(0, 1) from `rng` (its own draw, not torch's generator stream)."""
    return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

  def mode(self) -> jax.Array:
    return self.mean


class AutoencoderKL(nn.Module):
  """diffusers' AutoencoderKL on NHWC arrays. Inputs in [-1, 1], as diffusers expects."""
  config: VAEConfig
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = Encoder(c, self.remat, **kw)
    self.decoder = Decoder(c, self.remat, **kw)
    self.quant_conv = (_conv(2 * c.latent_channels, 1, "quant_conv", out_axis=None, **kw)
                       if c.use_quant_conv else None)
    self.post_quant_conv = (_conv(c.latent_channels, 1, "post_quant_conv", out_axis=None, **kw)
                            if c.use_post_quant_conv else None)

  def encode(self, x: jax.Array) -> DiagonalGaussian:
    """[N, H, W, in_channels] in [-1, 1] -> the posterior over [N, H/f, W/f, latent_channels] (unscaled)."""
    _check_shape(x, self.config.in_channels, "images", "[N, H, W, {c}]")
    moments = self.encoder(x)
    if self.quant_conv is not None:
      moments = self.quant_conv(moments)
    return DiagonalGaussian.from_moments(moments)

  def decode(self, z: jax.Array) -> jax.Array:
    """Unscaled latents [N, h, w, latent_channels] -> images [N, h*f, w*f, out_channels], about [-1, 1]."""
    _check_shape(z, self.config.latent_channels, "latents", "[N, h, w, {c}]")
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def __call__(self, x: jax.Array, sample_posterior: bool = False, rng: jax.Array | None = None) -> jax.Array:
    """Reconstruction: decode(posterior.sample(rng) if sample_posterior else posterior.mode())."""
    if sample_posterior and rng is None:
      raise ValueError("sample_posterior=True needs an rng (a jax.random key).")
    posterior = self.encode(x)
    return self.decode(posterior.sample(rng) if sample_posterior else posterior.mode())

  def dummy_inputs(self) -> tuple[jax.Array, ...]:
    f = self.config.downsampling_factor
    return (jnp.zeros((1, f, f, self.config.in_channels), jnp.float32),)


def _check_shape(x: jax.Array, channels: int, what: str, expected: str) -> None:
  if x.ndim == 4 and x.shape[-1] == channels:
    return
  hint = ""
  if x.ndim == 4 and x.shape[1] == channels:
    hint = " It looks channels-first (NCHW, PyTorch's layout); transpose it with x.transpose(0, 2, 3, 1)."
  elif x.ndim == 5:
    hint = " For videos [B, T, H, W, C] use encode_video / decode_video."
  raise ValueError(f"{what} have shape {tuple(x.shape)}; the VAE expects NHWC {expected.format(c=channels)}.{hint}")


def abstract_params(module: AutoencoderKL, *, boxed: bool = False) -> Any:
  """The param tree as jax.ShapeDtypeStructs, without computing anything.

  boxed=True keeps the logical-axis metadata: nn.get_partition_spec(...) of it
  gives the specs to shard the frozen VAE over a mesh.
  """
  variables = jax.eval_shape(module.init, jax.random.key(0), *module.dummy_inputs())
  return variables["params"] if boxed else nn.meta.unbox(variables)["params"]


# --------------------------------------------------------------------------------------- latents


def to_model_input(frames: jax.Array, resolution: int = 0) -> jax.Array:
  """uint8 frames [..., H, W, 3] -> float32 [-1, 1], resized (linear, antialiased) to resolution^2 when it is
  set and differs. The one resize every stage applies before the VAE (fit, latent caches, baselines)."""
  x = to_model_range(frames)
  if resolution and x.shape[-3:-1] != (resolution, resolution):
    x = jax.image.resize(x, x.shape[:-3] + (resolution, resolution, 3), "linear", antialias=True)
  return x


def to_model_range(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1]; floats are taken to be in [-1, 1] already and passed through."""
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images have dtype {images.dtype}; pass uint8 in [0, 255] or floats in [-1, 1].")
  return images


def to_uint8(images: jax.Array) -> jax.Array:
  """Decoder output in [-1, 1] -> uint8: clip((x / 2 + 0.5), 0, 1) * 255, rounded (diffusers' postprocess)."""
  return jnp.round(jnp.clip(images.astype(jnp.float32) / 2 + 0.5, 0, 1) * 255).astype(jnp.uint8)


def scale_latents(config: VAEConfig, z: jax.Array) -> jax.Array:
  """The VAE's latents -> the diffusion model's: (z - shift_factor) * scaling_factor."""
  if config.shift_factor is not None:
    z = z - config.shift_factor
  return z * config.scaling_factor


def unscale_latents(config: VAEConfig, latents: jax.Array) -> jax.Array:
  """The inverse of scale_latents: latents / scaling_factor + shift_factor."""
  z = latents / config.scaling_factor
  return z if config.shift_factor is None else z + config.shift_factor


def _posterior(module: AutoencoderKL, params: Any, images: jax.Array) -> DiagonalGaussian:
  return module.apply({"params": params}, to_model_range(images), method=AutoencoderKL.encode)


def _latents_from(module: AutoencoderKL, posterior: DiagonalGaussian, rng: jax.Array | None,
                  sample: bool) -> jax.Array:
  if sample:
    if rng is None:
      raise ValueError("sample=True draws from the posterior and needs an rng (a jax.random key).")
    z = posterior.sample(rng)
  else:
    z = posterior.mode()
  return scale_latents(module.config, z)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("sample",))
def encode_latents(module: AutoencoderKL, params: Any, images: jax.Array, rng: jax.Array | None = None,
                   sample: bool = False) -> jax.Array:
  """Images [N, H, W, 3] (uint8, or floats in [-1, 1]) -> latents scaled for the diffusion model.

  sample=False takes the posterior mean (deterministic, what caches usually
  hold); sample=True draws mean + std * eps with `rng`, as diffusers'
  `retrieve_latents(..., sample_mode="sample")` in img2img pipelines.
  """
  return _latents_from(module, _posterior(module, params, images), rng, sample)


def _decode(module: AutoencoderKL, params: Any, latents: jax.Array) -> jax.Array:
  z = unscale_latents(module.config, latents)
  return module.apply({"params": params}, z, method=AutoencoderKL.decode)


@functools.partial(jax.jit, static_argnums=0)
def decode_latents(module: AutoencoderKL, params: Any, latents: jax.Array) -> jax.Array:
  """Scaled latents [N, h, w, C] -> images [N, h*f, w*f, 3] (float, about [-1, 1], unclipped; see to_uint8)."""
  return _decode(module, params, latents)


# --------------------------------------------------------------------------------------- video


def _per_frame(fn: Callable[[jax.Array], Any], video: jax.Array, chunk_size: int | None) -> Any:
  """fn over the frames of `video` [B, T, ...], with the frames folded into fn's batch: [B*k, ...].

  chunk_size=None (or >= T) runs all B*T frames in one call. Otherwise
  jax.lax.map runs the T // chunk_size chunks one after another (one compiled
  body, peak memory of one chunk of B*chunk_size frames), and a last call takes
  the T % chunk_size remaining frames. Results are the same either way: every
  frame is processed independently.
  """
  b, t = video.shape[:2]
  if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size <= 0):
    raise ValueError(f"chunk_size = {chunk_size!r}: must be a positive number of frames, or None for all at once.")

  def run(part: jax.Array) -> Any:  # [B, k, ...] -> outputs [B, k, ...]
    k = part.shape[1]
    out = fn(part.reshape(b * k, *part.shape[2:]))
    return jax.tree.map(lambda y: y.reshape(b, k, *y.shape[1:]), out)

  if chunk_size is None or chunk_size >= t:
    return run(video)
  n = t // chunk_size
  chunks = video[:, :n * chunk_size].reshape(b, n, chunk_size, *video.shape[2:]).swapaxes(0, 1)  # [n, B, k, ...]
  out = jax.tree.map(lambda y: y.swapaxes(0, 1).reshape(b, n * chunk_size, *y.shape[3:]),
                     jax.lax.map(run, chunks))
  if t % chunk_size:
    rest = run(video[:, n * chunk_size:])
    out = jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=1), out, rest)
  return out


def _check_video(video: jax.Array, channels: int, what: str) -> None:
  if video.ndim != 5 or video.shape[-1] != channels:
    raise ValueError(f"{what} have shape {tuple(video.shape)}; expected [B, T, H, W, {channels}] "
                     f"(batch, frames, height, width, channels).")


@functools.partial(jax.jit, static_argnums=0, static_argnames=("sample", "chunk_size"))
def encode_video(module: AutoencoderKL, params: Any, video: jax.Array, rng: jax.Array | None = None,
                 sample: bool = False, chunk_size: int | None = None) -> jax.Array:
  """Videos [B, T, H, W, 3] (uint8, or floats in [-1, 1]) -> scaled latents [B, T, H/f, W/f, C].

  The VAE is 2-D: each frame is encoded on its own, with the B*T frames folded
  into the batch. chunk_size bounds memory: at most B*chunk_size frames go
  through the encoder at once (see _per_frame). With sample=True the noise is
  drawn once for the whole [B, T, ...] latent, so chunking does not change it.
  """
  _check_video(video, module.config.in_channels, "videos")
  mean, logvar = _per_frame(lambda x: tuple(_posterior(module, params, x)), video, chunk_size)
  return _latents_from(module, DiagonalGaussian(mean, logvar), rng, sample)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("chunk_size",))
def decode_video(module: AutoencoderKL, params: Any, latents: jax.Array, chunk_size: int | None = None) -> jax.Array:
  """Scaled latents [B, T, h, w, C] -> videos [B, T, h*f, w*f, 3] (float, about [-1, 1]); see encode_video."""
  _check_video(latents, module.config.latent_channels, "latent videos")
  return _per_frame(lambda z: _decode(module, params, z), latents, chunk_size)


# --------------------------------------------------------------------------------------- weights


_PART = "{part:encoder|decoder}"  # placeholders carry their regex on both sides, so each name has one reading


def _resnet_rules() -> list[mp.Rule]:
  return [*mp.norm("norm{n:1|2}", "norm{n:1|2}"), *mp.conv("conv{n:1|2}", "conv{n:1|2}"),
          *mp.conv("conv_shortcut", "conv_shortcut")]


VAE_TABLE = mp.Table(rules=[
    *mp.conv(f"{_PART}.conv_{{io:in|out}}", f"{_PART}/conv_{{io:in|out}}"),
    *mp.norm(f"{_PART}.conv_norm_out", f"{_PART}/conv_norm_out"),
    *mp.prefixed(_resnet_rules(), _PART + r".{blocks:down_blocks|up_blocks}.{i:\d+}.resnets.{j:\d+}.",
                 _PART + r"/{blocks:down_blocks|up_blocks}_{i:\d+}/resnets_{j:\d+}/"),
    *mp.prefixed(_resnet_rules(), _PART + r".mid_block.resnets.{j:\d+}.", _PART + r"/mid_block/resnets_{j:\d+}/"),
    *mp.prefixed([*mp.norm("group_norm", "group_norm"), *mp.linear("to_{p:q|k|v}", "to_{p:q|k|v}"),
                  *mp.linear("to_out.0", "to_out_0")],
                 _PART + r".mid_block.attentions.{j:\d+}.", _PART + r"/mid_block/attentions_{j:\d+}/"),
    *mp.conv(r"encoder.down_blocks.{i:\d+}.downsamplers.0.conv", r"encoder/down_blocks_{i:\d+}/downsamplers_0/conv"),
    *mp.conv(r"decoder.up_blocks.{i:\d+}.upsamplers.0.conv", r"decoder/up_blocks_{i:\d+}/upsamplers_0/conv"),
    *mp.conv("{q:quant_conv|post_quant_conv}", "{q:quant_conv|post_quant_conv}"),
])

# Attention names of checkpoints saved before diffusers 0.14 (AttentionBlock); diffusers renames
# them on load (ModelMixin._fix_state_dict_keys_on_load), and so does brainjax. Writing uses the new names.
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

WEIGHTS_NAMES = (checkpoint_io.DIFFUSERS_WEIGHTS, "diffusion_pytorch_model.fp16.safetensors")
_WHAT = ("a diffusers AutoencoderKL directory with config.json and diffusion_pytorch_model.safetensors (e.g. "
         "stable-diffusion-v1-5/vae)")


def _rename_deprecated_attention(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for key, value in state_dict.items():
    head, _, tail = key.rpartition(".")  # tail: weight / bias
    prefix, _, leaf = head.rpartition(".")
    if ".mid_block.attentions." in key and leaf in _DEPRECATED_ATTENTION:
      key = f"{prefix}.{_DEPRECATED_ATTENTION[leaf]}.{tail}"
    out[key] = value
  return out


def _vae_directory(path: str | epath.PathLike) -> epath.Path:
  """`path`, or its `vae/` subfolder when `path` is a whole diffusers pipeline (model_index.json)."""
  directory = epath.Path(path)
  if (not (directory / "config.json").exists() and (directory / "model_index.json").exists()
      and (directory / "vae" / "config.json").exists()):
    return directory / "vae"
  return directory


def load_vae(path: str | epath.PathLike, *, remat: bool = False, dtype: Dtype = jnp.float32,
             param_dtype: Dtype = jnp.float32) -> tuple[AutoencoderKL, Any]:
  """(module, params) from a diffusers AutoencoderKL directory (local or gs://).

  `path` is the `vae/` directory, or a pipeline directory holding one (e.g. a
  copy of stable-diffusion-v1-5 or zeroscope_v2_576w). Reads
  diffusion_pytorch_model.safetensors (or its .fp16 variant, or a sharded
  index); params are cast to param_dtype.
  """
  ckpt = checkpoint_io.read_checkpoint(_vae_directory(path), _WHAT, weights_names=WEIGHTS_NAMES)
  module = AutoencoderKL(VAEConfig.from_dict(ckpt.config), remat=remat, dtype=dtype, param_dtype=param_dtype)
  params = VAE_TABLE.to_flax(_rename_deprecated_attention(ckpt.state_dict), abstract_params(module),
                             origin=ckpt.origin)
  return module, jax.tree.map(lambda x: jnp.asarray(x, param_dtype), params)


def save_vae(path: str | epath.PathLike, config: VAEConfig | AutoencoderKL, params: Any) -> epath.Path:
  """Writes config.json + diffusion_pytorch_model.safetensors for `diffusers.AutoencoderKL.from_pretrained`.

  Tensors keep the params' dtype. Returns the directory.
  """
  config = getattr(config, "config", config)  # a module is accepted for its config
  params = params["params"] if set(params) == {"params"} else params  # accept flax variables too
  state_dict = VAE_TABLE.to_torch(params)
  return checkpoint_io.write_checkpoint(path, config.to_dict(), state_dict,
                                       weights_name=checkpoint_io.DIFFUSERS_WEIGHTS)
