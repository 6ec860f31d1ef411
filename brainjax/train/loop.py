"""The training loop every stage shares.

It owns what is the same for every stage: resume from the latest checkpoint,
step, log, checkpoint, report progress (steps/s, ETA), stop cleanly on SIGTERM
(TPU VM preemption) after saving, and refuse to continue on a NaN loss. A
stage supplies the state, the jitted step and the data iterator.
"""

from __future__ import annotations

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

  def __init__(self, step: int):
    super().__init__(f"stopped at step {step} after a termination signal; the checkpoint is saved, "
                     "re-run the same command to resume")
    self.step = step


class NonFiniteLoss(FloatingPointError):
  pass


class StopSignal:
  """Turns SIGTERM/SIGINT into a flag the loop polls between steps.

  The handler only sets a flag, so a signal never interrupts a checkpoint
  write half-way; the loop saves and exits at the next step boundary.
  """

  def __init__(self, signals=(signal.SIGTERM,)):
    self._event = threading.Event()
    self._signals = signals
    self._previous: dict[int, Any] = {}

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
    logging.warning("received signal %d: will checkpoint and stop after the current step", signum)
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

  Only shapes and shardings are needed, so a resumed run never builds a fresh state first.
  """
  step = checkpointer.latest_step()
  if step is None:
    return None
  logging.info("resuming from %s/%d", checkpointer.directory, step)
  return checkpointer.restore(step, abstract, data_iterator)


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
    name: str = "train",
) -> TrainState:
  """Runs `train_step` from `state.step` to `num_steps`.

  `data_iterator` must be the checkpointable Grain iterator whose state was
  restored together with `state` (see `restore_latest`).
  """
  step = int(jax.device_get(state.step))
  progress = ProgressReport(num_steps, writer, every_s=progress_every_s, name=name)
  progress(step)
  history: list[dict] = []
  while step < num_steps:
    batch = to_device(next(data_iterator))
    state, metrics = train_step(state, batch)
    step += 1
    history.append(metrics)
    if step % log_every_steps == 0 or step == num_steps:
      logged = _mean_metrics(history)
      history = []
      if not np.isfinite(logged["loss"]):
        raise NonFiniteLoss(f"{name}: loss became {logged['loss']} at step {step}; lower the learning rate "
                            "(optim.lr) or raise gradient clipping, and check the input data for NaNs.")
      writer.write_scalars(step, logged)
      if on_log is not None:
        on_log(step, logged)
    saved = checkpointer.save(step, state, data_iterator, force=step == num_steps)
    progress(step, force=step == num_steps, done=state.step)
    if stop.requested or checkpointer.reached_preemption(step):
      if not saved:
        checkpointer.save(step, state, data_iterator, force=True)
      checkpointer.wait()
      writer.flush()
      raise Preempted(step)
  checkpointer.wait()
  writer.flush()
  return state
