"""Contrastive loss and augmentations against direct NumPy computations of the papers' equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from scipy import ndimage

from brainjax import augment, losses
from brainjax.train import sharding as shd


def _np_clip_loss(a, b, scale):
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  logits = scale * a @ b.T

  def ce(l):
    l = l - l.max(1, keepdims=True)
    logp = l - np.log(np.exp(l).sum(1, keepdims=True))
    return -np.mean(np.diag(logp))

  return 0.5 * (ce(logits) + ce(logits.T))


def test_clip_loss_matches_numpy():
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((12, 16)), rng.standard_normal((12, 16))
  for scale in (1.0, 1 / 0.9, 1 / 0.07):
    np.testing.assert_allclose(losses.clip_loss(jnp.asarray(a), jnp.asarray(b), scale),
                               _np_clip_loss(a, b, scale), rtol=1e-5)


def test_clip_loss_uses_the_global_batch_on_8_devices():
  rng = np.random.default_rng(1)
  a, b = rng.standard_normal((16, 8)).astype(np.float32), rng.standard_normal((16, 8)).astype(np.float32)
  mesh = shd.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  sharding = NamedSharding(mesh, P("data"))
  fn = jax.jit(lambda x, y: losses.clip_loss(x, y, 10.0), in_shardings=(sharding, sharding))
  sharded = fn(jax.device_put(a, sharding), jax.device_put(b, sharding))
  single = losses.clip_loss(jnp.asarray(a), jnp.asarray(b), 10.0)
  np.testing.assert_allclose(sharded, single, rtol=1e-6)
  # ...and that is the loss over all 16 pairs, not the mean of per-device losses.
  per_device = np.mean([_np_clip_loss(a[i:i + 2], b[i:i + 2], 10.0) for i in range(0, 16, 2)])
  assert abs(float(sharded) - per_device) > 1e-3
  np.testing.assert_allclose(sharded, _np_clip_loss(a, b, 10.0), rtol=1e-5)


def test_retrieval_top1():
  keys = np.eye(5, dtype=np.float32)
  queries = keys.copy()
  queries[3] = keys[1]
  assert float(losses.retrieval_top1(jnp.asarray(queries), jnp.asarray(keys))) == pytest.approx(0.8)


def test_sparsify_zeroes_the_same_voxels_in_every_volume():
  x = jnp.ones((4, 2, 100))
  out = np.asarray(augment.sparsify(jax.random.PRNGKey(0), x, 0.2))
  assert np.all((out == 0).sum(-1) == 20)
  np.testing.assert_array_equal(out[:, 0], out[:, 1])
  assert len({tuple(o[0]) for o in out}) == 4


def test_spatial_mask_same_dims_within_a_window_different_across_samples():
  tokens = jnp.ones((5, 2, 3, 40))
  out = np.asarray(augment.spatial_mask(jax.random.PRNGKey(1), tokens, 0.2))
  zero_dims = [set(np.flatnonzero(out[b, 0, 0] == 0)) for b in range(5)]
  assert all(len(z) == 8 for z in zero_dims)  # γ_spa · D
  for b in range(5):
    for w in range(2):
      for n in range(3):
        assert set(np.flatnonzero(out[b, w, n] == 0)) == zero_dims[b]
  assert len({frozenset(z) for z in zero_dims}) > 1


def test_temporal_interpolation_is_eq1():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((64, 3, 4)).astype(np.float32)
  out = np.asarray(augment.temporal_interpolate(jax.random.PRNGKey(3), jnp.asarray(x), 1 / 3))
  n = 3
  changed = 0
  for b in range(64):
    for i in range(n):
      if not np.allclose(out[b, i], x[b, i]):
        expected = sum((1 - abs(i - j) / n) * x[b, j] for j in range(n) if j != i)  # Eq. 1, 0-indexed
        np.testing.assert_allclose(out[b, i], expected, rtol=1e-5, atol=1e-6)
        changed += 1
  assert 0.2 < changed / (64 * n) < 0.47  # about γ_tem = 1/3 of the volumes
  assert augment.interpolation_weights(2).tolist() == [[0.0, 0.5], [0.5, 0.0]]


def test_random_blur_is_a_gaussian_blur_per_sample_that_keeps_flat_images_flat():
  rng = np.random.default_rng(3)
  clips = rng.uniform(0, 1, (3, 2, 24, 24, 3)).astype(np.float32)
  key = jax.random.PRNGKey(4)
  sigma = np.asarray(jax.random.uniform(key, (3,), maxval=2.0))  # what random_blur draws with this key
  out = np.asarray(augment.random_blur(key, jnp.asarray(clips), 2.0))
  for b in range(3):
    for t in range(2):  # every frame of a clip gets its clip's blur
      ref = ndimage.gaussian_filter(clips[b, t].astype(np.float64), (sigma[b], sigma[b], 0), truncate=8.0)
      # Away from the borders (where brainjax renormalises instead of reflecting) it is scipy's blur.
      np.testing.assert_allclose(out[b, t, 8:-8, 8:-8], ref[8:-8, 8:-8], atol=2e-5)
  flat = jnp.full((2, 16, 16, 3), 0.3)
  np.testing.assert_allclose(augment.random_blur(key, flat, 3.0), 0.3, atol=1e-6)
  np.testing.assert_array_equal(augment.random_blur(key, jnp.asarray(clips), 0.0), clips)
  identity = np.asarray(augment.blur_matrix(9, jnp.asarray(0.0)))
  np.testing.assert_allclose(identity, np.eye(9), atol=1e-6)
