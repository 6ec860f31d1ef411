"""Two jax.distributed processes on localhost train like one process with all devices.

Each process has 4 CPU devices and reads only its rows of every global batch;
the result must match a single process with 8 devices. This is the multi-host
path of a TPU pod slice, exercised without one.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import portpicker
import pytest
from etils import epath

from brainjax import artifacts, runner
from brainjax.train.metric_writer import read_metrics
from tests import helpers

pytestmark = pytest.mark.slow


def test_two_processes_match_one(tmp_path):
  data_dir = str(tmp_path / "data")
  num_steps = 12
  ref_dir = str(tmp_path / "one_process")
  runner.run(helpers.tiny_mbm_config(data_dir, num_steps=num_steps, checkpoint_every=5), ref_dir)
  reference, _ = artifacts.load_params(epath.Path(ref_dir) / "mbm_pretrain")

  recipe = tmp_path / "recipe.py"
  recipe.write_text("from tests import helpers\n"
                    "def get_config(preset='demo'):\n"
                    f"  return helpers.tiny_mbm_config({data_dir!r}, num_steps={num_steps}, checkpoint_every=5)\n")
  workdir = str(tmp_path / "two_processes")
  port = portpicker.pick_unused_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "brainjax.main", f"--config={recipe}", f"--workdir={workdir}", "--jax_distributed",
       f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) for i in range(2)]
  outs = [p.communicate(timeout=600)[0].decode() for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  assert "process 1 of 2, 4 local / 8 global devices" in outs[1]
  params, _ = artifacts.load_params(epath.Path(workdir) / "mbm_pretrain")
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  losses = [[r["loss"] for r in read_metrics(epath.Path(d) / "mbm_pretrain" / "metrics") if "loss" in r]
            for d in (workdir, ref_dir)]
  assert len(losses[0]) == 3  # steps 5, 10 and the last, 12
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
