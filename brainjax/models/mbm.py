"""Masked brain modelling (MBM): a masked autoencoder over the 1-D voxel vector.

MinD-Vis / MinD-Video SC-MBM: the voxel vector is cut into patches of 16
voxels, each patch is embedded (a Conv1d with stride = kernel = patch, i.e. a
Dense on the patch), fixed 1-D sin-cos positions are added, 75% of the patches
are dropped at random per sample, a ViT encodes the rest (with a cls token),
a lighter decoder fills mask tokens back in and predicts the voxels of every
patch, and the loss is the MSE on the masked patches only.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from brainjax.models import layers


class MaskedBrainModel(nn.Module):
  num_voxels: int
  patch_size: int = 16
  embed_dim: int = 1024
  depth: int = 24
  num_heads: int = 16
  mlp_ratio: float = 1.0
  decoder_embed_dim: int = 512
  decoder_depth: int = 8
  decoder_num_heads: int = 16
  decoder_mlp_ratio: float = 1.0
  mask_ratio: float = 0.75
  remat: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  norm_eps: float = layers.DEFAULT_NORM_EPS
  num_subjects: int = 0    # > 0: per-subject patch embeddings (see layers.PatchEmbed)

  @property
  def num_patches(self) -> int:
    return self.num_voxels // self.patch_size

  def setup(self):
    if self.num_voxels % self.patch_size:
      raise ValueError(f"num_voxels {self.num_voxels} must be a multiple of patch_size {self.patch_size}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm_kw = dict(kw, eps=self.norm_eps)
    self.patch_embed = layers.PatchEmbed(self.embed_dim, self.num_subjects, name="patch_embed", **kw)
    self.cls_token = self.param("cls_token", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, None, "embed")), (1, 1, self.embed_dim), self.param_dtype)
    self.encoder = layers.Stack(self.depth, self.num_heads, self.mlp_ratio, self.remat, name="encoder",
                                norm_eps=self.norm_eps, **kw)
    self.encoder_norm = layers.layer_norm("encoder_norm", **norm_kw)
    self.decoder_embed = layers.dense(self.decoder_embed_dim, ("embed", None), name="decoder_embed", **kw)
    self.mask_token = self.param("mask_token", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), (None, None, "embed")), (1, 1, self.decoder_embed_dim), self.param_dtype)
    self.decoder = layers.Stack(self.decoder_depth, self.decoder_num_heads, self.decoder_mlp_ratio, self.remat,
                                name="decoder", norm_eps=self.norm_eps, **kw)
    self.decoder_norm = layers.layer_norm("decoder_norm", **norm_kw)
    self.decoder_pred = layers.dense(self.patch_size, ("embed", "patch"), name="decoder_pred", **kw)

  def encode(self, voxels: jax.Array, *, mask_rng: jax.Array | None = None, mask_ratio: float | None = None,
             with_cls: bool = True, subject: jax.Array | None = None):
    """[B, V] -> (tokens [B, 1 + kept, D], restore permutation or None).

    Without `mask_rng` nothing is masked. `with_cls=False` drops the cls token,
    which is how MindVideo's encoder reads an MBM checkpoint (and what a window-1
    `FmriEncoder` computes).
    """
    patches = layers.patchify(voxels, self.patch_size).astype(self.dtype)
    positions = jnp.broadcast_to(jnp.asarray(layers.sincos_1d(self.num_patches, self.embed_dim), self.dtype)[None],
                                 (patches.shape[0], self.num_patches, self.embed_dim))
    restore = None
    if mask_rng is not None:
      ratio = self.mask_ratio if mask_ratio is None else mask_ratio
      num_keep = layers.num_kept(self.num_patches, ratio)
      keep, restore = layers.keep_indices(mask_rng, patches.shape[0], self.num_patches, num_keep)
      # Dropping patches before embedding them gives the same tokens as MAE's embed-then-drop (the
      # embedding and the positions act per patch) for a quarter of the work, and the gather acts on
      # inputs and constants, so its backward pass (a scatter) disappears.
      patches, positions = layers.take_tokens(patches, keep), layers.take_tokens(positions, keep)
    x = self.patch_embed(patches, subject) + positions
    if with_cls:
      cls = jnp.broadcast_to(self.cls_token.astype(self.dtype), (x.shape[0], 1, self.embed_dim))
      x = jnp.concatenate([cls, x], axis=1)
    x = self.encoder_norm(self.encoder(x))
    return x, restore

  def decode(self, tokens: jax.Array, restore: jax.Array) -> jax.Array:
    """Encoder tokens of the kept patches -> predicted voxels per patch [B, N, patch]."""
    x = self.decoder_embed(tokens)
    b, kept = x.shape[0], x.shape[1] - 1
    masks = jnp.broadcast_to(self.mask_token.astype(self.dtype), (b, self.num_patches - kept, x.shape[-1]))
    body = layers.take_tokens(jnp.concatenate([x[:, 1:], masks], axis=1), restore)  # back to patch order
    body = body + jnp.asarray(layers.sincos_1d(self.num_patches, self.decoder_embed_dim), self.dtype)[None]
    x = jnp.concatenate([x[:, :1], body], axis=1)
    x = self.decoder_norm(self.decoder(x))
    return self.decoder_pred(x[:, 1:]).astype(jnp.float32)

  def __call__(self, voxels: jax.Array, mask_rng: jax.Array, subject: jax.Array | None = None) -> dict[str, jax.Array]:
    """Masked reconstruction: predictions, targets, the mask (1 = masked) and the loss."""
    tokens, restore = self.encode(voxels, mask_rng=mask_rng, subject=subject)
    pred = self.decode(tokens, restore)
    target = layers.patchify(voxels, self.patch_size).astype(jnp.float32)
    kept = tokens.shape[1] - 1
    mask = (restore >= kept).astype(jnp.float32)  # positions after the kept ones in shuffled order
    return {"pred": pred, "target": target, "mask": mask, "loss": masked_mse(pred, target, mask)}


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over masked patches of the per-patch MSE (MAE's loss); visible patches do not count."""
  per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def model_config(**overrides: Any) -> ml_collections.ConfigDict:
  """MinD-Vis / MinD-Video SC-MBM sizes: encoder 24 x 1024, 16 heads; decoder 8 x 512, 16 heads; mlp ratio 1.0 in both (MAEforFMRI shares it)."""
  base = dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=1.0, decoder_embed_dim=512,
              decoder_depth=8, decoder_num_heads=16, decoder_mlp_ratio=1.0, mask_ratio=0.75, remat=False,
              # Subjects with different voxel counts are wrap-padded to one length (MinD-Video);
              # True also gives each subject its own patch embedding (see layers.PatchEmbed).
              per_subject_patch_embed=False,
              dtype="float32", norm_eps=layers.DEFAULT_NORM_EPS)
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def build(model: ml_collections.ConfigDict, num_voxels: int, num_subjects: int = 0) -> MaskedBrainModel:
  """`num_subjects`: how many subjects the dataset has (used when per_subject_patch_embed is set)."""
  kwargs = model.to_dict()
  dtype = jnp.dtype(kwargs.pop("dtype"))
  per_subject = kwargs.pop("per_subject_patch_embed", False)
  return MaskedBrainModel(num_voxels=num_voxels, dtype=dtype, num_subjects=num_subjects if per_subject else 0,
                          **kwargs)
