"""Masked brain modelling and the windowed spatio-temporal encoder."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brainjax import ridge
from brainjax.models import fmri_encoder, layers, mbm

V, P = 320, 16


def _mbm(mask_ratio=0.75):
  return mbm.MaskedBrainModel(num_voxels=V, patch_size=P, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=16,
                              decoder_depth=1, decoder_num_heads=2, mask_ratio=mask_ratio)


def _init(model, x):
  r = jax.random.PRNGKey(0)
  return nn.meta.unbox(model.init({"params": r}, x, r)["params"])


def test_masking_ratio_and_per_sample_independence():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((16, V)), jnp.float32)
  model = _mbm()
  params = _init(model, x)
  out = model.apply({"params": params}, x, jax.random.PRNGKey(1))
  mask = np.asarray(out["mask"])
  n = V // P
  assert mask.shape == (16, n)
  assert np.all(mask.sum(1) == n - round(n * 0.25))  # exactly 75% masked in every sample
  assert len({tuple(m) for m in mask}) == 16         # each sample draws its own mask
  again = model.apply({"params": params}, x, jax.random.PRNGKey(1))["mask"]
  np.testing.assert_array_equal(mask, again)          # the rng decides, nothing else


def test_loss_counts_only_masked_patches():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((4, V)), jnp.float32)
  model = _mbm()
  params = _init(model, x)
  out = jax.device_get(model.apply({"params": params}, x, jax.random.PRNGKey(2)))
  per_patch = ((out["pred"] - out["target"]) ** 2).mean(-1)
  expected = (per_patch * out["mask"]).sum() / out["mask"].sum()
  np.testing.assert_allclose(out["loss"], expected, rtol=1e-6)
  # Changing the input on visible patches only moves the loss through the model, never as a
  # target: the loss with targets replaced on visible patches is unchanged.
  visible = out["mask"] == 0
  target2 = out["target"].copy()
  target2[visible] += 100.0
  np.testing.assert_allclose(mbm.masked_mse(out["pred"], target2, out["mask"]), out["loss"], rtol=1e-6)


def test_patch_embedding_equals_strided_conv():
  x = np.random.default_rng(2).standard_normal((2, V)).astype(np.float32)
  w = np.random.default_rng(3).standard_normal((P, 8)).astype(np.float32)
  patches = np.asarray(layers.patchify(jnp.asarray(x), P))
  # In float64: patchify only moves values, so the two sides agree to summation order. (In float32 the
  # batched and per-row products round differently on some hosts' BLAS: 6e-8 apart at a value of 1e-3.)
  x64, w64 = x.astype(np.float64), w.astype(np.float64)
  conv = np.stack([[x64[b, i * P:(i + 1) * P] @ w64 for i in range(V // P)]  # Conv1d, stride = kernel
                   for b in range(2)])
  np.testing.assert_allclose(patches.astype(np.float64) @ w64, conv, rtol=1e-12, atol=1e-12)


def test_sincos_matches_mae_formula():
  table = layers.sincos_1d(5, 8)
  pos, i = 3, 1
  omega = 1 / 10000 ** (i / 4)
  assert table[pos, i] == pytest.approx(np.sin(pos * omega), rel=1e-6)
  assert table[pos, 4 + i] == pytest.approx(np.cos(pos * omega), rel=1e-6)


def _encoder(window):
  return fmri_encoder.FmriEncoder(num_voxels=V, window=window, patch_size=P, embed_dim=32, depth=2, num_heads=4)


def test_window_one_is_the_mbm_encoder():
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((3, V)), jnp.float32)
  model = _mbm()
  mbm_params = _init(model, x)
  enc = _encoder(1)
  params = nn.meta.unbox(enc.init(jax.random.PRNGKey(5), x[:, None])["params"])
  params = fmri_encoder.init_from_mbm(params, mbm_params)
  ours = enc.apply({"params": params}, x[:, None])
  theirs, _ = model.apply({"params": mbm_params}, x, with_cls=False, method=model.encode)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
  assert "attn_temp" not in params["encoder"]["block_0"]


def test_temporal_attention_mixes_only_within_a_window():
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.standard_normal((3, 2, V)), jnp.float32)
  enc = _encoder(2)
  params = nn.meta.unbox(enc.init(jax.random.PRNGKey(7), x)["params"])
  base = np.asarray(enc.apply({"params": params}, x))
  n = V // P
  # Perturbing the second volume of sample 1 changes sample 1's first-volume tokens
  # (the window is mixed) but no token of samples 0 and 2.
  x2 = x.at[1, 1].add(1.0)
  out = np.asarray(enc.apply({"params": params}, x2))
  np.testing.assert_array_equal(out[[0, 2]], base[[0, 2]])
  assert np.abs(out[1, :n] - base[1, :n]).max() > 1e-3


def test_init_from_mbm_rejects_mismatched_widths():
  x = jnp.zeros((1, V))
  mbm_params = _init(_mbm(), x)
  wide = fmri_encoder.FmriEncoder(num_voxels=V, window=2, patch_size=P, embed_dim=64, depth=2, num_heads=4)
  params = nn.meta.unbox(wide.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, V)))["params"])
  with pytest.raises(ValueError, match="embed_dim, patch_size, mlp_ratio"):
    fmri_encoder.init_from_mbm(params, mbm_params)


def test_projection_head_shapes_and_residual():
  head = fmri_encoder.ProjectionHead(out_tokens=77, out_dim=48)
  tokens = jnp.asarray(np.random.default_rng(8).standard_normal((2, 40, 32)), jnp.float32)
  params = nn.meta.unbox(head.init(jax.random.PRNGKey(0), tokens)["params"])
  out = head.apply({"params": params}, tokens)
  assert out.shape == (2, 77, 48)
  # The residual: with fc zeroed the head is exactly channel_mapper then projection.
  zeroed = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.zeros_like(v) if "fc" in jax.tree_util.keystr(p) else v, params)
  linear = np.einsum("btd,tk->bkd", tokens, params["channel_mapper"]["kernel"]) @ params["projection"]["kernel"]
  np.testing.assert_allclose(head.apply({"params": zeroed}, tokens), linear, rtol=1e-5, atol=1e-6)


def test_projection_head_caption_readout_starts_off_and_fits_the_ridge_map():
  rng = np.random.default_rng(10)
  tokens = jnp.asarray(rng.standard_normal((12, 5, 4)), jnp.float32)
  fmri = rng.standard_normal((12, 2, 10)).astype(np.float32)  # the window the readout reads
  head = fmri_encoder.ProjectionHead(out_tokens=3, out_dim=4, readout_rank=12)
  params = nn.meta.unbox(head.init(jax.random.PRNGKey(0), tokens, fmri)["params"])
  assert params["readout_in"]["kernel"].shape == (20, 12) and params["readout_out"]["kernel"].shape == (12, 12)
  # readout_out starts at zero: the head is MindVideo's until the readout is trained or fitted.
  plain = fmri_encoder.ProjectionHead(out_tokens=3, out_dim=4)
  mindvideo = {k: v for k, v in params.items() if not k.startswith("readout")}
  np.testing.assert_array_equal(head.apply({"params": params}, tokens, fmri),
                                plain.apply({"params": mindvideo}, tokens))
  with pytest.raises(ValueError, match="pass `fmri`"):
    head.apply({"params": params}, tokens)
  # Fitted: the head's output plus exactly the ridge map's prediction (rank 12 >= 11, the fitted rank).
  residual = rng.standard_normal((12, 3, 4))
  fitted = fmri_encoder.fit_readout(head, params, fmri, residual, alpha=2.0)
  test = rng.standard_normal((3, 2, 10)).astype(np.float32)
  expected = ridge.fit_ridge(fmri.reshape(12, -1), residual.reshape(12, -1), 2.0).predict(test.reshape(3, -1))
  added = head.apply({"params": fitted}, tokens[:3], test) - head.apply({"params": params}, tokens[:3], test)
  np.testing.assert_allclose(added, expected.reshape(3, 3, 4), rtol=1e-4, atol=1e-4)
  # A rank above the number of windows: the spare rank stays zero.
  wide = fmri_encoder.ProjectionHead(out_tokens=3, out_dim=4, readout_rank=16)
  wide_params = nn.meta.unbox(wide.init(jax.random.PRNGKey(1), tokens, fmri)["params"])
  wide_fit = fmri_encoder.fit_readout(wide, wide_params, fmri, residual, alpha=2.0)
  assert not np.any(wide_fit["readout_in"]["kernel"][:, 12:]) and not np.any(wide_fit["readout_out"]["kernel"][12:])
  with pytest.raises(ValueError, match="do not match"):
    fmri_encoder.fit_readout(head, params, fmri, residual[:, :2], alpha=2.0)
  with pytest.raises(ValueError, match="no caption readout"):
    fmri_encoder.fit_readout(plain, mindvideo, fmri, residual, alpha=2.0)


def test_per_subject_patch_embeddings():
  rng = np.random.default_rng(9)
  x = jnp.asarray(rng.standard_normal((4, V)), jnp.float32)
  subject = jnp.asarray([0, 1, 2, 1])
  model = mbm.MaskedBrainModel(num_voxels=V, patch_size=P, embed_dim=32, depth=1, num_heads=4, decoder_embed_dim=16,
                               decoder_depth=1, decoder_num_heads=2, num_subjects=3)
  r = jax.random.PRNGKey(0)
  params = nn.meta.unbox(model.init({"params": r}, x, r, subject)["params"])
  assert params["patch_embed"]["kernel"].shape == (3, P, 32)
  tokens, _ = model.apply({"params": params}, x, subject=subject, with_cls=False, method=model.encode)
  # Each sample's tokens use its subject's map (+ fixed positions), and only that.
  k, b = params["patch_embed"]["kernel"], params["patch_embed"]["bias"]
  patches = np.asarray(layers.patchify(x, P))
  pos = layers.sincos_1d(V // P, 32)
  for i, s in enumerate([0, 1, 2, 1]):
    single, _ = model.apply({"params": params}, x[i:i + 1], subject=jnp.asarray([s]), with_cls=False,
                            method=model.encode)
    np.testing.assert_allclose(tokens[i], single[0], rtol=1e-5, atol=1e-5)
  embedded = patches[1] @ np.asarray(k[1]) + np.asarray(b[1]) + pos
  other = patches[1] @ np.asarray(k[0]) + np.asarray(b[0]) + pos
  assert not np.allclose(embedded, other)
  with pytest.raises(ValueError, match="pass the batch's subject ids"):
    model.apply({"params": params}, x, r)
  enc = fmri_encoder.FmriEncoder(num_voxels=V, window=2, patch_size=P, embed_dim=32, depth=1, num_heads=4,
                                 num_subjects=3)
  xw = jnp.stack([x, x], axis=1)
  ep = nn.meta.unbox(enc.init(r, xw, subject=subject)["params"])
  out = enc.apply({"params": ep}, xw, subject=subject)
  assert out.shape == (4, 2 * V // P, 32)


def _per_subject_mbm(num_voxels):
  return mbm.MaskedBrainModel(num_voxels=num_voxels, patch_size=P, embed_dim=32, depth=1, num_heads=4,
                              decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, num_subjects=3)


def test_padding_never_reaches_the_mbm_loss():
  """A mixture pads each subject's voxels to one length; the loss must not see the padding: neither
  its content nor how much of it there is (a longer mixture) changes anything."""
  rng = np.random.default_rng(10)
  counts = jnp.asarray([250, 320, 100, 313], jnp.int32)
  subject = jnp.asarray([0, 2, 1, 2])
  x = rng.standard_normal((4, V)).astype(np.float32)
  real = np.arange(V)[None] < np.asarray(counts)[:, None]
  clean = np.where(real, x, 0.0).astype(np.float32)
  garbage = np.where(real, x, 1e3 * rng.standard_normal(x.shape)).astype(np.float32)
  model = _per_subject_mbm(V)
  r, mask_rng = jax.random.PRNGKey(0), jax.random.PRNGKey(3)
  # Jitted: one compile per shape is much cheaper here than op-by-op dispatch.
  params = nn.meta.unbox(jax.jit(model.init)({"params": r}, jnp.asarray(clean), r, subject, counts)["params"])
  jitted = lambda m: jax.jit(lambda v: m.apply({"params": params}, v, mask_rng, subject, counts))
  apply, apply_long = jitted(model), jitted(_per_subject_mbm(V + 64))
  out = jax.device_get(apply(jnp.asarray(clean)))
  np.testing.assert_allclose(apply(jnp.asarray(garbage))["loss"], out["loss"], rtol=1e-6)
  longer = np.concatenate([garbage, 1e3 * rng.standard_normal((4, 64)).astype(np.float32)], axis=1)
  out_long = jax.device_get(apply_long(jnp.asarray(longer)))
  n = V // P
  np.testing.assert_allclose(out_long["loss"], out["loss"], rtol=1e-5)
  np.testing.assert_array_equal(out_long["mask"][:, :n], out["mask"])
  assert not out_long["mask"][:, n:].any() and not out_long["valid"][:, n:].any()
  np.testing.assert_allclose(out_long["pred"][:, :n] * out["valid"], out["pred"] * out["valid"], rtol=1e-4,
                             atol=1e-5)
  # Each example masks mask_ratio of its own real patches (not of the padded length).
  real_patches = -(-np.asarray(counts) // P)
  np.testing.assert_array_equal(out["mask"].sum(1),
                                [k - layers.num_kept(int(k), 0.75) for k in real_patches])
  # The padded tail of a partly real patch is not a target: 250 voxels = 15 patches + 10 voxels.
  assert out["valid"][0, 15].sum() == 10 and out["valid"][0, 16:].sum() == 0


def test_full_voxel_counts_match_the_unpadded_model():
  x = jnp.asarray(np.random.default_rng(11).standard_normal((4, V)), jnp.float32)
  subject = jnp.asarray([0, 1, 2, 0])
  model = _per_subject_mbm(V)
  r = jax.random.PRNGKey(0)
  params = nn.meta.unbox(model.init({"params": r}, x, r, subject)["params"])
  plain = model.apply({"params": params}, x, jax.random.PRNGKey(4), subject)
  counted = model.apply({"params": params}, x, jax.random.PRNGKey(4), subject, jnp.full((4,), V, jnp.int32))
  np.testing.assert_array_equal(plain["mask"], counted["mask"])
  np.testing.assert_allclose(counted["loss"], plain["loss"], rtol=1e-6)


def test_windowed_encoder_ignores_padding():
  rng = np.random.default_rng(12)
  counts = jnp.asarray([100, 320, 200], jnp.int32)
  real = np.arange(V)[None, None] < np.asarray(counts)[:, None, None]
  x = rng.standard_normal((3, 2, V)).astype(np.float32)
  garbage = np.where(real, x, 1e3).astype(np.float32)
  enc = fmri_encoder.FmriEncoder(num_voxels=V, window=2, patch_size=P, embed_dim=32, depth=2, num_heads=4,
                                 num_subjects=3)
  subject = jnp.asarray([0, 1, 2])
  params = nn.meta.unbox(enc.init(jax.random.PRNGKey(0), jnp.asarray(x), subject=subject)["params"])
  run = lambda v, c: np.asarray(enc.apply({"params": params}, jnp.asarray(v), subject=subject, num_voxels=c))
  out = run(x, counts)
  np.testing.assert_allclose(run(garbage, counts), out, rtol=1e-6, atol=1e-6)
  n = V // P
  tokens = out.reshape(3, 2, n, 32)
  assert not tokens[0, :, 100 // P + 1:].any() and not tokens[2, :, 200 // P + 1:].any()  # padding tokens are zero
  assert np.abs(run(garbage, None) - run(x, None)).max() > 1e-3  # without the counts padding would leak
