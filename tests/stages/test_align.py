"""The alignment losses: every published variant is a switch that changes what is optimised."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from brainjax import losses
from brainjax.stages import align

V, W, P = 64, 2, 8


def _setup(**overrides):
  stage = align.stage_config(encoder=dict(patch_size=16, embed_dim=16, depth=1, num_heads=2, mlp_ratio=1.0,
                                          remat=False),
                             head=dict(out_tokens=4, out_dim=8, dropout=0.0, use_norm=False), **overrides)
  model = align.build(stage, V, W, P)
  rng = np.random.default_rng(0)
  batch = {"fmri": jnp.asarray(rng.standard_normal((6, W, V)), jnp.float32),
           "text_embed": jnp.asarray(rng.standard_normal((6, P)), jnp.float32),
           "image_embeds": jnp.asarray(rng.standard_normal((6, 3, P)), jnp.float32)}
  params = nn.meta.unbox(model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                                    batch["fmri"]))["params"]
  return stage, model, params, batch


def test_mindvideo_loss_is_the_mean_of_text_and_image_terms():
  stage, model, params, batch = _setup(sparsify_rate=0.0)
  total, parts = align.contrastive_loss(model, stage, params, batch, jax.random.PRNGKey(2))
  assert set(parts) == {"loss_text", "loss_image", "logit_scale"}
  np.testing.assert_allclose(total, (parts["loss_text"] + parts["loss_image"]) / 2, rtol=1e-6)
  f = model.apply({"params": params}, batch["fmri"])
  np.testing.assert_allclose(parts["loss_text"], losses.clip_loss(f["embed"], batch["text_embed"], f["scale"]),
                             rtol=1e-5)


@pytest.mark.parametrize("modalities", [("text",), ("image",)])
def test_single_modality_ablations(modalities):
  stage, model, params, batch = _setup(modalities=modalities)
  total, parts = align.contrastive_loss(model, stage, params, batch, jax.random.PRNGKey(3))
  assert {k for k in parts if k.startswith("loss")} == {f"loss_{modalities[0]}"}
  np.testing.assert_allclose(total, parts[f"loss_{modalities[0]}"], rtol=1e-6)


def test_neuralflix_loss_is_eq3():
  stage, model, params, batch = _setup(emb_reduction="sum", spatial_mask_ratio=0.2, temporal_interp_ratio=1 / 3,
                                       mu_spa=0.7, mu_tem=1.3, sparsify_rate=0.0)
  total, parts = align.contrastive_loss(model, stage, params, batch, jax.random.PRNGKey(4))
  expected = parts["loss_text"] + parts["loss_image"] + 0.7 * parts["loss_spa"] + 1.3 * parts["loss_tem"]
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  assert parts["loss_spa"] > 0 and parts["loss_tem"] > 0


def test_fixed_temperature_brain_netflix():
  stage, model, params, batch = _setup(modalities=("text",), temperature=0.9, learn_temperature=False)
  assert "logit_scale" not in params
  _, parts = align.contrastive_loss(model, stage, params, batch, jax.random.PRNGKey(5))
  np.testing.assert_allclose(parts["logit_scale"], 1 / 0.9, rtol=1e-6)


def test_sparsification_is_applied():
  stage, model, params, batch = _setup(sparsify_rate=0.5)
  a, _ = align.contrastive_loss(model, stage, params, batch, jax.random.PRNGKey(6))
  stage0 = ml_collections.ConfigDict(stage.to_dict())
  stage0.sparsify_rate = 0.0
  b, _ = align.contrastive_loss(model, stage0, params, batch, jax.random.PRNGKey(6))
  assert abs(float(a) - float(b)) > 1e-4


def test_retrieval_with_planted_embeddings():
  keys = np.eye(4, dtype=np.float32)
  assert float(losses.retrieval_top1(jnp.asarray(keys[[0, 1, 3, 2]]), jnp.asarray(keys))) == 0.5
  assert float(losses.retrieval_top1(jnp.asarray(keys[[0, 1, 3, 2]]), jnp.asarray(keys), np.array([0, 0, 1, 1]))) == 1


def test_padding_never_reaches_the_alignment_loss():
  stage, model, params, batch = _setup(sparsify_rate=0.2)
  counts = jnp.asarray([16, 64, 40, 33, 64, 1], jnp.int32)
  real = np.arange(V)[None, None] < np.asarray(counts)[:, None, None]
  fmri = np.asarray(batch["fmri"])
  clean = dict(batch, fmri=jnp.asarray(np.where(real, fmri, 0.0)), num_voxels=counts)
  noisy = dict(batch, fmri=jnp.asarray(np.where(real, fmri, 1e3)), num_voxels=counts)
  a, _ = align.contrastive_loss(model, stage, params, clean, jax.random.PRNGKey(7))
  b, _ = align.contrastive_loss(model, stage, params, noisy, jax.random.PRNGKey(7))
  np.testing.assert_allclose(a, b, rtol=1e-6)
  c, _ = align.contrastive_loss(model, stage, params, dict(noisy, num_voxels=None), jax.random.PRNGKey(7))
  assert abs(float(c) - float(a)) > 1e-4


def test_aligner_keeps_voxel_padding_out_of_the_caption_readout():
  """The readout reads the raw voxels, so the aligner must zero the padding before it as the encoder does:
  garbage past `num_voxels` leaves the condition unchanged, and the real voxels do change it."""
  from brainjax.models import fmri_encoder
  v, p = 64, 16
  model = fmri_encoder.FmriAligner(
      fmri_encoder.FmriEncoder(num_voxels=v, window=2, patch_size=p, embed_dim=16, depth=1, num_heads=2),
      fmri_encoder.ProjectionHead(out_tokens=3, out_dim=8, readout_rank=4), clip_dim=8)
  rng = np.random.default_rng(0)
  fmri = rng.normal(size=(2, 2, v)).astype(np.float32)
  real = np.array([40, 64])
  params = model.init(jax.random.key(0), fmri, num_voxels=real)["params"]
  # readout_out starts at zero: make it non-zero so that the readout's input reaches the output.
  params["head"]["readout_out"]["kernel"] = jnp.asarray(rng.normal(size=(4, 24)), jnp.float32)
  condition = lambda x: np.asarray(model.apply({"params": params}, x, num_voxels=real)["condition"])
  garbage = fmri.copy()
  garbage[0, :, 40:] = 1e3  # example 0's padding
  moved = fmri.copy()
  moved[0, :, :40] += 1.0   # example 0's real voxels
  np.testing.assert_allclose(condition(garbage), condition(fmri), rtol=1e-6, atol=1e-6)
  assert np.abs(condition(moved) - condition(fmri)).max() > 1e-3
