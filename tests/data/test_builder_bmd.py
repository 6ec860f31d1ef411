"""BOLD Moments builder on a miniature release in the real layout (datasets.md §3, §8.3): organised-beta pickles
(tuple of [N, R, G] betas + 'vidNNNN' ids), annotations.json, stimuli/{train,test}/NNNN.mp4, a Glasser dlabel."""

import os
import pickle

import numpy as np
import pytest
from etils import epath

from data_builders import bmd
from data_builders.common import ReleaseError
from tests import release_files as rf
from tests.bmd_release import KEPT, MISSING, REPEATS, TEST, TRAIN, beta_value, options, write_release


def build(tmp_path, manual, **overrides):
  return rf.build(bmd.Builder, bmd.BmdConfig(name="tiny", **options(**overrides)), manual,
                             tmp_path / "data")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("bmd")
  manual = write_release(tmp / "release")
  return build(tmp, epath.Path(manual))  # the manual_dir goes through epath, as a gs:// path would


def test_records_map_ids_rois_repeats_and_nan(built):
  meta = dict(built.info.metadata)
  assert meta["layout"] == "shared" and meta["response"] == "beta"
  assert meta["segment_trs"] == {"train": [1, 1, 1], "test": [1, 1]}
  assert meta["repeats"] == {"train": 3, "test": 4}
  assert [s["num_voxels"] for s in meta["subjects"]] == [len(KEPT)] * 2
  assert meta["voxel_columns"] == KEPT and meta["roi_sizes"] == {"V1": 3, "MT": 3}
  assert meta["missing_repeats"] == {"train": {"1": [[TRAIN.index(MISSING[2]), MISSING[3]]]}, "test": {}}
  for split, numbers in (("train", TRAIN), ("test", TEST)):
    records = built.as_data_source(split)
    assert len(records) == len(numbers)
    for row, n in enumerate(numbers):
      r = records[row]
      assert (int(r["segment"]), int(r["tr"]), int(r["clip_id"])) == (row, 0, n)
      assert r["video_id"].decode() == f"vid{n:04d}"
      for k in (0, 1):
        fmri = r["fmri"][f"subject_{k}"]
        assert fmri.shape == (REPEATS[split], len(KEPT)) and fmri.dtype == np.float32
        for rep in range(REPEATS[split]):
          if (f"{k + 1:02d}", split, n, rep) == MISSING:
            assert np.isnan(fmri[rep]).all()  # a repeat not seen stays NaN: never a row of zeros
          else:
            np.testing.assert_allclose(fmri[rep], [beta_value(k + 1, n, rep, g) for g in KEPT], rtol=1e-6)


def test_captions_and_frames(built):
  records = built.as_data_source("train")
  r = records[1]  # video 0002: 5 descriptions
  assert r["caption"].decode() == "video 2 sentence 0"
  assert [c.decode() for c in r["captions"]] == [f"video 2 sentence {j}" for j in range(5)]
  assert len(records[0]["captions"]) == 6  # >= 5 accepted
  frames = records[2]["frames"]  # 3 s at 2 fps: targets 0, .5, ..., 2.5 s
  assert frames.shape == (6, 8, 8, 3)
  assert np.all(np.abs(frames[..., 0].astype(int) - 60) <= 2)
  assert np.all(frames[:3, ..., 1] < 100) and np.all(frames[3:, ..., 1] > 150)  # second half of the clip


def _fails(tmp_path, manual, match, **overrides):
  return rf.build_fails(bmd.Builder, bmd.BmdConfig(name="tiny", **options(**overrides)), manual,
                                   tmp_path / "data", match)


def test_bad_releases_fail_before_writing(tmp_path):
  manual = write_release(tmp_path / "release")
  # Missing files: every one named.
  (manual / bmd.bmd_dataset_builder.beta_pickle(epath.Path(bmd.bmd_dataset_builder.GLM_DIR), "02", "test")).unlink()
  (manual / "stimuli" / "test" / "0005.mp4").unlink()
  msg = _fails(tmp_path, manual, "2 expected file")
  assert "sub-02_organized_betas_task-test_normalized.pkl" in msg and "0005.mp4" in msg


def test_wrong_counts_partial_nan_and_unreadable_video(tmp_path):
  manual = write_release(tmp_path / "release")
  _fails(tmp_path, manual, r"shape \[3, 3, 20\], expected .*\[3, 3, 21\].*grayordinates", grayordinates=21)
  _fails(tmp_path, manual, r"test_repeats", test_repeats=5)
  glm = epath.Path(bmd.bmd_dataset_builder.GLM_DIR)
  path = manual / bmd.bmd_dataset_builder.beta_pickle(glm, "01", "train")
  betas, ids = pickle.loads(path.read_bytes())
  betas[0, 0, 3] = np.nan  # one kept column NaN in a seen repeat: corrupt, not "missing"
  path.write_bytes(pickle.dumps((betas, ids)))
  _fails(tmp_path, manual, r"sub-01_organized_betas_task-train.*NaN/Inf in some")
  betas[0, 0, 3] = 0.0
  path.write_bytes(pickle.dumps((betas, ids)))
  (manual / "stimuli" / "train" / "0001.mp4").write_bytes(b"not a video")
  _fails(tmp_path, manual, r"(?s)unreadable stimulus video.*0001.mp4")


def test_pickles_are_only_loaded_from_the_release_folder(tmp_path):
  manual = write_release(tmp_path / "release")
  outside = tmp_path / "elsewhere" / "GLM"
  outside.parent.mkdir()
  os.rename(manual / bmd.bmd_dataset_builder.GLM_DIR, outside)
  _fails(tmp_path, manual, r"refusing to unpickle .*outside the release folder", glm_dir=os.fspath(outside))
  load = bmd.load_pickle_from_release
  with pytest.raises(ReleaseError, match="refusing"):
    load(epath.Path(os.fspath(manual) + "/../elsewhere/x.pkl"), manual)
  with pytest.raises(ReleaseError, match="refusing"):
    load(epath.Path("gs://bucket/release/../other/x.pkl"), epath.Path("gs://bucket/release"))
  assert "executes code" in bmd.bmd_dataset_builder.__doc__ or "runs code" in bmd.bmd_dataset_builder.__doc__


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="subjects"):
    bmd.BmdConfig(name="x", subjects=("1",))
  with pytest.raises(ValueError, match="fps"):
    bmd.BmdConfig(name="x", fps=0)
  with pytest.raises(ValueError, match="BmdOptions"):
    bmd.BmdConfig(name="x", frames=3)
