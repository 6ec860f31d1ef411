"""CLIP text and vision towers in Flax, numerically matching transformers' PyTorch CLIP.

transformers v5 has no Flax models, so brainjax owns these; transformers'
PyTorch classes are the checkpoint format and the numerical reference. Module
and parameter names mirror transformers', so the conversion tables below are
nearly literal (`text_model.encoder.layers.3.mlp.fc1.weight` <->
`text_model/encoder/layers_3/mlp/fc1/kernel`).

  CLIPTextModel(config)                text tower: last_hidden_state [B, T, D] (the 77x768
                                       SD1.5 conditioning), pooler_output [B, D] at the EOS token
  CLIPTextModelWithProjection(config)  + text_embeds [B, projection_dim]
  CLIPVisionModel(config)              vision tower on NHWC pixels: last_hidden_state
                                       [B, 1 + patches, D], pooler_output = post_layernorm(cls) [B, D]
  CLIPVisionModelWithProjection        + image_embeds [B, projection_dim]

  load_clip_text(path) / load_clip_vision(path) -> (module, params)
      from a transformers directory (config.json + model.safetensors), local or gs://:
      a CLIPTextModel(WithProjection) / CLIPVisionModel(WithProjection) directory, a
      combined CLIPModel one (openai/clip-vit-large-patch14; the other tower is skipped),
      or stable-diffusion-v1-5/text_encoder.
  save_clip_text(path, config, params) / save_clip_vision(...)
      a directory transformers' `CLIP*Model(WithProjection).from_pretrained` loads.
  encode_text(module, params, input_ids, attention_mask=None), encode_images(module, params, pixels)
      jitted forward passes.
  preprocess_images(images, image_size)
      CLIP's resize / center-crop / normalize in JAX (close to, not bitwise equal to, the
      PIL-based CLIPImageProcessor; see its docstring for the measured gap).

Not supported (not needed by brainjax): transformers' `interpolate_pos_encoding`,
per-layer hidden states / attention maps, explicit `position_ids`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import struct

from brainjax.weights import checkpoint_io
from brainjax.weights import mapping as mp
from brainjax.models import layers

Dtype = Any

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# transformers' ACT2FN entries that CLIP configs use.
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}

# --------------------------------------------------------------------------------------- configs


def _select(config: Mapping[str, Any], section: str) -> dict[str, Any]:
  """The tower's entries of a standalone config.json, or of a combined CLIPConfig one."""
  config = dict(config)
  if section in config or f"{section}_dict" in config or config.get("model_type") == "clip":
    # Old CLIPConfigs carry `text_config_dict`/`vision_config_dict`; transformers
    # then builds the tower from that dict alone (defaults for the rest).
    sub = dict(config.get(f"{section}_dict") or config.get(section) or {})
    # CLIPModel builds both projections with the top-level projection_dim; the
    # sub-config's own value is not used there (and is often a stale default).
    if "projection_dim" in config:
      sub["projection_dim"] = config["projection_dim"]
    return sub
  return config


def _validate(config: Any) -> None:
  name = type(config).__name__
  for field in ("hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads"):
    value = getattr(config, field)
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"{name}.{field} = {value!r}: must be a positive integer.")
  if config.hidden_size % config.num_attention_heads:
    raise ValueError(f"{name}: hidden_size {config.hidden_size} is not divisible by num_attention_heads "
                     f"{config.num_attention_heads}.")
  if config.hidden_act not in ACTIVATIONS:
    raise ValueError(f"{name}.hidden_act = {config.hidden_act!r} is not supported; use one of {sorted(ACTIVATIONS)}.")


class _ConfigMixin:
  """from_dict (transformers config.json) and to_dict (back), shared by both configs."""
  model_type: ClassVar[str]
  section: ClassVar[str]

  @classmethod
  def from_dict(cls, config: Mapping[str, Any]):
    """From a transformers config.json dict: standalone, or combined CLIPConfig (text_config/vision_config).

    Missing entries take transformers' current defaults; unknown entries are ignored.
    """
    entries = _select(config, cls.section)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in entries.items() if k in names})

  def to_dict(self, architecture: str, dtype: str = "float32") -> dict[str, Any]:
    return {**dataclasses.asdict(self), "model_type": self.model_type, "architectures": [architecture],
            "dtype": dtype}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig(_ConfigMixin):
  """transformers' CLIPTextConfig fields that define the computation (same defaults)."""
  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  projection_dim: int = 512
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  pad_token_id: int | None = 1
  bos_token_id: int | None = 49406
  # Pooling: 2 means the legacy rule (argmax of the token ids, right for the original
  # vocabulary where EOS has the largest id); anything else: first position equal to it.
  eos_token_id: int | None = 49407

  model_type: ClassVar[str] = "clip_text_model"
  section: ClassVar[str] = "text_config"

  def __post_init__(self):
    _validate(self)


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(_ConfigMixin):
  """transformers' CLIPVisionConfig fields that define the computation (same defaults)."""
  hidden_size: int = 768
  intermediate_size: int = 3072
  projection_dim: int = 512
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  num_channels: int = 3
  image_size: int = 224
  patch_size: int = 32
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5

  model_type: ClassVar[str] = "clip_vision_model"
  section: ClassVar[str] = "vision_config"

  def __post_init__(self):
    _validate(self)
    if not 0 < self.patch_size <= self.image_size:
      raise ValueError(f"CLIPVisionConfig: patch_size {self.patch_size} must be in 1..image_size ({self.image_size}).")

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


# --------------------------------------------------------------------------------------- modules


@struct.dataclass
class CLIPTextOutput:
  last_hidden_state: jax.Array      # [B, T, D], after final_layer_norm
  pooler_output: jax.Array          # [B, D], the EOS token's state
  text_embeds: jax.Array | None = None  # [B, projection_dim] with the projection


@struct.dataclass
class CLIPVisionOutput:
  last_hidden_state: jax.Array      # [B, 1 + patches, D] (no post_layernorm, as in transformers)
  pooler_output: jax.Array          # [B, D] = post_layernorm(cls token)
  image_embeds: jax.Array | None = None  # [B, projection_dim] with the projection


def _layer_norm(eps: float, name: str, dtype: Dtype, param_dtype: Dtype) -> nn.LayerNorm:
  # Two-pass variance, as torch computes it (flax's fast E[x^2]-E[x]^2 loses ~1e-6).
  return nn.LayerNorm(
      epsilon=eps, use_fast_variance=False, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))


def _embed(num: int, dim: int, names: tuple[str | None, str | None], name: str, dtype: Dtype,
           param_dtype: Dtype) -> nn.Embed:
  return nn.Embed(num, dim, dtype=dtype, param_dtype=param_dtype, name=name,
                  embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), names))


class CLIPAttention(nn.Module):
  """Multi-head self-attention with separate q/k/v/out projections.

  CLIP gives every projection a bias; `qkv_bias` switches the q/k/v ones off
  for the other transformers ViTs that share this block (ViT's qkv_bias=False,
  VideoMAE's q/v-only biases; see brainjax.models.vit and .videomae).
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  qkv_bias: tuple[bool, bool, bool] = (True, True, True)

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    b, t, d = x.shape
    head_dim = d // self.num_heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    q, k, v = (layers.dense(d, ("embed", "heads"), use_bias=bias, name=f"{p}_proj", **kw)(x).reshape(
        b, t, self.num_heads, head_dim) for p, bias in zip("qkv", self.qkv_bias))
    # Fully masked query rows (left padding) come out uniform over the keys, as
    # transformers' eager attention gives; only padding positions have them.
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=head_dim ** -0.5)
    out = nn.with_logical_constraint(out.reshape(b, t, d), ("act_batch", "act_tokens", "act_heads"))
    return layers.dense(d, ("heads", "embed"), name="out_proj", **kw)(out)


class CLIPMLP(nn.Module):
  intermediate_size: int
  hidden_act: str
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.dense(self.intermediate_size, ("embed", "mlp"), name="fc1", **kw)(x)
    h = nn.with_logical_constraint(ACTIVATIONS[self.hidden_act](h), ("act_batch", "act_tokens", "act_mlp"))
    return layers.dense(x.shape[-1], ("mlp", "embed"), name="fc2", **kw)(h)


class CLIPEncoderLayer(nn.Module):
  """Pre-LN block: x + attn(ln1(x)); x + mlp(ln2(x)).

  Also the encoder layer of transformers' ViT and VideoMAE: the config needs
  num_attention_heads, intermediate_size, hidden_act and layer_norm_eps.
  """
  config: CLIPTextConfig | CLIPVisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  qkv_bias: tuple[bool, bool, bool] = (True, True, True)

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x + CLIPAttention(c.num_attention_heads, qkv_bias=self.qkv_bias, name="self_attn", **kw)(
        _layer_norm(c.layer_norm_eps, "layer_norm1", **kw)(x), mask)
    x = x + CLIPMLP(c.intermediate_size, c.hidden_act, name="mlp", **kw)(
        _layer_norm(c.layer_norm_eps, "layer_norm2", **kw)(x))
    return nn.with_logical_constraint(x, ("act_batch", "act_tokens", "act_embed"))


class CLIPEncoder(nn.Module):
  """config.num_hidden_layers CLIPEncoderLayers (names layers_0, layers_1, ...)."""
  config: CLIPTextConfig | CLIPVisionConfig
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  qkv_bias: tuple[bool, bool, bool] = (True, True, True)

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    layer_cls = nn.remat(CLIPEncoderLayer) if self.remat else CLIPEncoderLayer
    for i in range(self.config.num_hidden_layers):
      x = layer_cls(self.config, self.dtype, self.param_dtype, self.qkv_bias, name=f"layers_{i}")(x, mask)
    return x


class CLIPTextEmbeddings(nn.Module):
  config: CLIPTextConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array) -> jax.Array:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    seq_len = input_ids.shape[-1]
    if seq_len > c.max_position_embeddings:
      raise ValueError(f"sequence length {seq_len} exceeds max_position_embeddings {c.max_position_embeddings}; "
                       f"truncate the tokens (the CLIP tokenizer's max_length).")
    tokens = _embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), "token_embedding", **kw)(input_ids)
    positions = _embed(c.max_position_embeddings, c.hidden_size, (None, "embed"), "position_embedding", **kw)(
        jnp.arange(seq_len))
    return tokens + positions[None]


def pooled_positions(input_ids: jax.Array, eos_token_id: int | None) -> jax.Array:
  """Where transformers' CLIPTextModel takes the pooled output, per sequence.

  eos_token_id == 2 is the legacy rule (configs before transformers PR #24773):
  argmax of the ids, since EOS had the largest id. Otherwise the first position
  equal to eos_token_id (0 if the sequence has none, as torch's argmax gives).
  """
  if eos_token_id == 2:
    return jnp.argmax(input_ids, axis=-1)
  return jnp.argmax((input_ids == eos_token_id).astype(jnp.int32), axis=-1)


class CLIPTextTransformer(nn.Module):
  """The text tower (transformers' CLIPTextModel body): causal pre-LN encoder + EOS pooling."""
  config: CLIPTextConfig
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = CLIPTextEmbeddings(c, name="embeddings", **kw)(input_ids)
    t = input_ids.shape[-1]
    mask = jnp.tril(jnp.ones((t, t), jnp.bool_))[None, None]  # [1, 1, T, T]: causal
    if attention_mask is not None:
      mask = mask & (attention_mask[:, None, None, :] != 0)  # and no padded keys
    x = CLIPEncoder(c, self.remat, name="encoder", **kw)(x, mask)
    x = _layer_norm(c.layer_norm_eps, "final_layer_norm", **kw)(x)
    pos = pooled_positions(input_ids, c.eos_token_id)
    pooled = jnp.take_along_axis(x, pos[:, None, None], axis=1)[:, 0]
    return x, pooled


class CLIPVisionEmbeddings(nn.Module):
  config: CLIPVisionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    cls = self.param("class_embedding", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed",)),
                     (c.hidden_size,), self.param_dtype)
    patches = nn.Conv(c.hidden_size, (c.patch_size, c.patch_size), strides=(c.patch_size, c.patch_size),
                      padding="VALID", use_bias=False, name="patch_embedding", **kw,
                      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                               (None, None, None, "embed")))(pixels)
    b = pixels.shape[0]
    patches = patches.reshape(b, -1, c.hidden_size)  # row-major over the grid, as torch's flatten(2)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(patches.dtype), (b, 1, c.hidden_size)), patches], axis=1)
    positions = _embed(c.num_patches + 1, c.hidden_size, (None, "embed"), "position_embedding", **kw)(
        jnp.arange(c.num_patches + 1))
    return x + positions[None]


class CLIPVisionTransformer(nn.Module):
  """The vision tower (transformers' CLIPVisionModel body) on NHWC pixels."""
  config: CLIPVisionConfig
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array]:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    _check_pixels(pixels, c)
    x = CLIPVisionEmbeddings(c, name="embeddings", **kw)(pixels)
    x = _layer_norm(c.layer_norm_eps, "pre_layrnorm", **kw)(x)  # sic: transformers' name
    x = CLIPEncoder(c, self.remat, name="encoder", **kw)(x)
    pooled = _layer_norm(c.layer_norm_eps, "post_layernorm", **kw)(x[:, 0])
    return x, pooled


def _check_pixels(pixels: jax.Array, c: CLIPVisionConfig) -> None:
  expected = (c.image_size, c.image_size, c.num_channels)
  if pixels.ndim == 4 and tuple(pixels.shape[1:]) == expected:
    return
  hint = ""
  if pixels.ndim == 4 and tuple(pixels.shape[1:]) == (c.num_channels, c.image_size, c.image_size):
    hint = " It looks channels-first (NCHW, PyTorch's layout); transpose it with x.transpose(0, 2, 3, 1)."
  raise ValueError(f"pixel values have shape {tuple(pixels.shape)}; the CLIP vision tower expects NHWC "
                   f"[batch, {c.image_size}, {c.image_size}, {c.num_channels}] (see preprocess_images).{hint}")


class CLIPTextModel(nn.Module):
  """Text tower, optionally with the text projection (param names as in transformers)."""
  config: CLIPTextConfig
  with_projection: bool = False
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> CLIPTextOutput:
    hidden, pooled = CLIPTextTransformer(self.config, self.remat, self.dtype, self.param_dtype, name="text_model")(
        input_ids, attention_mask)
    embeds = None
    if self.with_projection:
      embeds = layers.dense(self.config.projection_dim, ("embed", None), use_bias=False, dtype=self.dtype,
                            param_dtype=self.param_dtype, name="text_projection")(pooled)
    return CLIPTextOutput(hidden, pooled, embeds)

  def dummy_inputs(self) -> tuple[jax.Array, ...]:
    return (jnp.zeros((1, 1), jnp.int32),)


class CLIPTextModelWithProjection(CLIPTextModel):
  with_projection: bool = True


class CLIPVisionModel(nn.Module):
  """Vision tower, optionally with the visual projection (param names as in transformers)."""
  config: CLIPVisionConfig
  with_projection: bool = False
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> CLIPVisionOutput:
    hidden, pooled = CLIPVisionTransformer(self.config, self.remat, self.dtype, self.param_dtype,
                                           name="vision_model")(pixels)
    embeds = None
    if self.with_projection:
      embeds = layers.dense(self.config.projection_dim, ("embed", None), use_bias=False, dtype=self.dtype,
                            param_dtype=self.param_dtype, name="visual_projection")(pooled)
    return CLIPVisionOutput(hidden, pooled, embeds)

  def dummy_inputs(self) -> tuple[jax.Array, ...]:
    c = self.config
    return (jnp.zeros((1, c.image_size, c.image_size, c.num_channels), jnp.float32),)


class CLIPVisionModelWithProjection(CLIPVisionModel):
  with_projection: bool = True


def abstract_params(module: CLIPTextModel | CLIPVisionModel, *, boxed: bool = False) -> Any:
  """The param tree as jax.ShapeDtypeStructs, without computing anything.

  boxed=True keeps the logical-axis metadata: nn.get_partition_spec(...) of it
  gives the specs to shard a frozen tower over a mesh.
  """
  variables = jax.eval_shape(module.init, jax.random.key(0), *module.dummy_inputs())
  return variables["params"] if boxed else nn.meta.unbox(variables)["params"]


@functools.partial(jax.jit, static_argnums=0)
def encode_text(module: CLIPTextModel, params: Any, input_ids: jax.Array,
                attention_mask: jax.Array | None = None) -> CLIPTextOutput:
  """int [B, T] token ids (and optional 0/1 mask) -> CLIPTextOutput."""
  return module.apply({"params": params}, input_ids, attention_mask)


@functools.partial(jax.jit, static_argnums=0)
def encode_images(module: CLIPVisionModel, params: Any, pixels: jax.Array) -> CLIPVisionOutput:
  """float [B, S, S, 3] normalized NHWC pixels (preprocess_images) -> CLIPVisionOutput."""
  return module.apply({"params": params}, pixels)


# --------------------------------------------------------------------------------------- weights


def _encoder_rules(src: str, dst: str) -> list[mp.Rule]:
  return mp.prefixed([
      *mp.linear("self_attn.{p:q|k|v|out}_proj", "self_attn/{p}_proj"),
      *mp.norm("layer_norm{n:1|2}", "layer_norm{n}"),
      *mp.linear("mlp.fc{n:1|2}", "mlp/fc{n}"),
  ], src + r".layers.{i:\d+}.", dst + "/layers_{i}/")


TEXT_TABLE = mp.Table(
    rules=[
        *mp.embedding("text_model.embeddings.token_embedding", "text_model/embeddings/token_embedding"),
        *mp.embedding("text_model.embeddings.position_embedding", "text_model/embeddings/position_embedding"),
        *_encoder_rules("text_model.encoder", "text_model/encoder"),
        *mp.norm("text_model.final_layer_norm", "text_model/final_layer_norm"),
        *mp.linear("text_projection", "text_projection", bias=False),
    ],
    skip=[
        "text_model.embeddings.position_ids",  # an arange buffer, saved by older transformers
        # The other half of a combined CLIPModel checkpoint (e.g. openai/clip-vit-large-patch14).
        "vision_model.{rest:.+}", "visual_projection.weight", "logit_scale",
    ])

VISION_TABLE = mp.Table(
    rules=[
        *mp.param("vision_model.embeddings.class_embedding", "vision_model/embeddings/class_embedding"),
        *mp.conv("vision_model.embeddings.patch_embedding", "vision_model/embeddings/patch_embedding", bias=False),
        *mp.embedding("vision_model.embeddings.position_embedding", "vision_model/embeddings/position_embedding"),
        *mp.norm("vision_model.pre_layrnorm", "vision_model/pre_layrnorm"),
        *_encoder_rules("vision_model.encoder", "vision_model/encoder"),
        *mp.norm("vision_model.post_layernorm", "vision_model/post_layernorm"),
        *mp.linear("visual_projection", "visual_projection", bias=False),
    ],
    skip=[
        "vision_model.embeddings.position_ids",
        "text_model.{rest:.+}", "text_projection.weight", "logit_scale",
    ])

_TEXT_WHAT = ("a transformers CLIP text checkpoint directory with config.json and model.safetensors (e.g. "
              "openai/clip-vit-large-patch14, or stable-diffusion-v1-5/text_encoder)")
_VISION_WHAT = ("a transformers CLIP vision checkpoint directory with config.json and model.safetensors (e.g. "
                "openai/clip-vit-large-patch14)")


def _with_tower_prefix(state_dict: dict[str, np.ndarray], prefix: str, projection: str) -> dict[str, np.ndarray]:
  """Adds the tower prefix to a bare tower's keys.

  transformers >= 5 saves a bare CLIPTextModel / CLIPVisionModel without the
  `text_model.` / `vision_model.` prefix; older versions, the *WithProjection
  classes and CLIPModel all write it (and transformers loads either).
  """
  if any(k.startswith(prefix) for k in state_dict) or not any(k.startswith("embeddings.") for k in state_dict):
    return state_dict
  return {k if k == projection else prefix + k: v for k, v in state_dict.items()}


def _load(path: str | epath.PathLike, model_cls: type, config_cls: type, table: mp.Table, what: str, prefix: str,
          projection: str, with_projection: bool | None, **module_kw) -> tuple[nn.Module, Any]:
  ckpt = checkpoint_io.read_checkpoint(path, what, weights_names=(checkpoint_io.TRANSFORMERS_WEIGHTS,))
  config = config_cls.from_dict(ckpt.config)
  state_dict = _with_tower_prefix(ckpt.state_dict, prefix, projection)
  if with_projection is None:
    with_projection = projection in state_dict
  elif not with_projection:
    state_dict = {k: v for k, v in state_dict.items() if k != projection}  # asked to leave it out
  module = model_cls(config, with_projection=with_projection, **module_kw)
  params = table.to_flax(state_dict, abstract_params(module), origin=ckpt.origin)
  return module, jax.tree.map(lambda x: jnp.asarray(x, module.param_dtype), params)


def load_clip_text(path: str | epath.PathLike, *, with_projection: bool | None = None, remat: bool = False,
                   dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> tuple[CLIPTextModel, Any]:
  """(module, params) from a transformers CLIP checkpoint directory (local or gs://).

  with_projection: None uses the text projection if the checkpoint has one
  (CLIPTextModelWithProjection, CLIPModel; SD1.5's text_encoder has none);
  True requires it; False leaves it out. Params are cast to param_dtype.
  """
  return _load(path, CLIPTextModel, CLIPTextConfig, TEXT_TABLE, _TEXT_WHAT, "text_model.", "text_projection.weight",
               with_projection, remat=remat, dtype=dtype, param_dtype=param_dtype)


def load_clip_vision(path: str | epath.PathLike, *, with_projection: bool | None = None, remat: bool = False,
                     dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> tuple[CLIPVisionModel, Any]:
  """(module, params) from a transformers CLIP checkpoint directory; see load_clip_text."""
  return _load(path, CLIPVisionModel, CLIPVisionConfig, VISION_TABLE, _VISION_WHAT, "vision_model.",
               "visual_projection.weight", with_projection, remat=remat, dtype=dtype, param_dtype=param_dtype)


def _save(path: str | epath.PathLike, config: Any, params: Any, table: mp.Table, projection: str,
          architecture: str) -> epath.Path:
  config = getattr(config, "config", config)  # a module is accepted for its config
  params = params["params"] if set(params) == {"params"} else params  # accept flax variables too
  state_dict = table.to_torch(params)
  with_projection = projection in params
  dtype = str(np.asarray(next(iter(state_dict.values()))).dtype)
  arch = f"{architecture}WithProjection" if with_projection else architecture
  return checkpoint_io.write_checkpoint(path, config.to_dict(arch, dtype), state_dict)


def save_clip_text(path: str | epath.PathLike, config: CLIPTextConfig | CLIPTextModel, params: Any) -> epath.Path:
  """Writes config.json + model.safetensors for transformers' CLIPTextModel(WithProjection).from_pretrained."""
  return _save(path, config, params, TEXT_TABLE, "text_projection", "CLIPTextModel")


def save_clip_vision(path: str | epath.PathLike, config: CLIPVisionConfig | CLIPVisionModel,
                     params: Any) -> epath.Path:
  """Writes config.json + model.safetensors for transformers' CLIPVisionModel(WithProjection).from_pretrained."""
  return _save(path, config, params, VISION_TABLE, "visual_projection", "CLIPVisionModel")


# --------------------------------------------------------------------------------------- preprocessing


def resized_shape(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
  """transformers' get_resize_output_image_size(default_to_square=False): the long side is truncated."""
  if width <= height:
    return int(shortest_edge * height / width), shortest_edge
  return shortest_edge, int(shortest_edge * width / height)


@functools.partial(jax.jit, static_argnames=("size", "crop", "mean", "std", "quantize"))
def _preprocess(images: jax.Array, size: tuple[int, int], crop: int, mean: tuple[float, ...],
                std: tuple[float, ...], quantize: bool) -> jax.Array:
  n, h, _, ch = images.shape
  x = images.astype(jnp.float32)
  # PIL resizes in two 1-D passes, width first, and stores each pass as uint8:
  # rounding (and clipping the cubic's overshoot) in between matters on sharp edges.
  for shape in ((n, h, size[1], ch), (n, *size, ch)):
    x = jax.image.resize(x, shape, method="bicubic", antialias=True)
    if quantize:
      x = jnp.clip(jnp.round(x), 0, 255)
  top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
  x = x[:, top:top + crop, left:left + crop] / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def preprocess_images(images: Any, image_size: int = 224, *, mean: tuple[float, ...] = CLIP_MEAN,
                      std: tuple[float, ...] = CLIP_STD, quantize: bool = True) -> jax.Array:
  """uint8 RGB [H, W, 3] or [N, H, W, 3] -> normalized float32 [N, S, S, 3] (NHWC) for the vision tower.

  CLIP's processing: resize the shortest side to image_size (bicubic, with
  antialiasing when shrinking), center crop image_size x image_size, scale to
  [0, 1], normalize with CLIP's mean/std. It approximates transformers'
  PIL-based CLIPImageProcessorPil (resample=BICUBIC): jax.image's Keys cubic
  (a = -0.5, support widened when shrinking) is PIL's kernel, and with
  `quantize` the two 1-D passes are rounded to uint8 as PIL stores them. PIL's
  fixed-point weights still round a few pixels the other way. Measured on 16
  cases (smooth photo-like and uniform-noise images of 120..700 px, shrunk and
  enlarged to 224 and to 32; tests/models/test_clip.py checks five of them): >= 99.9%
  of the values are identical, the others differ by one uint8 step (0.015 in
  normalized units), at most two (0.029). quantize=False skips the rounding
  (smoother, but then only ~1% of values are identical, up to 30 steps apart
  on noise where PIL clips the cubic's overshoot after the first pass).
  """
  images = jnp.asarray(images)
  if images.ndim == 3:
    images = images[None]
  if images.ndim != 4 or images.shape[-1] != len(mean):
    raise ValueError(f"images have shape {tuple(images.shape)}; expected [H, W, {len(mean)}] or "
                     f"[N, H, W, {len(mean)}] RGB values in 0..255.")
  size = resized_shape(images.shape[1], images.shape[2], image_size)
  return _preprocess(images, size, image_size, tuple(mean), tuple(std), quantize)


def frames_to_pixels(frames: jax.Array, image_size: int) -> jax.Array:
  """uint8 [..., H, W, 3] -> CLIP-normalised float [..., S, S, 3] (resized if H != S)."""
  x = frames.astype(jnp.float32) / 255.0
  if x.shape[-3] != image_size:
    x = jax.image.resize(x, x.shape[:-3] + (image_size, image_size, 3), "bicubic")
  return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)
