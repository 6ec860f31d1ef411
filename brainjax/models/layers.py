"""Transformer building blocks shared by the fMRI models (timm/MAE-style ViT).

Parameters carry logical axis names (see brainjax.train.sharding) so one rules
table decides how they are split over the mesh.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def dense(features: int, names: tuple[str | None, str | None], *, use_bias: bool = True, dtype: Dtype = jnp.float32,
          param_dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Dense:
  """A Dense with xavier-uniform kernel (as MAE initialises) and logical names."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), names),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (names[1],)))


def layer_norm(name: str | None = None, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))


def sincos_1d(num_positions: int, dim: int) -> np.ndarray:
  """Fixed 1-D sin-cos position table [num_positions, dim]: sin half then cos half (MAE convention)."""
  if dim % 2:
    raise ValueError(f"embedding width {dim} must be even for sin-cos position embeddings")
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  angles = np.arange(num_positions, dtype=np.float64)[:, None] * omega[None]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (timm layout)."""
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by {self.num_heads} heads")
    qkv = dense(3 * d, ("embed", "heads"), dtype=self.dtype, param_dtype=self.param_dtype, name="qkv")(x)
    q, k, v = jnp.split(qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads), 3, axis=2)
    out = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0])
    out = nn.with_logical_constraint(out.reshape(b, n, d), ("act_batch", "act_tokens", "act_heads"))
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

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x + Attention(self.num_heads, name="attn", **kw)(layer_norm("norm1", **kw)(x))
    x = x + Mlp(int(d * self.mlp_ratio), name="mlp", **kw)(layer_norm("norm2", **kw)(x))
    return nn.with_logical_constraint(x, ("act_batch", "act_tokens", "act_embed"))


class Stack(nn.Module):
  """`depth` Blocks, optionally rematerialised (trade compute for activation memory)."""
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    block_cls = nn.remat(Block) if self.remat else Block
    for i in range(self.depth):
      x = block_cls(self.num_heads, self.mlp_ratio, self.dtype, self.param_dtype, name=f"block_{i}")(x)
    return x


def patchify(x: jax.Array, patch: int) -> jax.Array:
  """[B, V] -> [B, V/patch, patch]. V must be a multiple of `patch` (the pipeline wrap-pads)."""
  b, v = x.shape
  if v % patch:
    raise ValueError(f"{v} voxels are not a multiple of the patch size {patch}; set "
                     f"config.data.voxel_padding='wrap' (pads to a multiple of data.pad_multiple)")
  return x.reshape(b, v // patch, patch)


def keep_indices(rng: jax.Array, batch: int, num_tokens: int, num_keep: int) -> tuple[jax.Array, jax.Array]:
  """Per-sample random masking (MAE): which tokens each sample keeps, and the inverse permutation."""
  noise = jax.random.uniform(rng, (batch, num_tokens))
  shuffle = jnp.argsort(noise, axis=1)
  restore = jnp.argsort(shuffle, axis=1)
  return shuffle[:, :num_keep], restore


def take_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x, idx[..., None], axis=1)
