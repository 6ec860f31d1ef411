"""transformers' ViTForImageClassification in Flax: the image classifier of the N-way tests.

MinD-Video, Brain Netflix and Mind-Animator score frames with
google/vit-base-patch16-224 (ImageNet-1k, 1000 classes) through
ViTImageProcessor. transformers v5 has no Flax ViT, so brainjax owns this one;
transformers' PyTorch class is the checkpoint format and the numerical reference.

  ViTForImageClassification(config)   NHWC pixels [B, S, S, 3] -> ClassifierOutput(logits [B, labels],
                                      pooled [B, D] (the cls token after the final layernorm),
                                      last_hidden_state [B, 1 + patches, D])
  load_vit(path) -> (module, params)  from a transformers directory (config.json + model.safetensors),
                                      local or gs://
  save_vit(path, config, params)      a directory ViTForImageClassification.from_pretrained loads
  classify_images(module, params, pixels)            jitted forward pass
  preprocess_images(images, image_size=224, ...)     ViTImageProcessor in JAX: resize to 224x224
                                      (PIL bilinear, no crop), /255, normalise with mean = std = 0.5;
                                      equal to ViTImageProcessorPil's output (tests/models/test_classifiers.py)
  pil_resize(images, size, method)    PIL's 8-bit Image.resize (BILINEAR / BICUBIC) in int32, bit-exact
  crop_normalize(pixels, crop, mean, std)   center crop, /255, normalise (shared with VideoMAE)
  processor_kwargs(path)              preprocessing arguments from a checkpoint's preprocessor_config.json

The architecture is CLIP's vision tower without the pre-layernorm: patch
embedding conv, cls token, learned position embeddings, pre-LN encoder
(GELU MLP, layer_norm_eps 1e-12 by default), final layernorm, classifier on the
cls token. The encoder IS clip.CLIPEncoder (same block, same parameter names),
so the weight table only renames transformers' ViT keys:

  vit.encoder.layer.{i}.attention.attention.query  <->  vit/encoder/layers_{i}/self_attn/q_proj
  vit.encoder.layer.{i}.attention.output.dense     <->  .../self_attn/out_proj
  vit.encoder.layer.{i}.intermediate.dense / output.dense  <->  .../mlp/fc1 / fc2
  vit.encoder.layer.{i}.layernorm_before / _after  <->  .../layer_norm1 / layer_norm2

(transformers >= 5.x renames these in memory, `vit.layers.{i}.attention.q_proj`, ...,
but reads and writes the hub layout above, which is what the files hold.)

Not supported: `interpolate_pos_encoding` (inputs must be image_size square),
the pooler of a bare ViTModel checkpoint (skipped on load), num_labels = 0.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
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
from brainjax.models import clip, layers

Dtype = Any

VIT_MEAN = (0.5, 0.5, 0.5)  # transformers' IMAGENET_STANDARD_MEAN / _STD, google/vit-base-patch16-224's values
VIT_STD = (0.5, 0.5, 0.5)
PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values -> jax.image methods

# --------------------------------------------------------------------------------------- configs


def labels_from_dict(config: Mapping[str, Any]) -> tuple[str, ...]:
  """Class names from a transformers config.json: id2label (keys "0".."C-1"), else num_labels, else 2."""
  id2label = config.get("id2label")
  if id2label:
    ids = sorted(int(i) for i in id2label)
    if ids != list(range(len(ids))):
      raise ValueError(f"config id2label has ids {ids[:10]}...; expected 0..{len(ids) - 1}.")
    return tuple(str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in ids)
  return tuple(f"LABEL_{i}" for i in range(int(config.get("num_labels", 2))))


def labels_to_dict(labels: tuple[str, ...]) -> dict[str, Any]:
  return {"id2label": {str(i): name for i, name in enumerate(labels)},
          "label2id": {name: i for i, name in enumerate(labels)}}


def check_config(config: Any) -> None:
  """The checks every transformers ViT-family config here needs (field names as transformers')."""
  name = type(config).__name__
  for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                "patch_size", "num_channels"):
    value = getattr(config, field)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"{name}.{field} = {value!r}: must be a positive integer (brainjax supports square images "
                       f"and patches given as one integer).")
  if config.hidden_size % config.num_attention_heads:
    raise ValueError(f"{name}: hidden_size {config.hidden_size} is not divisible by num_attention_heads "
                     f"{config.num_attention_heads}.")
  if config.hidden_act not in clip.ACTIVATIONS:
    raise ValueError(f"{name}.hidden_act = {config.hidden_act!r} is not supported; use one of "
                     f"{sorted(clip.ACTIVATIONS)}.")
  if config.patch_size > config.image_size:
    raise ValueError(f"{name}: patch_size {config.patch_size} is larger than image_size {config.image_size}.")
  if not config.id2label:
    raise ValueError(f"{name}: no class labels (num_labels = 0); brainjax ports the classification models, which "
                     f"need a classifier head.")


def config_from_dict(cls: type, config: Mapping[str, Any]) -> Any:
  """A config dataclass from a transformers config.json dict: known fields, labels; the rest ignored."""
  names = {f.name for f in dataclasses.fields(cls)} - {"id2label"}
  return cls(**{k: v for k, v in config.items() if k in names}, id2label=labels_from_dict(config))


def config_to_dict(config: Any, dtype: str = "float32") -> dict[str, Any]:
  entries = {k: v for k, v in dataclasses.asdict(config).items() if k != "id2label"}
  return {**entries, **labels_to_dict(config.id2label), "model_type": config.model_type,
          "architectures": [config.architecture], "dtype": dtype}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """transformers' ViTConfig fields that define ViTForImageClassification's computation (same defaults)."""
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-12
  image_size: int = 224
  patch_size: int = 16
  num_channels: int = 3
  qkv_bias: bool = True
  id2label: tuple[str, ...] = ("LABEL_0", "LABEL_1")  # class names; num_labels = len(id2label)

  model_type: ClassVar[str] = "vit"
  architecture: ClassVar[str] = "ViTForImageClassification"

  def __post_init__(self):
    object.__setattr__(self, "id2label", tuple(self.id2label))
    check_config(self)

  @property
  def num_labels(self) -> int:
    return len(self.id2label)

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @classmethod
  def from_dict(cls, config: Mapping[str, Any]) -> ViTConfig:
    """From a transformers config.json dict; missing entries take transformers' defaults."""
    return config_from_dict(cls, config)

  def to_dict(self, dtype: str = "float32") -> dict[str, Any]:
    return config_to_dict(self, dtype)


# --------------------------------------------------------------------------------------- modules


@struct.dataclass
class ClassifierOutput:
  logits: jax.Array             # [B, num_labels]
  pooled: jax.Array             # [B, D]: the classifier's input
  last_hidden_state: jax.Array  # [B, tokens, D]: the encoder's output (ViT: after the final layernorm)


class PatchEmbeddings(nn.Module):
  """Non-overlapping patches (or tubelets) -> tokens: torch's ConvNd with stride = kernel, then flatten.

  [B, *spatial, C] -> [B, prod(spatial // kernel), D], tokens in row-major order over the grid, as
  torch's `projection(x).flatten(2).transpose(1, 2)`; trailing pixels that do not fill a patch are
  dropped, as torch's conv drops them.
  """
  hidden_size: int
  kernel: tuple[int, ...]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    x = nn.Conv(self.hidden_size, self.kernel, strides=self.kernel, padding="VALID", name="projection",
                dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                         (None,) * (len(self.kernel) + 1) + ("embed",)),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))(pixels)
    return x.reshape(x.shape[0], -1, self.hidden_size)


def classifier(num_labels: int, dtype: Dtype, param_dtype: Dtype) -> nn.Dense:
  return layers.dense(num_labels, ("embed", None), name="classifier", dtype=dtype, param_dtype=param_dtype)


def check_pixels(pixels: jax.Array, shape: tuple[int, ...], what: str, hint_fn: str) -> None:
  """Inputs must have the model's [batch, *shape] channels-last shape; says so, and spots channels-first input."""
  if pixels.ndim == len(shape) + 1 and tuple(pixels.shape[1:]) == shape:
    return
  hint = ""
  if pixels.ndim == len(shape) + 1 and pixels.shape[-3] == shape[-1] and pixels.shape[-1] != shape[-1]:
    hint = " It looks channels-first (PyTorch's layout); move the channels last, e.g. np.moveaxis(x, -3, -1)."
  raise ValueError(f"pixel values have shape {tuple(pixels.shape)}; {what} expects [batch, "
                   f"{', '.join(map(str, shape))}] channels-last (see {hint_fn}).{hint}")


class ViTEmbeddings(nn.Module):
  config: ViTConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # Kept in transformers' shapes [1, 1, D] and [1, 1 + patches, D], so the weight table is a pure rename.
    init = nn.initializers.truncated_normal(0.02)
    cls = self.param("cls_token", nn.with_logical_partitioning(init, (None, None, "embed")),
                     (1, 1, c.hidden_size), self.param_dtype)
    positions = self.param("position_embeddings", nn.with_logical_partitioning(init, (None, None, "embed")),
                           (1, c.num_patches + 1, c.hidden_size), self.param_dtype)
    x = PatchEmbeddings(c.hidden_size, (c.patch_size, c.patch_size), name="patch_embeddings", **kw)(pixels)
    b = x.shape[0]
    x = jnp.concatenate([jnp.broadcast_to(jnp.asarray(cls, x.dtype), (b, 1, c.hidden_size)), x], axis=1)
    return x + jnp.asarray(positions, x.dtype)


class ViTModel(nn.Module):
  """transformers' ViTModel(add_pooling_layer=False): embeddings, pre-LN encoder, final layernorm."""
  config: ViTConfig
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = ViTEmbeddings(c, name="embeddings", **kw)(pixels)
    x = nn.with_logical_constraint(x, ("act_batch", "act_tokens", "act_embed"))
    x = clip.CLIPEncoder(c, self.remat, qkv_bias=(c.qkv_bias,) * 3, name="encoder", **kw)(x)
    return clip._layer_norm(c.layer_norm_eps, "layernorm", **kw)(x)


class ViTForImageClassification(nn.Module):
  """transformers' ViTForImageClassification on NHWC pixels: classifier on the cls token."""
  config: ViTConfig
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, pixels: jax.Array) -> ClassifierOutput:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    check_pixels(pixels, (c.image_size, c.image_size, c.num_channels), "the ViT classifier", "preprocess_images")
    x = ViTModel(c, self.remat, name="vit", **kw)(pixels)
    pooled = x[:, 0]
    return ClassifierOutput(classifier(c.num_labels, **kw)(pooled), pooled, x)

  def dummy_inputs(self) -> tuple[jax.Array, ...]:
    c = self.config
    return (jnp.zeros((1, c.image_size, c.image_size, c.num_channels), jnp.float32),)


def abstract_params(module: nn.Module, *, boxed: bool = False) -> Any:
  """The param tree as jax.ShapeDtypeStructs (boxed=True keeps the logical axis names for sharding)."""
  return clip.abstract_params(module, boxed=boxed)


@functools.partial(jax.jit, static_argnums=0)
def classify_images(module: ViTForImageClassification, params: Any, pixels: jax.Array) -> ClassifierOutput:
  """float [B, S, S, 3] normalised NHWC pixels (preprocess_images) -> ClassifierOutput."""
  return module.apply({"params": params}, pixels)


# --------------------------------------------------------------------------------------- weights


def encoder_rules(src: str, dst: str, *, q_bias: str | None = "query.bias", k_bias: str | None = "key.bias",
                  v_bias: str | None = "value.bias") -> list[mp.Rule]:
  """transformers' BERT-style ViT encoder keys (`{src}.layer.{i}.attention.attention.query...`) <->
  clip.CLIPEncoder params (`{dst}/layers_{i}/self_attn/q_proj/...`). The bias arguments name each
  projection's bias key under `attention.attention.` (None: no bias), for VideoMAE's q_bias/v_bias."""
  rules = []
  for proj, key, bias in (("q", "query", q_bias), ("k", "key", k_bias), ("v", "value", v_bias)):
    rules.append(mp.Rule(f"attention.attention.{key}.weight", f"self_attn/{proj}_proj/kernel", mp.LINEAR))
    if bias is not None:
      rules.append(mp.Rule(f"attention.attention.{bias}", f"self_attn/{proj}_proj/bias"))
  rules += [
      *mp.linear("attention.output.dense", "self_attn/out_proj"),
      *mp.linear("intermediate.dense", "mlp/fc1"),
      *mp.linear("output.dense", "mlp/fc2"),
      *mp.norm("layernorm_before", "layer_norm1"),
      *mp.norm("layernorm_after", "layer_norm2"),
  ]
  return mp.prefixed(rules, src + r".layer.{i:\d+}.", dst + "/layers_{i}/")


def vit_table(qkv_bias: bool = True) -> mp.Table:
  bias = {} if qkv_bias else dict(q_bias=None, k_bias=None, v_bias=None)
  return mp.Table(
      rules=[
          *mp.param("vit.embeddings.cls_token", "vit/embeddings/cls_token"),
          *mp.param("vit.embeddings.position_embeddings", "vit/embeddings/position_embeddings"),
          *mp.conv("vit.embeddings.patch_embeddings.projection", "vit/embeddings/patch_embeddings/projection"),
          *encoder_rules("vit.encoder", "vit/encoder", **bias),
          *mp.norm("vit.layernorm", "vit/layernorm"),
          *mp.linear("classifier", "classifier"),
      ],
      # A bare ViTModel checkpoint's pooler (ViTForImageClassification has none; transformers ignores it too).
      skip=["vit.pooler.dense.weight", "vit.pooler.dense.bias"])


VIT_TABLE = vit_table()

_WHAT = ("a transformers ViTForImageClassification checkpoint directory with config.json and model.safetensors "
         "(e.g. google/vit-base-patch16-224)")


def load_vit(path: str | epath.PathLike, *, remat: bool = False, dtype: Dtype = jnp.float32,
             param_dtype: Dtype = jnp.float32) -> tuple[ViTForImageClassification, Any]:
  """(module, params) from a transformers ViTForImageClassification directory (local or gs://)."""
  ckpt = checkpoint_io.read_checkpoint(path, _WHAT, weights_names=(checkpoint_io.TRANSFORMERS_WEIGHTS,))
  config = ViTConfig.from_dict(ckpt.config)
  module = ViTForImageClassification(config, remat=remat, dtype=dtype, param_dtype=param_dtype)
  params = vit_table(config.qkv_bias).to_flax(ckpt.state_dict, abstract_params(module), origin=ckpt.origin)
  return module, jax.tree.map(lambda x: jnp.asarray(x, param_dtype), params)


def unwrap(config: Any, params: Any) -> tuple[Any, Any]:
  """A module is accepted for its config, flax variables {'params': ...} for their params."""
  config = getattr(config, "config", config)
  params = params["params"] if set(params) == {"params"} else params
  return config, params


def save_vit(path: str | epath.PathLike, config: ViTConfig | ViTForImageClassification, params: Any) -> epath.Path:
  """Writes config.json + model.safetensors for transformers' ViTForImageClassification.from_pretrained."""
  config, params = unwrap(config, params)
  state_dict = vit_table(config.qkv_bias).to_torch(params)
  dtype = str(np.asarray(next(iter(state_dict.values()))).dtype)
  return checkpoint_io.write_checkpoint(path, config.to_dict(dtype), state_dict)


# --------------------------------------------------------------------------------------- preprocessing


# PIL's Resample.c, 8-bit path: coefficients normalised in double precision, then rounded to fixed
# point with PRECISION_BITS fractional bits; each output is (sum(pixel * coeff) + half) >> bits,
# clipped to 0..255. Reproducing that in int32 makes the resize bit-exact, where a float resize
# (jax.image.resize) differs by one uint8 step on ~8% of the values of a 256 -> 224 bilinear shrink:
# bilinear weights make many outputs land exactly on .5, which the two round differently.
PIL_PRECISION_BITS = 32 - 8 - 2


def _pil_bilinear(x: float) -> float:
  x = abs(x)
  return 1.0 - x if x < 1.0 else 0.0


def _pil_bicubic(x: float) -> float:
  a = -0.5
  x = abs(x)
  if x < 1.0:
    return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
  if x < 2.0:
    return (((x - 5) * x + 8) * x - 4) * a
  return 0.0


PIL_FILTERS = {"bilinear": (_pil_bilinear, 1.0), "bicubic": (_pil_bicubic, 2.0)}


@functools.lru_cache(maxsize=64)
def pil_coefficients(in_size: int, out_size: int, method: str) -> tuple[np.ndarray, np.ndarray]:
  """PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for one axis: (taps int32 [out, K], fixed-point
  weights int32 [out, K]); output o reads input pixels taps[o] (weight 0 beyond each window)."""
  fn, support = PIL_FILTERS[method]
  scale = in_size / out_size
  filterscale = max(scale, 1.0)
  support = support * filterscale
  ksize = int(math.ceil(support)) * 2 + 1
  taps = np.zeros((out_size, ksize), np.int32)
  weights = np.zeros((out_size, ksize), np.int32)
  for xx in range(out_size):
    center = (xx + 0.5) * scale
    ss = 1.0 / filterscale
    xmin = max(int(center - support + 0.5), 0)  # int(): truncation toward zero, as C's cast
    xmax = min(int(center + support + 0.5), in_size) - xmin
    k = [fn((x + xmin - center + 0.5) * ss) for x in range(xmax)]
    ww = 0.0
    for w in k:
      ww += w
    if ww != 0.0:
      k = [w / ww for w in k]
    one = 1 << PIL_PRECISION_BITS
    weights[xx, :xmax] = [int(-0.5 + w * one) if w < 0 else int(0.5 + w * one) for w in k]
    taps[xx] = np.minimum(xmin + np.arange(ksize), in_size - 1)
  return taps, weights


def _pil_pass(x: jax.Array, axis: int, out_size: int, method: str) -> jax.Array:
  taps, weights = pil_coefficients(x.shape[axis], out_size, method)
  x = jnp.moveaxis(x, axis, -2)                                   # [..., in, C]
  acc = jnp.einsum("...otc,ot->...oc", x[..., taps, :], jnp.asarray(weights), preferred_element_type=jnp.int32)
  acc = acc + (1 << (PIL_PRECISION_BITS - 1))
  return jnp.moveaxis(jnp.clip(acc >> PIL_PRECISION_BITS, 0, 255), -2, axis)


@functools.partial(jax.jit, static_argnames=("size", "method"))
def pil_resize(images: jax.Array, size: tuple[int, int], method: str = "bilinear") -> jax.Array:
  """PIL's Image.resize((w, h), BILINEAR | BICUBIC) of uint8 RGB, bit-exact: [..., H, W, C] -> int32 [..., h, w, C].

  What transformers' PIL image processors do to uint8 frames. Two 1-D passes, width first as in
  Pillow's Resample.c (ImagingResampleInner), each in PIL's fixed-point arithmetic (int32) and
  clipped to 0..255; a pass whose size does not change is skipped, as PIL skips it. Non-uint8 input
  is rounded and clipped to 0..255 first.

  Measured against this environment's Pillow 13.0.0: identical for square and landscape frames
  (and all the tested enlargements); for some portrait shrinks (e.g. 400x300 -> 224x224) that Pillow
  runs the vertical pass first, and ~0.01% of the values differ by one step.
  """
  if method not in PIL_FILTERS:
    raise ValueError(f"pil_resize: method {method!r} is not supported; use one of {sorted(PIL_FILTERS)}.")
  if images.dtype != jnp.uint8:
    images = jnp.clip(jnp.round(images), 0, 255)
  x = images.astype(jnp.int32)
  if x.shape[-2] != size[1]:
    x = _pil_pass(x, x.ndim - 2, size[1], method)
  if x.shape[-3] != size[0]:
    x = _pil_pass(x, x.ndim - 3, size[0], method)
  return x


@functools.partial(jax.jit, static_argnames=("crop", "mean", "std"))
def crop_normalize(pixels: jax.Array, crop: int | None, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
  """Center crop [..., H, W, C] to crop x crop (None: none; top = (H - crop) // 2, as transformers), /255,
  (x - mean) / std -> float32."""
  if crop is not None:
    h, w = pixels.shape[-3:-1]
    top, left = (h - crop) // 2, (w - crop) // 2
    pixels = pixels[..., top:top + crop, left:left + crop, :]
  x = pixels.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def preprocess_images(images: Any, image_size: int = 224, *, mean: tuple[float, ...] = VIT_MEAN,
                      std: tuple[float, ...] = VIT_STD, method: str = "bilinear") -> jax.Array:
  """uint8 RGB [H, W, 3] or [N, H, W, 3] -> normalised float32 [N, S, S, 3] for the ViT classifier.

  ViTImageProcessor with google/vit-base-patch16-224's preprocessor_config (size 224x224, resample
  2 = BILINEAR, mean = std = 0.5): resize to image_size x image_size whatever the aspect ratio (no
  crop) with PIL's filter (pil_resize, bit-exact but for the portrait caveat there), scale to
  [0, 1], normalise. The result equals ViTImageProcessorPil's to float rounding (~1e-7).
  """
  images = jnp.asarray(images)
  if images.ndim == 3:
    images = images[None]
  if images.ndim != 4 or images.shape[-1] != len(mean):
    raise ValueError(f"preprocess_images: images have shape {tuple(images.shape)}; expected [H, W, {len(mean)}] "
                     f"or [N, H, W, {len(mean)}] RGB values in 0..255.")
  return crop_normalize(pil_resize(images, (image_size, image_size), method), None, tuple(mean), tuple(std))


def processor_kwargs(path: str | epath.PathLike) -> dict[str, Any]:
  """mean / std / method (and size, crop) from a checkpoint's preprocessor_config.json, for preprocess_*.

  For ViT: {image_size, mean, std, method}; for VideoMAE: {size, crop, mean, std, method}. Keys the
  file does not have are left out (the functions' defaults apply).
  """
  file = epath.Path(path) / "preprocessor_config.json"
  if not file.exists():
    raise FileNotFoundError(f"{file} not found; pass a checkpoint directory that has the image processor's "
                            f"preprocessor_config.json, or use preprocess_*'s defaults.")
  cfg = json.loads(file.read_text())
  out: dict[str, Any] = {}
  if "image_mean" in cfg:
    out["mean"] = tuple(float(v) for v in cfg["image_mean"])
  if "image_std" in cfg:
    out["std"] = tuple(float(v) for v in cfg["image_std"])
  if "resample" in cfg:
    if cfg["resample"] not in PIL_RESAMPLE:
      raise ValueError(f"{file}: resample = {cfg['resample']!r}; brainjax supports {PIL_RESAMPLE} (PIL values).")
    out["method"] = PIL_RESAMPLE[cfg["resample"]]
  size = cfg.get("size")
  if isinstance(size, Mapping) and "height" in size:
    if size["height"] != size.get("width"):
      raise ValueError(f"{file}: size {size} is not square; brainjax's models take square inputs.")
    out["image_size"] = int(size["height"])
  elif isinstance(size, Mapping) and "shortest_edge" in size:
    out["size"] = int(size["shortest_edge"])
  elif isinstance(size, int):  # old feature extractors: an int is the shortest edge
    out["size"] = size
  crop = cfg.get("crop_size")
  if crop and cfg.get("do_center_crop", True):
    out["crop"] = int(crop["height"] if isinstance(crop, Mapping) else crop)
  return out
