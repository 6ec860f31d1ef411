"""CineBrain builder on a miniature release in the real layout (datasets.md §5, §8.5): per-subject tars of
`visual_audio/<tr>.npy` (flat float64 per TR, lexicographically stored), EEG tars of `eeg_02/<tr>.npy`, and
`videos.tar` of 4-s clips (clip c <-> TRs [5c, 5c+5)); a Glasser dlabel to rebuild the visual columns."""

import io
import logging
import os
import tarfile

import numpy as np
import pytest
from etils import epath

from brainjax.data import video
from data_builders import cinebrain
from data_builders.cinebrain import cinebrain_dataset_builder as cb
from tests import release_files as rf

MESH = 16
# Atlas columns: left cortex 0..15, right 16..31. R_STSva counts, L_STSva does not; FEF is in neither set.
ROIS = {"V1": ([0, 1], [16]), "MT": ([4], [20, 21]), "A1": ([2], [18]), "STSva": ([6], [22]), "7Pm": ([8], []),
        "FEF": ([10], [25])}
FULL = [0, 1, 2, 4, 8, 16, 18, 20, 21, 22]   # the released columns (ascending grayordinates of the mask)
VISUAL_POS = [0, 1, 3, 5, 7, 8]              # positions of V1 + MT among them
TRS = {"0001": 27, "0002": 25}               # sub-0003 is a byte copy of sub-0001 (the sub-0005 bug)
CODE = {"0001": 1, "0002": 2, "0003": 1}
EEG_SHAPE = (3, 8)


def tr_vector(subject: str, t: int) -> np.ndarray:
  return CODE[subject] * 1000 + t + np.arange(len(FULL)) / 100


def _npy(array) -> bytes:
  buf = io.BytesIO()
  np.save(buf, array)
  return buf.getvalue()


def write_tar(path, members: dict[str, bytes]) -> None:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with tarfile.open(os.fspath(path), "w") as tar:
    for name in sorted(members):  # lexicographic, like a directory listing: 0, 1, 10, 11, ..., 2, 20, ...
      info = tarfile.TarInfo(name)
      info.size = len(members[name])
      tar.addfile(info, io.BytesIO(members[name]))


def write_release(root, *, skip_tr=None, nan_tr=None):
  root = epath.Path(root)
  bm = rf.tiny_brain_models(range(MESH), range(MESH), MESH)
  bases = {cb.cifti.split_area_name(n)[0] for n in cb.FULL_AREAS}
  rf.tiny_glasser(root / "atlas.dlabel.nii", bm, ROIS, extra_names=sorted(bases - set(ROIS)))
  for subject in ("0001", "0002", "0003"):
    trs = TRS["0001" if subject == "0003" else subject]
    fmri, eeg = {}, {}
    for t in range(trs):
      vec = tr_vector(subject, t)
      if (subject, t) == nan_tr:
        vec[3] = np.nan  # a kept (visual) column
      if (subject, t) != skip_tr:
        fmri[f"visual_audio/{t}.npy"] = _npy(vec)
      eeg[f"eeg_02/{t}.npy"] = _npy(np.full(EEG_SHAPE, CODE[subject] * 1000 + t, np.float64))
    write_tar(root / f"sub-{subject}" / "fMRI_preprocessed_data.tar", fmri)
    write_tar(root / f"sub-{subject}" / "EEG_preprocessed_data.tar", eeg)
  clips = {}
  for c in range(4):
    frames = np.zeros((40, 8, 8, 3), np.uint8)  # 4 s at 10 fps; red = clip, green = TR within the clip
    frames[..., 0] = 40 * c + 20
    frames[..., 1] = (40 * (np.arange(40) // 8) + 20)[:, None, None]
    video.write_mp4(root / "tmp" / f"{c}.mp4", frames, 10)
    clips[f"videos/clip_{c}.mp4"] = (root / "tmp" / f"{c}.mp4").read_bytes()
  write_tar(root / "videos.tar", clips)
  return root


def options(**overrides):
  base = dict(subjects=("0001", "0002", "0003"), atlas="atlas.dlabel.nii", shared_trs=20, episode_trs=10,
              test_episodes=(1,), fps=5.0, frame_size=8, hash_trs=4, eeg=True)
  base.update(overrides)
  return base


def build(tmp, manual, name="tiny", **overrides):
  return rf.build(cinebrain.Builder, cinebrain.CinebrainConfig(name=name, **options(**overrides)),
                             manual, tmp / "data")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("cinebrain")
  return tmp, write_release(tmp / "release")


@pytest.fixture(scope="module")
def built(release):
  tmp, manual = release
  mp = pytest.MonkeyPatch()
  forbid = lambda *a, **k: pytest.fail("the tars must be streamed, never extracted")  # noqa: E731
  mp.setattr(tarfile.TarFile, "extract", forbid)
  mp.setattr(tarfile.TarFile, "extractall", forbid)
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logging.getLogger("absl").addHandler(handler)
  try:
    builder = build(tmp, epath.Path(manual))
  finally:
    mp.undo()
    logging.getLogger("absl").removeHandler(handler)
  return builder, [r.getMessage() for r in records]


def test_metadata_splits_and_duplicate_warning(built):
  builder, logs = built
  meta = dict(builder.info.metadata)
  assert meta["layout"] == "per_subject" and meta["response"] == "bold" and meta["tr_s"] == 0.8
  assert meta["segment_trs"] == {"train": [10, 7, 10, 5, 10, 7], "test": [10, 10, 10]}
  assert meta["segment_subjects"] == {"train": [0, 0, 1, 1, 2, 2], "test": [0, 1, 2]}
  assert meta["segment_starts"]["train"] == [0, 20, 0, 20, 0, 20]
  assert [s["num_voxels"] for s in meta["subjects"]] == [6, 6, 6]
  assert meta["voxel_columns"] == VISUAL_POS and meta["released_voxels"] == len(FULL)
  assert meta["duplicates"] == [{"subject": "sub-0003", "duplicate_of": "sub-0001", "dropped": False}]
  assert any("sub-0003" in m and "sub-0001" in m and "duplicates" in m for m in logs)


def test_records_numeric_order_visual_columns_frames_and_eeg(built):
  builder, _ = built
  test = builder.as_data_source("test")
  assert len(test) == 30
  for i in (0, 2, 9, 10, 19):
    r = test[i]
    subject = ("0001", "0002", "0003")[i // 10]
    t = 10 + i % 10  # held-out episode 1 = TRs 10..19: numeric order (a lexicographic sort puts 2 after 19)
    assert (int(r["segment"]), int(r["tr"]), int(r["tr_index"]), int(r["subject"])) == (i // 10, i % 10, t, i // 10)
    np.testing.assert_allclose(r["fmri"], tr_vector(subject, t)[VISUAL_POS][None], rtol=1e-6)
    assert int(r["clip_id"]) == t // 5
    frames = r["frames"]
    assert frames.shape == (4, 8, 8, 3)  # 0.8 s at 5 fps
    assert np.all(np.abs(frames[..., 0].astype(int) - (40 * (t // 5) + 20)) <= 2)
    assert np.all(np.abs(frames[..., 1].astype(int) - (40 * (t % 5) + 20)) <= 2)  # the TR's own slice of the clip
    np.testing.assert_array_equal(r["eeg"], np.full(EEG_SHAPE, CODE[subject] * 1000 + t, np.float32))
  train = builder.as_data_source("train")
  tail = train[10]  # sub-0001, TR 20: past Season 7 -> no frames
  assert (int(tail["tr_index"]), int(tail["clip_id"]), tail["frames"].shape[0]) == (20, -1, 0)
  np.testing.assert_allclose(tail["fmri"][0], tr_vector("0001", 20)[VISUAL_POS], rtol=1e-6)


def test_full_voxels_without_atlas_and_dropping_the_duplicate(release):
  tmp, manual = release
  builder = build(tmp, manual, name="full_nodup", voxels="full", atlas="", drop_duplicates=True, eeg=False)
  meta = dict(builder.info.metadata)
  assert [s["name"] for s in meta["subjects"]] == ["sub-0001", "sub-0002"]
  assert meta["segment_subjects"]["test"] == [0, 1] and meta["duplicates"][0]["dropped"] is True
  r = builder.as_data_source("test")[13]
  np.testing.assert_allclose(r["fmri"][0], tr_vector("0002", 13), rtol=1e-6)
  assert "eeg" not in r


def _fails(tmp, manual, match, **overrides):
  return rf.build_fails(cinebrain.Builder, cinebrain.CinebrainConfig(name="bad", **options(**overrides)),
                                   manual, tmp / "data", match)


def test_bad_releases_fail_clearly(tmp_path):
  manual = write_release(tmp_path / "gap", skip_tr=("0002", 7))
  _fails(tmp_path, manual, r"sub-0002/fMRI_preprocessed_data.tar .*missing numbers 7")
  (manual / "sub-0001" / "fMRI_preprocessed_data.tar").unlink()
  (manual / "videos.tar").unlink()
  msg = _fails(tmp_path, manual, "2 expected file")
  assert "sub-0001/fMRI_preprocessed_data.tar" in msg and "videos.tar" in msg
  nan = write_release(tmp_path / "nan", nan_tr=("0002", 3))
  _fails(tmp_path, nan, r"sub-0002/fMRI_preprocessed_data.tar:visual_audio/3.npy: 1 NaN/Inf")
  _fails(tmp_path, nan, "rebuilds a 9-grayordinate mask but .* hold 10 voxels", subjects=("0001",),
         atlas=os.fspath(_atlas_without_22(tmp_path)))


def _atlas_without_22(tmp_path):
  bm = rf.tiny_brain_models(range(MESH), range(MESH), MESH)
  rois = dict(ROIS, STSva=([6], []))
  bases = {cb.cifti.split_area_name(n)[0] for n in cb.FULL_AREAS}
  return rf.tiny_glasser(tmp_path / "other.dlabel.nii", bm, rois, extra_names=sorted(bases - set(rois)))


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="voxels = 'visual' needs the Glasser atlas.*voxels='full'"):
    cinebrain.CinebrainConfig(name="x", atlas="")
  with pytest.raises(ValueError, match="fps"):
    cinebrain.CinebrainConfig(name="x", fps=3.0)  # 2.4 frames per 0.8-s TR
  with pytest.raises(ValueError, match="test_episodes"):
    cinebrain.CinebrainConfig(name="x", test_episodes=(10,))
  assert cb.split_blocks(30, cinebrain.CinebrainOptions(shared_trs=20, episode_trs=10, test_episodes=(0,))) == {
      "train": [(10, 30)], "test": [(0, 10)]}
