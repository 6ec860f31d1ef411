"""Reconstruction metrics: SSIM vs scikit-image, PSNR vs NumPy, the N-way test vs a NumPy copy of MinD-Video's code."""

import functools
import math

import jax
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from brainjax.data import synthetic
from brainjax.eval import metrics

SIZES = [(7, 7), (7, 12), (9, 8), (16, 23), (31, 17), (64, 48), (128, 128)]


def _sk(a, b):
  return structural_similarity(a, b, data_range=255, channel_axis=-1)


def _random_frames(shape, seed):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, shape, dtype=np.uint8)


def _drawn_frames(h, w, seed):
  """Photo-like frames drawn with numpy: a smooth colour gradient, a disc and a rectangle, mild noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
  img = np.stack([xx / max(w - 1, 1) * rng.uniform(80, 255), yy / max(h - 1, 1) * rng.uniform(80, 255),
                  np.full_like(xx, rng.uniform(0, 255))], axis=-1)
  cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, max(h, w) / 2)
  img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
  top, left = rng.integers(0, h), rng.integers(0, w)
  img[top:top + h // 3, left:left + w // 4] = rng.uniform(0, 255, 3)
  img += rng.normal(0, 3, img.shape)
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def movie_frames():
  """60 frames of the synthetic benchmark (scenes, textures, moving outlined objects), 64x64."""
  spec = synthetic.SyntheticSpec(resolution=64, segment_trs=10, train_segments=1, test_segments=1)
  return synthetic.render_segment(spec, synthetic.make_segment_clips(spec, "test", 0))


def _check_ssim(a, b, what):
  got = np.asarray(metrics.ssim(a, b))
  ref = np.array([_sk(x, y) for x, y in zip(a.reshape(-1, *a.shape[-3:]), b.reshape(-1, *b.shape[-3:]))])
  err = np.abs(got.reshape(-1) - ref).max()
  print(f"  ssim {what}: max |jax - skimage| {err:.1e} (values {ref.min():.3f}..{ref.max():.3f})")
  assert got.shape == a.shape[:-3] and got.dtype == np.float32
  assert err <= 1e-5
  return err


# ------------------------------------------------------------------------------ SSIM


@pytest.mark.parametrize("h,w", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_ssim_matches_skimage_on_random_frames(h, w):
  a, b = _random_frames((4, h, w, 3), 0), _random_frames((4, h, w, 3), 1)
  # Correlated pairs too: b = a + small noise (SSIM near 1, where float32 cancellation would bite).
  near = np.clip(a.astype(int) + np.random.default_rng(2).integers(-4, 5, a.shape), 0, 255).astype(np.uint8)
  _check_ssim(a, b, f"random {h}x{w}")
  _check_ssim(a, near, f"random+noise {h}x{w}")


@pytest.mark.parametrize("h,w", [(7, 7), (20, 33), (96, 64), (256, 256)])
def test_ssim_matches_skimage_on_drawn_frames(h, w):
  a = np.stack([_drawn_frames(h, w, s) for s in range(3)])
  b = np.stack([_drawn_frames(h, w, s + 10) for s in range(3)])
  blurred = ((a.astype(np.float64) + np.roll(a, 1, axis=1) + np.roll(a, 1, axis=2)) / 3).round().astype(np.uint8)
  _check_ssim(a, b, f"drawn {h}x{w}")
  _check_ssim(a, blurred, f"drawn vs blurred {h}x{w}")


def test_ssim_matches_skimage_on_movie_frames(movie_frames):
  frames = movie_frames
  _check_ssim(frames[:-1], frames[1:], "consecutive synthetic frames")
  _check_ssim(frames[:30], frames[30:], "synthetic frames 30 apart")
  # [N, T, H, W, 3] clips, as the evaluation holds them.
  clips = frames[:48].reshape(8, 6, 64, 64, 3)
  _check_ssim(clips, clips[::-1], "clips [8, 6, 64, 64, 3]")


def test_ssim_float_frames_and_identity():
  a, b = _drawn_frames(40, 50, 0)[None], _drawn_frames(40, 50, 1)[None]
  ref = _sk(a[0], b[0])
  got = float(metrics.ssim(a.astype(np.float32), b.astype(np.float32))[0])
  print(f"  ssim float32 frames: |jax - skimage| {abs(got - ref):.1e}")
  assert abs(got - ref) <= 1e-5
  for frames in (a, np.full((2, 9, 9, 3), 77, np.uint8), _random_frames((3, 7, 7, 3), 5)):
    np.testing.assert_allclose(np.asarray(metrics.ssim(frames, frames)), 1.0, atol=1e-7)
    np.testing.assert_allclose(np.asarray(metrics.ssim(frames.astype(np.float32), frames.astype(np.float32))), 1.0,
                               atol=1e-6)


def test_ssim_is_jittable_and_vmappable():
  a, b = _random_frames((2, 3, 16, 16, 3), 0), _random_frames((2, 3, 16, 16, 3), 1)
  direct = np.asarray(metrics.ssim(a, b))
  jitted = np.asarray(jax.jit(lambda x, y: metrics.ssim(x, y))(a, b))
  mapped = np.asarray(jax.vmap(lambda x, y: metrics.ssim(x, y))(a, b))
  np.testing.assert_array_equal(direct, jitted)
  np.testing.assert_allclose(direct, mapped, atol=1e-7)


# ------------------------------------------------------------------------------ PSNR


def _psnr_numpy(a, b):
  """Mind-Animator's Evaluation_Metrics/PSNR.py, per frame."""
  mse = np.mean((a / 1.0 - b / 1.0) ** 2)
  return 100 if mse < 1e-10 else 20 * math.log10(255 / math.sqrt(mse))


def test_psnr_matches_numpy_formula(movie_frames):
  cases = [(_random_frames((3, 32, 40, 3), 0), _random_frames((3, 32, 40, 3), 1)),
           (movie_frames[:-1], movie_frames[1:]),
           (movie_frames[:5], np.clip(movie_frames[:5].astype(int) + 1, 0, 255).astype(np.uint8)),
           # Mind-Animator's ground truth is float (x * 255.), not rounded.
           (movie_frames[:4], movie_frames[4:8].astype(np.float32) / 255.0 * 255.0 + 0.3)]
  for a, b in cases:
    got = np.asarray(metrics.psnr(a, b))
    ref = np.array([_psnr_numpy(x, y) for x, y in zip(a, b)])
    err = np.abs(got - ref).max()
    print(f"  psnr: max |jax - numpy| {err:.1e} dB (values {ref.min():.2f}..{ref.max():.2f})")
    assert got.shape == a.shape[:-3] and err <= 1e-4
  same = movie_frames[:3]
  np.testing.assert_array_equal(np.asarray(metrics.psnr(same, same)), 100.0)  # Mind-Animator's cap
  assert float(metrics.psnr(same[:1], same[:1], max_db=60.0)[0]) == 60.0


# ------------------------------------------------------------------------------ aggregation


def test_frame_scores_chunks_and_aggregations(movie_frames):
  recon, gt = movie_frames[:42].reshape(7, 6, 64, 64, 3), movie_frames[18:].reshape(7, 6, 64, 64, 3)
  scores = metrics.frame_scores(metrics.ssim, recon, gt, chunk_size=4)  # 42 frames: 10 full chunks + a padded one
  np.testing.assert_allclose(scores, np.asarray(metrics.ssim(recon, gt)), atol=1e-7)
  assert scores.shape == (7, 6) and scores.dtype == np.float64
  mean_t, std_t = metrics.per_frame_index(scores)
  np.testing.assert_allclose(mean_t, [np.mean(scores[:, t]) for t in range(6)])  # MinD-Video: frame index t
  np.testing.assert_allclose(std_t, [np.std(scores[:, t]) for t in range(6)])
  summary = metrics.per_video(scores)
  per = [np.mean(s) for s in scores]  # Brain Netflix / Mind-Animator: mean over frames, then over videos
  assert summary.mean == pytest.approx(np.mean(per)) and summary.std == pytest.approx(np.std(per))
  np.testing.assert_allclose(summary.per_video, per)


def test_shuffled_pairs_is_a_derangement_baseline(movie_frames):
  for rng in (jax.random.key(0), np.random.default_rng(0)):
    for n in (2, 3, 50):
      perm = metrics.derangement(rng, n)
      assert sorted(perm) == list(range(n)) and np.all(perm != np.arange(n))
  np.testing.assert_array_equal(metrics.derangement(jax.random.key(7), 20), metrics.derangement(jax.random.key(7), 20))
  clips = movie_frames[:48].reshape(8, 6, 64, 64, 3)
  recon = np.clip(clips.astype(int) + np.random.default_rng(0).integers(-20, 21, clips.shape), 0, 255).astype(np.uint8)
  ssim_scores = functools.partial(metrics.frame_scores, metrics.ssim)
  matched = metrics.per_video(ssim_scores(recon, clips)).mean
  shuffled = metrics.per_video(metrics.shuffled_pairs(ssim_scores, recon, clips, jax.random.key(1))).mean
  print(f"  noisy copies: ssim {matched:.3f}, shuffled-pairs baseline {shuffled:.3f}")
  assert shuffled < matched
  perm = metrics.derangement(jax.random.key(1), 8)
  np.testing.assert_array_equal(metrics.shuffled_pairs(ssim_scores, recon, clips, jax.random.key(1)),
                                ssim_scores(recon, clips[perm]))


# ------------------------------------------------------------------------------ N-way top-K


def _reference_n_way(pred, class_id, n_way, num_trials, top_k, *, draws=None, rng=None):
  """MinD-Video's n_way_top_k_acc (utils/eval_metrics.py) in NumPy: the same loop, either drawing with
  `rng.choice` as the original draws with np.random.choice, or reading given draws [trials, n_way-1]."""
  pick_range = [i for i in np.arange(len(pred)) if i not in class_id]
  corrects = 0
  for t in range(num_trials):
    idxs_picked = draws[t] if draws is not None else rng.choice(pick_range, n_way - 1, replace=False)
    for gt_id in class_id:
      pred_picked = np.concatenate([pred[gt_id][None], pred[idxs_picked]])
      pred_picked = pred_picked.argsort(kind="stable")[-top_k:]  # torch's CPU sort keeps ties in order
      if 0 in pred_picked:
        corrects += 1
        break
  return corrects / num_trials, np.sqrt(corrects / num_trials * (1 - corrects / num_trials) / num_trials)


def _softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _reference_classify(logits_pred, logits_gt, n, k, trials, **draw_kw):
  out = []
  for b, (lp, lg) in enumerate(zip(logits_pred, logits_gt)):
    gt_class_id = lg.argsort()[-3:]  # `logits.argsort(-1)[-3:]`
    kw = {"draws": draw_kw["draws"][b]} if "draws" in draw_kw else draw_kw
    out.append(_reference_n_way(_softmax(lp), gt_class_id, n, trials, k, **kw))
  return np.array(out)


@pytest.mark.parametrize("n,k,num_classes", [(50, 1, 1000), (2, 1, 1000), (5, 2, 20), (17, 4, 20)])
def test_n_way_equals_numpy_reference_on_shared_draws(n, k, num_classes):
  rng = np.random.default_rng(n + k)
  logits_gt = rng.normal(size=(12, num_classes)).astype(np.float32)
  # Predictions correlated with the ground truth, so accuracies spread over (0, 1).
  logits_pred = (logits_gt + rng.normal(scale=1.5, size=logits_gt.shape)).astype(np.float32)
  gt_sets = metrics.gt_class_sets(logits_gt)
  draws = metrics.draw_distractors(jax.random.key(3), gt_sets, num_classes, n, trials=40)
  got = metrics.n_way_top_k(_softmax(logits_pred), _softmax(logits_gt), n, k, distractors=draws)
  ref = _reference_classify(logits_pred, logits_gt, n, k, 40, draws=draws)
  np.testing.assert_array_equal(got.accuracy, ref[:, 0])
  np.testing.assert_allclose(got.std, ref[:, 1])
  assert got.mean == pytest.approx(ref[:, 0].mean()) and got.binomial_std == pytest.approx(ref[:, 1].mean())
  # The same with the draws made inside from the same key, and with logits instead of probabilities.
  again = metrics.n_way_top_k(logits_pred, logits_gt, n, k, trials=40, rng=jax.random.key(3))
  np.testing.assert_array_equal(again.accuracy, got.accuracy)
  print(f"  {n}-way top-{k}: mean {got.mean:.3f} (chance {got.chance:.3f})")


def test_n_way_reproduces_the_reference_numpy_rng_stream():
  """A RandomState is called exactly as the reference calls np.random: same state -> same draws -> same result."""
  rng = np.random.default_rng(0)
  logits_gt = rng.normal(size=(6, 100))
  logits_pred = logits_gt + rng.normal(scale=1.0, size=logits_gt.shape)
  got = metrics.n_way_top_k(logits_pred, logits_gt, 10, 1, trials=30, rng=np.random.RandomState(42))
  ref = _reference_classify(logits_pred, logits_gt, 10, 1, 30, rng=np.random.RandomState(42))
  np.testing.assert_array_equal(got.accuracy, ref[:, 0])
  gen = metrics.n_way_top_k(logits_pred, logits_gt, 10, 1, trials=30, rng=np.random.default_rng(42))
  ref_gen = _reference_classify(logits_pred, logits_gt, 10, 1, 30, rng=np.random.default_rng(42))
  np.testing.assert_array_equal(gen.accuracy, ref_gen[:, 0])


def test_n_way_ties_count_against_the_ground_truth():
  # fp16-like quantised probabilities: many exact ties between the ground truth and distractors.
  rng = np.random.default_rng(1)
  probs_gt = rng.random((10, 30))
  probs_pred = np.round(rng.random((10, 30)) * 4) / 4
  draws = metrics.draw_distractors(jax.random.key(0), metrics.gt_class_sets(probs_gt), 30, 6, trials=50)
  got = metrics.n_way_top_k(probs_pred, probs_gt, 6, 2, distractors=draws)
  ref = []
  for b in range(10):
    ref.append(_reference_n_way(probs_pred[b], np.argsort(probs_gt[b])[-3:], 6, 50, 2, draws=draws[b])[0])
  np.testing.assert_array_equal(got.accuracy, ref)
  flat = metrics.n_way_top_k(np.ones((4, 30)), probs_gt[:4], 6, 1, rng=np.random.default_rng(0))
  assert flat.mean == 0.0  # all tied: a stable ascending sort puts the ground truth last


def test_n_way_draws_are_distinct_outside_the_gt_set_and_deterministic():
  gt_sets = metrics.gt_class_sets(np.random.default_rng(0).random((20, 60)))
  for rng in (jax.random.key(5), np.random.default_rng(5)):
    d = metrics.draw_distractors(rng, gt_sets, 60, 58, trials=30)  # n-1 = 57 = every other class
    assert d.shape == (20, 30, 57)
    assert np.all(np.diff(np.sort(d, axis=-1), axis=-1) > 0)
    assert not np.any(d[:, :, :, None] == np.asarray(gt_sets)[:, None, None, :])
  a = metrics.draw_distractors(jax.random.key(5), gt_sets, 60, 10, trials=30)
  np.testing.assert_array_equal(a, metrics.draw_distractors(jax.random.key(5), gt_sets, 60, 10, trials=30))
  # Sample b's draws come from fold_in(key, b): independent of the batch around it.
  np.testing.assert_array_equal(a[:7], metrics.draw_distractors(jax.random.key(5), gt_sets[:7], 60, 10, trials=30))
  assert not np.array_equal(a, metrics.draw_distractors(jax.random.key(6), gt_sets, 60, 10, trials=30))


@pytest.mark.parametrize("n,k,g", [(50, 1, 3), (2, 1, 3), (10, 3, 1), (20, 5, 3)])
def test_n_way_random_predictions_give_chance(n, k, g):
  rng = np.random.default_rng(n * 10 + k)
  probs_gt, probs_pred = rng.random((400, 200)), rng.random((400, 200))
  res = metrics.n_way_top_k(probs_pred, probs_gt, n, k, trials=100, rng=jax.random.key(n), num_gt_classes=g)
  chance = metrics.n_way_chance(n, k, g)
  # Each sample's predictions are fixed across its trials, so samples, not trials, are the independent draws.
  se = float(np.std(res.accuracy)) / math.sqrt(400)
  print(f"  random predictions {n}-way top-{k}, {g} gt classes: {res.mean:.4f}, chance {chance:.4f} (se {se:.4f})")
  assert res.chance == chance and abs(res.mean - chance) < 4 * se
  assert metrics.n_way_chance(n, k, 1) == pytest.approx(k / n)


def test_n_way_perfect_predictions_score_one():
  probs = _softmax(np.random.default_rng(0).normal(size=(30, 400)) * 3)
  for n, k in ((2, 1), (50, 5)):
    res = metrics.n_way_top_k(probs, probs, n, k, rng=np.random.default_rng(0))
    assert res.mean == 1.0 and np.all(res.std == 0)
  one_hot = np.eye(400)[np.random.default_rng(1).integers(0, 400, 30)]
  assert metrics.n_way_top_k(one_hot, probs, 50, 1, rng=np.random.default_rng(1), num_gt_classes=1).mean <= 0.1
  assert metrics.n_way_chance(2) == 0.75 and metrics.n_way_chance(50) == pytest.approx(3 / 52)


# ------------------------------------------------------------------------------ errors


def test_errors_name_the_bad_value_and_the_fix():
  p = np.random.default_rng(0).random((4, 10))
  with pytest.raises(ValueError, match=r"n = 9 needs n-1 = 8 distinct distractor classes outside the 3 ground-truth "
                                       r"classes, but the classifier has 10 classes \(7 candidates\); use n <= 8"):
    metrics.n_way_top_k(p, p, 9, 1, rng=jax.random.key(0))
  assert metrics.n_way_top_k(p, p, 8, 1, rng=np.random.default_rng(0)).mean == 1.0  # the largest n that fits
  with pytest.raises(ValueError, match=r"k = 2 with n = 2; top-k needs 1 <= k < n"):
    metrics.n_way_top_k(p, p, 2, 2, rng=jax.random.key(0))
  with pytest.raises(ValueError, match=r"exactly one of rng .* and distractors"):
    metrics.n_way_top_k(p, p, 5, 1)
  with pytest.raises(ValueError, match=r"probs_pred \(4, 10\) and probs_gt \(3, 10\) differ"):
    metrics.n_way_top_k(p, p[:3], 5, 1, rng=jax.random.key(0))
  with pytest.raises(ValueError, match=r"expected float \[num_samples, num_classes\]"):
    metrics.n_way_top_k(p[0], p[0], 5, 1, rng=jax.random.key(0))
  with pytest.raises(TypeError, match=r"pass a jax PRNG key .* or a numpy"):
    metrics.n_way_top_k(p, p, 5, 1, rng=3)
  gt = np.asarray(metrics.gt_class_sets(p))
  bad = metrics.draw_distractors(np.random.default_rng(0), gt, 10, 5, trials=2)
  bad[1, 0, 2] = gt[1, 0]
  with pytest.raises(ValueError, match=r"distractors are ground-truth classes of their sample"):
    metrics.n_way_top_k(p, p, 5, 1, distractors=bad)
  with pytest.raises(ValueError, match=r"draws the same distractor class twice"):
    metrics.n_way_top_k(p, p, 3, 1, distractors=np.zeros((4, 2, 2), np.int64))
  with pytest.raises(ValueError, match=r"distractors have shape \(4, 2, 3\); expected \[4, trials, 4\]"):
    metrics.n_way_top_k(p, p, 5, 1, distractors=np.zeros((4, 2, 3), np.int64))
  small = np.zeros((1, 6, 9, 3), np.uint8)
  with pytest.raises(ValueError, match=r"frames of 6x9 pixels are smaller than the 7x7 window"):
    metrics.ssim(small, small)
  with pytest.raises(ValueError, match=r"look channels-first .* np.moveaxis\(x, -3, -1\)"):
    metrics.ssim(np.zeros((2, 3, 32, 32), np.uint8), np.zeros((2, 3, 32, 32), np.uint8))
  with pytest.raises(ValueError, match=r"shapes \(2, 8, 8, 3\) and \(2, 8, 9, 3\)"):
    metrics.psnr(np.zeros((2, 8, 8, 3)), np.zeros((2, 8, 9, 3)))
  with pytest.raises(ValueError, match=r"win_size = 8; it must be an odd integer"):
    metrics.ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), win_size=8)
  with pytest.raises(ValueError, match=r"at least 2 clips"):
    metrics.shuffled_pairs(metrics.psnr, np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)), jax.random.key(0))
  with pytest.raises(ValueError, match=r"expected a non-empty \[num_videos, num_frames\]"):
    metrics.per_video(np.zeros(5))
