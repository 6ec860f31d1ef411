"""The salient-object tracker and motion scores (brainjax.eval.motion) on rendered synthetic clips and
hand-drawn ones: exact speeds and directions on the ground truth, the torus wrap, cuts, untracked
objects, the shuffled-pairs baseline, bad inputs; and evaluate's motion block and report rows."""

import numpy as np
import pytest

from brainjax.data import synthetic
from brainjax.eval import motion
from brainjax.eval import report as report_lib
from brainjax.stages import classifier_fit, evaluate

SPEC = synthetic.SyntheticSpec(resolution=32, object_radius=0.26)


@pytest.fixture(scope="module")
def rendered():
  """48 rendered one-TR clips (6 frames at 32 px) of random content, with their clips."""
  clips = classifier_fit.random_clips(48, seed=3)
  return clips, classifier_fit.render_clips(SPEC, clips)


def _velocity_px_per_frame(clip) -> np.ndarray:
  return np.asarray(synthetic._clip_velocity(clip)) * SPEC.resolution / SPEC.fps


def test_ground_truth_tracks_at_its_speed_and_in_its_direction(rendered):
  clips, videos = rendered
  scores = motion.motion_scores(videos, videos)
  white = np.array([synthetic.COLOURS[c.colour] == "white" for c in clips])
  # A white object has no saturation: not tracked, so not scored; every coloured one is.
  assert not scores.scored[white].any() and np.isnan(scores.gt_step_px[white]).all()
  assert scores.scored[~white].all()
  np.testing.assert_array_equal(scores.agrees, scores.scored)
  expected = np.array([np.linalg.norm(_velocity_px_per_frame(c)) for c in clips])
  np.testing.assert_allclose(scores.gt_step_px[~white], expected[~white], atol=0.15)
  # The net displacement is the velocity times 5 frame intervals, in the captioned direction.
  centres, found = motion.track(videos[~white])
  net = motion.steps(centres, SPEC.resolution).sum(1)
  velocity = np.stack([_velocity_px_per_frame(c) for c, w in zip(clips, white) if not w])
  np.testing.assert_allclose(net, 5 * velocity, atol=0.5)
  assert found.all()


def test_reversed_clips_disagree_and_shuffled_pairs_sit_near_chance(rendered):
  _, videos = rendered
  assert not motion.motion_scores(videos[:, ::-1], videos).agrees.any()
  pairs = np.roll(np.arange(len(videos)), 1)
  shuffled = motion.summarise(motion.motion_scores(videos, videos, pairs))
  assert shuffled["scored"] > 30 and 0.05 < shuffled["direction_agreement"] < 0.5


def _square_clip(positions, size=32, colour=(230, 20, 20), half=3):
  """A saturated square on a grey background at integer (x, y) centres, one per frame."""
  frames = np.full((len(positions), size, size, 3), 100, np.uint8)
  for f, (x, y) in enumerate(positions):
    ys = np.arange(y - half, y + half + 1) % size
    xs = np.arange(x - half, x + half + 1) % size
    frames[f][np.ix_(ys, xs)] = colour
  return frames


def test_wraps_round_the_torus_and_leaves_out_cuts_and_untracked_frames():
  across = _square_clip([(28, 10), (30, 10), (0, 10), (2, 10)])  # moving right through the edge
  steps = motion.steps(motion.track(across[None])[0], 32)[0]
  np.testing.assert_allclose(steps, [[2, 0]] * 3, atol=1e-4)
  cut = _square_clip([(5, 5), (7, 5), (20, 20), (22, 20)])  # a cut: the object jumps
  back = _square_clip([(20, 20), (22, 20), (5, 5), (7, 5)])
  right = _square_clip([(5, 5), (7, 5), (9, 5), (11, 5)])
  blank = right.copy()
  blank[2] = 100  # the object vanishes in one frame
  scores = motion.motion_scores(np.stack([right, right, right, blank]), np.stack([right, cut, back, right]))
  np.testing.assert_array_equal(scores.scored, [True, False, False, True])
  np.testing.assert_array_equal(scores.agrees, [True, False, False, False])  # an untracked one misses
  assert np.isnan(scores.step_px[3]) and scores.step_px[0] == pytest.approx(2.0, abs=1e-4)
  # 45 degrees: a diagonal reconstruction of a rightward clip is at the border, a steeper one misses.
  diagonal = _square_clip([(5, 5), (7, 6), (9, 7), (11, 8)])
  steep = _square_clip([(5, 5), (6, 7), (7, 9), (8, 11)])
  scores = motion.motion_scores(np.stack([diagonal, steep]), np.stack([right, right]))
  np.testing.assert_array_equal(scores.agrees, [True, False])
  summary = motion.summarise(scores)
  assert summary == {"scored": 2, "direction_agreement": 0.5, "step_px": pytest.approx(np.sqrt(5), abs=1e-3),
                     "gt_step_px": pytest.approx(2.0, abs=1e-4), "tracked": 1.0}


@pytest.mark.parametrize("recon, gt, pairs, match", [
    (np.zeros((2, 3, 8, 8, 3), np.float32), None, None, "must be uint8"),
    (np.zeros((2, 3, 8, 6, 3), np.uint8), None, None, r"square RGB clips \[N, T, H, W, 3\]"),
    (np.zeros((2, 1, 8, 8, 3), np.uint8), None, None, "motion needs at least 2"),
    (np.zeros((2, 3, 8, 8, 3), np.uint8), np.zeros((3, 3, 8, 8, 3), np.uint8), None, "same shape"),
    (np.zeros((2, 3, 8, 8, 3), np.uint8), None, np.array([0.0, 1.0]), "one integer index per clip"),
])
def test_bad_inputs(recon, gt, pairs, match):
  with pytest.raises(ValueError, match=match):
    motion.motion_scores(recon, recon if gt is None else gt, pairs)


def test_evaluate_reports_motion_with_its_baselines(rendered):
  clips, videos = rendered
  n, t = len(videos), videos.shape[1]
  coloured = np.array([synthetic.COLOURS[c.colour] != "white" for c in clips])
  merged = {"window": np.arange(n), "record": np.arange(n), "subject": np.zeros(n, np.int64),
            "video": videos[:, ::-1].copy(), "real": videos, "ssim": np.ones((n, t)), "psnr": np.ones((n, t)),
            "caption_video": videos, "caption_ssim": np.ones((n, t)), "caption_psnr": np.ones((n, t))}
  stage = evaluate.stage_config(baselines=("shuffled", "caption"), object_motion=True)
  out = evaluate.compute_metrics(merged, stage)
  block = out["motion"]
  assert block["scored"] == coloured.sum() and block["direction_agreement"] == 0.0  # played backwards
  assert block["baselines"]["caption"] == 1.0 and block["baselines"]["chance"] == 0.25
  assert 0.0 < block["baselines"]["shuffled"] < 0.6
  assert block["step_px"] == block["gt_step_px"] == block["baseline_step_px"]["caption"]
  summary = evaluate.flat_summary(out)
  assert summary["motion_direction"] == 0.0 and summary["motion_direction_caption"] == 1.0
  assert summary["motion_step_px_gt"] == block["gt_step_px"]
  rows = report_lib._headline_rows(out, ["chance", "shuffled", "caption"])
  assert rows[-2][0] == f"motion direction agreement ({coloured.sum()} clips)"
  assert rows[-2][1:3] == ["0.000", "0.250"] and rows[-2][4] == "1.000"
  assert rows[-1][0].startswith("object step, px per frame (ground truth")
  # Off (the default, for natural movies): no block, no rows.
  off = evaluate.compute_metrics(merged, evaluate.stage_config(baselines=("shuffled", "caption")))
  assert "motion" not in off and "motion_direction" not in evaluate.flat_summary(off)
