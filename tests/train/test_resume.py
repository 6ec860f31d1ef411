"""Interrupting a stage and re-running resumes it to the same parameters.

A run is stopped two ways: SIGTERM (what a TPU VM preemption sends; the loop
checkpoints at the next step and exits 143; SIGINT, Ctrl-C, does the same) and
SIGKILL (no warning; the run resumes from the last periodic checkpoint). Either way the re-run must end
with the same parameters as an uninterrupted run, which needs the data
iterator's position to be restored together with the model.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from etils import epath

from brainjax import artifacts, runner
from tests import helpers

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def _final_params(workdir):
  params, _ = artifacts.load_params(epath.Path(workdir) / "mbm_pretrain")
  return jax.tree.leaves(params)


def _wait_for_checkpoint(workdir, proc, timeout=240):
  ckpt = epath.Path(workdir) / "mbm_pretrain" / "checkpoints"
  start = time.time()
  while time.time() - start < timeout:
    if proc.poll() is not None:
      raise AssertionError(f"run ended before it could be interrupted:\n{proc.stdout.read().decode()[-3000:]}")
    if ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir()):
      return
    time.sleep(0.2)
  raise AssertionError("no checkpoint appeared")


NUM_STEPS = 40


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
  """Final parameters of an uninterrupted run, in this process."""
  ref_dir = str(tmp_path_factory.mktemp("reference"))
  runner.run(helpers.tiny_mbm_config(data_dir, num_steps=NUM_STEPS), ref_dir)
  return _final_params(ref_dir)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_resumes_to_same_parameters(tmp_path, data_dir, reference, sig):
  num_steps = NUM_STEPS

  workdir = str(tmp_path / "interrupted")
  recipe = _write_recipe(tmp_path, data_dir, num_steps)
  proc = _launch(recipe, workdir)
  _wait_for_checkpoint(workdir, proc)
  proc.send_signal(sig)
  out = proc.communicate(timeout=240)[0].decode()
  if sig != signal.SIGKILL:
    assert proc.returncode == 143, out[-3000:]
    assert f"after {signal.Signals(sig).name}; the checkpoint is saved, re-run the same command to resume" in out
  else:
    assert proc.returncode == -signal.SIGKILL
  assert not (epath.Path(workdir) / "mbm_pretrain" / "DONE.json").exists()
  steps_done = [int(p.name) for p in (epath.Path(workdir) / "mbm_pretrain" / "checkpoints").iterdir()
                if p.name.isdigit()]
  assert 0 < max(steps_done) < num_steps

  # The resumed run may log and checkpoint on another cadence (e.g. after a move to preemptible machines):
  # that is not a change of settings, and the parameters still match.
  cadence = [] if sig != signal.SIGKILL else ["--config.mbm_pretrain.checkpoint_every_steps=7",
                                               "--config.mbm_pretrain.log_every_steps=3",
                                               "--config.mbm_pretrain.keep_checkpoints=1"]
  proc = _launch(recipe, workdir, *cadence)
  out = proc.communicate(timeout=400)[0].decode()
  assert proc.returncode == 0, out[-3000:]
  assert "resuming from" in out
  summary = json.loads((epath.Path(workdir) / "mbm_pretrain" / "DONE.json").read_text())
  assert summary["steps"] == num_steps
  # wall_time_s covers both invocations (timing.json keeps each one's)
  record = json.loads((epath.Path(workdir) / "mbm_pretrain" / "timing.json").read_text())["invocations"]
  assert [e["status"] for e in record] == ["killed" if sig == signal.SIGKILL else "preempted", "done"]
  assert summary["invocations"] == 2 and all(t > 0 for t in summary["invocation_wall_times_s"])
  assert summary["wall_time_s"] == pytest.approx(sum(e["wall_time_s"] for e in record), abs=0.2)
  for a, b in zip(_final_params(workdir), reference):
    np.testing.assert_array_equal(a, b)

  if sig == signal.SIGKILL:
    return
  # A third run skips the finished stage.
  proc = _launch(recipe, workdir)
  out = proc.communicate(timeout=200)[0].decode()
  assert proc.returncode == 0 and "already done" in out, out[-3000:]


def _write_recipe(tmp_path, data_dir, num_steps):
  """A recipe file: the demo recipe shrunk by tests/helpers.py (same as the reference)."""
  recipe = tmp_path / "tiny_recipe.py"
  recipe.write_text(
      "from tests import helpers\n"
      "def get_config(preset='demo'):\n"
      f"  return helpers.tiny_mbm_config({data_dir!r}, num_steps={num_steps})\n")
  return str(recipe)


def _launch(recipe, workdir, *overrides):
  args = [sys.executable, "-m", "brainjax.main", f"--config={recipe}", f"--workdir={workdir}", *overrides]
  return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
