"""gs:// workdirs go through etils.epath (tested against a local stand-in for GCS)."""

import json
import os

import ml_collections
import pytest
from etils import epath

from brainjax import runner, stages
from brainjax.config import ConfigError
from brainjax.train.metric_writer import MetricWriter, read_metrics
from tests import helpers


def _config(message="hello"):
  config = helpers.base_config()
  config.stages = ["echo"]
  config.echo = ml_collections.ConfigDict({"message": message})
  return config


def test_runner_writes_a_gs_workdir_through_epath(fake_gcs, monkeypatch):
  monkeypatch.setitem(stages.REGISTRY, "echo", "tests.fake_stage")
  summaries = runner.run(_config(), "gs://bucket/run1")
  assert summaries["echo"]["message"] == "hello"
  local = os.path.join(fake_gcs, "bucket", "run1")
  assert open(os.path.join(local, "echo", "product.txt")).read() == "seed=0 message=hello"
  assert json.load(open(os.path.join(local, "echo", "DONE.json")))["message"] == "hello"
  assert json.load(open(os.path.join(local, "config.json")))["echo"]["message"] == "hello"
  # Re-running skips the finished stage; different settings are refused, not mixed in.
  os.remove(os.path.join(local, "echo", "product.txt"))
  runner.run(_config(), "gs://bucket/run1")
  assert not os.path.exists(os.path.join(local, "echo", "product.txt"))
  with pytest.raises(ConfigError, match=r"different settings for stage 'echo' \(changed: echo.message\)"):
    runner.run(_config("bye"), "gs://bucket/run1")


def test_metric_writer_on_gs(fake_gcs):
  writer = MetricWriter("gs://bucket/run2/metrics")
  writer.write_scalars(1, {"loss": 2.5})
  writer.flush()
  writer.write_scalars(2, {"loss": 1.5})
  writer.close()
  rows = read_metrics(epath.Path("gs://bucket/run2/metrics"))
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 2.5), (2, 1.5)]
  local = os.path.join(fake_gcs, "bucket", "run2", "metrics")
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(local))


def test_local_metric_writer_appends_jsonl_and_tensorboard(tmp_path):
  writer = MetricWriter(tmp_path / "m")
  for step in range(3):
    writer.write_scalars(step, {"loss": float(step)})
  writer.close()
  assert [r["loss"] for r in read_metrics(tmp_path / "m")] == [0.0, 1.0, 2.0]
  events = [p for p in (tmp_path / "m").iterdir() if p.name.startswith("events.out.tfevents")]
  assert len(events) == 1 and b"loss" in events[0].read_bytes()


def test_only_run_control_fields_of_the_stage_itself_may_change():
  """Logging and checkpoint cadence do not change a stage's outputs; every other field does, including the
  same names in another stage's settings that this stage's fingerprint holds."""
  old = {"seed": 0, "echo": {"message": "hi", "log_every_steps": 5, "checkpoint_every_steps": 10,
                             "keep_checkpoints": 2},
         "upstream": {"checkpoint_every_steps": 10}}
  new = json.loads(json.dumps(old))
  new["echo"].update(log_every_steps=1, checkpoint_every_steps=3, keep_checkpoints=1)
  assert runner.changed_settings(json.dumps(old), json.dumps(new), "echo") == []
  new["upstream"]["checkpoint_every_steps"] = 3
  new["echo"]["message"] = "bye"
  assert runner.changed_settings(json.dumps(old), json.dumps(new), "echo") == [
      "echo.message", "upstream.checkpoint_every_steps"]
