"""HAD builder on a miniature ds004488 in the real layout (datasets.md §4, §8.4): ciftify beta dscalars with
label.txt, BIDS events.tsv (run-01 naming, float trial_type), stimuli/<Category with spaces>/v_..._label_1.mp4.

Planted betas encode (subject, cycle, row) and every clip has its own colour, so the tests check which beta, label
and frames each record carries, not just shapes."""

import os

import numpy as np
import pytest

from brainjax.data import video
from data_builders.common import ReleaseError
from data_builders.had import had_config
from data_builders.had import had_dataset_builder as had
from data_builders.had import release
from tests import release_files as rf

# Category folders contain spaces; sorted: Applying sunscreen, Drum corps, Rock climbing, Zumba.
CATEGORIES = ["Applying sunscreen", "Drum corps", "Rock climbing", "Zumba"]
SUBJECTS = ("sub-01", "sub-02")
CYCLES, RUNS_PER_CYCLE = 4, 2
LEFT, RIGHT, MESH = [0, 1, 2, 4, 5, 6], [0, 2, 3, 5, 7], 8
FPS, SIZE = 6, 16


def _bm():
  return rf.tiny_brain_models(LEFT, RIGHT, MESH)


def _clip_name(category: str, s: int, cycle: int) -> str:
  return f"v_{category}_id_yT{s}_{cycle}-x_start_{cycle * 1.5:.1f}_label_1.mp4"  # youtube ids may hold '_'


def _colour(clip_index: int) -> int:
  return 20 + 7 * clip_index


def _beta(s: int, cycle: int, row: int) -> np.ndarray:
  return 1000 * s + 100 * cycle + row + 0.01 * np.arange(len(_bm()), dtype=np.float32)


def _write_release(root, *, ids=None, label_order="trial_type", events_style="bids", subjects=SUBJECTS):
  """ids: {category: trial_type id}; alphabetical by default. label_order 'name' writes label.txt sorted by category
  name as GLM.py does (which disagrees with the beta rows when ids are not alphabetical)."""
  ids = ids or {c: i for i, c in enumerate(CATEGORIES)}
  by_id = sorted(CATEGORIES, key=ids.get)
  all_clips = sorted((c, _clip_name(c, s, k)) for c in CATEGORIES for s in range(len(subjects))
                     for k in range(1, CYCLES + 1))
  for index, (category, name) in enumerate(all_clips):
    frames = np.full((2 * FPS, SIZE, SIZE, 3), _colour(index), np.uint8)
    video.write_mp4(os.path.join(root, "stimuli", category, name), frames, FPS)
  bm = _bm()
  for s, subject in enumerate(subjects):
    for cycle in range(1, CYCLES + 1):
      runs = release.cycle_runs(cycle, RUNS_PER_CYCLE)
      # Each run shows half of the categories, in a shuffled order.
      order = list(np.random.default_rng(10 * s + cycle).permutation(CATEGORIES))
      for j, run in enumerate(runs):
        label = release.run_label(run, events_style)
        path = os.path.join(root, subject, "ses-action01", "func",
                            f"{subject}_ses-action01_task-action_{label}_events.tsv")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
          f.write("onset\tduration\ttrial_type\tresponse_time\tstim_file\n")
          for e, category in enumerate(order[2 * j:2 * j + 2]):
            f.write(f"{12 + 4 * e:.1f}\t2.0\t{float(ids[category])}\tn/a\t{category}/{_clip_name(category, s, cycle)}\n")
      rows = [_clip_name(c, s, cycle) for c in by_id]  # row i = the clip of trial_type i
      names = rows if label_order == "trial_type" else sorted(rows, key=lambda x: x.split("_")[1])
      results = os.path.join(root, "derivatives", "ciftify", subject, "results")
      rf.write_dscalar(os.path.join(results, f"ses-action01_task-action_cycle-{cycle}_beta.dscalar.nii"),
                       np.stack([_beta(s, cycle, r) for r in range(len(rows))]), names, bm)
      with open(os.path.join(results, f"ses-action01_task-action_cycle-{cycle}_label.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
  return root, all_clips


def _config(**overrides):
  fields = dict(fps=3, frame_size=8, num_categories=len(CATEGORIES), runs_per_cycle=RUNS_PER_CYCLE,
                expected_grayordinates=len(_bm()))
  fields.update(overrides)
  return had_config("mindvideo", **fields)


def _build(manual_dir, data_dir, config):
  return rf.build(had.Builder, config, manual_dir, data_dir)


def _records(builder, split):
  source = builder.as_data_source(split)
  return [source[i] for i in range(len(source))]


def test_build_pairs_each_beta_row_with_its_clip_label_and_frames(tmp_path):
  root, clips = _write_release(tmp_path / "had")
  builder = _build(root, tmp_path / "data", _config())
  meta = builder.info.metadata
  assert meta["layout"] == "per_subject" and meta["response"] == "beta" and meta["label_keys"] == ["category"]
  assert meta["categories"] == sorted(CATEGORIES) and meta["trial_type_is_alphabetical"]
  assert meta["split_cycles"] == {"train": [1, 2, 3], "test": [4]}
  assert meta["num_records"] == {"train": 2 * 3 * 4, "test": 2 * 1 * 4}
  assert meta["subjects"] == [{"name": "sub-01", "num_voxels": 11}, {"name": "sub-02", "num_voxels": 11}]
  assert meta["segment_subjects"]["test"] == [0] * 4 + [1] * 4 and meta["segment_cycles"]["test"] == [4] * 8
  clip_index = {name: i for i, (_, name) in enumerate(clips)}
  for split, cycles in (("train", (1, 2, 3)), ("test", (4,))):
    records = _records(builder, split)
    expected = [(s, c, r) for s in range(2) for c in cycles for r in range(4)]
    assert len(records) == len(expected)
    for k, (record, (s, cycle, row)) in enumerate(zip(records, expected)):
      assert int(record["segment"]) == k and int(record["subject"]) == s and int(record["tr"]) == 0
      np.testing.assert_allclose(record["fmri"], _beta(s, cycle, row)[None], rtol=1e-6)
      category = CATEGORIES[row]  # alphabetical ids: trial_type i = sorted category i
      assert int(record["labels"]["category"]) == sorted(CATEGORIES).index(category)
      name = _clip_name(category, s, cycle)
      assert int(record["clip_id"]) == clip_index[name]
      frames = record["frames"]
      assert frames.shape == (6, 8, 8, 3) and frames.dtype == np.uint8  # 2 s at 3 fps, 8 px
      assert np.all(np.abs(frames.astype(int) - _colour(clip_index[name])) <= 1)


def test_label_txt_sorted_by_name_disagrees_with_trial_type_rows(tmp_path):
  """GLM.py's trap: rows follow trial_type, label.txt the category names. With non-alphabetical ids the names of the
  rows are wrong; the builder says which file and row, and check_row_names=False maps rows by events.tsv."""
  ids = {"Zumba": 0, "Drum corps": 1, "Applying sunscreen": 2, "Rock climbing": 3}
  root, _ = _write_release(tmp_path / "had", ids=ids, label_order="name")
  with pytest.raises(ReleaseError, match=r"sub-01/results/ses-action01_task-action_cycle-1_beta.dscalar.nii row 0 is "
                                         r"named 'v_Applying sunscreen_id_.*trial_type 0.*'v_Zumba_id_"):
    _build(root, tmp_path / "d0", _config())
  builder = _build(root, tmp_path / "d1", _config(check_row_names=False))
  meta = builder.info.metadata
  assert not meta["trial_type_is_alphabetical"]
  assert meta["trial_type_to_label"] == {"0": 3, "1": 1, "2": 0, "3": 2}
  record = _records(builder, "test")[0]  # subject 0, cycle 4, row 0 = trial_type 0 = Zumba
  assert int(record["labels"]["category"]) == sorted(CATEGORIES).index("Zumba")
  np.testing.assert_allclose(record["fmri"][0], _beta(0, 4, 0), rtol=1e-6)


def test_run_naming_bids_and_ciftify(tmp_path):
  assert release.run_label(1) == "run-01" and release.run_label(12) == "run-12"
  assert release.run_label(1, "ciftify") == "run-1" and release.run_label(12, "ciftify") == "run-12"
  assert release.cycle_runs(4, 3) == [10, 11, 12]
  # A copy whose events were renamed ciftify-style (run-1) is read too; the BIDS name is preferred.
  root, _ = _write_release(tmp_path / "had", events_style="ciftify", subjects=("sub-01",))
  path = release.events_path(root, "sub-01", 1)
  assert path.name == "sub-01_ses-action01_task-action_run-1_events.tsv"
  builder = _build(root, tmp_path / "data", _config())
  assert builder.info.metadata["num_records"] == {"train": 12, "test": 4}
  os.remove(path)
  (tmp_path / "had" / "sub-01" / "ses-action01" / "func" / "sub-01_ses-action01_task-action_run-01_events.tsv"
   ).write_text("onset\tduration\ttrial_type\tresponse_time\tstim_file\n")
  assert release.events_path(root, "sub-01", 1).name.endswith("run-01_events.tsv")


def test_roi_masked_betas_through_the_atlas(tmp_path):
  root, _ = _write_release(tmp_path / "had", subjects=("sub-01",))
  atlas = rf.tiny_glasser(os.path.join(root, "atlas.dlabel.nii"), rf.tiny_brain_models(range(MESH), range(MESH), MESH),
                          {"V1": ([0, 1, 3], [MESH + 2, MESH + 3]), "MT": ([5], [MESH + 7])})
  builder = _build(root, tmp_path / "data", _config(rois=("V1",), atlas_path=os.path.basename(atlas)))
  # V1 = left vertices 0, 1 (3 is not in the data) and right 2, 3 -> data columns 0, 1, 6+1, 6+2.
  assert builder.info.metadata["subjects"][0]["num_voxels"] == 4
  record = _records(builder, "train")[0]
  np.testing.assert_allclose(record["fmri"][0], _beta(0, 1, 0)[[0, 1, 7, 8]], rtol=1e-6)


def test_bad_releases_fail_before_writing(tmp_path):
  root, clips = _write_release(tmp_path / "had", subjects=("sub-01",))
  results = tmp_path / "had" / "derivatives" / "ciftify" / "sub-01" / "results"
  func = tmp_path / "had" / "sub-01" / "ses-action01" / "func"
  # Missing files are all named.
  beta3 = results / "ses-action01_task-action_cycle-3_beta.dscalar.nii"
  events5 = func / "sub-01_ses-action01_task-action_run-05_events.tsv"
  saved = {p: p.read_bytes() for p in (beta3, events5)}
  for p in saved:
    p.unlink()
  with pytest.raises(ReleaseError, match=r"(?s)2 expected file\(s\).*cycle-3_beta.dscalar.nii.*run-05_events.tsv"):
    _build(root, tmp_path / "d", _config())
  for p, data in saved.items():
    p.write_bytes(data)
  # label.txt that does not match the ScalarAxis names: file and row named.
  label2 = results / "ses-action01_task-action_cycle-2_label.txt"
  good_labels = label2.read_text()
  lines = good_labels.splitlines()
  label2.write_text("\n".join([lines[1], lines[0]] + lines[2:]) + "\n")
  with pytest.raises(ReleaseError, match=r"cycle-2_beta.dscalar.nii row 0 is named .* but .*cycle-2_label.txt line 1"):
    _build(root, tmp_path / "d", _config())
  label2.write_text(good_labels)
  # NaN betas, wrong grayordinate counts.
  beta1 = results / "ses-action01_task-action_cycle-1_beta.dscalar.nii"
  good_beta = beta1.read_bytes()
  bad = np.stack([_beta(0, 1, r) for r in range(4)])
  bad[2, 3] = np.inf
  names = (results / "ses-action01_task-action_cycle-1_label.txt").read_text().splitlines()
  rf.write_dscalar(beta1, bad, names, _bm())
  with pytest.raises(ReleaseError, match=r"cycle-1_beta.dscalar.nii: 1 NaN/Inf values \(first at index \[2, 3\]\)"):
    _build(root, tmp_path / "d", _config())
  beta1.write_bytes(good_beta)
  with pytest.raises(ReleaseError, match=r"cycle-1_beta.dscalar.nii: 11 grayordinates, expected 59412 or 91282"):
    _build(root, tmp_path / "d", _config(expected_grayordinates=(59412, 91282)))
  # An unreadable clip fails before writing, naming the file.
  category, name = clips[0]
  clip = tmp_path / "had" / "stimuli" / category / name
  clip.write_bytes(b"\x00" * 64)
  with pytest.raises(ReleaseError, match=rf"stimuli/{category}/{name}"):
    _build(root, tmp_path / "d", _config())
  assert not list((tmp_path / "d").rglob("dataset_info.json"))


def test_config_validation_names_the_field():
  with pytest.raises(ValueError, match=r"HadConfig.train_cycles \(1, 2, 3\) and test_cycles \(3,\) overlap"):
    _config(test_cycles=(3,))
  with pytest.raises(ValueError, match=r"HadConfig.test_cycles=\(5,\)"):
    _config(test_cycles=(5,))
  with pytest.raises(ValueError, match="HadConfig.rois needs HadConfig.atlas_path"):
    _config(rois=("V1",))
  with pytest.raises(ValueError, match="HadConfig.normalize='l2'"):
    _config(normalize="l2")
  assert had_config("brainnetflix").fps == 7.5


def test_build_reads_the_release_from_a_gcs_stand_in(tmp_path, fake_gcs):
  """Everything (folders, events, labels, CIFTI, videos) is read through epath from gs:// (conftest.fake_gcs)."""
  _write_release(os.path.join(fake_gcs, "bucket", "had"), subjects=("sub-02",))
  builder = _build("gs://bucket/had", tmp_path / "data", _config())
  assert builder.info.metadata["subjects"] == [{"name": "sub-02", "num_voxels": 11}]
  record = _records(builder, "test")[3]
  np.testing.assert_allclose(record["fmri"][0], _beta(0, 4, 3), rtol=1e-6)
  assert record["frames"].shape == (6, 8, 8, 3)
