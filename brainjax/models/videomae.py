"""transformers' VideoMAEForVideoClassification in Flax: the video classifier of the N-way tests.

MinD-Video, Brain Netflix and Mind-Animator score clips with
MCG-NJU/videomae-base-finetuned-kinetics (Kinetics-400) through
VideoMAEImageProcessor, loaded with `from_pretrained(..., num_frames=6)` for
their 6-frame clips. transformers' PyTorch class is the checkpoint format and
the numerical reference.

  VideoMAEForVideoClassification(config)   frames [B, T, S, S, 3] (channels last) -> vit.ClassifierOutput
                                           (logits [B, labels], pooled [B, D], last_hidden_state [B, N, D])
  load_videomae(path, num_frames=None) -> (module, params)   from a transformers directory, local or gs://
  save_videomae(path, config, params)      a directory VideoMAEForVideoClassification.from_pretrained loads
  classify_videos(module, params, frames)  jitted forward pass
  preprocess_videos(videos, size=224, crop=224, ...)
      VideoMAEImageProcessor in JAX, per frame: resize the shortest edge to 224 (PIL bilinear), center
      crop 224, /255, normalise with the ImageNet mean/std of the Kinetics checkpoint's
      preprocessor_config.json (vit.processor_kwargs(path) reads that file; note that the class
      defaults of VideoMAEImageProcessor are mean = std = 0.5, so always pass the checkpoint's values).

The model (transformers' modeling_videomae.py):
  - tubelet embedding: Conv3d, kernel = stride = (tubelet_size 2, patch 16, 16), tokens ordered
    (time, row, column); frames beyond a multiple of tubelet_size are dropped, as torch's conv drops them;
  - a FIXED sinusoidal position table (`get_sinusoid_encoding_table`: angle pos / 10000^(2 (j//2) / D),
    sin on even j, cos on odd j), added to the tokens; it is not a parameter and not in the checkpoint;
  - the pre-LN encoder of ViT/CLIP (clip.CLIPEncoder), except that the attention has q and v biases
    but NO k bias (`qv_bias`; stored as `attention.attention.q_bias` / `v_bias`);
  - use_mean_pooling (the Kinetics checkpoint): mean over all tokens -> fc_norm, a LayerNorm with
    torch's default eps 1e-5 (not layer_norm_eps) -> classifier. Otherwise: a final layernorm
    (layer_norm_eps) over the tokens and the classifier on the first token (VideoMAE has no cls token).

Frame count. The table has one row per token, (num_frames // tubelet_size) * (S // patch)^2 rows,
built from config.num_frames; nothing learned depends on the frame count. transformers handles a
different clip length only through the config: `from_pretrained(..., num_frames=6)` builds a
588-row table (3 x 196) instead of 1568 (8 x 196) and the same weights load. Since the table depends
only on the flat token index, the 6-frame table is the first 588 rows of the 16-frame one. brainjax
does the same: `load_videomae(path, num_frames=6)` (or a config with num_frames=6); inputs whose
token count differs from the config's are refused with a message saying so (transformers fails with
a broadcasting error). The classifier was fine-tuned on 16-frame clips, so 6-frame logits are outside
its training distribution; that is how the papers measured, and what this reproduces.
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

from brainjax.weights import checkpoint_io
from brainjax.weights import mapping as mp
from brainjax.models import clip, vit

Dtype = Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # MCG-NJU/videomae-base-finetuned-kinetics' preprocessor_config.json
IMAGENET_STD = (0.229, 0.224, 0.225)
FC_NORM_EPS = 1e-5  # VideoMAEForVideoClassification builds fc_norm as nn.LayerNorm(hidden_size): torch's default

# --------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class VideoMAEConfig:
  """transformers' VideoMAEConfig fields that define VideoMAEForVideoClassification (same defaults)."""
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  layer_norm_eps: float = 1e-12
  image_size: int = 224
  patch_size: int = 16
  num_channels: int = 3
  num_frames: int = 16
  tubelet_size: int = 2
  qv_bias: bool = True
  use_mean_pooling: bool = True
  id2label: tuple[str, ...] = ("LABEL_0", "LABEL_1")  # class names; num_labels = len(id2label)

  model_type: ClassVar[str] = "videomae"
  architecture: ClassVar[str] = "VideoMAEForVideoClassification"

  def __post_init__(self):
    object.__setattr__(self, "id2label", tuple(self.id2label))
    vit.check_config(self)
    for field in ("num_frames", "tubelet_size"):
      value = getattr(self, field)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"VideoMAEConfig.{field} = {value!r}: must be a positive integer.")
    if self.num_frames < self.tubelet_size:
      raise ValueError(f"VideoMAEConfig: num_frames {self.num_frames} is smaller than tubelet_size "
                       f"{self.tubelet_size}; a clip needs at least one tubelet.")

  @property
  def num_labels(self) -> int:
    return len(self.id2label)

  @property
  def num_patches(self) -> int:
    """Tokens per clip: (num_frames // tubelet_size) * (image_size // patch_size)^2."""
    return (self.num_frames // self.tubelet_size) * (self.image_size // self.patch_size) ** 2

  @classmethod
  def from_dict(cls, config: Mapping[str, Any]) -> VideoMAEConfig:
    """From a transformers config.json dict; an old `qkv_bias` entry means qv_bias, as transformers reads it."""
    config = dict(config)
    if "qkv_bias" in config and "qv_bias" not in config:
      config["qv_bias"] = config["qkv_bias"]
    return vit.config_from_dict(cls, config)

  def to_dict(self, dtype: str = "float32") -> dict[str, Any]:
    return vit.config_to_dict(self, dtype)


# --------------------------------------------------------------------------------------- modules


def sinusoid_table(num_positions: int, dim: int) -> np.ndarray:
  """transformers' get_sinusoid_encoding_table: [num_positions, dim], interleaved sin/cos, float64 -> float32."""
  pos = np.arange(num_positions, dtype=np.float64)[:, None]
  angles = pos / np.power(10000, 2 * (np.arange(dim) // 2) / dim)
  table = np.empty_like(angles)
  table[:, 0::2], table[:, 1::2] = np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])
  return table.astype(np.float32)


class VideoMAEEmbeddings(nn.Module):
  """Tubelet embedding (Conv3d) + the fixed sinusoidal position table for config.num_frames."""
  config: VideoMAEConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, frames: jax.Array) -> jax.Array:
    c = self.config
    x = vit.PatchEmbeddings(c.hidden_size, (c.tubelet_size, c.patch_size, c.patch_size), name="patch_embeddings",
                            dtype=self.dtype, param_dtype=self.param_dtype)(frames)
    return x + jnp.asarray(sinusoid_table(c.num_patches, c.hidden_size), x.dtype)


class VideoMAEModel(nn.Module):
  """transformers' VideoMAEModel: tubelet embedding + fixed position table, pre-LN encoder (+ layernorm)."""
  config: VideoMAEConfig
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, frames: jax.Array) -> jax.Array:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = VideoMAEEmbeddings(c, name="embeddings", **kw)(frames)
    x = nn.with_logical_constraint(x, ("act_batch", "act_tokens", "act_embed"))
    x = clip.CLIPEncoder(c, self.remat, qkv_bias=(c.qv_bias, False, c.qv_bias), name="encoder", **kw)(x)
    if not c.use_mean_pooling:
      x = clip._layer_norm(c.layer_norm_eps, "layernorm", **kw)(x)
    return x


class VideoMAEForVideoClassification(nn.Module):
  """transformers' VideoMAEForVideoClassification on channels-last clips [B, T, S, S, 3]."""
  config: VideoMAEConfig
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, frames: jax.Array) -> vit.ClassifierOutput:
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    _check_frames(frames, c)
    x = VideoMAEModel(c, self.remat, name="videomae", **kw)(frames)
    if c.use_mean_pooling:
      pooled = clip._layer_norm(FC_NORM_EPS, "fc_norm", **kw)(x.mean(axis=1))
    else:
      pooled = x[:, 0]
    return vit.ClassifierOutput(vit.classifier(c.num_labels, **kw)(pooled), pooled, x)

  def dummy_inputs(self) -> tuple[jax.Array, ...]:
    c = self.config
    return (jnp.zeros((1, c.num_frames, c.image_size, c.image_size, c.num_channels), jnp.float32),)


def _check_frames(frames: jax.Array, c: VideoMAEConfig) -> None:
  shape = (c.image_size, c.image_size, c.num_channels)
  if frames.ndim == 5 and tuple(frames.shape[2:]) == shape:
    t = frames.shape[1]
    if t // c.tubelet_size != c.num_frames // c.tubelet_size:
      raise ValueError(
          f"the clips have {t} frames but the VideoMAE config has num_frames = {c.num_frames} (tubelet_size "
          f"{c.tubelet_size}): the position table has {c.num_frames // c.tubelet_size} tubelets per clip, the "
          f"clips give {t // c.tubelet_size}. Load the model for this length with load_videomae(path, "
          f"num_frames={t}) (as transformers' from_pretrained(..., num_frames={t})).")
    return
  vit.check_pixels(frames, (c.num_frames, *shape), "the VideoMAE classifier", "preprocess_videos")


@functools.partial(jax.jit, static_argnums=0)
def classify_videos(module: VideoMAEForVideoClassification, params: Any, frames: jax.Array) -> vit.ClassifierOutput:
  """float [B, T, S, S, 3] normalised clips (preprocess_videos) -> vit.ClassifierOutput."""
  return module.apply({"params": params}, frames)


# --------------------------------------------------------------------------------------- weights


def videomae_table(config: VideoMAEConfig) -> mp.Table:
  """The weight table for this config (the q/v biases and the head depend on it)."""
  bias = dict(q_bias="q_bias", k_bias=None, v_bias="v_bias") if config.qv_bias else \
      dict(q_bias=None, k_bias=None, v_bias=None)
  head = ([*mp.norm("fc_norm", "fc_norm")] if config.use_mean_pooling
          else [*mp.norm("videomae.layernorm", "videomae/layernorm")])
  return mp.Table(rules=[
      *mp.conv("videomae.embeddings.patch_embeddings.projection", "videomae/embeddings/patch_embeddings/projection"),
      *vit.encoder_rules("videomae.encoder", "videomae/encoder", **bias),
      *head,
      *mp.linear("classifier", "classifier"),
  ])


def _canonical_keys(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """transformers >= 5 holds the q/v biases as `query.bias` / `value.bias` in memory and writes the hub's
  `q_bias` / `v_bias`; a file written with the in-memory names is read the same way."""
  out = {}
  for key, value in state_dict.items():
    for mem, hub in ((".attention.attention.query.bias", ".attention.attention.q_bias"),
                     (".attention.attention.value.bias", ".attention.attention.v_bias")):
      if key.endswith(mem):
        key = key[:-len(mem)] + hub
    out[key] = value
  return out


_WHAT = ("a transformers VideoMAEForVideoClassification checkpoint directory with config.json and model.safetensors "
         "(e.g. MCG-NJU/videomae-base-finetuned-kinetics)")


def load_videomae(path: str | epath.PathLike, *, num_frames: int | None = None, remat: bool = False,
                  dtype: Dtype = jnp.float32,
                  param_dtype: Dtype = jnp.float32) -> tuple[VideoMAEForVideoClassification, Any]:
  """(module, params) from a transformers VideoMAEForVideoClassification directory (local or gs://).

  num_frames overrides the config's clip length, as transformers' `from_pretrained(path,
  num_frames=6)` in MinD-Video's video_classify_metric (see the module docstring).
  """
  ckpt = checkpoint_io.read_checkpoint(path, _WHAT, weights_names=(checkpoint_io.TRANSFORMERS_WEIGHTS,))
  entries = dict(ckpt.config)
  if num_frames is not None:
    entries["num_frames"] = num_frames
  config = VideoMAEConfig.from_dict(entries)
  module = VideoMAEForVideoClassification(config, remat=remat, dtype=dtype, param_dtype=param_dtype)
  params = videomae_table(config).to_flax(_canonical_keys(ckpt.state_dict), vit.abstract_params(module),
                                          origin=ckpt.origin)
  return module, jax.tree.map(lambda x: jnp.asarray(x, param_dtype), params)


def save_videomae(path: str | epath.PathLike, config: VideoMAEConfig | VideoMAEForVideoClassification,
                  params: Any) -> epath.Path:
  """Writes config.json + model.safetensors for transformers' VideoMAEForVideoClassification.from_pretrained."""
  config, params = vit.unwrap(config, params)
  state_dict = videomae_table(config).to_torch(params)
  dtype = str(np.asarray(next(iter(state_dict.values()))).dtype)
  return checkpoint_io.write_checkpoint(path, config.to_dict(dtype), state_dict)


# --------------------------------------------------------------------------------------- preprocessing


def preprocess_videos(videos: Any, size: int = 224, crop: int = 224, *, mean: tuple[float, ...] = IMAGENET_MEAN,
                      std: tuple[float, ...] = IMAGENET_STD, method: str = "bilinear") -> jax.Array:
  """uint8 RGB clips [T, H, W, 3] or [B, T, H, W, 3] -> normalised float32 [B, T, crop, crop, 3].

  VideoMAEImageProcessor, frame by frame: resize the shortest edge to `size` (the long side truncated,
  as transformers' get_resize_output_image_size) with PIL's bilinear filter, bit-exact
  (vit.pil_resize), center crop, /255, normalise. Defaults are
  MCG-NJU/videomae-base-finetuned-kinetics' preprocessor_config.json (vit.processor_kwargs(path)
  reads another checkpoint's).
  """
  videos = jnp.asarray(videos)
  if videos.ndim == 4:
    videos = videos[None]
  if videos.ndim != 5 or videos.shape[-1] != len(mean):
    raise ValueError(f"preprocess_videos: videos have shape {tuple(videos.shape)}; expected [T, H, W, {len(mean)}] "
                     f"or [B, T, H, W, {len(mean)}] RGB values in 0..255.")
  resized = clip.resized_shape(videos.shape[2], videos.shape[3], size)
  if min(resized) < crop:
    raise ValueError(f"preprocess_videos: crop {crop} is larger than the resized frames {resized}; use crop <= size.")
  return vit.crop_normalize(vit.pil_resize(videos, resized, method), crop, tuple(mean), tuple(std))
