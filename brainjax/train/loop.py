"""The training loop every stage shares.

It owns what is the same for every stage: resume from the latest checkpoint
that restores, step, log, checkpoint, report progress (steps/s, ETA), stop
cleanly on SIGTERM (TPU VM preemption) or SIGINT (Ctrl-C) after saving, and
refuse to continue on a NaN loss. A stage supplies the state, the jitted step
and the data iterator.

Stopping promptly. JAX dispatches steps asynchronously: left alone, the host
runs ahead of the device by as many steps as the runtime will queue (up to a
log interval, where it syncs to read the metrics), and a signal noticed on the
host then still waits for all of them: with a 15-30 ms step on a 2-core CPU
the checkpoint landed 11-32 steps after the step the device was on
(bench/train_loop_inflight.py). So the loop keeps at most `max_inflight_steps`
(default 1) steps queued behind the one it has just dispatched: after
dispatching step j it waits for step j-1's outputs. The device still has the
next step queued while the host prepares the one after, and a signal that
arrives while the device computes step s stops the run with a checkpoint at
step s or s+1 (tests/train/test_train_robustness.py). What it costs: a host stall
longer than a step (a slow batch) is no longer hidden by the queue.
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from brainjax.train.checkpoint import Checkpointer
from brainjax.train.state import TrainState


class Preempted(Exception):
  """Raised after the checkpoint is safely written when a stop was requested."""

  def __init__(self, step: int, signum: int | None = None):
    what = "a termination signal" if signum is None else signal.Signals(signum).name
    super().__init__(f"stopped at step {step} after {what}; the checkpoint is saved, "
                     "re-run the same command to resume")
    self.step = step
    self.signum = signum  # the signal that asked for the stop (None: a preemption notice or request_stop)


class NonFiniteLoss(FloatingPointError):
  pass


class StopSignal:
  """Turns SIGTERM/SIGINT into a flag the loop polls between steps.

  The handler only sets a flag, so a signal never interrupts a checkpoint
  write half-way; the loop saves and exits at the next step boundary (within
  one step of the device's, see the module docstring). A second SIGINT (Ctrl-C
  pressed again while it finishes the step and writes the checkpoint) raises
  KeyboardInterrupt at once, without the checkpoint; the run then resumes from
  the last one written. Handlers are only installed from the main thread.
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
    self._event = threading.Event()
    self._signals = signals
    self._previous: dict[int, Any] = {}
    self.signum: int | None = None  # the first signal received

  def __enter__(self) -> "StopSignal":
    if threading.current_thread() is threading.main_thread():
      for sig in self._signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame) -> None:
    del frame
    if self._event.is_set() and signum == signal.SIGINT:
      raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice: stopped without a checkpoint; "
                              "re-run the same command to resume from the last checkpoint written")
    name = signal.Signals(signum).name
    logging.warning("received %s: will checkpoint and stop after the current step%s", name,
                    " (press Ctrl-C again to stop at once, without the checkpoint)" if signum == signal.SIGINT else "")
    if self.signum is None:
      self.signum = signum
    self._event.set()

  def request_stop(self) -> None:
    self._event.set()

  @property
  def requested(self) -> bool:
    return self._event.is_set()


class ProgressReport:
  """Logs steps/s and ETA every `every_s` seconds (and at the end)."""

  def __init__(self, total_steps: int, writer, *, every_s: float = 30.0, name: str = ""):
    self.total_steps = total_steps
    self.writer = writer
    self.every_s = every_s
    self.name = name
    self._t0 = self._last_t = None
    self._first_step = self._last_step = None

  def __call__(self, step: int, *, force: bool = False, done: Any = None) -> None:
    """`done`: an array of the latest step's outputs; waited for before a report, so the rate counts
    steps computed, not steps dispatched (jax runs ahead of the host by up to a log interval)."""
    now = time.monotonic()
    if self._t0 is None:
      self._t0, self._last_t, self._first_step, self._last_step = now, now, step, step
      return
    if not force and now - self._last_t < self.every_s:
      return
    if done is not None:
      jax.block_until_ready(done)
      now = time.monotonic()
    rate = (step - self._last_step) / max(now - self._last_t, 1e-9)
    overall = (step - self._first_step) / max(now - self._t0, 1e-9)
    eta = (self.total_steps - step) / overall if overall > 0 else float("inf")
    logging.info("%s step %d/%d (%.1f%%), %.2f steps/s, ETA %s", self.name, step, self.total_steps,
                 100.0 * step / self.total_steps, rate, _format_seconds(eta))
    self.writer.write_scalars(step, {"steps_per_sec": rate})
    self._last_t, self._last_step = now, step


def _format_seconds(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m{seconds % 60:02d}s"


def _mean_metrics(history: list[Mapping[str, Any]]) -> dict[str, float]:
  stacked = jax.device_get(history)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def restore_latest(abstract: TrainState, checkpointer: Checkpointer, data_iterator) -> TrainState | None:
  """The newest checkpoint's state (data iterator included) laid out as `abstract` says; None if there is none.

  Only shapes and shardings are needed, so a resumed run never builds a fresh state first. A newest
  checkpoint that does not restore (a file truncated or garbled) is named in a warning and set aside, and
  the previous one is used (`Checkpointer.restore_latest`); if none restores, CheckpointRestoreError.
  """
  restored = checkpointer.restore_latest(abstract, data_iterator)
  if restored is None:
    return None
  step, state = restored
  logging.info("resuming from %s/%d", checkpointer.directory, step)
  return state


def run_train_loop(
    *,
    state: TrainState,
    train_step: Callable[[TrainState, dict], tuple[TrainState, dict]],
    data_iterator: Iterator[Mapping[str, np.ndarray]],
    to_device: Callable[[Mapping[str, np.ndarray]], dict],
    num_steps: int,
    checkpointer: Checkpointer,
    writer,
    stop: StopSignal,
    log_every_steps: int = 50,
    progress_every_s: float = 30.0,
    on_log: Callable[[int, dict], None] | None = None,
    on_progress: Callable[[bool], None] | None = None,
    name: str = "train",
    max_inflight_steps: int | None = 1,
) -> TrainState:
  """Runs `train_step` from `state.step` to `num_steps`.

  `data_iterator` must be the checkpointable Grain iterator whose state was
  restored together with `state` (see `restore_latest`). `max_inflight_steps`:
  how many dispatched steps may wait behind the newest before the host waits
  (see the module docstring); None lets JAX queue as many as it likes (a stop
  then lands up to a log interval late). `on_progress(force)` is called at each log
  step (False) and after each checkpoint (True): the stage's timer persists its time there.

  Metrics the writer holds for steps after `state.step` (logged by an earlier
  invocation after its last checkpoint, about to be re-done) are dropped first
  (`MetricWriter.rewind`), so a resumed stage's history has each step once.
  """
  if max_inflight_steps is not None and max_inflight_steps < 0:
    raise ValueError(f"max_inflight_steps = {max_inflight_steps}: give 0 or more, or None for no bound")
  step = int(jax.device_get(state.step))
  if hasattr(writer, "rewind"):
    writer.rewind(step)
  progress = ProgressReport(num_steps, writer, every_s=progress_every_s, name=name)
  progress(step)
  history: list[dict] = []
  inflight: collections.deque = collections.deque()  # outputs of the steps dispatched and maybe not yet run
  while step < num_steps:
    batch = to_device(next(data_iterator))
    state, metrics = train_step(state, batch)
    step += 1
    history.append(metrics)
    if max_inflight_steps is not None:
      # metrics, not the state: the state is donated to the next step
      inflight.append(metrics)
      while len(inflight) > max_inflight_steps:
        jax.block_until_ready(inflight.popleft())
    if step % log_every_steps == 0 or step == num_steps:
      logged = _mean_metrics(history)
      history = []
      if not np.isfinite(logged["loss"]):
        raise NonFiniteLoss(f"{name}: loss became {logged['loss']} at step {step}; lower the learning rate "
                            "(optim.lr) or raise gradient clipping, and check the input data for NaNs.")
      writer.write_scalars(step, logged)
      if on_log is not None:
        on_log(step, logged)
      if on_progress is not None:
        on_progress(False)
    saved = checkpointer.save(step, state, data_iterator, force=step == num_steps)
    if saved and on_progress is not None:
      on_progress(True)
    progress(step, force=step == num_steps, done=state.step)
    if stop.requested or checkpointer.reached_preemption(step):
      if not saved:
        checkpointer.save(step, state, data_iterator, force=True)
      checkpointer.wait()
      writer.flush()
      if on_progress is not None:
        on_progress(True)
      raise Preempted(step, getattr(stop, "signum", None))
  checkpointer.wait()
  writer.flush()
  return state
