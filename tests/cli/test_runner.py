"""The runner's workdir contract: provenance, stale dependents, what a fingerprint holds, unlocked failures."""

import json

import ml_collections
import pytest
from absl import logging

from brainjax import runner, stages
from brainjax.config import ConfigError
from brainjax.data import pipeline
from tests import helpers


@pytest.fixture(autouse=True)
def fake_stages(monkeypatch):
  for name in ("upstream", "downstream", "other"):
    monkeypatch.setitem(stages.REGISTRY, name, "tests.fake_stage")


def _config(**settings):
  config = helpers.base_config()
  config.stages = ["upstream", "downstream"]
  config.data = pipeline.data_config(name="synthetic", builder_config="demo", data_dir="/data/a")
  config.upstream = ml_collections.ConfigDict({"message": "first", "fail": ""})
  config.downstream = ml_collections.ConfigDict({"message": "second", "source": "stage:upstream", "fail": ""})
  for path, value in settings.items():
    stage, field = path.split(".")
    config[stage][field] = value
  return config


def test_inputs_are_the_stage_references_and_requires():
  config = _config()
  assert runner.stage_inputs(config, "downstream") == ["upstream"]
  assert runner.stage_inputs(config, "upstream") == []
  assert runner.stage_inputs(helpers.load_recipe("mindvideo"), "align") == ["mbm_finetune", "clip_embed"]
  assert runner.stage_inputs(helpers.load_recipe("mindvideo"), "evaluate") == [
      "clip_embed", "video_finetune", "cotrain", "classifier_fit"]


def test_a_redone_upstream_stage_reruns_its_dependents(tmp_path, monkeypatch):
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
  runner.run(_config(), str(tmp_path))
  first = json.loads((tmp_path / "upstream" / "provenance.json").read_text())
  recorded = json.loads((tmp_path / "downstream" / "inputs.json").read_text())
  assert recorded == {"upstream": first["run_id"]}
  assert json.loads((tmp_path / "downstream" / "provenance.json").read_text())["inputs"] == recorded
  # Re-running changes nothing.
  runner.run(_config(), str(tmp_path))
  assert json.loads((tmp_path / "upstream" / "provenance.json").read_text())["run_id"] == first["run_id"]
  assert not warnings
  # Redo upstream (the user deletes it, as the refusal of changed settings suggests) with other settings.
  import shutil
  shutil.rmtree(tmp_path / "upstream")
  runner.run(_config(**{"upstream.message": "redone"}), str(tmp_path))
  assert (tmp_path / "downstream" / "product.txt").read_text() == (
      "seed=0 message=second from=[seed=0 message=redone]")
  assert (tmp_path / "downstream.stale-1" / "product.txt").read_text() == (
      "seed=0 message=second from=[seed=0 message=first]")
  assert len(warnings) == 1 and "downstream" in warnings[0] and "upstream was redone" in warnings[0]
  assert "downstream.stale-1" in warnings[0]


def test_a_moved_data_dir_is_the_same_dataset(tmp_path):
  runner.run(_config(), str(tmp_path))
  moved = _config()
  moved.data.data_dir = "gs://bucket/tfds"
  runner.run(moved, str(tmp_path))  # skipped: nothing to redo, nothing refused
  assert not (tmp_path / "upstream.stale-1").exists()
  other = _config()
  other.data.builder_config = "full256"
  with pytest.raises(ConfigError, match=r"changed: data.builder_config"):
    runner.run(other, str(tmp_path))


def test_a_stage_that_failed_before_producing_anything_does_not_lock_its_settings(tmp_path):
  with pytest.raises(RuntimeError, match="failed on purpose"):
    runner.run(_config(**{"upstream.fail": "early"}), str(tmp_path))
  assert (tmp_path / "upstream" / "config.json").exists()
  summaries = runner.run(_config(), str(tmp_path))  # fixed settings: accepted
  assert summaries["upstream"]["message"] == "first"
  assert '"fail": ""' in (tmp_path / "upstream" / "config.json").read_text()


def test_a_stage_that_checkpointed_keeps_its_settings(tmp_path):
  with pytest.raises(RuntimeError, match="failed on purpose"):
    runner.run(_config(**{"upstream.fail": "after_checkpoint"}), str(tmp_path))
  with pytest.raises(ConfigError, match=r"different settings for stage 'upstream' \(changed: upstream.fail\)"):
    runner.run(_config(), str(tmp_path))


def test_stage_references_are_checked_for_their_kind_before_anything_runs(tmp_path):
  config = helpers.load_recipe("mindvideo")
  runner.check_input_kinds(config)  # the recipe as written
  config.cotrain.encoder_from = "stage:video_finetune/unet"
  with pytest.raises(ConfigError, match=r"config.cotrain.encoder_from = 'stage:video_finetune/unet' is a "
                                        r"video_unet but cotrain.encoder_from reads a fmri_encoder"):
    runner.run(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # refused in validation
  config = helpers.load_recipe("mindvideo")
  config.evaluate.unet_from = "stage:cotrain/vae"
  with pytest.raises(ConfigError, match=r"stage 'cotrain' writes no 'vae'; its outputs are 'stage:cotrain' "
                                        r"\(fmri_encoder\), 'stage:cotrain/unet' \(video_unet\)"):
    runner.validate(config)
  config = helpers.load_recipe("mindvideo")
  config.video_finetune.unet_path = "stage:vae_fit/vae"
  with pytest.raises(ConfigError, match=r"is a vae but video_finetune.unet_path reads a unet or video_unet"):
    runner.validate(config)
