"""Orbax checkpoints of the train state together with the data iterator.

Saving the Grain iterator state next to the model means a resumed run sees
exactly the batch it would have seen without the interruption, so an
interrupted-and-resumed stage ends with the same parameters as an
uninterrupted one. Writes are asynchronous (training continues while the
previous step is written) and atomic (a half-written step is never listed).
"""

from __future__ import annotations

from typing import Any

import grain
import orbax.checkpoint as ocp
from etils import epath

from brainjax.train.state import TrainState


class Checkpointer:
  """`workdir/<stage>/checkpoints/<step>/{state,data}`, the newest `keep` kept."""

  def __init__(self, directory: epath.PathLike, *, every_steps: int, keep: int = 2, async_save: bool = True):
    self.directory = epath.Path(directory)
    self.every_steps = every_steps
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every_steps, create=True,
            # a SIGKILL mid-write leaves a temporary directory: remove it on restart
            cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save),
        item_names=("state", "data"),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: TrainState, data_iterator: grain.DatasetIterator | None, *,
           force: bool = False) -> bool:
    """Saves if `step` is on the interval (or `force`). Returns whether it saved."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, target: TrainState, data_iterator: grain.DatasetIterator | None) -> TrainState:
    """Restores onto `target`'s shardings (ShapeDtypeStructs); updates the iterator in place."""
    items: dict[str, Any] = {"state": ocp.args.StandardRestore(target)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def reached_preemption(self, step: int) -> bool:
    """True on every process once any process got a preemption notice (multi-host safe)."""
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
