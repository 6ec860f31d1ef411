"""Does a reconstructed clip move the way its ground truth does? A salient-object tracker and two scores.

The papers judge motion only through a video classifier (MinD-Video's VideoMAE N-way test), which says
little when it fails: a clip can miss because its object jitters, stands still or moves the wrong way.
On videos of one saturated object over a muted background (brainjax's synthetic benchmark) the object
can be tracked directly, and these scores answer what a person watching the report asks:

  track(videos)        uint8 [N, T, H, W, 3] -> centres [N, T, 2] (x, y in pixels) and found [N, T].
                       Weight per pixel: max(0, saturation - threshold), saturation = max - min of
                       RGB in [0, 1]; the centre is the weighted circular mean along each axis (the
                       synthetic objects wrap around the frame edges, a torus, and a plain mean would
                       jump when one does). `found` is False where the weight sums below `min_mass`
                       (no saturated object, e.g. a white one).
  steps(centres, size) [N, T, 2] -> [N, T-1, 2] displacements between consecutive frames, taken the
                       short way round the torus.
  follow(videos)       ObjectPath(steps, found in every frame): each clip tracked once.
  motion_scores(recon, gt, pairs=None)
                       per clip: `step_px`, the median distance the reconstruction's object moves from
                       one frame to the next (NaN unless tracked in every frame); `gt_step_px`, the same
                       for the ground truth; `scored`, whether the ground truth has a clean direction:
                       tracked in every frame, a net displacement of at least `min_net_px`, and every
                       step going its way and none longer than twice the median step + 1 px (which
                       leaves out windows with a cut, where the object jumps);
                       `agrees`, whether the reconstruction's net displacement points within 45 degrees
                       of the ground truth's (an untracked reconstruction never agrees). With `pairs`
                       (an index per clip) the reconstruction is compared with ANOTHER clip's ground
                       truth: the shuffled-pairs baseline. A direction independent of the ground
                       truth's agrees with probability 1/4 (the chance level).
  compare(recon_path, gt_path, pairs=None)
                       the same scores from paths already followed (evaluate follows the ground truth
                       once for the reconstructions and every baseline).

On the synthetic test set the tracker is exact enough to trust: the ground truth's own net displacement
points the captioned way in every scored window (tests/eval/test_motion.py checks it on rendered clips).
On natural movies, which have no single saturated object, these numbers mean nothing; evaluate computes
them only when `config.evaluate.object_motion` is set (the demo presets).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

CHANCE = 0.25  # P(a uniformly random direction lies within 45 degrees of a given one)
_COS_45 = np.cos(np.pi / 4)


def _check_videos(videos: np.ndarray, what: str) -> np.ndarray:
  videos = np.asarray(videos)
  if videos.ndim != 5 or videos.shape[-1] != 3 or videos.shape[2] != videos.shape[3]:
    raise ValueError(f"{what} must be square RGB clips [N, T, H, W, 3], got shape {videos.shape}.")
  if videos.dtype != np.uint8:
    raise ValueError(f"{what} must be uint8 frames (0..255), got {videos.dtype}; convert with "
                     "brainjax.models.vae.to_uint8 or np.clip(x, 0, 255).astype(np.uint8).")
  if videos.shape[1] < 2:
    raise ValueError(f"{what} has {videos.shape[1]} frame per clip; motion needs at least 2.")
  return videos


def track(videos: np.ndarray, *, threshold: float = 0.35, min_mass: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """Centres [N, T, 2] (x, y, pixels, in [-H/2, H/2)) and found [N, T] of the saturated object per frame."""
  videos = _check_videos(videos, "videos")
  x = videos.astype(np.float32) / 255.0
  weight = np.clip(x.max(-1) - x.min(-1) - threshold, 0.0, None)  # [N, T, H, W]
  size = videos.shape[2]
  phase = np.exp(2j * np.pi * np.arange(size) / size)
  # Circular mean per axis: sum of weight * e^(i angle) over the marginal, back to pixels.
  cx = np.angle(weight.sum(-2) @ phase) / (2 * np.pi) * size
  cy = np.angle(weight.sum(-1) @ phase) / (2 * np.pi) * size
  return np.stack([cx, cy], -1), weight.sum((-2, -1)) >= min_mass


def steps(centres: np.ndarray, size: int) -> np.ndarray:
  """Frame-to-frame displacements [N, T-1, 2] on a torus of side `size` (each in [-size/2, size/2))."""
  d = np.diff(centres, axis=1)
  return (d + size / 2) % size - size / 2


class MotionScores(NamedTuple):
  step_px: np.ndarray     # [N] median step of the reconstruction's object (NaN: not tracked in every frame)
  gt_step_px: np.ndarray  # [N] the same for the ground truth
  scored: np.ndarray      # [N] bool: the ground truth (of the compared clip) has a clean direction
  agrees: np.ndarray      # [N] bool: the reconstruction moves within 45 degrees of it (False where not scored)


class ObjectPath(NamedTuple):
  steps: np.ndarray  # [N, T-1, 2] frame-to-frame displacements of the tracked object
  found: np.ndarray  # [N] bool: tracked in every frame


def follow(videos: np.ndarray) -> ObjectPath:
  """Tracks every clip once; `compare` scores paths, so one ground truth serves every comparison."""
  centres, found = track(videos)
  return ObjectPath(steps(centres, videos.shape[2]), found.all(1))


def motion_scores(recon: np.ndarray, gt: np.ndarray, pairs: np.ndarray | None = None, *,
                  min_net_px: float = 1.0) -> MotionScores:
  """Per-clip motion scores of reconstructions against their ground truth (or pairs[i]'s; see module doc)."""
  recon, gt = _check_videos(recon, "recon"), _check_videos(gt, "gt")
  if recon.shape != gt.shape:
    raise ValueError(f"recon {recon.shape} and gt {gt.shape} must have the same shape.")
  return compare(follow(recon), follow(gt), pairs, min_net_px=min_net_px)


def compare(recon: ObjectPath, gt: ObjectPath, pairs: np.ndarray | None = None, *,
            min_net_px: float = 1.0) -> MotionScores:
  """motion_scores on paths already followed."""
  r_steps, g_steps = recon.steps, gt.steps
  nan = np.full(len(g_steps), np.nan)
  step_px = np.where(recon.found, np.median(np.linalg.norm(r_steps, axis=-1), 1), nan)
  gt_step_px = np.where(gt.found, np.median(np.linalg.norm(g_steps, axis=-1), 1), nan)

  g_net = g_steps.sum(1)
  g_norm = np.linalg.norm(g_net, axis=-1)
  unit = g_net / np.maximum(g_norm, 1e-9)[:, None]
  # A cut (a new clip inside the window) makes the object jump: every step must go the net way and none
  # may be much longer than the typical one.
  g_lengths = np.linalg.norm(g_steps, axis=-1)
  steady = (g_lengths <= 2 * np.median(g_lengths, 1, keepdims=True) + 1.0).all(1)
  consistent = (np.einsum("ntc,nc->nt", g_steps, unit) > 0).all(1) & steady
  clean = gt.found & (g_norm >= min_net_px) & consistent
  if pairs is not None:
    pairs = np.asarray(pairs)
    if pairs.shape != (len(g_steps),) or not np.issubdtype(pairs.dtype, np.integer):
      raise ValueError(f"pairs must be one integer index per clip, shape ({len(g_steps)},), got {pairs.shape} "
                       f"{pairs.dtype}.")
    clean, unit = clean[pairs], unit[pairs]
  r_net = r_steps.sum(1)
  cosine = np.einsum("nc,nc->n", r_net, unit) / np.maximum(np.linalg.norm(r_net, axis=-1), 1e-9)
  agrees = clean & recon.found & (cosine > _COS_45)
  return MotionScores(step_px, gt_step_px, clean, agrees)


def summarise(scores: MotionScores) -> dict[str, float | int | None]:
  """The headline numbers: agreement over scored clips and median steps (None where nothing was tracked)."""
  def median(x):
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else None
  scored = int(scores.scored.sum())
  return {"scored": scored, "direction_agreement": float(scores.agrees.sum() / scored) if scored else None,
          "step_px": median(scores.step_px), "gt_step_px": median(scores.gt_step_px),
          "tracked": float(np.isfinite(scores.step_px).mean())}
