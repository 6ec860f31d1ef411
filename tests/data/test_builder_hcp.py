"""HCP resting-state builder on a miniature release in the real layout (datasets.md §2, §8.2).

Planted series per grayordinate let the tests check that the records hold exactly the atlas's V1..V4 columns (mapped
by vertex through a data axis unlike the atlas's), z-scored per run, and that averaging 10 consecutive records gives
MinD-Vis's `process_voxel_ts` windows."""

import os

import numpy as np
import pytest

from brainjax.data import cifti
from data_builders.common import ReleaseError
from data_builders.hcp import hcp_config
from data_builders.hcp import hcp_dataset_builder as hcp
from tests import release_files as rf

MESH = 20
ATLAS_LEFT = list(range(MESH))
ATLAS_RIGHT = list(range(MESH))
# Areas by mesh vertex (left, right); MT is not selected by the default V1-V4.
AREAS = {"V1": ([0, 1, 2], [0, 1]), "V2": ([3, 4], [2, 3, 4]), "V3": ([5], [5, 6]), "V4": ([6, 7], [7]),
         "MT": ([8, 9], [8])}
# The data files: a different medial wall (left 1 and right 6 missing), shuffled vertices, and subcortex.
DATA_LEFT = [9, 0, 3, 2, 5, 10, 7, 4, 6, 12]
DATA_RIGHT = [4, 0, 2, 3, 5, 8, 7, 1, 11]
T = 40
TR = 0.72


def _data_axis():
  return rf.tiny_brain_models(DATA_LEFT, DATA_RIGHT, MESH, subcortex_voxels=3)


def _expected_columns(rois=cifti.MIND_VIS_ROIS, hemisphere="both"):
  """V1..V4 columns of the data axis, area by area, computed from the vertex lists independently of cifti.py."""
  cols = []
  for roi in rois:
    left, right = AREAS[roi]
    area = []
    if hemisphere in ("both", "left"):
      area += [DATA_LEFT.index(v) for v in left if v in DATA_LEFT]
    if hemisphere in ("both", "right"):
      area += [len(DATA_LEFT) + DATA_RIGHT.index(v) for v in right if v in DATA_RIGHT]
    cols += sorted(area)
  return cols


def _series(subject: int, run: int) -> np.ndarray:
  """A distinct series per (subject, run, grayordinate), with offsets and scales z-scoring must remove."""
  rng = np.random.default_rng(100 * subject + run)
  g = len(_data_axis())
  return (rng.standard_normal((T, g)) * rng.uniform(0.5, 30, g) + rng.uniform(-500, 500, g)).astype(np.float32)


def _zscore(x):
  x = x.astype(np.float64)
  return (x - x.mean(0)) / x.std(0)


def _write_release(root, subjects=("100206", "100307"), runs=("REST1_LR", "REST2_LR"), numbering="balsa"):
  os.makedirs(root, exist_ok=True)
  atlas_bm = rf.tiny_brain_models(ATLAS_LEFT, ATLAS_RIGHT, MESH)
  rois = {n: (left, [MESH + v for v in right]) for n, (left, right) in AREAS.items()}
  rf.tiny_glasser(os.path.join(root, hcp.BALSA_ATLAS), atlas_bm, rois, numbering=numbering)
  bm = _data_axis()
  for s, subject in enumerate(subjects):
    for r, run in enumerate(runs):
      path = os.path.join(root, hcp.HCP_FILE_PATTERN.format(subject=subject, run=run))
      rf.write_dtseries(path, _series(s, r), bm, TR)
  os.makedirs(os.path.join(root, "not_a_subject"), exist_ok=True)  # ignored: name is not an HCP id
  return root


def _config(**overrides):
  fields = dict(runs=("REST1_LR", "REST2_LR"), expected_grayordinates=len(_data_axis()), num_workers=1)
  fields.update(overrides)
  return hcp_config("mindvis", **fields)


def _build(manual_dir, data_dir, config):
  return rf.build(hcp.Builder, config, manual_dir, data_dir)


def _records(builder):
  source = builder.as_data_source("rest")
  return [source[i] for i in range(len(source))]


def test_build_holds_zscored_visual_rois_and_gives_mindvis_windows(tmp_path):
  root = _write_release(tmp_path / "hcp")
  builder = _build(root, tmp_path / "data", _config())
  meta = builder.info.metadata
  assert meta["layout"] == "per_subject" and meta["response"] == "bold" and meta["tr_s"] == pytest.approx(TR)
  assert meta["segment_trs"] == {"rest": [T] * 4} and meta["segment_subjects"] == {"rest": [0, 0, 1, 1]}
  assert meta["segment_runs"]["rest"] == ["REST1_LR", "REST2_LR"] * 2
  cols = _expected_columns()
  # Left V1 vertex 1 and right V3 vertex 6 are not in the data (its medial wall): V1 has 2 + 2 columns, V3 1 + 1.
  assert [s["name"] for s in meta["subjects"]] == ["100206", "100307"]
  assert meta["subjects"][0]["num_voxels"] == len(cols) == 14
  assert meta["subjects"][0]["roi_sizes"] == {"V1": 4, "V2": 5, "V3": 2, "V4": 3}
  assert meta["atlas_numbering"] == "balsa" and meta["num_records"] == {"rest": 4 * T}
  records = _records(builder)
  assert len(records) == 4 * T
  for seg, (s, r) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
    run = records[seg * T:(seg + 1) * T]
    assert [int(x["tr"]) for x in run] == list(range(T)) and {int(x["segment"]) for x in run} == {seg}
    assert {int(x["subject"]) for x in run} == {s}
    fmri = np.stack([x["fmri"] for x in run])  # [T, 1, V]
    assert fmri.shape == (T, 1, len(cols)) and fmri.dtype == np.float32
    expected = _zscore(_series(s, r)[:, cols])
    np.testing.assert_allclose(fmri[:, 0], expected, atol=1e-5)
    np.testing.assert_allclose(fmri[:, 0].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(fmri[:, 0].std(0), 1, atol=1e-5)
    # MinD-Vis process_voxel_ts before padding: np.array_split into len // (8 // 0.75) windows, each averaged.
    mindvis = np.stack([w.mean(0) for w in np.array_split(expected, len(expected) // int(8 // 0.75))])
    windows = fmri[:, 0].reshape(T // 10, 10, -1).mean(1)  # temporal_average=10, stride=10 in the pipeline
    np.testing.assert_allclose(windows, mindvis, atol=1e-5)
  first = records[0]
  assert first["frames"].shape[0] == 0 and int(first["clip_id"]) == -1 and not bool(first["scene_cut"])
  assert (first["caption"].decode() if isinstance(first["caption"], bytes) else first["caption"]) == ""


def test_hcp_utils_numbering_one_hemisphere_and_other_rois(tmp_path):
  root = _write_release(tmp_path / "hcp", subjects=("100206",), numbering="hcp_utils")
  config = _config(rois=("V1", "MT"), hemisphere="left")
  builder = _build(root, tmp_path / "data", config)
  assert builder.info.metadata["atlas_numbering"] == "hcp_utils"
  cols = _expected_columns(("V1", "MT"), "left")
  assert all(c < len(DATA_LEFT) for c in cols)
  records = _records(builder)
  fmri = np.stack([x["fmri"][0] for x in records[:T]])
  np.testing.assert_allclose(fmri, _zscore(_series(0, 0)[:, cols]), atol=1e-5)


def test_parallel_workers_resume_from_cache_and_read_write_gcs(tmp_path, fake_gcs):
  """Release and cache on gs:// (stand-in); a NaN run fails naming the file after the good subjects are cached;
  the re-run redoes only the failed subject and ignores half-written temporaries."""
  subjects = ("100206", "100307", "100408")
  root = _write_release(os.path.join(fake_gcs, "bucket", "hcp"), subjects=subjects)
  bad = os.path.join(root, hcp.HCP_FILE_PATTERN.format(subject="100408", run="REST2_LR"))
  nan_series = _series(2, 1)
  nan_series[5, 3] = np.nan
  rf.write_dtseries(bad, nan_series, _data_axis(), TR)
  config = _config(num_workers=2, start_method="fork", cache_dir="gs://bucket/cache")
  with pytest.raises(ReleaseError, match=r"100408/.*rfMRI_REST2_LR_Atlas_MSMAll_hp2000_clean.dtseries.nii: 1 NaN/Inf"):
    _build("gs://bucket/hcp", tmp_path / "data", config)
  cache = os.path.join(fake_gcs, "bucket", "cache")
  assert sorted(os.listdir(cache)) == ["100206.json", "100206.npz", "100307.json", "100307.npz"]
  assert not os.path.exists(tmp_path / "data" / "brainjax_hcp" / config.name / "1.0.0" / "dataset_info.json")
  stamp = os.stat(os.path.join(cache, "100206.npz")).st_mtime_ns
  rf.write_dtseries(bad, _series(2, 1), _data_axis(), TR)  # the user re-downloads the file
  with open(os.path.join(cache, "100408.npz"), "wb") as f:  # an interrupted write: npz without its json
    f.write(b"garbage")
  with open(os.path.join(cache, "100408.json.tmp-0000"), "w") as f:
    f.write("{")
  builder = _build("gs://bucket/hcp", tmp_path / "data", config)
  assert os.stat(os.path.join(cache, "100206.npz")).st_mtime_ns == stamp  # finished subject not redone
  records = _records(builder)
  assert len(records) == 3 * 2 * T
  cols = _expected_columns()
  last = np.stack([x["fmri"][0] for x in records[-T:]])
  np.testing.assert_allclose(last, _zscore(_series(2, 1)[:, cols]), atol=1e-5)


def test_missing_runs_are_reported_then_skipped_only_on_request(tmp_path):
  root = _write_release(tmp_path / "hcp", subjects=("100206", "100307", "100408"))
  for subject, run in (("100307", "REST2_LR"), ("100408", "REST1_LR")):
    os.remove(os.path.join(root, hcp.HCP_FILE_PATTERN.format(subject=subject, run=run)))
  with pytest.raises(ReleaseError, match=r"(?s)2 expected file\(s\) are missing.*100307/.*REST2_LR.*100408/.*REST1_LR"
                                         r".*on_missing_runs='skip_subject'"):
    _build(root, tmp_path / "d0", _config())
  builder = _build(root, tmp_path / "d1", _config(on_missing_runs="skip_subject"))
  meta = builder.info.metadata
  assert [s["name"] for s in meta["subjects"]] == ["100206"] and sorted(meta["skipped_subjects"]) == ["100307",
                                                                                                     "100408"]
  builder = _build(root, tmp_path / "d2", _config(on_missing_runs="keep_found_runs"))
  meta = builder.info.metadata
  assert meta["segment_runs"]["rest"] == ["REST1_LR", "REST2_LR", "REST1_LR", "REST2_LR"]
  assert meta["segment_subjects"]["rest"] == [0, 0, 1, 2]


def test_bad_releases_fail_before_writing(tmp_path):
  root = _write_release(tmp_path / "hcp", subjects=("100206",))
  with pytest.raises(ReleaseError, match=r"100206/.*REST1_LR.*dtseries.nii: 22 grayordinates, expected 91282"):
    _build(root, tmp_path / "data", _config(expected_grayordinates=91282))
  assert not list((tmp_path / "data").rglob("dataset_info.json"))
  with pytest.raises(ReleaseError, match="Glasser atlas .*missing.dlabel.nii not found"):
    _build(root, tmp_path / "data", _config(atlas_path="missing.dlabel.nii"))
  with pytest.raises(ValueError, match=r"unknown Glasser area\(s\): 'V9'"):
    _build(root, tmp_path / "data", _config(rois=("V1", "V9")))
  with pytest.raises(ReleaseError, match="40 time points, expected 1200"):
    _build(root, tmp_path / "data", _config(expected_timepoints=1200))
  empty = tmp_path / "hcp" / "not_a_subject"
  (empty / hcp.BALSA_ATLAS).write_bytes((tmp_path / "hcp" / hcp.BALSA_ATLAS).read_bytes())
  with pytest.raises(ReleaseError, match="no subject folder"):
    _build(empty, tmp_path / "data", _config())


def test_config_validation_names_the_field():
  with pytest.raises(ValueError, match="HcpConfig.hemisphere='middle'"):
    _config(hemisphere="middle")
  with pytest.raises(ValueError, match="HcpConfig.on_missing_runs='ignore'"):
    _config(on_missing_runs="ignore")
  with pytest.raises(ValueError, match=r"HcpConfig.file_pattern=.*'\{subject\}'"):
    _config(file_pattern="{run}.dtseries.nii")
  with pytest.raises(ValueError, match=r"no field\(s\) \['roi'\]"):
    hcp_config("mindvis", roi=("V1",))
  assert hcp_config("brainnetflix").rois == cifti.BRAIN_NETFLIX_ROIS and hcp_config().name == "mindvis"


def test_spawned_workers_and_a_changed_run_list_reuse_the_cache_correctly(tmp_path):
  """The production start method (spawn) pickles jobs and the atlas; a cache entry made for other runs is redone."""
  root = _write_release(tmp_path / "hcp", subjects=("100206", "100307"))
  cache = str(tmp_path / "cache")
  builder = _build(root, tmp_path / "d1", _config(runs=("REST1_LR",), cache_dir=cache, num_workers=2,
                                                   start_method="spawn"))
  assert builder.info.metadata["segment_runs"]["rest"] == ["REST1_LR", "REST1_LR"]
  builder = _build(root, tmp_path / "d2", _config(cache_dir=cache))
  assert builder.info.metadata["segment_runs"]["rest"] == ["REST1_LR", "REST2_LR"] * 2
  records = _records(builder)
  np.testing.assert_allclose(np.stack([x["fmri"][0] for x in records[T:2 * T]]),
                             _zscore(_series(0, 1)[:, _expected_columns()]), atol=1e-5)


def test_zscore_keeps_dead_vertices_at_zero():
  from data_builders.hcp import preprocess
  x = np.stack([np.arange(10.0), np.full(10, 3.0), np.linspace(-1, 5, 10) * 1e3], axis=1).astype(np.float32)
  z = preprocess.zscore_columns(x)
  np.testing.assert_allclose(z[:, [0, 2]], _zscore(x[:, [0, 2]]), atol=1e-6)
  assert np.all(z[:, 1] == 0) and z.dtype == np.float32


def test_pipeline_fields_reproduce_mindvis_windows(tmp_path):
  """The recipe of the builder docstring (window 1, temporal_average 10, stride 10, no shift, wrap-pad to 16) through
  brainjax.data.pipeline gives MinD-Vis's array_split window means, padded by wrapping the voxels."""
  from brainjax.data import pipeline
  root = _write_release(tmp_path / "hcp")
  builder = _build(root, tmp_path / "data", _config())
  spec = pipeline.WindowSpec(window=1, hrf_shift_trs=0, temporal_average=10, stride=10, voxel_padding="wrap",
                             pad_multiple=16)
  source = pipeline.FmriWindowSource(builder.as_data_source("rest"), dict(builder.info.metadata), "rest", (0, 1),
                                     spec)
  assert len(source) == 4 * (T // 10) and source.num_voxels == 16
  cols = _expected_columns()
  got = {}
  for i in range(len(source)):
    example = source[i]
    got.setdefault(int(example["subject"]), []).append(example["fmri"][0])
  for s in (0, 1):
    runs = [_zscore(_series(s, r)[:, cols]) for r in (0, 1)]
    mindvis = np.concatenate([np.stack([w.mean(0) for w in np.array_split(x, len(x) // 10)]) for x in runs])
    windows = np.stack(got[s])
    np.testing.assert_allclose(windows[:, :14], mindvis, atol=1e-5)
    np.testing.assert_allclose(windows[:, 14:], mindvis[:, :2], atol=1e-5)  # wrap padding: 14 -> 16
