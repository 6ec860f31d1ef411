"""Orbax checkpoints of the train state together with the data iterator.

Saving the Grain iterator state next to the model means a resumed run sees
exactly the batch it would have seen without the interruption, so an
interrupted-and-resumed stage ends with the same parameters as an
uninterrupted one. Writes are asynchronous (training continues while the
previous step is written) and atomic (a half-written step is never listed).

A step that was listed but no longer restores (a file truncated or garbled
afterwards: a full disk, a bad copy between buckets, a hand edit) is named in
a warning and set aside in `<directory>.corrupt/<step>`, and the run resumes
from the previous kept step (`restore_latest`). Steps are set aside only once
an older one has restored: when none does (e.g. the code changed the state's
structure, so that every step fails alike), nothing is moved and
CheckpointRestoreError says what failed and what to do. A read error that is
not damage (a flaky object store) is taken for damage too: the step is moved,
not deleted, and can be moved back.
"""

from __future__ import annotations

import json
import re
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from brainjax.train.state import TrainState


class CheckpointRestoreError(RuntimeError):
  """No checkpoint of a directory restores."""


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

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def step_directory(self, step: int) -> epath.Path:
    return self.directory / str(step)

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

  def restore_latest(self, target: TrainState,
                     data_iterator: grain.DatasetIterator | None) -> tuple[int, TrainState] | None:
    """(step, state) of the newest step that restores, or None if there is no checkpoint.

    Steps that fail are tried newest first; each failure is logged with the file it names (see
    `bad_files`). Once an older step restores, the newer failed ones are moved to `<directory>.corrupt/`
    (they would otherwise stay "latest" and count against `keep`).
    """
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      return None
    failed: list[tuple[int, str]] = []
    for step in steps:
      try:
        state = self.restore(step, target, data_iterator)
      except Exception as e:  # noqa: BLE001 -- any failure of one step: try the previous one
        where = ", ".join(bad_files(self.step_directory(step), e)) or str(self.step_directory(step))
        reason = _reason(e)
        failed.append((step, f"step {step}: {where} ({reason})"))
        logging.warning("checkpoint %s does not restore: bad file %s (%s)%s", self.step_directory(step), where,
                        reason, "; trying the previous one" if step != steps[-1] else "")
        continue
      if failed:
        moved = self._set_aside([s for s, _ in failed])
        logging.warning("resuming from %s instead of the newest checkpoint (%s did not restore; set aside in %s)",
                        self.step_directory(step), ", ".join(str(s) for s, _ in failed), moved)
      return step, state
    raise CheckpointRestoreError(
        f"no checkpoint in {self.directory} restores ({'; '.join(why for _, why in failed)}); delete "
        f"{self.directory} to restart this stage from step 0, or run with a new --workdir.")

  def _set_aside(self, steps: list[int]) -> epath.Path:
    """Moves the step directories `steps` to `<directory>.corrupt/<step>` (process 0; all wait for it)."""
    dest_root = self.directory.parent / f"{self.directory.name}.corrupt"
    if jax.process_index() == 0:
      dest_root.mkdir(parents=True, exist_ok=True)
      for step in steps:
        src = self.step_directory(step)
        dest, n = dest_root / str(step), 1
        while dest.exists():
          dest, n = dest_root / f"{step}-{n}", n + 1
        try:
          src.rename(dest)
        except Exception as e:  # noqa: BLE001 -- e.g. an object store without directory renames
          logging.warning("could not move %s to %s (%s); deleting it", src, dest, e)
          src.rmtree()
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes("brainjax_checkpoint_set_aside")
    self._manager.reload()
    return dest_root

  def reached_preemption(self, step: int) -> bool:
    """True on every process once any process got a preemption notice (multi-host safe)."""
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


# Files of a step directory written as JSON (Orbax's metadata, Grain's iterator state). The arrays live in
# OCDBT databases (`manifest.ocdbt`, data files under `d/`), whose read errors name the file or its size.
_NOT_JSON = ("manifest.ocdbt", "commit_success.txt")


def bad_files(step_dir: epath.Path, error: BaseException) -> list[str]:
  """The files of `step_dir` to blame for `error` (raised restoring it); [] if nothing points at one.

  In order: the file its message (or its causes') quotes; for an OCDBT read past the end of a value
  ("... is not valid for value of size N"), the database's data files of that size (the truncated one),
  else the database and the array key read; the JSON files that do not parse.
  """
  root = str(step_dir).rstrip("/") + "/"
  messages, e = [], error
  while e is not None and len(messages) < 20:
    messages.append(str(e))
    e = e.__cause__ or e.__context__
  quoted = [q for m in messages for q in re.findall(r'"([^"]+)"', m) if q.startswith(root)]
  named = [q for q in quoted if not q.endswith("/")]
  if named:
    return named[-1:]  # the innermost: the file a read failed on
  for m in messages:
    ocdbt = re.search(r'Error reading "([^"]+)" in OCDBT database at [^"]*"([^"]+/)"', m)
    if ocdbt and ocdbt.group(2).startswith(root):
      key, database = ocdbt.groups()
      size = re.search(r"value of size (\d+)", m)
      if size:
        same = [str(p) for p in _files(epath.Path(database)) if p.parent.name == "d"
                and p.stat().length == int(size.group(1))]
        if same:
          return same
      return [f"{database} (array {key})"]
  broken = []
  for path in _files(step_dir):
    rel = str(path)[len(root):].split("/")
    if path.name in _NOT_JSON or "d" in rel[:-1]:
      continue
    try:
      json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
      broken.append(str(path))
  return broken


def _files(directory: epath.Path, depth: int = 4) -> list[epath.Path]:
  """The files under `directory`, `depth` levels down at most (epath has no rglob on object stores)."""
  if depth < 0 or not directory.is_dir():
    return []
  out = []
  for path in sorted(directory.iterdir()):
    out += _files(path, depth - 1) if path.is_dir() else [path]
  return out


def _reason(error: BaseException) -> str:
  """'Type: first line' of the innermost exception of `error`'s chain (Orbax wraps TensorStore's errors
  in one whose message is a page of spec), at most 300 characters."""
  chain, e = [], error
  while e is not None and len(chain) < 20:
    chain.append(e)
    e = e.__cause__ or e.__context__
  # (json's decoder raises from inside an `except StopIteration`: that context is no cause)
  inner = next((e for e in reversed(chain) if str(e).strip() and not isinstance(e, StopIteration)), error)
  lines = str(inner).strip().splitlines()
  line = f"{type(inner).__name__}: {lines[0] if lines else ''}"
  return line if len(line) <= 300 else line[:297] + "..."
