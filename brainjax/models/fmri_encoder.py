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
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from brainjax import ridge
from brainjax.models import layers
from brainjax.models import params as params_lib


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
