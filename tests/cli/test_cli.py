"""The command line as a new user meets it: bad configs fail in seconds with one line, exit status 2.

Each test runs `python -m brainjax.main` in a subprocess on configs that fail in validation (or --help),
so no stage trains.
"""

import os
import pathlib
import subprocess
import sys
import types

import pytest

from brainjax import preflight
from brainjax.config import ConfigError
from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _cli(*args, tmp_path, timeout=120):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="3",
             TFDS_DATA_DIR=str(tmp_path / "tfds"))  # no real dataset is built there
  result = subprocess.run([sys.executable, "-m", "brainjax.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
  assert "Traceback" not in result.stdout + result.stderr, result.stderr
  return result


def _error_lines(result) -> list[str]:
  return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def _fails_with_one_line(result, *needles) -> str:
  assert result.returncode == 2, (result.returncode, result.stderr)
  errors = _error_lines(result)
  assert len(errors) == 1, result.stderr
  assert result.stderr.rstrip().endswith(errors[0]), result.stderr  # the error is the last thing printed
  for needle in needles:
    assert needle in errors[0], errors[0]
  return errors[0]


@pytest.mark.parametrize("override, message", [
    ("--config.align.batchsize=8",
     "error: config.align.batchsize: no such field; did you mean config.align.batch_size?"),
    ("--config.algin.batch_size=8",
     "error: config.algin.batch_size: no such field; did you mean config.align.batch_size?"),
    ("--config.align.optim.warmup_step=5", "did you mean config.align.optim.warmup_steps?"),
    ("--config.align.optim.speed=5", "config.align.optim.speed: no such field; config.align.optim has b1, b2, "),
])
def test_misspelt_field_is_one_line_with_a_suggestion(tmp_path, override, message):
  result = _cli("--config=configs/mindvideo.py:demo", override, f"--workdir={tmp_path / 'run'}", tmp_path=tmp_path)
  _fails_with_one_line(result, message)
  assert not (tmp_path / "run").exists()


def test_misspelt_recipe_names_the_file_and_lists_the_recipes(tmp_path):
  result = _cli("--config=configs/mindvidoe.py:demo", f"--workdir={tmp_path / 'run'}", tmp_path=tmp_path)
  line = _fails_with_one_line(result, "configs/mindvidoe.py does not exist", "configs/mindvideo.py",
                              "configs/neuralflix.py", "did you mean --config=configs/mindvideo.py:demo?")
  assert "config_config" not in line and "common.py" not in line  # configs/ helpers are not recipes


def test_unknown_preset_lists_the_presets(tmp_path):
  result = _cli("--config=configs/neuralflix.py:dmeo", f"--workdir={tmp_path / 'run'}", tmp_path=tmp_path)
  _fails_with_one_line(result, "unknown preset 'dmeo'", "['demo', 'paper']", "--config=configs/neuralflix.py:demo")


def test_bad_value_is_one_line_naming_the_field(tmp_path):
  result = _cli("--config=configs/mindvideo.py:demo", "--config.seed=-1", f"--workdir={tmp_path / 'run'}",
                tmp_path=tmp_path)
  _fails_with_one_line(result, "config.seed = -1: must be a non-negative integer")


def test_unparsable_value_is_one_line(tmp_path):
  result = _cli("--config=configs/mindvideo.py:demo", "--config.align.batch_size=many",
                f"--workdir={tmp_path / 'run'}", tmp_path=tmp_path)
  _fails_with_one_line(result, "--config.align.batch_size=many", "--help")


def test_missing_flags_are_one_line(tmp_path):
  _fails_with_one_line(_cli(tmp_path=tmp_path), "--config", "--help")


RAISING_RECIPE = """
import sys, types
import ml_collections
from brainjax import stages
from brainjax.config import ConfigError
from tests import helpers

def _run(ctx):
  raise ConfigError("config.boom.size = 3: the data have sizes 1 and 2; set --config.boom.size=1 or 2.")

sys.modules["cli_boom_stage"] = types.SimpleNamespace(CONFIG_KEYS=("seed",), validate=lambda config, name: None,
                                                      run=_run)
stages.REGISTRY["boom"] = "cli_boom_stage"

def get_config():
  config = helpers.base_config()
  config.stages = ("boom",)
  config.boom = ml_collections.ConfigDict({"size": 3})
  return config
"""


def test_config_error_while_a_stage_runs_is_one_line(tmp_path):
  recipe = tmp_path / "boom.py"
  recipe.write_text(RAISING_RECIPE)
  result = _cli(f"--config={recipe}", f"--workdir={tmp_path / 'run'}", tmp_path=tmp_path)
  _fails_with_one_line(result, "error: config.boom.size = 3: the data have sizes 1 and 2")
  assert "stage boom: starting" in result.stderr  # raised by the stage's run, not by validation


def test_typo_in_the_last_stages_weights_fails_before_the_first_stage_trains(tmp_path):
  result = _cli("--config=configs/neuralflix.py:demo", "--config.evaluate.image_classifier_path=/nonexistent",
                f"--workdir={tmp_path / 'run'}", tmp_path=tmp_path)
  _fails_with_one_line(result, "config.evaluate.image_classifier_path = '/nonexistent' does not exist")
  assert "starting" not in result.stderr  # no stage ran: mbm_pretrain is the first
  assert not (tmp_path / "run").exists()


def test_paper_preset_without_inputs_lists_every_missing_one_and_points_to_the_demo(tmp_path):
  result = _cli("--config=configs/neuralflix.py", f"--workdir={tmp_path / 'run'}", tmp_path=tmp_path)
  assert result.returncode == 2, result.stderr
  assert "preset 'paper' (the default" in result.stderr  # says which preset runs
  error = result.stderr[result.stderr.index("error:"):]
  head, *problems = error.rstrip().splitlines()
  assert "inputs of preset 'paper' are missing" in head
  assert "for the synthetic demo run --config=configs/neuralflix.py:demo" in head
  for needle in ("config.clip_embed.text_path is empty", "config.clip_embed.vision_path is empty",
                 "config.video_finetune: give unet_path", "config.video_finetune.vae_path is empty",
                 "config.data (dataset 'cc2017')", "python -m brainjax.data.build cc2017",
                 "config.mbm_pretrain.data_overrides (dataset 'hcp')", "python -m brainjax.data.build hcp"):
    assert sum(needle in p for p in problems) == 1, (needle, problems)
  assert len(problems) == 6, problems
  assert not (tmp_path / "run").exists()


def test_help_exits_0_and_lists_recipes_presets_and_fields(tmp_path):
  result = _cli("--help", tmp_path=tmp_path)
  assert result.returncode == 0, result.stderr
  out = result.stdout
  for needle in ("--config", "--workdir", "configs/mindvideo.py", "configs/neuralflix.py", ":paper (default)",
                 ":demo", "stages  (", "data  ", "mesh  data=-1", "seed  0", "mbm_pretrain: batch_size",
                 "evaluate: ", "image_classifier_path", "--help):"):
    assert needle in out, needle


def test_help_with_a_recipe_prints_its_fields(tmp_path):
  result = _cli("--config=configs/neuralflix.py:demo", "--help", tmp_path=tmp_path)
  assert result.returncode == 0, result.stderr
  assert "every field of --config=configs/neuralflix.py:demo" in result.stdout
  assert "neuralflix_beta: 0.75" in result.stdout


# ----------------------------------------------------------------------------------- preflight, in-process


def test_demo_has_no_missing_inputs():
  assert preflight.missing_inputs(helpers.load_recipe("neuralflix", "demo")) == []


def test_every_missing_input_is_listed_once(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  config = helpers.load_recipe("mindvideo", "paper")
  weights = tmp_path / "weights"
  (weights / "clip").mkdir(parents=True)
  with config.unlocked():
    for stage in ("mbm_pretrain", "mbm_finetune", "video_finetune", "cotrain"):
      config[stage].batch_size = 16  # the paper's do not split over the 8 simulated devices
    config.clip_embed.text_path = str(weights / "clip")  # exists
    config.clip_embed.vision_path = str(weights / "clip-vision")  # a typo
    config.video_finetune.unet_path = str(weights / "unet")
    config.align.init_from = "stage:mbm_finetune"  # made by an earlier stage: not checked
    config.data.data_dir = str(tmp_path / "tfds")
  problems = preflight.missing_inputs(config)
  assert all("\n" not in p for p in problems)
  assert [p.split(" ", 1)[0] for p in problems] == [
      "config.video_finetune.vae_path",  # empty (cotrain and evaluate inherit it: reported once)
      "config.clip_embed.vision_path", "config.video_finetune.unet_path",
      "config.data", "config.mbm_pretrain.data_overrides"]  # cc2017, then HCP (mbm_finetune reads cc2017 too)
  assert "python -m brainjax.data.build cc2017" in problems[3] and f"--data_dir={tmp_path / 'tfds'}" in problems[3]
  assert "python -m brainjax.data.build hcp" in problems[4]
  with pytest.raises(ConfigError, match=r"^5 inputs of preset 'paper' are missing.*:demo\)"):
    preflight.check(config)


def test_gs_paths_are_checked_through_epath(fake_gcs):
  config = helpers.load_recipe("mindvideo", "demo")
  os.makedirs(os.path.join(fake_gcs, "bucket", "weights", "vit"))
  with config.unlocked():
    config.evaluate.image_classifier_path = "gs://bucket/weights/vit"
    config.evaluate.video_classifier_path = "gs://bucket/weights/videomea"
  assert preflight.missing_inputs(config) == [
      "config.evaluate.video_classifier_path = 'gs://bucket/weights/videomea' does not exist; point it at an "
      "existing directory (a local path or gs://...), or fix the typo."]


def test_paths_that_cannot_be_checked_are_tolerated(monkeypatch):
  class Unreachable:
    def __init__(self, path):
      self.path = path

    def expanduser(self):
      return self

    def exists(self):
      raise PermissionError(f"no credentials for {self.path}")

  monkeypatch.setattr(preflight, "epath", types.SimpleNamespace(Path=Unreachable))
  config = helpers.load_recipe("mindvideo", "demo")
  with config.unlocked():
    config.evaluate.image_classifier_path = "gs://private-bucket/vit"
  assert preflight.missing_inputs(config) == []
