"""Losses shared by the recipes: contrastive (CLIP / InfoNCE), focal, masked MSE.

All are pure functions of arrays. Inside a sharded train step the batch axis
of `a` and `b` is split over devices and `a @ b.T` makes XLA gather the other
devices' rows, so every sample is contrasted with the whole global batch (not
only its device's slice) without explicit collectives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from brainjax.models.mbm import masked_mse

__all__ = ["clip_loss", "contrastive_logits", "masked_mse", "retrieval_top1", "normalize"]


def normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def contrastive_logits(a: jax.Array, b: jax.Array, scale: jax.Array | float) -> jax.Array:
  """Cosine similarities of every a_i with every b_j, times `scale`: [B, B]."""
  return scale * normalize(a.astype(jnp.float32)) @ normalize(b.astype(jnp.float32)).T


def clip_loss(a: jax.Array, b: jax.Array, scale: jax.Array | float) -> jax.Array:
  """Symmetric InfoNCE (CLIP): mean of the a->b and b->a cross-entropies; pairs are (a_i, b_i).

  `scale` is the inverse temperature: exp(learnable log-scale) in CLIP and
  MinD-Video, 1/0.9 for Brain Netflix's fixed temperature, 1/0.07 for CineNeuron.
  """
  logits = contrastive_logits(a, b, scale)
  labels = jnp.arange(logits.shape[0])
  return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())


def retrieval_top1(queries: jax.Array, keys: jax.Array, groups: jax.Array | None = None) -> jax.Array:
  """Fraction of queries whose most similar key is their own (index-aligned) pair.

  With `groups` (e.g. clip ids) a retrieved key counts when it is in the
  query's group: consecutive TRs of one clip show near-identical frames and
  share one caption, so exact-TR retrieval undercounts semantic success.
  """
  sims = contrastive_logits(queries, keys, 1.0)
  best = jnp.argmax(sims, axis=1)
  if groups is None:
    return jnp.mean(best == jnp.arange(sims.shape[0]))
  groups = jnp.asarray(groups)
  return jnp.mean(groups[best] == groups)
