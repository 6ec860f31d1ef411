"""Transformer building blocks shared by the fMRI models (timm/MAE-style ViT).

Parameters carry logical axis names (see brainjax.train.sharding) so one rules
table decides how they are split over the mesh.

LayerNorm eps defaults to 1e-5, torch's `nn.LayerNorm` default: MinD-Vis'
`MAEforFMRI` and MindVideo's `fMRIEncoder` pass plain `nn.LayerNorm` as the
norm layer (not MAE's `partial(nn.LayerNorm, eps=1e-6)`), so 1e-5 is what
their checkpoints were trained with.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def dense(features: int, names: tuple[str | None, str | None], *, use_bias: bool = True, dtype: Dtype = jnp.float32,
          param_dtype: Dtype = jnp.float32, name: str | None = None, zero_init: bool = False) -> nn.Dense:
  """A Dense with xavier-uniform kernel (as MAE initialises; zeros with zero_init) and logical names."""
  kernel_init = nn.initializers.zeros_init() if zero_init else nn.initializers.xavier_uniform()
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(kernel_init, names),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (names[1],)))


DEFAULT_NORM_EPS = 1e-5  # torch nn.LayerNorm's default, used by MinD-Vis and MindVideo


def layer_norm(name: str | None = None, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               eps: float = DEFAULT_NORM_EPS) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))


def sincos_1d(num_positions: int, dim: int) -> np.ndarray:
  """Fixed 1-D sin-cos position table [num_positions, dim]: sin half then cos half (MAE convention)."""
  if dim % 2:
    raise ValueError(f"embedding width {dim} must be even for sin-cos position embeddings")
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  angles = np.arange(num_positions, dtype=np.float64)[:, None] * omega[None]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
  """Softmax attention on [B, N, H, d] q, k, v -> [B, N, H, d].

  `key_mask` [B, M] (True = attend) hides keys, e.g. the padding tokens of a
  subject with fewer voxels than the batch's length; every row must keep at
  least one key. Hidden keys get exactly zero weight, so nothing a padding
  token holds reaches the others.

  The softmax normalisation is applied after the value product: exp(s - max) @ v
  divided by the row sums, which is softmax(s) @ v reassociated. On CPU this
  leaves one elementwise pass over the [B, H, N, N] scores instead of three
  (exp, divide, and the divide's gradient), and the einsums keep the tokens'
  [B, N, H, d] layout so no head transposes are materialised. On the MBM train
  step (bench/mbm_train_step.py, CPU) the whole step ran 1.06x faster (median of
  an interleaved A/B) than with jax.nn.dot_product_attention's XLA path; the
  result is the same to float32 rounding (the parity tests check it against PyTorch).
  """
  scores = jnp.einsum("bnhd,bmhd->bhnm", q * (q.shape[-1] ** -0.5), k)
  if key_mask is not None:
    scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
  # The max only keeps exp in range; it cancels out, so no gradient flows through it.
  weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
  out = jnp.einsum("bhnm,bmhd->bnhd", weights, v)
  return out / jnp.einsum("bhnm->bnh", weights)[..., None]


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (timm layout)."""
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    b, n, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by {self.num_heads} heads")
    qkv = dense(3 * d, ("embed", "heads"), dtype=self.dtype, param_dtype=self.param_dtype, name="qkv")(x)
    # timm splits the 3*d outputs as (3, heads, head_dim).
    q, k, v = qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads).transpose(2, 0, 1, 3, 4)
    out = attention(q, k, v, key_mask).reshape(b, n, d)
    out = nn.with_logical_constraint(out, ("act_batch", "act_tokens", "act_heads"))
    return dense(d, ("heads", "embed"), dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(out)


class Mlp(nn.Module):
  hidden: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    h = dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(x)
    h = nn.with_logical_constraint(nn.gelu(h, approximate=False), ("act_batch", "act_tokens", "act_mlp"))
    return dense(d, ("mlp", "embed"), dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(h)


class Block(nn.Module):
  """Pre-norm ViT block: x + attn(norm1(x)); x + mlp(norm2(x))."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  norm_eps: float = DEFAULT_NORM_EPS

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    d = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x + Attention(self.num_heads, name="attn", **kw)(layer_norm("norm1", eps=self.norm_eps, **kw)(x), key_mask)
    x = x + Mlp(int(d * self.mlp_ratio), name="mlp", **kw)(layer_norm("norm2", eps=self.norm_eps, **kw)(x))
    return nn.with_logical_constraint(x, ("act_batch", "act_tokens", "act_embed"))


class Stack(nn.Module):
  """`depth` Blocks, optionally rematerialised (trade compute for activation memory)."""
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  norm_eps: float = DEFAULT_NORM_EPS

  @nn.compact
  def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    """`key_mask` [B, N]: tokens the attention may read (None: all)."""
    block_cls = nn.remat(Block) if self.remat else Block
    for i in range(self.depth):
      x = block_cls(self.num_heads, self.mlp_ratio, self.dtype, self.param_dtype, self.norm_eps,
                    name=f"block_{i}")(x, key_mask)
    return x


class PatchEmbed(nn.Module):
  """Voxel patches [B, N, patch] -> tokens [B, N, D].

  Shared (num_subjects = 0): one linear map for every subject, MinD-Vis'
  Conv1d with stride = kernel. Per subject (num_subjects = S): subject s's
  patches go through its own map (kernel [S, patch, D]), so subjects whose
  voxels mean different things share the transformer but not the read-in.
  Either way subjects are padded to one voxel count to share a batch: wrap
  padding (MinD-Video), or, in a multi-dataset mixture, padding the models
  zero and hide using each example's `num_voxels` (see `valid_voxels`).
  """
  features: int
  num_subjects: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, patches: jax.Array, subject: jax.Array | None = None) -> jax.Array:
    patch = patches.shape[-1]
    if not self.num_subjects:
      kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("patch", "embed")),
                          (patch, self.features), self.param_dtype)
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
                        (self.features,), self.param_dtype)
      return patches.astype(self.dtype) @ jnp.asarray(kernel, self.dtype) + jnp.asarray(bias, self.dtype)
    if subject is None:
      raise ValueError("this model has per-subject patch embeddings: pass the batch's subject ids")
    init = nn.initializers.xavier_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,))
    kernel = self.param("kernel", nn.with_logical_partitioning(init, (None, "patch", "embed")),
                        (self.num_subjects, patch, self.features), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, "embed")),
                      (self.num_subjects, self.features), self.param_dtype)
    kernel, bias = jnp.asarray(kernel, self.dtype)[subject], jnp.asarray(bias, self.dtype)[subject]
    return jnp.einsum("bnp,bpd->bnd", patches.astype(self.dtype), kernel) + bias[:, None]


def patchify(x: jax.Array, patch: int) -> jax.Array:
  """[B, V] -> [B, V/patch, patch]. V must be a multiple of `patch` (the pipeline wrap-pads)."""
  b, v = x.shape
  if v % patch:
    raise ValueError(f"{v} voxels are not a multiple of the patch size {patch}; set "
                     f"config.data.voxel_padding='wrap' (pads to a multiple of data.pad_multiple)")
  return x.reshape(b, v // patch, patch)


def mask_noise(rng: jax.Array, batch: int, num_tokens: int) -> jax.Array:
  """The uniform noise whose per-sample argsort decides which tokens are kept (lowest first).

  Public so that a reference implementation can be fed the very same noise
  (MAE's `random_masking` draws `torch.rand(N, L)` and argsorts it the same way).
  Token n's column is drawn from `fold_in(rng, n)`, so it does not depend on
  how many tokens follow: padding appended to the voxel vector leaves the
  real tokens' draws, hence their masks, unchanged.
  """
  keys = jax.vmap(lambda n: jax.random.fold_in(rng, n))(jnp.arange(num_tokens))
  return jax.vmap(lambda key: jax.random.uniform(key, (batch,)), out_axes=1)(keys)


def num_kept(num_tokens: int, mask_ratio: float) -> int:
  """MAE's `int(L * (1 - mask_ratio))` (truncation, as MinD-Vis), but at least one token."""
  return max(1, int(num_tokens * (1.0 - mask_ratio)))


def keep_indices(rng: jax.Array, batch: int, num_tokens: int, num_keep: int) -> tuple[jax.Array, jax.Array]:
  """Per-sample random masking (MAE): which tokens each sample keeps, and the inverse permutation."""
  return keep_indices_from_noise(mask_noise(rng, batch, num_tokens), num_keep)


def keep_indices_from_noise(noise: jax.Array, num_keep: int) -> tuple[jax.Array, jax.Array]:
  """`keep_indices` for given noise [B, N] (lowest kept first; ties keep token order)."""
  shuffle = jnp.argsort(noise, axis=1, stable=True)
  restore = jnp.argsort(shuffle, axis=1, stable=True)
  return shuffle[:, :num_keep], restore


def valid_voxels(num_voxels: jax.Array, length: int, patch: int) -> tuple[jax.Array, jax.Array]:
  """Per-example real voxels [B, length] and patches [B, length // patch] (True = real, not padding).

  A patch is real when it holds at least one real voxel; the padded tail of
  the last real patch is zeroed by the models and left out of their losses.
  """
  voxels = jnp.arange(length)[None] < jnp.asarray(num_voxels, jnp.int32)[:, None]
  return voxels, voxels.reshape(voxels.shape[0], length // patch, patch)[..., 0]


def take_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x, idx[..., None], axis=1)
