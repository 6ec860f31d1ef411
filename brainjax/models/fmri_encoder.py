"""MinD-Video's windowed spatio-temporal fMRI encoder and its projection head.

Input: a window of w consecutive volumes [B, w, V]. Every volume is cut into
patches and embedded exactly as in the MBM encoder (so an MBM checkpoint
initialises it). Each block then runs

  spatial attention   over the N patches of each volume        [B*w, N, D]
  temporal attention  over the w volumes at each patch position [B*N, w, D]
                      (new `attn_temp` / `norm_temp`; no temporal position
                      embedding, as in MindVideo's BlockTemp)
  MLP

and the tokens of all volumes are concatenated: [B, w*N, D]. With w = 1 the
temporal attention is skipped, so the encoder *is* the MBM encoder (MindVideo
uses plain blocks then).

The projection head maps [B, w*N, D] to the diffusion condition [B, 77, 768]:
a bias-free linear map over the token axis (w*N -> 77), a bias-free D -> 768
projection, then GELU -> linear -> dropout added back residually, and an
optional layer norm. `pooled` (mean over the 77 tokens) is the embedding the
contrastive losses use.

`readout_rank` > 0 adds brainjax's caption readout (not in MindVideo): a rank-r
linear map from the fMRI window itself, flattened, to the whole condition,
added to the head's output. The head above is bilinear (one token mix, one
shared projection), so it cannot give each of the 77 positions its own function
of the fMRI, which is what a text encoder's hidden states are; the readout can.
It reads the voxels rather than the encoder's tokens because a linear map keeps
more of the caption there (demo, held-out relative error of ridge onto the
caption hidden states: 0.62 from the voxels, 0.73 from align's tokens) and
because its input stays window x voxels wide at the paper's sizes, where the
tokens are window x patches x 1024. `readout_out` starts at zero, so the head
is MindVideo's until the readout is trained or fitted (cotrain's
`readout_fit`: reduced-rank ridge onto the captions' hidden states).

Padded examples (a multi-dataset mixture): with `num_voxels` [B] (each
example's real voxel count) the voxels past it are zeroed, the spatial
attention never reads padding patches, and their output tokens are zero, so
the head's token-axis map never sees them: the output does not depend on
what the padding holds.

`FmriAligner` is the trained fMRI model every later stage reads: encoder + head,
plus (with `clip_dim` > 0) the bias-free projection of the pooled condition into
CLIP space and the contrastive temperature. It is one artifact kind,
`fmri_encoder` (`save` / `load`): stage `align` writes it, `cotrain` writes it
back, and `python -m brainjax.convert.mbm encoder-import` writes a MindVideo
encoder as the same kind (without the CLIP projection, which MindVideo's
release lacks), so either feeds `cotrain` and `evaluate` as it is.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from brainjax import artifacts, ridge
from brainjax.models import layers, mbm
from brainjax.weights import mapping as mp
from brainjax.weights import params as params_lib


class SpatioTemporalBlock(nn.Module):
  num_heads: int
  window: int
  mlp_ratio: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm_eps: float = layers.DEFAULT_NORM_EPS

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    """x: [B*w, N, D]; key_mask [B*w, N]: patches the spatial attention may read (None: all)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm_kw = dict(kw, eps=self.norm_eps)
    bw, n, d = x.shape
    x = x + layers.Attention(self.num_heads, name="attn", **kw)(layers.layer_norm("norm1", **norm_kw)(x), key_mask)
    if self.window > 1:
      b = bw // self.window
      t = x.reshape(b, self.window, n, d).transpose(0, 2, 1, 3).reshape(b * n, self.window, d)
      t = t + layers.Attention(self.num_heads, name="attn_temp", **kw)(layers.layer_norm("norm_temp", **norm_kw)(t))
      x = t.reshape(b, n, self.window, d).transpose(0, 2, 1, 3).reshape(bw, n, d)
    x = x + layers.Mlp(int(d * self.mlp_ratio), name="mlp", **kw)(layers.layer_norm("norm2", **norm_kw)(x))
    return nn.with_logical_constraint(x, ("act_batch", "act_tokens", "act_embed"))


class SpatioTemporalStack(nn.Module):
  """`depth` blocks named like the MBM encoder's (`block_{i}`), so MBM weights drop in."""
  depth: int
  num_heads: int
  window: int
  mlp_ratio: float = 1.0
  remat: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm_eps: float = layers.DEFAULT_NORM_EPS

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    block = nn.remat(SpatioTemporalBlock) if self.remat else SpatioTemporalBlock
    for i in range(self.depth):
      x = block(self.num_heads, self.window, self.mlp_ratio, self.dtype, self.param_dtype, self.norm_eps,
                name=f"block_{i}")(x, key_mask)
    return x


def init_from_mbm(encoder_params: dict, mbm_params: dict) -> dict:
  """Encoder params with every weight the MBM encoder has replaced by the MBM's.

  The temporal attention (`attn_temp`, `norm_temp`) keeps its initialisation;
  the MBM decoder, cls and mask tokens are not used.
  """
  shared = ("patch_embed", "encoder", "encoder_norm")
  missing = [k for k in shared if k not in mbm_params]
  if missing:
    raise ValueError(f"not an MBM parameter tree: {missing} missing")
  return params_lib.overlay(encoder_params, {k: mbm_params[k] for k in shared},
                            hint="the MBM and encoder configs (embed_dim, patch_size, mlp_ratio) differ")


class FmriEncoder(nn.Module):
  """[B, w, V] -> tokens [B, w*N, D]."""
  num_voxels: int
  window: int = 2
  patch_size: int = 16
  embed_dim: int = 1024
  depth: int = 24
  num_heads: int = 16
  mlp_ratio: float = 1.0
  remat: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm_eps: float = layers.DEFAULT_NORM_EPS
  num_subjects: int = 0    # > 0: per-subject patch embeddings (see layers.PatchEmbed)

  @property
  def num_patches(self) -> int:
    return self.num_voxels // self.patch_size

  @nn.compact
  def __call__(self, fmri: jax.Array, token_transform=None, subject: jax.Array | None = None,
               num_voxels: jax.Array | None = None) -> jax.Array:
    """`token_transform` maps the embedded tokens [B, w, N, D] before the blocks
    (NeuralFlix's spatial masking and temporal interpolation act there).
    `num_voxels` [B]: real voxel counts of padded examples (see the module docstring)."""
    b, w, v = fmri.shape
    if w != self.window or v != self.num_voxels:
      raise ValueError(f"expected fMRI windows [B, {self.window}, {self.num_voxels}], got {fmri.shape}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    key_mask = None
    if num_voxels is not None:
      voxel_valid, patch_valid = layers.valid_voxels(num_voxels, v, self.patch_size)
      fmri = jnp.where(voxel_valid[:, None], fmri, 0)
      key_mask = jnp.repeat(patch_valid, w, axis=0)  # [B*w, N], volume-major like the tokens
    patches = layers.patchify(fmri.reshape(b * w, v), self.patch_size)
    per_volume = None if subject is None else jnp.repeat(subject, w)
    x = layers.PatchEmbed(self.embed_dim, self.num_subjects, name="patch_embed", **kw)(
        patches.astype(self.dtype), per_volume)
    x = x + jnp.asarray(layers.sincos_1d(self.num_patches, self.embed_dim), self.dtype)[None]
    if token_transform is not None:
      x = token_transform(x.reshape(b, w, self.num_patches, self.embed_dim)).reshape(b * w, self.num_patches, -1)
    x = SpatioTemporalStack(self.depth, self.num_heads, self.window, self.mlp_ratio, self.remat, name="encoder",
                            norm_eps=self.norm_eps, **kw)(x, key_mask)
    x = layers.layer_norm("encoder_norm", eps=self.norm_eps, **kw)(x)
    if key_mask is not None:
      x = jnp.where(key_mask[..., None], x, 0).astype(x.dtype)
    return x.reshape(b, w * self.num_patches, self.embed_dim)


class ProjectionHead(nn.Module):
  """Tokens [B, T, D] -> condition [B, out_tokens, out_dim] (MindVideo's ProjectionHead)."""
  out_tokens: int = 77
  out_dim: int = 768
  dropout: float = 0.0
  use_norm: bool = False
  readout_rank: int = 0    # > 0: the caption readout (module docstring)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm_eps: float = layers.DEFAULT_NORM_EPS

  @nn.compact
  def __call__(self, tokens: jax.Array, fmri: jax.Array | None = None, *, deterministic: bool = True) -> jax.Array:
    """tokens [B, T, D] (the encoder's); fmri [B, w, V], the window the readout reads (with readout_rank > 0)."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # A linear map over the token axis: each output token mixes all input tokens.
    mapped = layers.dense(self.out_tokens, (None, None), use_bias=False, name="channel_mapper", **kw)(
        tokens.swapaxes(1, 2)).swapaxes(1, 2)
    projected = layers.dense(self.out_dim, ("embed", None), use_bias=False, name="projection", **kw)(mapped)
    h = layers.dense(self.out_dim, (None, None), use_bias=False, name="fc", **kw)(nn.gelu(projected, approximate=False))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    out = projected + h
    if self.use_norm:
      out = layers.layer_norm("layer_norm", eps=self.norm_eps, **kw)(out)
    if self.readout_rank:
      if fmri is None:
        raise ValueError("ProjectionHead with readout_rank > 0 reads the fMRI window: pass `fmri`.")
      low = layers.dense(self.readout_rank, (None, None), use_bias=False, name="readout_in", **kw)(
          fmri.reshape(fmri.shape[0], -1).astype(self.dtype))
      full = layers.dense(self.out_tokens * self.out_dim, (None, None), zero_init=True, name="readout_out",
                          **kw)(low)
      out = out + full.reshape(out.shape)
    return out


def fit_readout(head: ProjectionHead, params: dict, fmri: Any, residual: Any, alpha: float) -> dict:
  """`params` (the head's) with the caption readout fitted in closed form.

  fmri [n, w, V] (n training windows) -> residual [n, out_tokens, out_dim] (what the head's
  output without the readout misses of the target): ridge regression on standardised
  voxels (brainjax.ridge), factorised at `head.readout_rank` (reduced-rank ridge);
  the standardisation is folded into `readout_in`, the intercept into `readout_out`'s bias.
  With fewer than `readout_rank` windows the extra rank stays zero.
  """
  if not head.readout_rank:
    raise ValueError("fit_readout: the head has no caption readout (readout_rank = 0).")
  fmri, residual = np.asarray(fmri), np.asarray(residual)
  if residual.shape[1:] != (head.out_tokens, head.out_dim) or len(residual) != len(fmri):
    raise ValueError(f"fit_readout: targets {residual.shape} do not match {len(fmri)} windows of "
                     f"[{head.out_tokens}, {head.out_dim}] conditions.")
  fitted = ridge.fit_ridge(fmri.reshape(len(fmri), -1), residual.reshape(len(residual), -1), alpha)
  w_in, w_out, bias = fitted.low_rank(min(head.readout_rank, len(fmri)))
  pad = head.readout_rank - w_in.shape[1]  # the fitted map's rank can be below readout_rank (few windows)
  dtype = params["readout_in"]["kernel"].dtype
  return dict(params,
              readout_in={"kernel": jnp.asarray(np.pad(w_in, ((0, 0), (0, pad))), dtype)},
              readout_out={"kernel": jnp.asarray(np.pad(w_out, ((0, pad), (0, 0))), dtype),
                           "bias": jnp.asarray(bias, dtype)})


class WindowedFmriModel(nn.Module):
  """Encoder + head; returns the 77-token condition and its pooled embedding."""
  encoder: FmriEncoder
  head: ProjectionHead

  def __call__(self, fmri: jax.Array, *, deterministic: bool = True) -> dict[str, jax.Array]:
    condition = self.head(self.encoder(fmri), fmri, deterministic=deterministic)
    return {"condition": condition, "pooled": condition.mean(axis=1)}


class FmriAligner(nn.Module):
  """Encoder + head (+ the CLIP projection `to_clip` when `clip_dim` > 0): the trained fMRI model.

  Returns the condition [B, out_tokens, out_dim], its CLIP-space embedding `embed`
  [B, clip_dim] (None without a projection) and the contrastive logit `scale`.
  """
  encoder: FmriEncoder
  head: ProjectionHead
  clip_dim: int = 0
  temperature: float = 0.07
  learn_temperature: bool = True

  @nn.compact
  def __call__(self, fmri: jax.Array, *, deterministic: bool = True, token_transform=None,
               subject: jax.Array | None = None, num_voxels: jax.Array | None = None):
    tokens = self.encoder(fmri, token_transform, subject, num_voxels)
    if num_voxels is not None:  # the caption readout reads the voxels: padding must not reach it either
      voxel_valid, _ = layers.valid_voxels(num_voxels, fmri.shape[-1], self.encoder.patch_size)
      fmri = jnp.where(voxel_valid[:, None], fmri, 0)
    condition = self.head(tokens, fmri, deterministic=deterministic)
    embed = None
    if self.clip_dim:
      embed = nn.Dense(self.clip_dim, use_bias=False, name="to_clip")(condition.mean(axis=1))
    if self.learn_temperature:
      log_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / self.temperature)), ())
      scale = jnp.exp(jnp.minimum(log_scale, np.log(100.0)))
    else:
      scale = 1.0 / float(self.temperature)
    return {"embed": embed, "condition": condition, "scale": scale}


KIND = "fmri_encoder"
LEGACY_KINDS = ("fmri_aligner",)  # workdirs written before the encoder had one artifact kind
# What a model.json records of each part: what rebuilds the module (compute dtypes are run-time choices).
ENCODER_FIELDS = ("num_voxels", "window", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "norm_eps")
ENCODER_OPTIONAL_FIELDS = ("num_subjects", "remat")  # written when not the default (older files lack them)
HEAD_FIELDS = ("out_tokens", "out_dim", "dropout", "use_norm", "norm_eps")
HEAD_OPTIONAL_FIELDS = ("readout_rank",)


def model_meta(model: FmriAligner | WindowedFmriModel) -> dict[str, Any]:
  """The `model.json` fields that rebuild `model` (`build`): kind, encoder, head and, for an
  FmriAligner with a CLIP projection, clip_dim and the temperature."""
  def fields(module, names, optional):
    out = {n: getattr(module, n) for n in names}
    defaults = type(module).__dataclass_fields__
    out.update({n: getattr(module, n) for n in optional if getattr(module, n) != defaults[n].default})
    return out
  meta = {"kind": KIND, "encoder": fields(model.encoder, ENCODER_FIELDS, ENCODER_OPTIONAL_FIELDS),
          "head": fields(model.head, HEAD_FIELDS, HEAD_OPTIONAL_FIELDS)}
  if isinstance(model, FmriAligner) and model.clip_dim:
    meta.update(clip_dim=model.clip_dim, temperature=model.temperature, learn_temperature=model.learn_temperature)
  return meta


def aligner(encoder: dict, head: dict, *, num_voxels: int, window: int, clip_dim: int = 0, num_subjects: int = 0,
            temperature: float = 0.07, learn_temperature: bool = True) -> FmriAligner:
  """An FmriAligner from its parts' settings (`encoder`: FmriEncoder fields less num_voxels / window /
  num_subjects, with `per_subject_patch_embed` choosing whether `num_subjects` rows are made)."""
  encoder = dict(encoder)
  per_subject = encoder.pop("per_subject_patch_embed", False)
  return FmriAligner(FmriEncoder(num_voxels=num_voxels, window=window,
                                 num_subjects=num_subjects if per_subject else 0, **encoder),
                     ProjectionHead(**head), clip_dim, temperature, learn_temperature)


def build(meta: dict[str, Any]) -> FmriAligner:
  """The FmriAligner a `model.json` describes (kind `fmri_encoder`; older `fmri_aligner` files too)."""
  kind = meta.get("kind")
  if kind in LEGACY_KINDS:  # the align stage's config and the data's sizes
    stage = meta["align"]
    return aligner(stage["encoder"], stage["head"], num_voxels=meta["num_voxels"], window=meta["window"],
                   clip_dim=meta["clip_dim"], num_subjects=len(meta.get("subject_table") or [None]),
                   temperature=stage["temperature"], learn_temperature=stage["learn_temperature"])
  if kind != KIND:
    raise artifacts.ArtifactError(f"model.json kind {kind!r}: expected {KIND!r} (an fMRI encoder).")
  clip_dim = int(meta.get("clip_dim", 0))
  return FmriAligner(FmriEncoder(**meta["encoder"]), ProjectionHead(**meta["head"]), clip_dim,
                     float(meta.get("temperature", 0.07)), bool(meta.get("learn_temperature", False)) and clip_dim > 0)


def load(directory) -> tuple[FmriAligner, dict, dict]:
  """(FmriAligner, params, model.json) of an `fmri_encoder` artifact: trained by align / cotrain or imported."""
  params, meta = artifacts.load_params(directory, kinds=(KIND, *LEGACY_KINDS))
  return build(meta), params, meta


def save(directory, model: FmriAligner | WindowedFmriModel, params: Any, **extra: Any) -> None:
  """Writes an `fmri_encoder` artifact: `params/` and `model.json` (`model_meta` plus `extra`)."""
  artifacts.save_params(directory, params, {**model_meta(model), **extra})


# ------------------------------------------------------------------------------ MindVideo weights
# `FMRI_ENCODER_TABLE`: MindVideo `fMRIEncoder` state dict <-> the encoder + head params, both directions
# (brainjax.convert.mbm reads and writes the folders):
#   patch_embed.proj, blocks.{i}.{norm1,attn,norm_temp,attn_temp,norm2,mlp}, norm  -> encoder/...
#   proj_head.{channel_mapper,projection,fc} (no bias), proj_head.layer_norm      -> head/...
#   pos_embed (checked), cls_token, mask_token, logit_scale: present in MindVideo's module but unused by
#   its forward pass; brainjax has no such params, so they are dropped on load and written on export.
FMRI_ENCODER_TABLE = mp.Table(
    rules=[
        *mbm.torch_patch_rules("encoder/patch_embed"),
        *mbm.torch_block_rules("blocks", "encoder/encoder", temporal=True),
        *mp.norm("norm", "encoder/encoder_norm"),
        *mp.linear("proj_head.{p:channel_mapper|projection|fc}", "head/{p:channel_mapper|projection|fc}",
                   bias=False),
        *mp.norm("proj_head.layer_norm", "head/layer_norm"),
    ],
    skip=[
        "pos_embed",  # fixed sin-cos buffer, checked by _check_positions
        # In MindVideo's module but unused by its forward pass (no cls token is prepended, nothing is
        # masked, logit_scale is for the unreleased contrastive stage); written back on export.
        "cls_token", "mask_token", "logit_scale",
    ])
