"""Joint multi-dataset, multi-subject training (Brain Netflix): the mixture source, global subject
ids, padding that never reaches a loss, stage plumbing, fingerprints and config errors."""

import jax
import ml_collections
import numpy as np
import pytest
from etils import epath

from brainjax import artifacts, runner
from brainjax.config import ConfigError
from brainjax.data import pipeline
from brainjax.stages import common
from tests import helpers


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def datas(data_dir):
  """TINY_SPEC (subjects 0, 1: 250 and 310 voxels) and TINY_SPEC_B (subject 0: 200 voxels)."""
  a = pipeline.data_config(data_dir=data_dir, spec=helpers.TINY_SPEC, subjects=[0, 1], window=2, hrf_shift_trs=2,
                           voxel_padding="wrap")
  b = pipeline.data_config(data_dir=data_dir, spec=helpers.TINY_SPEC_B, subjects=[0], window=2, hrf_shift_trs=2,
                           voxel_padding="wrap")
  return a, b


def test_mixture_has_global_subjects_and_per_example_voxel_counts(datas):
  a, b = datas
  mix = pipeline.make_mixture_source([a, b], "test")
  single_a, single_b = pipeline.make_source(a, "test"), pipeline.make_source(b, "test")
  assert len(mix) == len(single_a) + len(single_b)
  assert mix.dataset_subjects == 3 and mix.num_voxels == 320  # 310 rounded up to a multiple of 16
  assert mix.subject_table == [[pipeline.dataset_key(a), 0], [pipeline.dataset_key(a), 1],
                               [pipeline.dataset_key(b), 0]]
  seen = {}
  for i in range(0, len(mix), 7):
    ex = mix[i]
    seen[int(ex["subject"])] = (int(ex["dataset"]), int(ex["dataset_subject"]), int(ex["num_voxels"]))
    assert ex["fmri"].shape == (2, 320) and ex["fmri"].dtype == np.float32
    assert set(single_a[0]) <= set(ex)  # every field of a single-dataset example, plus the mixture's
  assert seen == {0: (0, 0, 250), 1: (0, 1, 310), 2: (1, 0, 200)}
  # Dataset 1's windows follow dataset 0's; their voxels are the subject's own, then the fill.
  ex, own = mix[len(single_a) + 3], single_b[3]
  np.testing.assert_array_equal(ex["fmri"][:, :200], own["fmri"][:, :200])
  np.testing.assert_array_equal(ex["fmri"][:, 200:320], ex["fmri"][:, :120])  # 'wrap' fill
  assert ex["clip_id"] == own["clip_id"] and ex["record"] == own["record"]
  cfg_zero = ml_collections.ConfigDict(a.to_dict())
  cfg_zero.voxel_padding = "none"
  ex = pipeline.make_mixture_source([cfg_zero, b], "test")[len(single_a) + 3]
  assert not ex["fmri"][:, 200:].any()  # 'none': zero fill


def test_mixture_global_batches_do_not_depend_on_the_process_count(datas, monkeypatch):
  a, b = datas
  key = lambda ex: {"key": np.int64(ex["dataset"]) * 10**9 + np.int64(ex["subject"]) * 10**6
                    + np.int64(ex["record"]) * 10 + np.int64(ex["repeat"] + 1)}

  def batches(mix, processes, steps):
    per_process = []
    for process in range(processes):
      monkeypatch.setattr(jax, "process_index", lambda p=process: p)
      monkeypatch.setattr(jax, "process_count", lambda n=processes: n)
      it = pipeline.make_iterator(mix, batch_size=8, seed=5, transform=key)
      per_process.append([list(next(it)["key"]) for _ in range(steps)])
    return [sum(rows, []) for rows in zip(*per_process)]

  for weights in (None, (1.0, 3.0)):
    mix = pipeline.make_mixture_source([a, b], "test", weights=weights)
    single, double = batches(mix, 1, 12), batches(mix, 2, 12)
    assert single == double
    assert single == batches(pipeline.make_mixture_source([a, b], "test", weights=weights), 1, 12)  # seeded
    datasets = np.asarray(single) // 10**9
    if weights:  # fixed proportions: a quarter from dataset 0
      assert abs((datasets == 0).mean() - 0.25) < 0.05
    else:  # in proportion to size
      assert abs((datasets == 0).mean() - len(mix.sources[0]) / len(mix)) < 0.15


def test_stage_datasets_inherit_windowing_but_not_identity(data_dir):
  config = helpers.tiny_multidataset_config(data_dir)
  with config.unlocked():
    config.mbm_pretrain.extra_datasets = [dict(spec=helpers.TINY_SPEC_B, subjects=[0], hrf_shift_trs=1),
                                          dict(builder_config="demo", subjects=[2])]
  main, b, demo = common.stage_datasets(config, "mbm_pretrain")
  assert main.spec.seed == helpers.TINY_SPEC["seed"] and main.temporal_average == 2
  assert b.spec["seed"] == helpers.TINY_SPEC_B["seed"] and b.hrf_shift_trs == 1
  assert b.temporal_average == main.temporal_average and b.window == 1 and b.data_dir == data_dir  # inherited
  assert demo.spec is None and demo.builder_config == "demo"  # identity is not inherited
  assert pipeline.dataset_key(demo) == "synthetic/demo"


@pytest.mark.parametrize("stage,extras,weights,message", [
    ("mbm_pretrain", [dict(spec=helpers.TINY_SPEC_B)], (),
     r"config.mbm_pretrain.extra_datasets\[0\].subjects is missing"),
    ("mbm_pretrain", [dict(spec=helpers.TINY_SPEC_B, subjects=[0]), dict(spec=helpers.TINY_SPEC_B, subjects=[3])],
     (), r"config.mbm_pretrain.extra_datasets\[1\].subjects = \[3\]: the dataset has subjects 0..0"),
    ("mbm_pretrain", [dict(spec=helpers.TINY_SPEC_B, subjects=[0], window=2)], (),
     r"config.mbm_pretrain.extra_datasets\[0\].window: every dataset of a stage shares config.data.window"),
    ("mbm_pretrain", [dict(spec=helpers.TINY_SPEC_B, subjects=[0], windw=2)], (),
     r"config.mbm_pretrain.extra_datasets\[0\].windw: not a field of config.data"),
    ("mbm_pretrain", [dict(spec=dict(helpers.TINY_SPEC_B, num_subjects=2), subjects=[0])], (),
     r"config.mbm_pretrain.extra_datasets\[0\].spec: .*voxels_per_subject"),
    ("mbm_pretrain", [dict(spec=helpers.TINY_SPEC_B, subjects=[0], repeats="all")], (),
     r"config.mbm_pretrain.extra_datasets\[0\].repeats = 'all'"),
    ("mbm_pretrain", [dict(name="bmd", subjects=[0])], (),
     r"config.mbm_pretrain.extra_datasets\[0\].builder_config = 'demo': the bmd builder's configs are"),
    ("mbm_pretrain", [dict(spec=helpers.TINY_SPEC, subjects=[1])], (),
     r"extra_datasets\[0\] names the same dataset as config.data"),
    ("mbm_pretrain", dict(spec=helpers.TINY_SPEC_B, subjects=[0]), (),
     r"config.mbm_pretrain.extra_datasets is a ConfigDict: it must be a list of dicts"),
    ("align", [[0]], (), r"config.align.extra_datasets\[0\] is a list: it must be a dict"),
    ("mbm_pretrain", [dict(spec=helpers.TINY_SPEC_B, subjects=[0])], (1.0,),
     r"config.mbm_pretrain.dataset_weights = \(1.0,\): give one weight per dataset \(2"),
    ("mbm_pretrain", [dict(spec=helpers.TINY_SPEC_B, subjects=[0])], (1.0, -1.0),
     r"dataset_weights = \(1.0, -1.0\): weights must be positive"),
    ("align", [dict(spec=helpers.TINY_SPEC_B, subjects=[0], hrf_shift_trs=60)], (),
     r"config.align.extra_datasets\[0\]: a window of 2 x temporal_average 1 TRs after a shift of 60 TRs"),
    ("align", [dict(spec=helpers.TINY_SPEC_B, subjects=[-1])], (),
     r"config.align.extra_datasets\[0\].subjects = \[-1\]: must be a list of subject indices"),
])
def test_bad_extra_datasets_name_the_field(data_dir, stage, extras, weights, message):
  config = helpers.tiny_multidataset_config(data_dir)
  with config.unlocked():
    del config[stage]["extra_datasets"]  # ConfigDict would refuse a dict where the default is a list
    config[stage].extra_datasets = extras
    config[stage].dataset_weights = weights
  with pytest.raises(ConfigError, match=message):
    runner.validate(config)


def test_single_dataset_fingerprints_are_unchanged(data_dir):
  """Workdirs made before multi-dataset support keep their fingerprints (empty lists are left out)."""
  import json
  config = helpers.tiny_mindvideo_config(data_dir)
  for name in ("mbm_pretrain", "mbm_finetune"):
    old = {"seed": config.seed, "data": common.stage_data_config(config, name).to_dict(),
           name: {k: v for k, v in config[name].to_dict().items() if k not in common.MULTI_DATA_FIELDS}}
    assert runner.stage_fingerprint(config, name) == json.dumps(old, sort_keys=True, default=str)
  align_old = {"seed": config.seed, "data": config.data.to_dict(),
               "align": {k: v for k, v in config.align.to_dict().items() if k not in common.MULTI_DATA_FIELDS}}
  assert runner.stage_fingerprint(config, "align") == json.dumps(align_old, sort_keys=True, default=str)


def test_subject_rows_are_matched_by_dataset_and_subject():
  source_table = [["a", 0], ["a", 1], ["b", 0]]
  target_table = [["b", 0], ["c", 0], ["a", 1]]
  src = {"kernel": np.arange(3)[:, None, None] * np.ones((3, 2, 4)), "bias": np.arange(3)[:, None] * np.ones((3, 4))}
  fresh = {"kernel": np.full((3, 2, 4), -1.0), "bias": np.full((3, 4), -1.0)}
  out, missing = common.remap_subject_rows(src, source_table, target_table, fresh)
  assert missing == 1
  np.testing.assert_array_equal(out["kernel"][:, 0, 0], [2, -1, 1])
  np.testing.assert_array_equal(out["bias"][:, 0], [2, -1, 1])
  same = common.match_subjects({"patch_embed": src}, {"subject_table": source_table}, {"patch_embed": src},
                               source_table)
  assert same["patch_embed"] is src


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory, data_dir):
  clip_dir = helpers.save_random_clip(str(tmp_path_factory.mktemp("clip")))
  config = helpers.tiny_multidataset_config(data_dir, steps=4, clip_dir=clip_dir)
  workdir = str(tmp_path_factory.mktemp("run"))
  return config, workdir, runner.run(config, workdir)


@pytest.mark.slow
def test_mbm_and_align_train_jointly_over_two_datasets(joint_run):
  config, workdir, summaries = joint_run
  assert list(summaries) == ["mbm_pretrain", "clip_embed", "align"]
  for name in ("mbm_pretrain", "align"):
    assert summaries[name]["steps"] == 4
    assert summaries[name]["num_datasets"] == 2 and summaries[name]["num_subjects_total"] == 3
  assert len(summaries["mbm_pretrain"]["test_masked_patch_corr_by_dataset"]) == 2
  assert 0.0 <= summaries["align"]["fmri_to_image_top1/dataset_1"] <= 1.0
  mbm_params, mbm_meta = artifacts.load_params(epath.Path(workdir) / "mbm_pretrain")
  align_params, align_meta = artifacts.load_params(epath.Path(workdir) / "align")
  assert mbm_params["patch_embed"]["kernel"].shape[0] == 3  # one row per (dataset, subject)
  assert align_params["encoder"]["patch_embed"]["kernel"].shape[0] == 3
  assert len(mbm_meta["subject_table"]) == 3 and mbm_meta["subject_table"] == align_meta["subject_table"]
  assert mbm_meta["num_voxels"] == 320
  # Extra datasets' CLIP embeddings are cached by align with the same towers.
  assert (epath.Path(workdir) / "align" / "clip_embed" / "dataset_1" / "train" / "text_embeds.npy").exists()


@pytest.mark.slow
def test_changed_dataset_list_is_refused(joint_run):
  config, workdir, _ = joint_run
  changed = ml_collections.ConfigDict(config.to_dict())
  changed.mbm_pretrain.extra_datasets = [dict(name="synthetic", spec=helpers.TINY_SPEC_B, subjects=[0],
                                              hrf_shift_trs=1)]
  with pytest.raises(ConfigError, match=r"mbm_pretrain was made with different settings .*extra_datasets"):
    runner.run(changed, workdir)
  fewer = ml_collections.ConfigDict(config.to_dict())
  fewer.mbm_pretrain.extra_datasets = ()
  with pytest.raises(ConfigError, match=r"different settings for stage 'mbm_pretrain'"):
    runner.run(fewer, workdir)
  # The unchanged recipe skips every finished stage.
  assert runner.run(config, workdir)["align"]["steps"] == 4
