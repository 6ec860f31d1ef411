"""Masked brain modelling (MBM): a masked autoencoder over the 1-D voxel vector.

MinD-Vis / MinD-Video SC-MBM: the voxel vector is cut into patches of 16
voxels, each patch is embedded (a Conv1d with stride = kernel = patch, i.e. a
Dense on the patch), fixed 1-D sin-cos positions are added, 75% of the patches
are dropped at random per sample, a ViT encodes the rest (with a cls token),
a lighter decoder fills mask tokens back in and predicts the voxels of every
patch, and the loss is the MSE on the masked patches only.

Padded examples (a multi-dataset mixture, Brain Netflix): `num_voxels` [B]
gives each example's real voxel count; the rest of the vector is padding.
The model then zeroes the padding, draws each example's mask over its real
patches only (mask_ratio of *its* patches), hides padding and dropped slots
from every attention, and leaves padding out of the loss (per-patch MSE over
the patch's real voxels, averaged over masked real patches). The result is
independent of what the padding holds and of how much of it there is (see
tests/models/test_mbm.py). Without `num_voxels` every voxel counts, as in MinD-Vis
(wrap padding is data there).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from brainjax.models import layers
from brainjax.weights import mapping as mp


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
             with_cls: bool = True, subject: jax.Array | None = None, num_voxels: jax.Array | None = None):
    """[B, V] -> (tokens [B, 1 + kept, D], restore permutation or None).

    Without `mask_rng` nothing is masked. `with_cls=False` drops the cls token,
    which is how MindVideo's encoder reads an MBM checkpoint (and what a window-1
    `FmriEncoder` computes). With `num_voxels` ([B] real voxel counts) the
    tokens of padding and of dropped slots are zero (see the module docstring).
    """
    out = self._encode(voxels, mask_rng, mask_ratio, with_cls, subject, num_voxels)
    return out["tokens"], out["restore"]

  def _encode(self, voxels, mask_rng, mask_ratio, with_cls, subject, num_voxels) -> dict[str, Any]:
    b = voxels.shape[0]
    voxel_valid = patch_valid = None
    if num_voxels is not None:
      voxel_valid, patch_valid = layers.valid_voxels(num_voxels, self.num_voxels, self.patch_size)
      voxels = jnp.where(voxel_valid, voxels, 0)
    patches = layers.patchify(voxels, self.patch_size).astype(self.dtype)
    positions = jnp.broadcast_to(jnp.asarray(layers.sincos_1d(self.num_patches, self.embed_dim), self.dtype)[None],
                                 (b, self.num_patches, self.embed_dim))
    restore = slot_ok = num_keep = None
    token_ok = patch_valid
    if mask_rng is not None:
      ratio = self.mask_ratio if mask_ratio is None else mask_ratio
      num_keep = layers.num_kept(self.num_patches, ratio)
      if patch_valid is None:
        keep, restore = layers.keep_indices(mask_rng, b, self.num_patches, num_keep)
      else:
        # Padding sorts last (noise 2 > any draw), so the first slots hold real patches; each example
        # keeps num_kept(its real patches) of them, and the remaining slots of the static `num_keep`
        # are dropped: hidden from attention and treated as masked.
        noise = jnp.where(patch_valid, layers.mask_noise(mask_rng, b, self.num_patches), 2.0)
        keep, restore = layers.keep_indices_from_noise(noise, num_keep)
        table = np.asarray([layers.num_kept(n, ratio) for n in range(self.num_patches + 1)], np.int32)
        num_keep = jnp.asarray(table)[patch_valid.sum(axis=1)]  # [B]
        slot_ok = jnp.arange(keep.shape[1])[None] < num_keep[:, None]
        token_ok = slot_ok
      # Dropping patches before embedding them gives the same tokens as MAE's embed-then-drop (the
      # embedding and the positions act per patch) for a quarter of the work, and the gather acts on
      # inputs and constants, so its backward pass (a scatter) disappears.
      patches, positions = layers.take_tokens(patches, keep), layers.take_tokens(positions, keep)
    x = self.patch_embed(patches, subject) + positions
    key_mask = token_ok
    if with_cls:
      cls = jnp.broadcast_to(self.cls_token.astype(self.dtype), (x.shape[0], 1, self.embed_dim))
      x = jnp.concatenate([cls, x], axis=1)
      if token_ok is not None:
        key_mask = jnp.concatenate([jnp.ones((b, 1), bool), token_ok], axis=1)
    x = self.encoder_norm(self.encoder(x, key_mask))
    if key_mask is not None:
      x = jnp.where(key_mask[..., None], x, 0).astype(x.dtype)
    return {"tokens": x, "restore": restore, "slot_ok": slot_ok, "num_keep": num_keep,
            "patch_valid": patch_valid, "voxel_valid": voxel_valid, "voxels": voxels}

  def decode(self, tokens: jax.Array, restore: jax.Array, slot_ok: jax.Array | None = None,
             patch_valid: jax.Array | None = None) -> jax.Array:
    """Encoder tokens of the kept patches -> predicted voxels per patch [B, N, patch].

    `slot_ok` [B, kept]: kept slots that count (others become mask tokens);
    `patch_valid` [B, N]: real patches (padding is hidden from the decoder's attention).
    """
    x = self.decoder_embed(tokens)
    b, kept = x.shape[0], x.shape[1] - 1
    masks = jnp.broadcast_to(self.mask_token.astype(self.dtype), (b, self.num_patches - kept, x.shape[-1]))
    visible = x[:, 1:]
    if slot_ok is not None:
      visible = jnp.where(slot_ok[..., None], visible, self.mask_token.astype(self.dtype))
    body = layers.take_tokens(jnp.concatenate([visible, masks], axis=1), restore)  # back to patch order
    body = body + jnp.asarray(layers.sincos_1d(self.num_patches, self.decoder_embed_dim), self.dtype)[None]
    x = jnp.concatenate([x[:, :1], body], axis=1)
    key_mask = None if patch_valid is None else jnp.concatenate([jnp.ones((b, 1), bool), patch_valid], axis=1)
    x = self.decoder_norm(self.decoder(x, key_mask))
    return self.decoder_pred(x[:, 1:]).astype(jnp.float32)

  def __call__(self, voxels: jax.Array, mask_rng: jax.Array, subject: jax.Array | None = None,
               num_voxels: jax.Array | None = None) -> dict[str, jax.Array]:
    """Masked reconstruction: predictions, targets, the mask (1 = masked) and the loss.

    `num_voxels` [B]: each example's real voxel count (padding never counts; see the module docstring).
    """
    enc = self._encode(voxels, mask_rng, None, True, subject, num_voxels)
    tokens, restore = enc["tokens"], enc["restore"]
    pred = self.decode(tokens, restore, enc["slot_ok"], enc["patch_valid"])
    target = layers.patchify(enc["voxels"], self.patch_size).astype(jnp.float32)
    if num_voxels is None:
      kept = tokens.shape[1] - 1
      mask = (restore >= kept).astype(jnp.float32)  # positions after the kept ones in shuffled order
      return {"pred": pred, "target": target, "mask": mask, "loss": masked_mse(pred, target, mask)}
    # Positions at or after the example's own keep count in shuffled order, among its real patches.
    mask = ((restore >= enc["num_keep"][:, None]) & enc["patch_valid"]).astype(jnp.float32)
    valid = layers.patchify(enc["voxel_valid"], self.patch_size).astype(jnp.float32)
    return {"pred": pred, "target": target, "mask": mask, "valid": valid,
            "loss": masked_mse(pred, target, mask, valid)}


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Mean over masked patches of the per-patch MSE (MAE's loss); visible patches do not count.

  `valid` [B, N, patch] (1 = real voxel): the per-patch MSE averages the real
  voxels only, so padding never enters the loss.
  """
  if valid is None:
    per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
  else:
    per_patch = jnp.sum(jnp.square(pred - target) * valid, axis=-1) / jnp.maximum(jnp.sum(valid, axis=-1), 1.0)
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


# ------------------------------------------------------------------------------ MinD-Vis weights
# `MBM_TABLE`: MinD-Vis `MAEforFMRI` state dict <-> `MaskedBrainModel` params, both directions
# (brainjax.convert.mbm reads and writes the files):
#   patch_embed.proj.{weight [D,1,P] Conv1d, bias}   patch_embed/{kernel [P,D], bias}
#   cls_token, mask_token                            cls_token, mask_token
#   blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}   encoder/block_{i}/...
#   norm                                             encoder_norm
#   decoder_embed, decoder_blocks.{i}..., decoder_norm, decoder_pred    decoder_embed, decoder/block_{i}/..., ...
#   pos_embed, decoder_pos_embed   fixed sin-cos buffers: checked against brainjax's table, not stored


def _patch_to_flax(w: np.ndarray) -> np.ndarray:
  if w.ndim != 3 or w.shape[1] != 1:
    raise mp.ConversionError(f"patch_embed.proj.weight must be a Conv1d weight [D, 1, patch], got {tuple(w.shape)} "
                          f"(brainjax embeds one fMRI channel, in_chans=1)")
  return np.ascontiguousarray(w[:, 0, :].T)


def _patch_to_torch(k: np.ndarray) -> np.ndarray:
  if k.ndim != 2:
    raise mp.ConversionError(f"patch_embed/kernel must be [patch, D], got {tuple(k.shape)}")
  return np.ascontiguousarray(k.T[:, None, :])


# A Conv1d with kernel = stride = patch over one channel is a Dense on each patch.
PATCH_EMBED = mp.Transform("conv1d patch embed (D,1,P)->(P,D)", _patch_to_flax, _patch_to_torch)


def torch_block_rules(src: str, dst: str, *, temporal: bool) -> list[mp.Rule]:
  # The alternatives are spelled on both sides: each direction matches its own template.
  n = "{n:norm1|norm2|norm_temp}" if temporal else "{n:norm1|norm2}"
  a = "{a:attn|attn_temp}" if temporal else "{a:attn}"
  return mp.prefixed([
      *mp.norm(n, n),
      *mp.linear(a + ".{p:qkv|proj}", a + "/{p:qkv|proj}"),
      *mp.linear("mlp.{f:fc1|fc2}", "mlp/{f:fc1|fc2}"),
  ], src + r".{i:\d+}.", dst + r"/block_{i:\d+}/")


def torch_patch_rules(dst: str) -> list[mp.Rule]:
  return [mp.Rule("patch_embed.proj.weight", f"{dst}/kernel", PATCH_EMBED),
          mp.Rule("patch_embed.proj.bias", f"{dst}/bias")]


MBM_TABLE = mp.Table(
    rules=[
        *torch_patch_rules("patch_embed"),
        *mp.param("cls_token", "cls_token"),
        *torch_block_rules("blocks", "encoder", temporal=False),
        *mp.norm("norm", "encoder_norm"),
        *mp.linear("decoder_embed", "decoder_embed"),
        *mp.param("mask_token", "mask_token"),
        *torch_block_rules("decoder_blocks", "decoder", temporal=False),
        *mp.norm("decoder_norm", "decoder_norm"),
        *mp.linear("decoder_pred", "decoder_pred"),
    ],
    skip=[
        "pos_embed", "decoder_pos_embed",  # fixed sin-cos buffers, checked by _check_positions
        "nature_img_{rest:.+}",  # MinD-Vis' optional image-feature decoder (use_nature_img_loss), not MBM
    ])
