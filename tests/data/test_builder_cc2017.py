"""The cc2017 builder on a miniature release written in the real on-disk format (datasets.md §1, §8.1).

Miniature: 2 subjects, train seg1..6 (2 repeats), test1..2 (3 repeats), 20 kept TRs per run; seg*/test1 runs have
20 + 5 volumes and test2 runs 20 + 6 (the real 245/246), tiny fsLR-like brain models (15 cortex vertices + 3
subcortical voxels), subject 2 stored [G, T] (MATLAB orientation). Stimuli are 30-fps mp4s whose frame k encodes k
(R = k % 256, G = k // 256), 24 x 16 px so the square crop matters.
"""

import json
import shutil

import numpy as np
import pytest

from brainjax.data import preprocess, video
from data_builders import cc2017
from data_builders.cc2017 import cc2017_dataset_builder as cc
from data_builders.common import ReleaseError
from tests import release_files

SUBJECTS = (1, 2)
TRAIN, TEST = (1, 2, 3, 4, 5, 6), (1, 2)
REPEATS = {"train": 2, "test": 3}
TRS = 20
CORTEX = 15
RELIABLE = (1, 4, 9, 12)  # cortex columns carrying a stimulus signal shared by all repeats
LEFT, RIGHT = [0, 1, 2, 3, 5, 6, 8, 9], [0, 2, 3, 4, 6, 7, 9]
NATIVE_FPS = 30
BOUNDARIES = {"seg1": [0.0, 5.1, 13.0, 25.9], "seg2": {"starts": [0.0, 20.0], "ids": [77, 78]}}


def _stimuli():
  return [("train", f"seg{k}") for k in TRAIN] + [("test", f"test{k}") for k in TEST]


def _volumes(stimulus):
  return TRS + 6 if stimulus in ("test2",) else TRS + 5


def _raw_runs(seed, reliable=RELIABLE):
  """{(subject, stimulus): float32[R, volumes, G]}: offset + quartic drift + noise, shared signal on `reliable`."""
  rng = np.random.default_rng(seed)
  models = release_files.tiny_brain_models(LEFT, RIGHT, nvertices=10, subcortex_voxels=3)
  out = {}
  for subject in SUBJECTS:
    for split, stimulus in _stimuli():
      n = _volumes(stimulus)
      signal = rng.normal(size=(n, len(models)))
      time = np.linspace(-1, 1, n)[:, None]
      runs = []
      for _ in range(REPEATS[split]):
        drift = 1000 + rng.normal(0, 50, len(models)) * (time + time ** 4)
        run = drift + rng.normal(size=(n, len(models)))
        run[:, list(reliable)] += 4.0 * signal[:, list(reliable)]
        runs.append(run)
      out[subject, stimulus] = np.stack(runs).astype(np.float32)
  return out, models


def _frames(count):
  k = np.arange(count)
  frames = np.zeros((count, 16, 24, 3), np.uint8)
  frames[..., 0] = (k % 256)[:, None, None]
  frames[..., 1] = (k // 256)[:, None, None]
  frames[..., 2] = 128
  frames[:, :, :4] = (255, 255, 255)  # outside the centred square: must be cropped away
  frames[:, :, 20:] = (255, 255, 255)
  return frames


def _frame_index(frames):
  return frames[..., 0].astype(int) + 256 * frames[..., 1].astype(int)


def write_release(root, seed=0):
  runs, models = _raw_runs(seed)
  for (subject, stimulus), data in runs.items():
    for r, run in enumerate(data, 1):
      release_files.write_dtseries(cc.run_path(root, subject, stimulus, r), run, models,
                                   orientation="GT" if subject == 2 else "TG")
  for _, stimulus in _stimuli():
    video.write_mp4(cc.video_path(root, stimulus), _frames(TRS * 2 * NATIVE_FPS), NATIVE_FPS)
  (root / "captions.json").write_text(json.dumps({"seg1": {"0": "a dog runs", "3": "a car"},
                                                  "test2": [f"caption {t}" for t in range(TRS)]}))
  boundaries = dict(BOUNDARIES, **{s: [0.0] for _, s in _stimuli() if s not in BOUNDARIES})
  (root / "clips.json").write_text(json.dumps(boundaries))
  return runs


def config(**overrides):
  fields = dict(subjects=SUBJECTS, train_segments=TRAIN, test_segments=TEST, trs_per_run=TRS, fps=3, frame_size=8,
                expected_grayordinates=CORTEX + 3, caption_file="captions.json", clip_boundaries_file="clips.json")
  fields.update(overrides)
  return cc2017.cc2017_config("mindvideo", **fields)


def build(root, data_dir, cfg):
  return release_files.build(cc2017.Builder, cfg, root, data_dir)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  root = tmp_path_factory.mktemp("cc2017_release")
  return root, write_release(root)


@pytest.fixture(scope="module")
def built(release, tmp_path_factory):
  root, runs = release
  # gs:// stand-in: force the remote branches (CIFTI parsed from epath bytes, videos from epath file objects) while
  # reading a local folder given as a plain string.
  from brainjax.data import cifti
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(cifti, "_is_local", lambda path: False)
    patch.setattr(video, "_is_local", lambda path: False)
    builder = build(root, tmp_path_factory.mktemp("cc2017_data"), config())
  return builder, runs


def _expected_segment(runs, subject, stimulus, columns):
  first = _volumes(stimulus) - 4 - TRS
  assert first == (2 if stimulus == "test2" else 1)
  return np.stack([preprocess.preprocess_run(run[first:first + TRS, :CORTEX])[:, columns] for run in
                   runs[subject, stimulus]])


def test_selection_picks_planted_reliable_vertices_and_is_saved(built):
  builder, _ = built
  meta = builder.info.metadata
  assert meta["layout"] == "shared" and meta["response"] == "bold" and meta["tr_s"] == 2.0
  assert meta["repeats"] == REPEATS
  assert meta["segment_trs"] == {"train": [TRS] * 6, "test": [TRS] * 2}
  assert [s["num_voxels"] for s in meta["subjects"]] == [4, 4]
  for k in range(2):
    # cortex columns precede the subcortical voxels in these files, so cortex index == grayordinate
    assert meta["selected_grayordinates"][f"subject_{k}"] == list(RELIABLE)
    saved = np.load(builder.data_path / f"subject{k + 1}_voxels.npz")
    np.testing.assert_array_equal(saved["grayordinates"], RELIABLE)
    np.testing.assert_array_equal(saved["vertex"], [1, 5, 2, 6])  # LEFT[1], LEFT[4], RIGHT[1], RIGHT[4]
    assert list(saved["structure"]) == ["CIFTI_STRUCTURE_CORTEX_LEFT"] * 2 + ["CIFTI_STRUCTURE_CORTEX_RIGHT"] * 2
    assert (saved["p_bonferroni"] < 0.05).all()


def test_fmri_is_trimmed_by_length_detrended_zscored_and_oriented(built):
  builder, runs = built
  for split in ("train", "test"):
    records = builder.as_data_source(split)
    assert len(records) == TRS * len(TRAIN if split == "train" else TEST)
    for segment, stimulus in enumerate(builder.info.metadata["stimuli"][split]):
      for k, subject in enumerate(SUBJECTS):  # subject 2 is stored [G, T]
        expected = _expected_segment(runs, subject, stimulus, list(RELIABLE))
        got = np.stack([records[segment * TRS + t]["fmri"][f"subject_{k}"] for t in range(TRS)], axis=1)
        assert got.shape == (REPEATS[split], TRS, 4) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_allclose(got.mean(axis=1), 0, atol=1e-5)
        np.testing.assert_allclose(got.std(axis=1, ddof=1), 1, atol=1e-5)


def test_trim_rule_by_run_length():
  assert cc.kept_volumes(245, 240, "x") == slice(1, 241)
  assert cc.kept_volumes(246, 240, "x") == slice(2, 242)
  with pytest.raises(ReleaseError, match="x: 247 volumes; cc2017 runs have 245 or 246"):
    cc.kept_volumes(247, 240, "x")


def test_frames_are_the_tr_window_at_3_fps_centre_cropped(built):
  builder, _ = built
  records = builder.as_data_source("train")
  for t in (0, 1, 7, TRS - 1):
    frames = records[t]["frames"]
    assert frames.shape == (6, 8, 8, 3)
    index = _frame_index(frames)
    assert (index == index[:, :1, :1]).all() and (frames[..., 2] == 128).all()  # white sides cropped away
    np.testing.assert_array_equal(index[:, 0, 0], 60 * t + 10 * np.arange(6))


def test_captions_clip_ids_and_scene_cuts(built):
  builder, _ = built
  train, test = builder.as_data_source("train"), builder.as_data_source("test")
  seg1 = [train[t] for t in range(TRS)]
  captions = [r["caption"].decode() for r in seg1]
  assert captions[0] == "a dog runs" and captions[3] == "a car" and captions[1] == ""
  assert [test[TRS + t]["caption"].decode() for t in range(3)] == ["caption 0", "caption 1", "caption 2"]
  # seg1 clips start at 0, 5.1, 13.0, 25.9 s; TR t covers [2t, 2t + 2) with frames at 2t + j / 3
  ids = [int(r["clip_id"]) for r in seg1]
  cuts = [bool(r["scene_cut"]) for r in seg1]
  assert ids[:8] == [1000, 1000, 1000, 1001, 1001, 1001, 1001, 1002]
  assert [t for t, c in enumerate(cuts) if c] == [2, 6]  # 5.1 in TR 2; 13.0 is a frame time of TR 6; 25.9 is
  # after the last frame of TR 12 (25.667 s): no frame shows the new clip, so no cut there
  assert ids[12] == 1002 and ids[13] == 1003
  seg2 = [train[TRS + t] for t in range(TRS)]
  assert [int(r["clip_id"]) for r in seg2][9:11] == [77, 78] and not any(r["scene_cut"] for r in seg2)
  assert int(test[0]["clip_id"]) == 101000 and int(test[TRS]["clip_id"]) == 102000


def test_selection_uses_training_runs_only(release, tmp_path):
  root, _ = release
  copy = tmp_path / "release"
  shutil.copytree(root, copy)
  before = [cc.select_subject_voxels(cc.Release(copy, config()), s).selected for s in SUBJECTS]
  # plant strong reproducibility on other vertices in every TEST run: the selection must not move
  runs, models = _raw_runs(seed=5, reliable=(0, 2, 3, 5, 6))
  for (subject, stimulus), data in runs.items():
    if stimulus.startswith("test"):
      for r, run in enumerate(data, 1):
        release_files.write_dtseries(cc.run_path(copy, subject, stimulus, r), run, models)
  after = [cc.select_subject_voxels(cc.Release(copy, config()), s).selected for s in SUBJECTS]
  for b, a in zip(before, after):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(b, RELIABLE)


def test_top_n_and_no_selection(release):
  root, _ = release
  top = cc.select_subject_voxels(cc.Release(root, config(selection="top_n", top_n=2)), 1)
  assert set(top.selected) <= set(RELIABLE) and len(top.selected) == 2
  every = cc.select_subject_voxels(cc.Release(root, config(selection="none")), 2)
  np.testing.assert_array_equal(every.grayordinates, np.arange(CORTEX))


def _broken_copy(release, tmp_path):
  root, _ = release
  copy = tmp_path / "release"
  shutil.copytree(root, copy)
  return copy


def _assert_fails_before_writing(copy, tmp_path, match, **overrides):
  data_dir = tmp_path / "data"
  with pytest.raises(ReleaseError, match=match):
    build(copy, data_dir, config(**overrides))
  assert not list(data_dir.rglob("dataset_info.json")) and not list(data_dir.rglob("*.array_record*"))


def test_missing_files_are_all_named(release, tmp_path):
  copy = _broken_copy(release, tmp_path)
  cc.run_path(copy, 2, "seg3", 1).unlink()
  cc.video_path(copy, "test2").unlink()
  _assert_fails_before_writing(copy, tmp_path, r"(?s)2 expected file\(s\) are missing.*test2\.mp4.*subject2/fmri/seg3/cifti/seg3_1_Atlas")


def test_mismatched_repeat_counts_fail(release, tmp_path):
  copy = _broken_copy(release, tmp_path)
  shutil.copy(cc.run_path(copy, 2, "test1", 1), cc.run_path(copy, 2, "test1", 4))
  _assert_fails_before_writing(copy, tmp_path, r"mismatched repeat counts in the test split.*subject2/test1: 4")


def test_nan_run_wrong_length_and_grayordinates_fail(release, tmp_path):
  copy = _broken_copy(release, tmp_path)
  runs, models = _raw_runs(0)
  bad = runs[1, "test2"][2].copy()
  bad[7, 3] = np.nan
  release_files.write_dtseries(cc.run_path(copy, 1, "test2", 3), bad, models)
  _assert_fails_before_writing(copy, tmp_path, r"test2_3_Atlas\.dtseries\.nii: 1 NaN/Inf values")
  release_files.write_dtseries(cc.run_path(copy, 1, "test2", 3), bad[:-3], models)
  _assert_fails_before_writing(copy, tmp_path, r"test2_3_Atlas\.dtseries\.nii: 23 volumes")
  _assert_fails_before_writing(copy, tmp_path, r"seg1_1_Atlas\.dtseries\.nii: 18 grayordinates, expected 91282",
                               expected_grayordinates=91282)


def test_unreadable_video_fails(release, tmp_path):
  copy = _broken_copy(release, tmp_path)
  cc.video_path(copy, "seg2").write_bytes(b"\x00" * 1000)
  _assert_fails_before_writing(copy, tmp_path, r"seg2\.mp4: not a readable video")


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="Cc2017Config.fps"):
    config(fps=2.2)
  with pytest.raises(ValueError, match="Cc2017Config.selection"):
    config(selection="fdr")
  with pytest.raises(ValueError, match="no field"):
    config(window=3)
  assert [c.name for c in cc2017.Builder.BUILDER_CONFIGS][0] == "mindvideo"


# ----------------------------------------------------------------------------------------------------------------
# The synthetic benchmark as a cc2017 release: the cc2017 builder reads back the synthetic builder's records.


def test_synthetic_release_round_trip(tmp_path):
  from brainjax.data import synthetic
  from data_builders.synthetic import release as synthetic_release
  from data_builders import synthetic as synthetic_builder

  spec = synthetic.SyntheticSpec(resolution=16, num_subjects=2, voxels_per_subject=(24, 30), train_segments=2,
                                 test_segments=2, segment_trs=10, train_repeats=2, test_repeats=3, rest_runs=1, rest_trs=10,
                                 clip_seconds=(3.0, 7.0))
  root = synthetic_release.write_release(spec, tmp_path / "release")
  # the real layout, including a 246-style run for test2 (2 leading dummy volumes) and the subcortical voxels
  from brainjax.data import cifti
  assert cifti.series(cifti.load_cifti(cc.run_path(root, 2, "test2", 3))).shape == (10 + 6, 30 + 2)
  assert cifti.series(cifti.load_cifti(cc.run_path(root, 1, "seg1", 1))).shape == (10 + 5, 24 + 2)

  reference = synthetic_builder.Builder(config=synthetic_builder.builder_config_for(spec),
                                        data_dir=str(tmp_path / "synthetic"), file_format="array_record")
  reference.download_and_prepare()
  rebuilt = build(root, tmp_path / "cc2017", synthetic_release.builder_config(spec))
  meta = rebuilt.info.metadata
  assert [s["num_voxels"] for s in meta["subjects"]] == [24, 30]
  assert meta["repeats"] == {"train": 2, "test": 3}
  assert meta["segment_trs"] == {k: reference.info.metadata["segment_trs"][k] for k in ("train", "test")}
  cuts = 0
  for split in ("train", "test"):
    want, got = reference.as_data_source(split), rebuilt.as_data_source(split)
    assert len(want) == len(got) == 20
    for i in range(len(want)):
      a, b = want[i], got[i]
      for key in ("segment", "tr", "clip_id", "scene_cut", "caption"):
        assert a[key] == b[key], (split, i, key)
      np.testing.assert_array_equal(b["frames"], a["frames"])  # lossless mp4: bit-exact
      assert a["labels"] == b["labels"]
      for subject in ("subject_0", "subject_1"):
        np.testing.assert_array_equal(b["fmri"][subject], a["fmri"][subject])
      cuts += bool(a["scene_cut"])
  assert cuts > 0  # the comparison covered TRs spanning a clip boundary

  # With the builder's own preprocessing switched on, the same release gives Wen's detrend + z-score of the runs.
  release = cc.Release(root, synthetic_release.builder_config(spec, detrend_order=4, zscore=True))
  runs, _ = release.segment_runs(2, "test", "test2")
  simulated = np.stack([reference.as_data_source("test")[10 + t]["fmri"]["subject_1"] for t in range(10)], axis=1)
  np.testing.assert_allclose(runs, np.stack([preprocess.preprocess_run(r) for r in simulated]), atol=1e-9)
