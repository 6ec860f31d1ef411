"""The train loop under signals, kills and damaged checkpoints, and the bookkeeping that spans invocations.

* SIGINT stops like SIGTERM: a checkpoint at the current step, then Preempted.
* A signal stops the run within one step of the step the DEVICE was on: JAX dispatches steps ahead of the
  device, so the host's step counter says nothing; the signal is sent from a thread that polls `is_ready()`
  of each step's outputs (no host synchronisation) once step s-1's are ready, i.e. as the device starts s.
* A newest checkpoint that no longer restores is named, set aside, and the previous one used.
* metrics.jsonl survives kill -9 and holds each step once after a resume; DONE.json's wall time sums the
  invocations (timing.json).
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
import types

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from brainjax import runner, stages
from brainjax.train import checkpoint as checkpoint_lib
from brainjax.train import loop, timing
from brainjax.train.checkpoint import Checkpointer, CheckpointRestoreError
from brainjax.train.metric_writer import MetricWriter, NullWriter, read_metrics
from brainjax.train.state import TrainState
from tests import helpers

# ---------------------------------------------------------------------------------------------------------
# A tiny loop: one 128x128 matrix (random, so Orbax writes it to a data file rather than inline), a
# deterministic step, a checkpointable Grain iterator.


def _state(size=128):
  w = jax.random.normal(jax.random.PRNGKey(0), (size, size)) / np.sqrt(size)
  return TrainState(step=jnp.int32(0), params={"w": w}, opt_state={}, model_state={},
                    rng=jnp.zeros((2,), jnp.uint32))


def _abstract():
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _state())


def _make_step(n_matmuls=0):
  """`n_matmuls` 256x256 matmuls more make it a 15-30 ms step on a 2-core CPU."""
  @jax.jit
  def step(state, batch):
    w = state.params["w"]
    w = 0.99 * w + 0.01 * jnp.tanh(w @ w) + 1e-4 * jnp.mean(batch["x"])  # stays random: not compressible
    if n_matmuls:
      big = jax.lax.fori_loop(0, n_matmuls, lambda i, z: jnp.tanh(z @ z) * 0.5, jnp.tile(w, (2, 2)))
      w = w + 1e-9 * big[:w.shape[0], :w.shape[1]]
    return state.replace(step=state.step + 1, params={"w": w}), {"loss": jnp.mean(w * w)}
  return step


_STEP = _make_step()


def _dataset(on_batch=None):
  def load(i):
    if on_batch is not None:
      on_batch(int(i))
    return {"x": np.full((4,), i, np.float32)}
  # read in the main thread as the loop asks (Grain's default prefetches batches in 16 threads)
  return grain.MapDataset.range(10**6).map(load).to_iter_dataset(grain.ReadOptions(num_threads=0,
                                                                                   prefetch_buffer_size=0))


def _train(directory, num_steps, *, every=5, keep=2, train_step=_STEP, dataset=None, writer=None,
           log_every=5, max_inflight_steps=1):
  """Resumes from `directory` if it has a checkpoint and trains to `num_steps`: the final state."""
  checkpointer = Checkpointer(directory, every_steps=every, keep=keep)
  iterator = iter(dataset if dataset is not None else _dataset())
  try:
    state = loop.restore_latest(_abstract(), checkpointer, iterator) or _state()
    with loop.StopSignal() as stop:
      return loop.run_train_loop(state=state, train_step=train_step, data_iterator=iterator, to_device=lambda b: b,
                                 num_steps=num_steps, checkpointer=checkpointer, writer=writer or NullWriter(),
                                 stop=stop, log_every_steps=log_every, max_inflight_steps=max_inflight_steps)
  finally:
    checkpointer.close()


def _latest(directory):
  checkpointer = Checkpointer(directory, every_steps=1)
  try:
    return checkpointer.latest_step()
  finally:
    checkpointer.close()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The state after 30 steps without interruption."""
  return jax.device_get(_train(str(tmp_path_factory.mktemp("uninterrupted")), 30))


def _assert_same(state, reference):
  assert int(state.step) == int(reference.step)
  np.testing.assert_array_equal(jax.device_get(state.params["w"]), reference.params["w"])


# ---------------------------------------------------------------------------------------------------------
# 1. SIGINT is handled like SIGTERM.


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_the_current_step_then_raises_preempted(tmp_path, uninterrupted, sig):
  at = 12  # sent while the iterator yields the batch of step 12: the host has dispatched step 11

  def on_batch(i):
    if i == at - 1:
      os.kill(os.getpid(), sig)

  directory = str(tmp_path / "ckpt")
  before = signal.getsignal(sig)
  try:
    with pytest.raises(loop.Preempted) as raised:
      _train(directory, 30, every=100, dataset=_dataset(on_batch))
  except KeyboardInterrupt:
    pytest.fail("SIGINT was not turned into a checkpoint and Preempted")
  assert raised.value.step == at and raised.value.signum == sig
  assert signal.Signals(sig).name in str(raised.value) and "re-run the same command" in str(raised.value)
  assert _latest(directory) == at  # off the checkpoint interval: saved because of the signal
  assert signal.getsignal(sig) is before  # the previous handler is back
  _assert_same(_train(directory, 30, every=100), uninterrupted)  # and the run resumes to the same state


def test_second_sigint_stops_at_once_without_the_checkpoint():
  stop = loop.StopSignal()
  with stop:
    handler = signal.getsignal(signal.SIGINT)
  # the installed handler, called directly: a KeyboardInterrupt escaping into pytest would end the session
  handler(signal.SIGINT, None)
  assert stop.requested and stop.signum == signal.SIGINT
  handler(signal.SIGTERM, None)  # a repeated SIGTERM only asks again
  with pytest.raises(KeyboardInterrupt, match="twice"):
    handler(signal.SIGINT, None)


# ---------------------------------------------------------------------------------------------------------
# 2. A signal stops the run within one step of the device's.


@pytest.mark.parametrize("k", [1, 0])
def test_sigterm_stops_within_one_step_of_the_device(tmp_path, k):
  """A step of 15-30 ms on the device (a 2-core CPU): left unbounded (max_inflight_steps=None), the host
  queues 11-32 steps ahead of it and the checkpoint lands that late (bench/train_loop_inflight.py)."""
  heavy = _make_step(n_matmuls=20)
  for rep in range(3):
    watcher = helpers.SignalAtDeviceStep(heavy, at=12)
    directory = str(tmp_path / f"ckpt{rep}")
    try:
      with pytest.raises(loop.Preempted) as raised:
        _train(directory, 200, every=1000, log_every=50, train_step=watcher, max_inflight_steps=k)
    finally:
      watcher.close()
    s = watcher.device_step
    assert s is not None and s >= 12
    assert raised.value.step == _latest(directory)
    assert raised.value.step <= s + 1, f"signal while the device ran step {s}; stopped at {raised.value.step}"


# ---------------------------------------------------------------------------------------------------------
# 3. A damaged newest checkpoint: named, set aside, the previous one used.


def _damage(step_dir, what):
  """Damages a checkpoint step directory the way a bad copy or a full disk would; returns the file."""
  step_dir = pathlib.Path(step_dir)
  if what == "array":  # the largest OCDBT data file: the matrix
    path = max((step_dir / "state").glob("ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size)
    with open(path, "r+b") as f:
      f.truncate(path.stat().st_size // 2)
  elif what == "metadata":
    path = step_dir / "state" / "_METADATA"
    path.write_text(path.read_text()[: len(path.read_text()) // 2])
  elif what == "data_iterator":
    (path,) = list((step_dir / "data").glob("process_*.json"))
    path.write_text('{"next_index": ')
  else:
    raise ValueError(what)
  return str(path)


@pytest.fixture
def warnings_logged(monkeypatch):
  messages = []
  original = checkpoint_lib.logging.warning

  def record(msg, *args, **kwargs):
    messages.append(msg % args if args else msg)
    original(msg, *args, **kwargs)

  monkeypatch.setattr(checkpoint_lib.logging, "warning", record)
  return messages


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax's reads left unawaited
@pytest.mark.parametrize("what", ["array", "metadata", "data_iterator"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted, warnings_logged, what):
  directory = tmp_path / "checkpoints"
  _train(str(directory), 20, every=5, keep=2)
  assert sorted(int(p.name) for p in directory.iterdir()) == [15, 20]
  bad = _damage(directory / "20", what)

  # A read of a damaged checkpoint fails outright (and so cannot load wrong values) ...
  checkpointer = Checkpointer(str(directory), every_steps=5)
  with pytest.raises(Exception):
    checkpointer.restore(20, _abstract(), iter(_dataset()))
  checkpointer.close()

  # ... so the resumed run names the file, sets step 20 aside, restores 15 and goes on to the same state.
  state = _train(str(directory), 30, every=5, keep=2)
  _assert_same(state, uninterrupted)
  assert any(bad in m and "does not restore" in m for m in warnings_logged), warnings_logged
  assert any("resuming from" in m and f"{directory}/15" in m for m in warnings_logged), warnings_logged
  assert (tmp_path / "checkpoints.corrupt" / "20").is_dir()
  assert sorted(int(p.name) for p in directory.iterdir()) == [25, 30]  # 20 re-written, then rotated out


def test_no_checkpoint_restores_is_a_clear_error_and_moves_nothing(tmp_path, warnings_logged):
  directory = tmp_path / "checkpoints"
  _train(str(directory), 10, every=5, keep=2)
  bad = [_damage(directory / "10", "metadata"), _damage(directory / "5", "data_iterator")]
  with pytest.raises(CheckpointRestoreError) as raised:
    _train(str(directory), 20, every=5)
  message = str(raised.value)
  assert "\n" not in message
  assert f"no checkpoint in {directory} restores" in message and f"delete {directory}" in message
  assert "--workdir" in message and bad[0] in message and bad[1] in message
  assert sorted(int(p.name) for p in directory.iterdir()) == [5, 10]
  assert not (tmp_path / "checkpoints.corrupt").exists()


# ---------------------------------------------------------------------------------------------------------
# 4. metrics.jsonl: written as logged, each step once across a resume.


def test_metrics_are_on_disk_as_logged_and_a_resume_drops_the_steps_it_redoes(tmp_path):
  logdir = tmp_path / "metrics"
  writer = MetricWriter(logdir)
  for step in (5, 10, 15):
    writer.write_scalars(step, {"loss": float(step)})
    assert read_metrics(logdir)[-1]["step"] == step  # no flush() needed
  with open(logdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 20, "lo')  # a row cut short by a kill
  assert [r["step"] for r in read_metrics(logdir)] == [5, 10, 15]
  del writer  # killed: never closed

  resumed = MetricWriter(logdir)
  resumed.rewind(10)  # resumed from the checkpoint at step 10: 15 is re-done
  resumed.write_scalars(15, {"loss": -15.0})
  resumed.close()
  assert [(r["step"], r["loss"]) for r in read_metrics(logdir)] == [(5, 5.0), (10, 10.0), (15, -15.0)]
  assert resumed._purge_step == 11  # its TensorBoard event file hides the first invocation's steps >= 11


def test_metric_writer_on_gs_rewinds_too(fake_gcs):
  writer = MetricWriter("gs://bucket/run/metrics")
  for step in (1, 2, 3):
    writer.write_scalars(step, {"loss": float(step)})
  writer.close()
  writer = MetricWriter("gs://bucket/run/metrics")
  writer.rewind(1)
  writer.write_scalars(2, {"loss": 0.5})
  writer.close()
  assert [(r["step"], r["loss"]) for r in read_metrics("gs://bucket/run/metrics")] == [(1, 1.0), (2, 0.5)]


@pytest.mark.slow
def test_kill_9_keeps_the_metrics_and_the_time_and_a_resume_completes_both(tmp_path):
  """The tiny MBM stage killed with SIGKILL after it logged step 15 (its checkpoint is at 10)."""
  data_dir = str(tmp_path / "data")
  workdir = tmp_path / "run"
  stage_dir = workdir / "mbm_pretrain"
  recipe = tmp_path / "recipe.py"
  recipe.write_text("from tests import helpers\n"
                    "def get_config(preset='demo'):\n"
                    f"  return helpers.tiny_mbm_config({data_dir!r}, num_steps=40)\n")
  args = [sys.executable, "-m", "brainjax.main", f"--config={recipe}", f"--workdir={workdir}"]
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
  logged, output = [], []

  def read():
    for raw in proc.stdout:
      line = raw.decode(errors="replace")
      output.append(line)
      m = re.search(r"\] \[(\d+)\] .*\bloss=", line)
      if m:
        logged.append(int(m.group(1)))

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  start = time.time()
  while not (logged and logged[-1] >= 15):
    assert proc.poll() is None, "".join(output)[-3000:]
    assert time.time() - start < 300, "step 15 was never logged:\n" + "".join(output)[-3000:]
    time.sleep(0.05)
  proc.kill()
  proc.wait()
  reader.join(timeout=10)
  killed_at = time.time()
  assert not (stage_dir / "DONE.json").exists()
  before = read_metrics(stage_dir / "metrics")
  assert set(logged) <= {r["step"] for r in before if "loss" in r}, (logged, before)
  timing_before = json.loads((stage_dir / "timing.json").read_text())["invocations"]
  assert [e["status"] for e in timing_before] == ["running"] and timing_before[0]["wall_time_s"] > 0

  out = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=400).stdout.decode()
  restored = int(re.search(r"resuming from \S+/checkpoints/(\d+)", out).group(1))
  after = read_metrics(stage_dir / "metrics")
  losses = [r for r in after if "loss" in r]
  assert [r["step"] for r in losses] == list(range(5, 41, 5))  # every logged step once, in order
  steps = [r["step"] for r in after]
  assert steps == sorted(steps)
  for row in before:  # the first invocation's rows up to the restored step are kept as they were
    if row["step"] <= restored:
      assert row in after
  assert all(r["time"] > killed_at for r in after if r["step"] > restored)  # the later ones were re-done

  summary = json.loads((stage_dir / "DONE.json").read_text())
  record = json.loads((stage_dir / "timing.json").read_text())["invocations"]
  assert [e["status"] for e in record] == ["killed", "done"]
  assert summary["invocations"] == 2 and len(summary["invocation_wall_times_s"]) == 2
  assert summary["invocation_wall_times_s"][0] >= timing_before[0]["wall_time_s"] - 0.1
  assert summary["wall_time_s"] == pytest.approx(sum(e["wall_time_s"] for e in record), abs=0.2)


# ---------------------------------------------------------------------------------------------------------
# 5. DONE.json's wall time covers every invocation.


def _flaky_stage(attempts):
  """A stage module that is preempted (or fails) on the first `len(attempts)` runs, then finishes."""
  module = types.ModuleType("tests._flaky_stage")
  module.CONFIG_KEYS = ("seed",)
  module.validate = lambda config, name: None
  calls = []

  def run(ctx):
    calls.append(time.time())
    time.sleep(0.2)
    if len(calls) <= len(attempts):
      raise attempts[len(calls) - 1]
    return {"steps": 3}

  module.run = run
  return module


def test_done_json_wall_time_sums_the_invocations(tmp_path, monkeypatch):
  module = _flaky_stage([loop.Preempted(1, signal.SIGTERM), RuntimeError("out of memory")])
  monkeypatch.setitem(sys.modules, module.__name__, module)
  monkeypatch.setitem(stages.REGISTRY, "flaky", module.__name__)
  config = helpers.base_config()
  config.stages = ["flaky"]
  config.flaky = ml_collections.ConfigDict({"x": 1})
  workdir = str(tmp_path / "run")
  with pytest.raises(loop.Preempted):
    runner.run(config, workdir)
  with pytest.raises(RuntimeError, match="out of memory"):
    runner.run(config, workdir)
  summaries = runner.run(config, workdir)

  stage_dir = tmp_path / "run" / "flaky"
  record = json.loads((stage_dir / "timing.json").read_text())["invocations"]
  assert [e["status"] for e in record] == ["preempted", "failed", "done"]
  assert all(e["wall_time_s"] >= 0.2 for e in record)
  done = json.loads((stage_dir / "DONE.json").read_text())
  assert done["invocations"] == 3
  assert done["invocation_wall_times_s"] == [round(e["wall_time_s"], 1) for e in record]
  assert done["wall_time_s"] == round(sum(e["wall_time_s"] for e in record), 1) >= 0.6
  # what run() returns (and ablations compare) is the stage's summary and the total
  assert summaries["flaky"] == {"steps": 3, "wall_time_s": done["wall_time_s"]}
  assert runner.run(config, workdir)["flaky"] == summaries["flaky"]  # skipped: read back from DONE.json


def test_timer_marks_an_invocation_that_never_ended_as_killed_and_redo_starts_over(tmp_path):
  killed = timing.StageTimer(tmp_path)
  killed.__enter__()
  time.sleep(0.1)
  killed.tick(force=True)  # what the loop does at a checkpoint (on_progress); the process dies here
  with timing.StageTimer(tmp_path) as timer:
    pass
  record = timer.invocations()
  assert [e["status"] for e in record] == ["killed", "done"] and record[0]["wall_time_s"] >= 0.1
  assert timer.summary()["invocations"] == 2
  with timing.StageTimer(tmp_path) as again:  # the stage redone after it finished (DONE.json deleted)
    pass
  assert [e["status"] for e in again.invocations()] == ["done"]
