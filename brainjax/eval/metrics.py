"""The papers' reconstruction metrics in JAX, with the references' aggregations and baselines.

Per frame (jit-able, batched over any leading axes of [..., H, W, 3] frames):

  ssim(a, b)   skimage.metrics.structural_similarity(a, b, data_range=255, channel_axis=-1),
               what MinD-Video, Brain Netflix and Mind-Animator call: 7x7 uniform window,
               sample covariance (49/48), K1 0.01, K2 0.03, SSIM map cropped by (7-1)//2 = 3
               pixels on each side, averaged per channel, then over channels. uint8 frames take an
               exact path: the window sums of x, y, x^2, y^2 and xy and the variance numerators
               (49 sum(x^2) - sum(x)^2, ...) are integers, computed in int32 without overflow, so
               float32 is only used for the final ratio (skimage works in float64; the two agree
               to ~1e-7, where a float32 E[x^2] - E[x]^2 would lose ~1e-4 on smooth frames).
               Float frames (e.g. ground truth kept as x * 255.) go through float32 after
               subtracting each frame's per-channel mean (agreement ~1e-6).
  psnr(a, b)   Mind-Animator's Evaluation_Metrics/PSNR.py: 20 log10(255 / sqrt(MSE)) with the MSE over
               H x W x 3 on the 0..255 scale; identical frames (MSE < 1e-10) give `max_db` = 100, the
               value Mind-Animator returns, so a mean over frames stays finite. MinD-Video and Brain
               Netflix report no PSNR.

Over a test set (host side, numpy, float64 as the references' np.mean / np.std):

  frame_scores(metric, recon, gt)  [N, T, H, W, 3] pairs -> [N, T] scores, in fixed-size jitted chunks.
  per_frame_index(scores)          [N, T] -> (mean [T], std [T]): MinD-Video (scripts/eval_all.py) logs
                                   SSIM and the image N-way accuracy for each frame index separately.
  per_video(scores)                [N, T] -> (mean, std, per_video [N]): mean over a video's frames, then
                                   mean / std over videos (Brain Netflix `ssim_metric_video`, Mind-Animator).

N-way top-K classification (MinD-Video `utils/eval_metrics.py::n_way_top_k_acc`, copied verbatim into
Brain Netflix `evaluation/eval_metrics.py` and Mind-Animator `Evaluation_Metrics/*_classification.py`):

  n_way_top_k(probs_pred, probs_gt, n, k, trials=100, rng)
      For each sample: the ground-truth class set is the top-3 classes of the classifier on the ground
      truth (`logits.argsort()[-3:]`). Each trial draws n-1 distinct distractor classes uniformly from
      the classes outside that set (one draw per trial, shared by the 3 classes). The trial succeeds if,
      for ANY of the 3 ground-truth classes g, the prediction's probability of g ranks within the top k
      of [p(g), p(distractors)]: the reference loops over the 3 ids and breaks on the first hit. This is
      what the code does; the papers' prose ("the ground-truth class") suggests one class, and MinD-Vis
      (`code/eval_metrics.py`, the image predecessor) does use only the top-1 class:
      num_gt_classes=1 gives that variant. Ties count against the ground truth (the reference's
      ascending argsort, stable on CPU, puts index 0 below equal distractors): g ranks within the top k
      iff fewer than k distractors have p >= p(g). Any monotone scores work for both arguments
      (logits or softmax probabilities give the same result).
      Returns per-sample accuracy (hits / trials), the per-sample binomial std sqrt(a(1-a)/trials)
      (the reference's second return value), their means (MinD-Video prints mean(acc) +- mean(std)),
      and the chance level of the procedure.
  draw_distractors(rng, gt_classes, num_classes, n, trials)
      The draws alone, so another implementation can be fed the very same ones. rng is a jax key
      (vectorised; sample b's draws come from fold_in(rng, b)) or a numpy Generator / RandomState,
      which is called exactly as the reference calls the global numpy RNG:
      `rng.choice(pick_range, n - 1, replace=False)` per sample, per trial, pick_range ascending; a
      RandomState in the global state the reference saw reproduces its draws.
  n_way_chance(n, k, num_gt_classes=3)
      The accuracy of predictions independent of the ground truth. Because any of the 3 ground-truth
      classes may hit, it is NOT k/n: for k = 1 it is 3/(n+2), i.e. 0.75 for the "2-way" test and
      0.058 for 50-way (k/n only with num_gt_classes=1).

Baselines, to print next to every metric:

  shuffled_pairs(metric, recon, gt, rng)   the metric of each reconstruction against ANOTHER clip's
                                           ground truth (a random derangement): what the metric gives
                                           for a decoder that ignores the brain but makes plausible frames.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Rng = Any  # a jax PRNG key, or np.random.Generator / np.random.RandomState

MINDVIDEO_GT_CLASSES = 3  # `logits.argsort(-1)[-3:]` in MinD-Video's img/video_classify_metric

# --------------------------------------------------------------------------------------- frames


def _check_pair(a: Any, b: Any, what: str) -> None:
  if tuple(a.shape) != tuple(b.shape):
    raise ValueError(f"{what}: the two inputs have shapes {tuple(a.shape)} and {tuple(b.shape)}; pass reconstructions "
                     f"and ground truth of one shape [..., H, W, 3].")
  if a.ndim < 3:
    raise ValueError(f"{what}: frames of shape {tuple(a.shape)}; expected [..., H, W, C] with the channels last "
                     f"(a grayscale frame needs a trailing axis of 1).")
  if a.shape[-1] not in (1, 3, 4) and a.shape[-3] in (1, 3, 4):
    raise ValueError(f"{what}: frames of shape {tuple(a.shape)} look channels-first ([..., C, H, W]); move the "
                     f"channels last, e.g. np.moveaxis(x, -3, -1).")


def _box_sum(x: jax.Array, win: int) -> jax.Array:
  """Sum over every win x win window fully inside the frame ('valid'): [F, H, W, C] -> [F, H-win+1, W-win+1, C]."""
  return jax.lax.reduce_window(x, jnp.zeros((), x.dtype), jax.lax.add, (1, win, win, 1), (1, 1, 1, 1), "VALID")


@functools.partial(jax.jit, static_argnames=("win_size", "data_range", "k1", "k2"))
def _ssim(a: jax.Array, b: jax.Array, win_size: int, data_range: float, k1: float, k2: float) -> jax.Array:
  lead, (h, w, c) = a.shape[:-3], a.shape[-3:]
  a, b = a.reshape(-1, h, w, c), b.reshape(-1, h, w, c)
  n = win_size * win_size
  c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
  f32 = lambda v: v.astype(jnp.float32)
  if a.dtype == jnp.uint8 and b.dtype == jnp.uint8:
    # Exact integer window statistics. With ux = sx/n, vx = (n sxx - sx^2) / (n (n-1)) (sample
    # covariance), skimage's (2 ux uy + C1)(2 vxy + C2) / ((ux^2 + uy^2 + C1)(vx + vy + C2)) is
    # (2 sx sy + C1 n^2)(2 cxy + C2 n (n-1)) / ((sx^2 + sy^2 + C1 n^2)(cxx + cyy + C2 n (n-1))).
    # Bounds for 8-bit values and n <= 121 (11x11): every term below stays under 2^31.
    x, y = a.astype(jnp.int32), b.astype(jnp.int32)
    sx, sy = _box_sum(x, win_size), _box_sum(y, win_size)
    sxx, syy, sxy = _box_sum(x * x, win_size), _box_sum(y * y, win_size), _box_sum(x * y, win_size)
    cxx, cyy, cxy = n * sxx - sx * sx, n * syy - sy * sy, n * sxy - sx * sy
    a1 = f32(2 * sx * sy) + c1 * n * n
    b1 = f32(sx * sx + sy * sy) + c1 * n * n
    a2 = 2.0 * f32(cxy) + c2 * n * (n - 1)
    b2 = f32(cxx + cyy) + c2 * n * (n - 1)
  else:
    # Float path: window means of frames centred on their per-channel means (variances and the
    # covariance do not change; the means are shifted back), which keeps E[x^2] - E[x]^2 small.
    x, y = f32(a), f32(b)
    mx, my = x.mean(axis=(1, 2), keepdims=True), y.mean(axis=(1, 2), keepdims=True)
    x, y = x - mx, y - my
    bx, by = _box_sum(x, win_size) / n, _box_sum(y, win_size) / n
    cov_norm = n / (n - 1)
    vx = cov_norm * (_box_sum(x * x, win_size) / n - bx * bx)
    vy = cov_norm * (_box_sum(y * y, win_size) / n - by * by)
    vxy = cov_norm * (_box_sum(x * y, win_size) / n - bx * by)
    ux, uy = bx + mx, by + my
    a1, b1 = 2 * ux * uy + c1, ux * ux + uy * uy + c1
    a2, b2 = 2 * vxy + c2, vx + vy + c2
  s = (a1 * a2) / (b1 * b2)
  # Every channel's cropped map has the same size, so the mean over channels of the per-channel
  # means is the mean over everything.
  return s.mean(axis=(1, 2, 3)).reshape(lead)


def ssim(a: Any, b: Any, *, data_range: float = 255.0, win_size: int = 7, k1: float = 0.01,
         k2: float = 0.03) -> jax.Array:
  """Mean SSIM of each frame pair: [..., H, W, C] x 2 -> float32 [...].

  Equals skimage.metrics.structural_similarity(a, b, data_range=255, channel_axis=-1) (the defaults:
  uniform 7x7 window, use_sample_covariance=True, K1 0.01, K2 0.03) per frame; see the module
  docstring for the exact uint8 path. H and W must be >= win_size (7), as skimage requires.
  """
  a, b = jnp.asarray(a), jnp.asarray(b)
  _check_pair(a, b, "ssim")
  if not isinstance(win_size, int) or win_size < 3 or win_size % 2 == 0:
    raise ValueError(f"ssim: win_size = {win_size!r}; it must be an odd integer >= 3 (skimage's default is 7).")
  if a.dtype == jnp.uint8 and b.dtype == jnp.uint8 and win_size > 11:
    raise ValueError(f"ssim: win_size = {win_size} is too large for the exact 8-bit path (int32 window sums); "
                     f"use win_size <= 11, or pass float frames.")
  h, w = a.shape[-3:-1]
  if min(h, w) < win_size:
    raise ValueError(f"ssim: frames of {h}x{w} pixels are smaller than the {win_size}x{win_size} window; frames "
                     f"must be at least {win_size}x{win_size} (skimage raises the same), or pass a smaller odd "
                     f"win_size.")
  if not data_range > 0:
    raise ValueError(f"ssim: data_range = {data_range!r}; it must be positive (255 for 0..255 frames).")
  return _ssim(a, b, win_size, float(data_range), float(k1), float(k2))


@functools.partial(jax.jit, static_argnames=("data_range", "max_db"))
def _psnr(a: jax.Array, b: jax.Array, data_range: float, max_db: float) -> jax.Array:
  d = a.astype(jnp.float32) - b.astype(jnp.float32)  # exact for 8-bit values
  mse = jnp.mean(d * d, axis=(-3, -2, -1))
  db = 20.0 * math.log10(data_range) - 10.0 * jnp.log10(jnp.maximum(mse, 1e-10))
  return jnp.where(mse < 1e-10, jnp.float32(max_db), db)


def psnr(a: Any, b: Any, *, data_range: float = 255.0, max_db: float = 100.0) -> jax.Array:
  """PSNR in dB of each frame pair: [..., H, W, C] x 2 -> float32 [...].

  20 log10(data_range / sqrt(MSE)), the MSE over H, W and the channels; max_db (100, as
  Mind-Animator returns) when MSE < 1e-10, i.e. for identical frames.
  """
  a, b = jnp.asarray(a), jnp.asarray(b)
  _check_pair(a, b, "psnr")
  if not data_range > 0:
    raise ValueError(f"psnr: data_range = {data_range!r}; it must be positive (255 for 0..255 frames).")
  return _psnr(a, b, float(data_range), float(max_db))


# --------------------------------------------------------------------------------------- over a test set


def frame_scores(metric: Callable[[jax.Array, jax.Array], jax.Array], recon: Any, gt: Any, *,
                 chunk_size: int = 32) -> np.ndarray:
  """metric(recon, gt) for every frame of [..., H, W, C] arrays (e.g. [N, T, H, W, 3]) -> float64 [...].

  Frames are sent to the device `chunk_size` at a time (the last chunk is padded, so one compiled
  shape serves all), which bounds memory for a 1200 x 6 x 256 x 256 x 3 test set held on the host.
  """
  _check_pair(recon, gt, "frame_scores")
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"frame_scores: chunk_size = {chunk_size!r}; it must be a positive integer.")
  lead, frame = tuple(recon.shape[:-3]), tuple(recon.shape[-3:])
  a, b = np.reshape(recon, (-1, *frame)), np.reshape(gt, (-1, *frame))
  total = a.shape[0]
  size = min(chunk_size, max(total, 1))
  out = []
  for start in range(0, total, size):
    ca, cb = a[start:start + size], b[start:start + size]
    real = ca.shape[0]
    if real < size:  # pad with copies of the last frame; their scores are dropped
      pad = ((0, size - real),) + ((0, 0),) * 3
      ca, cb = np.pad(ca, pad, mode="edge"), np.pad(cb, pad, mode="edge")
    out.append(np.asarray(metric(jnp.asarray(ca), jnp.asarray(cb)), np.float64)[:real])
  scores = np.concatenate(out) if out else np.zeros((0,), np.float64)
  return scores.reshape(lead)


class FrameIndexSummary(NamedTuple):
  mean: np.ndarray  # [T]: mean over samples of frame index t
  std: np.ndarray   # [T]: np.std (ddof 0) over samples, as MinD-Video's ssim_score_only


class VideoSummary(NamedTuple):
  mean: float             # mean over videos of the per-video means
  std: float              # np.std (ddof 0) over videos, as Mind-Animator prints
  per_video: np.ndarray   # [N]: each video's mean over its frames


def _scores_2d(scores: Any, what: str) -> np.ndarray:
  scores = np.asarray(scores, np.float64)
  if scores.ndim != 2 or 0 in scores.shape:
    raise ValueError(f"{what}: scores of shape {scores.shape}; expected a non-empty [num_videos, num_frames] array "
                     f"(frame_scores of [N, T, H, W, 3] clips gives one).")
  return scores


def per_frame_index(scores: Any) -> FrameIndexSummary:
  """[N, T] per-frame scores -> mean and std over the N samples for each frame index (MinD-Video)."""
  scores = _scores_2d(scores, "per_frame_index")
  return FrameIndexSummary(scores.mean(axis=0), scores.std(axis=0))


def per_video(scores: Any) -> VideoSummary:
  """[N, T] per-frame scores -> mean over frames, then mean and std over videos (Brain Netflix, Mind-Animator)."""
  per = _scores_2d(scores, "per_video").mean(axis=1)
  return VideoSummary(float(per.mean()), float(per.std()), per)


# --------------------------------------------------------------------------------------- baselines


def _is_numpy_rng(rng: Any) -> bool:
  return isinstance(rng, (np.random.Generator, np.random.RandomState))


def _check_rng(rng: Any, what: str) -> None:
  if _is_numpy_rng(rng):
    return
  try:
    ok = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) or (rng.dtype == jnp.uint32 and rng.shape == (2,))
  except AttributeError:
    ok = False
  if not ok:
    raise TypeError(f"{what}: rng = {rng!r}; pass a jax PRNG key (jax.random.key(seed)) or a numpy "
                    f"np.random.Generator / np.random.RandomState.")


def derangement(rng: Rng, n: int) -> np.ndarray:
  """A random permutation of range(n) without fixed points (a uniformly random n-cycle); n >= 2."""
  _check_rng(rng, "derangement")
  if not isinstance(n, (int, np.integer)) or n < 2:
    raise ValueError(f"derangement: n = {n!r}; pairing each clip with another clip's ground truth needs at "
                     f"least 2 clips.")
  order = rng.permutation(n) if _is_numpy_rng(rng) else np.asarray(jax.random.permutation(rng, n))
  perm = np.empty(n, np.int64)
  perm[order] = np.roll(order, -1)  # order[i] -> order[i + 1]: one cycle through all clips
  return perm


def shuffled_pairs(metric: Callable[..., Any], recon: Any, gt: Any, rng: Rng, **kwargs) -> Any:
  """metric(recon, gt[perm], **kwargs) with perm a derangement: every reconstruction scored against
  another clip's ground truth. Works for any metric taking (reconstructions, ground truth) with the clips
  on axis 0: ssim / psnr / frame_scores on frames, n_way_top_k on class probabilities."""
  if len(recon) != len(gt):
    raise ValueError(f"shuffled_pairs: {len(recon)} reconstructions but {len(gt)} ground-truth clips; pass "
                     f"matching arrays (clips on axis 0).")
  return metric(recon, gt[derangement(rng, len(gt))], **kwargs)


def n_way_chance(n: int, k: int = 1, num_gt_classes: int = MINDVIDEO_GT_CLASSES) -> float:
  """Accuracy of the N-way top-K test for scores independent of the ground truth.

  The best of the G ground-truth classes must beat all but at most k-1 of the n-1 distractors.
  With G + m (m = n-1) exchangeable scores, P(exactly j distractors above the best ground-truth
  class) = C(m+G-1-j, G-1) / C(m+G, G); the chance is its sum over j < k. G = 1 gives k/n;
  G = 3, k = 1 gives 3/(n+2).
  """
  _check_n_k(n, k, num_gt_classes, None, "n_way_chance")
  m, g = n - 1, num_gt_classes
  return float(sum(math.comb(m + g - 1 - j, g - 1) for j in range(k)) / math.comb(m + g, g))


# --------------------------------------------------------------------------------------- N-way top-K


class NWayResult(NamedTuple):
  accuracy: np.ndarray  # [B] hits / trials per sample (the reference's `acc`)
  std: np.ndarray       # [B] binomial std sqrt(acc (1 - acc) / trials) per sample (the reference's `std`)
  mean: float           # mean accuracy over samples: the number the papers report
  binomial_std: float   # mean of the per-sample stds (MinD-Video prints mean(acc) +- mean(std))
  chance: float         # n_way_chance(n, k, num_gt_classes)


def _check_n_k(n: Any, k: Any, num_gt_classes: Any, num_classes: int | None, what: str) -> None:
  if not isinstance(num_gt_classes, (int, np.integer)) or num_gt_classes < 1:
    raise ValueError(f"{what}: num_gt_classes = {num_gt_classes!r}; it must be a positive integer (3 as MinD-Video, "
                     f"1 as MinD-Vis).")
  if not isinstance(n, (int, np.integer)) or n < 2:
    raise ValueError(f"{what}: n = {n!r}; the N-way test needs n >= 2 candidates (the papers use 2 and 50).")
  if not isinstance(k, (int, np.integer)) or not 1 <= k < n:
    raise ValueError(f"{what}: k = {k!r} with n = {n}; top-k needs 1 <= k < n (the reference asserts n_way > top_k).")
  if num_classes is not None:
    if num_gt_classes > num_classes:
      raise ValueError(f"{what}: num_gt_classes = {num_gt_classes} but the classifier has only {num_classes} "
                       f"classes.")
    if n - 1 > num_classes - num_gt_classes:
      raise ValueError(
          f"{what}: n = {n} needs n-1 = {n - 1} distinct distractor classes outside the {num_gt_classes} "
          f"ground-truth classes, but the classifier has {num_classes} classes ({num_classes - num_gt_classes} "
          f"candidates); use n <= {num_classes - num_gt_classes + 1}.")


def _check_probs(probs: Any, what: str, name: str) -> jax.Array:
  probs = jnp.asarray(probs)
  if probs.ndim != 2 or not jnp.issubdtype(probs.dtype, jnp.floating):
    raise ValueError(f"{what}: {name} has shape {tuple(probs.shape)} and dtype {probs.dtype}; expected float "
                     f"[num_samples, num_classes] class probabilities (or logits) from the classifier.")
  return probs


@functools.partial(jax.jit, static_argnames=("num_gt_classes",))
def gt_class_sets(probs_gt: jax.Array, num_gt_classes: int = MINDVIDEO_GT_CLASSES) -> jax.Array:
  """int32 [B, G]: the G highest-scoring classes of each ground-truth sample, best first."""
  return jax.lax.top_k(probs_gt, num_gt_classes)[1].astype(jnp.int32)


_DRAW_CHUNK = 16  # samples per step of the draw loop: bounds memory to 16 x trials x classes draws


@functools.partial(jax.jit, static_argnames=("num_classes", "n", "trials"))
def _draw_jax(key: jax.Array, gt_classes: jax.Array, num_classes: int, n: int, trials: int) -> jax.Array:
  def one(b, gt):
    # The n-1 largest of iid 24-bit draws (exact in float32, whose top_k is ~15x faster than int32's
    # on CPU), with the ground-truth classes pushed below every draw: a uniformly random (n-1)-subset
    # of the other classes, in random order.
    bits = jax.random.bits(jax.random.fold_in(key, b), (trials, num_classes), jnp.uint32)
    draws = (bits >> 8).astype(jnp.float32)
    draws = jnp.where(jnp.zeros(num_classes, jnp.bool_).at[gt].set(True), -1.0, draws)
    return jax.lax.top_k(draws, n - 1)[1].astype(jnp.int32)
  num = gt_classes.shape[0]
  pad = -num % _DRAW_CHUNK
  ids = jnp.arange(num + pad).reshape(-1, _DRAW_CHUNK)
  gts = jnp.pad(gt_classes, ((0, pad), (0, 0))).reshape(-1, _DRAW_CHUNK, gt_classes.shape[1])
  out = jax.lax.map(lambda args: jax.vmap(one)(*args), (ids, gts))
  return out.reshape(num + pad, trials, n - 1)[:num]


def draw_distractors(rng: Rng, gt_classes: Any, num_classes: int, n: int, trials: int = 100) -> np.ndarray:
  """int32 [B, trials, n-1]: each trial's distinct distractor classes, none in the sample's gt_classes [B, G].

  rng: a jax key (sample b uses fold_in(rng, b), so a sample's draws do not depend on the batch), or a
  numpy Generator / RandomState called as the reference calls np.random (see the module docstring).
  """
  _check_rng(rng, "draw_distractors")
  gt_classes = np.asarray(gt_classes)
  if gt_classes.ndim != 2 or not np.issubdtype(gt_classes.dtype, np.integer):
    raise ValueError(f"draw_distractors: gt_classes has shape {gt_classes.shape} and dtype {gt_classes.dtype}; "
                     f"expected int [num_samples, num_gt_classes] (gt_class_sets gives it).")
  _check_n_k(n, 1, gt_classes.shape[1], num_classes, "draw_distractors")
  if not isinstance(trials, (int, np.integer)) or trials < 1:
    raise ValueError(f"draw_distractors: trials = {trials!r}; it must be a positive integer (the papers use 100).")
  if not _is_numpy_rng(rng):
    return np.array(_draw_jax(rng, jnp.asarray(gt_classes, jnp.int32), int(num_classes), int(n), int(trials)))
  out = np.empty((gt_classes.shape[0], trials, n - 1), np.int32)
  for b, gt in enumerate(gt_classes):
    # The reference's `[i for i in np.arange(C) if i not in class_id]`; choice() draws the same
    # indices from a list or an array.
    pick_range = np.setdiff1d(np.arange(num_classes), gt)
    for t in range(trials):
      out[b, t] = rng.choice(pick_range, n - 1, replace=False)
  return out


@functools.partial(jax.jit, static_argnames=("k",))
def n_way_hits(probs_pred: jax.Array, gt_classes: jax.Array, distractors: jax.Array, k: int) -> jax.Array:
  """bool [B, trials]: whether some ground-truth class ranks within the top k of itself + the trial's distractors."""
  p_gt = jnp.take_along_axis(probs_pred, gt_classes, axis=1)                    # [B, G]
  p_d = jnp.take_along_axis(probs_pred[:, None, :], distractors, axis=2)        # [B, T, n-1]
  above = jnp.sum(p_d[:, :, None, :] >= p_gt[:, None, :, None], axis=-1)      # [B, T, G]: ties count against
  return jnp.any(above < k, axis=-1)


def n_way_top_k(probs_pred: Any, probs_gt: Any, n: int, k: int = 1, trials: int = 100, rng: Rng | None = None, *,
                num_gt_classes: int = MINDVIDEO_GT_CLASSES, distractors: Any = None) -> NWayResult:
  """The N-way top-K classification test (MinD-Video's n_way_top_k_acc; see the module docstring).

  Args:
    probs_pred: [B, C] the classifier's probabilities (or logits) on the reconstructions.
    probs_gt: [B, C] the same classifier on the ground truth.
    n, k: n-way (2 and 50 in the papers), top-k (1).
    trials: draws per sample (100 in the papers).
    rng: a jax key or a numpy Generator / RandomState for the distractor draws (draw_distractors).
    num_gt_classes: size of the ground-truth class set (3 as MinD-Video; 1 as MinD-Vis).
    distractors: int [B, trials, n-1] draws to use instead of rng (exactly one of the two).
  """
  what = "n_way_top_k"
  probs_pred, probs_gt = _check_probs(probs_pred, what, "probs_pred"), _check_probs(probs_gt, what, "probs_gt")
  if probs_pred.shape != probs_gt.shape:
    raise ValueError(f"{what}: probs_pred {tuple(probs_pred.shape)} and probs_gt {tuple(probs_gt.shape)} differ; "
                     f"both must be [num_samples, num_classes] from the same classifier.")
  num_samples, num_classes = probs_pred.shape
  _check_n_k(n, k, num_gt_classes, num_classes, what)
  gt_classes = gt_class_sets(probs_gt, num_gt_classes)
  if (rng is None) == (distractors is None):
    raise ValueError(f"{what}: pass exactly one of rng (to draw the distractor classes) and distractors (draws "
                     f"made beforehand with draw_distractors).")
  if distractors is None:
    distractors = draw_distractors(rng, gt_classes, num_classes, n, trials)
  else:
    distractors = _check_distractors(np.asarray(distractors), np.asarray(gt_classes), num_classes, n, what)
  trials = distractors.shape[1]
  hits = np.asarray(n_way_hits(probs_pred, gt_classes, jnp.asarray(distractors, jnp.int32), int(k)))
  acc = hits.mean(axis=1, dtype=np.float64)
  std = np.sqrt(acc * (1.0 - acc) / trials)
  return NWayResult(acc, std, float(acc.mean()), float(std.mean()), n_way_chance(n, k, num_gt_classes))


def _check_distractors(d: np.ndarray, gt_classes: np.ndarray, num_classes: int, n: int, what: str) -> np.ndarray:
  if d.ndim != 3 or d.shape[0] != gt_classes.shape[0] or d.shape[2] != n - 1 or d.shape[1] < 1:
    raise ValueError(f"{what}: distractors have shape {d.shape}; expected [{gt_classes.shape[0]}, trials, {n - 1}] "
                     f"(n-1 classes per trial for each sample).")
  if not np.issubdtype(d.dtype, np.integer) or d.min() < 0 or d.max() >= num_classes:
    raise ValueError(f"{what}: distractors must be class indices in 0..{num_classes - 1}.")
  if np.any(np.diff(np.sort(d, axis=-1), axis=-1) == 0):
    raise ValueError(f"{what}: some trial draws the same distractor class twice; the draws must be distinct.")
  if np.any(d[:, :, :, None] == gt_classes[:, None, None, :]):
    raise ValueError(f"{what}: some distractors are ground-truth classes of their sample; draw them outside the "
                     f"top-{gt_classes.shape[1]} set (draw_distractors does).")
  return d
