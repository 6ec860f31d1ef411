"""The synthetic TFDS dataset and the Grain window pipeline."""

import dataclasses

import jax
import ml_collections
import numpy as np
import pytest

from brainjax.config import ConfigError
from brainjax.data import pipeline, synthetic
from tests import helpers


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return pipeline.data_config(data_dir=str(tmp_path_factory.mktemp("tfds")), spec=helpers.TINY_SPEC,
                              subjects=[0], window=2, hrf_shift_trs=2)


@pytest.fixture(scope="module")
def builder(data):
  return pipeline.load_builder(data)


def _with(data, **kw):
  out = ml_collections.ConfigDict(data.to_dict())
  out.update(kw)
  return out


def test_generated_once_then_reused(data, builder):
  files = sorted(p for p in __import__("pathlib").Path(builder.data_dir).glob("*array_record*"))
  assert files, "ArrayRecord files were not written"
  mtimes = [f.stat().st_mtime_ns for f in files]
  again = pipeline.load_builder(data)
  assert again.is_prepared()
  assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_examples_follow_the_common_schema(data):
  spec = synthetic.SyntheticSpec(**helpers.TINY_SPEC)
  source = pipeline.make_source(data, "train")
  ex = source[7]
  assert ex["fmri"].dtype == np.float32 and ex["fmri"].shape == (2, spec.voxels_per_subject[0])
  assert ex["frames"].dtype == np.uint8 and ex["frames"].shape == (spec.frames_per_tr, 32, 32, 3)
  assert isinstance(ex["caption"], str) and ex["caption"].startswith("a ")
  assert ex["subject"].dtype == np.int32 and ex["clip_id"].dtype == np.int64
  assert set(ex["labels"]) == set(pipeline.LABEL_KEYS)
  assert 0 <= ex["labels"]["category"] < len(synthetic.CLASSES)


def test_window_is_shifted_and_stays_inside_its_segment(data, builder):
  records = builder.as_data_source("test")
  lengths = dict(builder.info.metadata)["segment_trs"]["test"]
  for shift, window in [(2, 2), (0, 1), (3, 3)]:
    source = pipeline.make_source(_with(data, hrf_shift_trs=shift, window=window), "test")
    assert len(source) == sum(length - shift - window + 1 for length in lengths)
    for i in (0, len(source) - 1):
      ex = source[i]
      t = int(source._index[i][1])
      expected = np.stack([records[t + shift + j]["fmri"]["subject_0"].mean(0) for j in range(window)])
      np.testing.assert_allclose(ex["fmri"], expected, rtol=1e-6)
      assert ex["clip_id"] == records[t]["clip_id"]
      np.testing.assert_array_equal(ex["frames"], records[t]["frames"])
      assert int(records[t + shift + window - 1]["segment"]) == int(records[t]["segment"])


def test_repeats_each_and_average(data, builder):
  each = pipeline.make_source(_with(data, repeats="each"), "test")
  avg = pipeline.make_source(data, "test")
  reps = helpers.TINY_SPEC["test_repeats"]
  assert len(each) == reps * len(avg)
  single = np.stack([each[r * len(avg) + 5]["fmri"] for r in range(reps)])
  assert sorted(int(each[r * len(avg) + 5]["repeat"]) for r in range(reps)) == list(range(reps))
  np.testing.assert_allclose(single.mean(0), avg[5]["fmri"], rtol=1e-5, atol=1e-6)
  assert avg[5]["repeat"] == -1


def test_temporal_average_means_consecutive_trs(data, builder):
  records = builder.as_data_source("rest")
  source = pipeline.make_source(_with(data, window=1, temporal_average=3, stride=3, hrf_shift_trs=0), "rest")
  ex = source[1]
  first = int(source._index[1][2])
  assert first == 3
  expected = np.mean([records[first + k]["fmri"]["subject_0"][0] for k in range(3)], axis=0)
  np.testing.assert_allclose(ex["fmri"][0], expected, rtol=1e-5, atol=1e-6)


def test_subjects_with_different_voxel_counts_need_padding(data):
  with pytest.raises(ConfigError, match=r"different voxel counts \[250, 310\].*voxel_padding='wrap'"):
    pipeline.make_source(_with(data, subjects=[0, 1]), "train")
  source = pipeline.make_source(_with(data, subjects=[0, 1], voxel_padding="wrap"), "train")
  assert source.num_voxels == 320  # 310 rounded up to a multiple of 16
  ex0 = next(source[i] for i in range(len(source)) if source[i]["subject"] == 0)
  np.testing.assert_array_equal(ex0["fmri"][:, 250:320], ex0["fmri"][:, :70])  # wrap-padded
  with pytest.raises(ConfigError, match=r"num_voxels = 300 is smaller than the largest subject"):
    pipeline.make_source(_with(data, subjects=[0, 1], voxel_padding="wrap", num_voxels=300), "train")


def test_no_subjects_listed_reads_all_of_them(data):
  # MinD-Vis pretrains on every HCP subject; listing ~1000 of them by hand is not a config.
  config = ml_collections.ConfigDict({"data": _with(data, subjects=(), voxel_padding="wrap")})
  pipeline.validate_data(config)
  source = pipeline.make_source(config.data, "train")
  assert source.subjects == tuple(range(helpers.TINY_SPEC["num_subjects"]))
  assert {int(source[i]["subject"]) for i in range(len(source))} == set(source.subjects)


def test_iterator_is_deterministic_and_checkpointable(data):
  source = pipeline.make_source(data, "train")
  a = pipeline.make_iterator(source, batch_size=8, seed=1)
  b = pipeline.make_iterator(source, batch_size=8, seed=1)
  c = pipeline.make_iterator(source, batch_size=8, seed=2)
  first = [next(a)["clip_id"] for _ in range(3)]
  assert all(np.array_equal(x, next(b)["clip_id"]) for x in first)
  assert not np.array_equal(first[0], next(c)["clip_id"])
  state = a.get_state()
  expected = [next(a)["fmri"] for _ in range(2)]
  resumed = pipeline.make_iterator(source, batch_size=8, seed=1)
  resumed.set_state(state)
  for x in expected:
    np.testing.assert_array_equal(next(resumed)["fmri"], x)


def test_epochs_reshuffle_and_cover_everything(data):
  source = pipeline.make_source(data, "test")
  n = len(source)
  # make_iterator shuffles then repeats: every window once per epoch, a new order each epoch.
  import grain
  ds = grain.MapDataset.range(n).shuffle(seed=0).repeat(2)
  epoch0 = [ds[i] for i in range(n)]
  epoch1 = [ds[n + i] for i in range(n)]
  assert sorted(epoch0) == sorted(epoch1) == list(range(n))
  assert epoch0 != epoch1


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_global_batches_do_not_depend_on_the_process_count(data, monkeypatch, drop_remainder):
  source = pipeline.make_source(data, "test")
  key = lambda ex: {"key": np.int64(ex["clip_id"]) * 1000 + int(np.round(ex["fmri"][0, 0] * 100))}

  def batches(processes):
    per_process = []
    for process in range(processes):
      monkeypatch.setattr(jax, "process_index", lambda p=process: p)
      monkeypatch.setattr(jax, "process_count", lambda n=processes: n)
      it = pipeline.make_iterator(source, batch_size=8, seed=0, num_epochs=1, drop_remainder=drop_remainder,
                                  transform=key)
      per_process.append([list(b["key"]) for b in it])
    return [sum(rows, []) for rows in zip(*per_process)] if drop_remainder else per_process

  if drop_remainder:
    single, double = batches(1), batches(2)
    assert len(single) == len(source) // 8
    assert single == double  # same global batches, same order
  else:
    shards = batches(2)
    flat = [k for shard in shards for b in shard for k in b]
    assert len(flat) == len(set(flat)) == len(source)  # every window once, no duplicates


def test_non_finite_fmri_is_an_error():
  records = [{"fmri": {"subject_0": np.full((1, 4), np.nan, np.float32)}, "frames": np.zeros((0, 2, 2, 3), np.uint8),
              "caption": b"", "clip_id": -1, "segment": 0, "tr": t,
              "labels": {k: -1 for k in pipeline.LABEL_KEYS}} for t in range(4)]
  meta = {"subjects": [{"num_voxels": 4}], "segment_trs": {"rest": [4]}}
  source = pipeline.FmriWindowSource(records, meta, "rest", (0,), pipeline.WindowSpec(window=1, hrf_shift_trs=0))
  with pytest.raises(FloatingPointError, match="NaN/Inf"):
    source[0]


def test_incomplete_dataset_is_detected(builder):
  meta = dict(builder.info.metadata)
  records = builder.as_data_source("test")
  meta = dict(meta, segment_trs={"test": [len(records) + 5]})
  with pytest.raises(ValueError, match="incomplete or stale"):
    pipeline._check_record_order(records, meta, "test")


def test_window_too_long_for_segments_is_a_config_error(builder):
  meta = dict(builder.info.metadata)
  with pytest.raises(ConfigError, match="must not exceed a segment"):
    pipeline.FmriWindowSource(builder.as_data_source("test"), meta, "test", (0,),
                              dataclasses.replace(pipeline.WindowSpec(), window=100))


# ---------------------------------------------------------------------------------------------------------------
# Real-dataset layouts (data_builders/common.py): hand-made records, no builder needed.

from data_builders import common as contract  # noqa: E402


def _record(segment, tr, fmri, labels=None, **extra):
  return {"segment": segment, "tr": tr, "frames": np.zeros((0, 1, 1, 3), np.uint8), "caption": b"", "clip_id": -1,
          "scene_cut": False, "labels": labels or {}, "fmri": fmri, **extra}


def _per_subject_dataset():
  """Train segments of 5 (subject 0), 4 (subject 1) and 3 (subject 0) TRs; fmri = the record index."""
  owners, lengths = [0, 1, 0], [5, 4, 3]
  records, index = [], 0
  for segment, (owner, length) in enumerate(zip(owners, lengths)):
    for t in range(length):
      records.append(_record(segment, t, np.full((1, 3), index, np.float32), {"action": 10 + index},
                             subject=owner))
      index += 1
  meta = contract.dataset_metadata(layout="per_subject", response="bold", tr_s=0.8,
                                   subjects=[{"num_voxels": 3}, {"num_voxels": 3}], segment_trs={"train": lengths},
                                   segment_subjects={"train": owners}, repeats={"train": 1}, label_keys=["action"])
  return records, meta


def test_per_subject_layout_reads_only_the_subjects_segments():
  records, meta = _per_subject_dataset()
  spec = pipeline.WindowSpec(window=2, hrf_shift_trs=1)
  source = pipeline.FmriWindowSource(records, meta, "train", (0,), spec)
  # Subject 0 owns segments 0 (TRs 0..4: windows at t = 0, 1, 2) and 2 (records 9..11: one window).
  assert len(source) == 4
  firsts = [int(source[i]["fmri"][0, 0]) for i in range(len(source))]
  assert firsts == [1, 2, 3, 10]  # shifted by one TR, never into the next segment
  assert [int(source[i]["record"]) for i in range(4)] == [0, 1, 2, 9]
  np.testing.assert_array_equal(source[3]["fmri"], [[10.0] * 3, [11.0] * 3])
  assert source[0]["labels"] == {"action": 10}  # label keys come from the metadata
  both = pipeline.FmriWindowSource(records, meta, "train", (0, 1), spec)
  assert len(both) == 6 and [int(both[i]["subject"]) for i in range(6)] == [0, 0, 0, 0, 1, 1]
  assert [int(both[i]["fmri"][0, 0]) for i in (4, 5)] == [6, 7]  # subject 1's segment: records 5..8


def _beta_dataset():
  """3 trials, 2 subjects, 3 repeats; subject 1 missed repeat 2 of trial 1 (NaN row) and all of trial 2 (R=0)."""
  records = []
  for trial in range(3):
    fmri = {f"subject_{k}": np.stack([np.full(2, 100 * k + 10 * trial + r, np.float32) for r in range(3)])
            for k in range(2)}
    if trial == 1:
      fmri["subject_1"][2] = np.nan
    if trial == 2:
      fmri["subject_1"] = np.zeros((0, 2), np.float32)
    records.append(_record(trial, 0, fmri))
  meta = contract.dataset_metadata(layout="shared", response="beta", tr_s=3.0,
                                   subjects=[{"num_voxels": 2}, {"num_voxels": 2}], segment_trs={"test": [1, 1, 1]},
                                   repeats={"test": 3}, missing_repeats={"test": {"1": [[1, 2], [2, -1]]}})
  return records, meta


def test_beta_layout_averages_present_repeats_and_skips_missing():
  records, meta = _beta_dataset()
  beta = pipeline.WindowSpec(window=1, hrf_shift_trs=0)
  avg = pipeline.FmriWindowSource(records, meta, "test", (1,), beta)
  assert len(avg) == 2  # trial 2 has no response of subject 1: skipped
  np.testing.assert_allclose(avg[0]["fmri"], [[101.0, 101.0]])
  np.testing.assert_allclose(avg[1]["fmri"], [[110.5, 110.5]])  # mean of repeats 0 and 1 only, NaN row ignored
  each = pipeline.FmriWindowSource(records, meta, "test", (1,), dataclasses.replace(beta, repeats="each"))
  got = [(int(each[i]["record"]), int(each[i]["repeat"]), float(each[i]["fmri"][0, 0])) for i in range(len(each))]
  assert got == [(0, 0, 100.0), (1, 0, 110.0), (0, 1, 101.0), (1, 1, 111.0), (0, 2, 102.0)]
  full = pipeline.FmriWindowSource(records, meta, "test", (0,), beta)
  assert len(full) == 3 and float(full[2]["fmri"][0, 0]) == 21.0  # subject 0 saw everything
  assert full[0]["labels"] == {}  # no label keys


def test_beta_layout_requires_window_one_without_shift():
  records, meta = _beta_dataset()
  with pytest.raises(ConfigError, match=r"window=1.*hrf_shift_trs=0.*got window=2, hrf_shift_trs=2"):
    pipeline.FmriWindowSource(records, meta, "test", (0,), pipeline.WindowSpec())


def test_real_datasets_are_not_built_on_first_use(tmp_path):
  data = pipeline.data_config(name="bmd", builder_config="brain_netflix", data_dir=str(tmp_path), subjects=[0],
                              window=1, hrf_shift_trs=0)
  with pytest.raises(ConfigError) as e:
    pipeline.load_builder(data)
  assert (f"python -m brainjax.data.build bmd --manual_dir=<your copy of the release> --data_dir={tmp_path} "
          "--config=brain_netflix") in str(e.value)
  assert not list(tmp_path.rglob("*.array_record*"))


def test_validate_data_for_real_datasets():
  ok = ml_collections.ConfigDict({"data": pipeline.data_config(name="bmd", builder_config="brain_netflix",
                                                               window=1, hrf_shift_trs=0)})
  pipeline.validate_data(ok)
  beta = ml_collections.ConfigDict({"data": pipeline.data_config(name="bmd", builder_config="brain_netflix")})
  with pytest.raises(ConfigError, match=r"one beta per trial \(response .beta.\); set config.data.window=1"):
    pipeline.validate_data(beta)
  unknown = ml_collections.ConfigDict({"data": pipeline.data_config(name="cinebrain", builder_config="demo")})
  with pytest.raises(ConfigError, match=r"builder_config = 'demo': the cinebrain builder's configs are \['visual'"):
    pipeline.validate_data(unknown)
  pipeline.validate_data(ml_collections.ConfigDict({"data": pipeline.data_config(name="cinebrain",
                                                                                 builder_config="full")}))
  with pytest.raises(ConfigError, match="unknown dataset"):
    pipeline.validate_data(ml_collections.ConfigDict({"data": pipeline.data_config(name="nsd")}))


def test_an_unbuilt_dataset_leaves_no_temporary_directory(tmp_path, monkeypatch):
  """tensorflow_datasets makes a temp dir for GCS-hosted info of every unbuilt dataset and never removes it;
  brainjax's builders skip that lookup (their datasets are not in TFDS's bucket)."""
  import tempfile
  temp = tmp_path / "temp"
  temp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(temp))
  data = pipeline.data_config(data_dir=str(tmp_path / "tfds"), spec=helpers.TINY_SPEC, subjects=[0])
  builder = pipeline.load_builder(data, prepare=False)
  assert not builder.is_prepared()
  assert list(temp.iterdir()) == []
