"""How long a stage took, summed over the invocations it needed.

A preempted stage is finished by re-running the same command, so its wall time
is spread over several processes. `StageTimer`, which `runner.run` wraps around
each invocation of a stage, keeps the record in `<stage_dir>/timing.json`:

  {"invocations": [{"started": 1718000000.0, "wall_time_s": 812.4, "status": "preempted"},
                   {"started": 1718000950.2, "wall_time_s": 310.0, "status": "done"}]}

`status` is "running" while the invocation runs, then "done", "preempted"
(Preempted or KeyboardInterrupt), or "failed" (any other exception). An
invocation that never got to say (kill -9, a lost machine) is still "running"
when the next one starts, which marks it "killed": its time counts up to the
last rewrite of the file, which happens when the invocation ends, whenever the
train loop checkpoints (`tick(force=True)`) and at most every `every_s` seconds
at its log steps (`tick()`). A stage that has no train loop and is killed loses
that invocation's time.

DONE.json then holds `wall_time_s` (the sum), `invocations` (how many) and
`invocation_wall_times_s` (each one's); `runner.run` returns the summary without
the last two (`without_details`), so comparisons of summaries (ablations,
tests) are unchanged. A stage re-run after it finished (its DONE.json deleted)
starts a new record. Only process 0 writes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
from absl import logging
from etils import epath

from brainjax.train.loop import Preempted

FILENAME = "timing.json"
DETAIL_KEYS = ("invocations", "invocation_wall_times_s")

def without_details(summary: dict) -> dict:
  """A stage summary less the per-invocation bookkeeping `StageTimer.summary` adds (wall_time_s stays)."""
  return {k: v for k, v in summary.items() if k not in DETAIL_KEYS}


class StageTimer:
  """Context manager timing one invocation of a stage into `<stage_dir>/timing.json` (see module doc)."""

  def __init__(self, stage_dir: epath.PathLike, *, every_s: float = 60.0):
    self.path = epath.Path(stage_dir) / FILENAME
    self.every_s = every_s
    self._writer = jax.process_index() == 0
    self._previous: list[dict] = []
    self._current: dict[str, Any] = {}
    self._t0 = self._last_write = 0.0

  def __enter__(self) -> "StageTimer":
    self._previous = self._read()
    if self._previous and self._previous[-1].get("status") == "done":
      self._previous = []  # the stage finished before and is being redone: a new record
    for entry in self._previous:
      if entry.get("status") == "running":
        entry["status"] = "killed"
    self._t0 = time.monotonic()
    self._current = {"started": round(time.time(), 3), "wall_time_s": 0.0, "status": "running"}
    self._write()
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      status = "done"
    elif issubclass(exc_type, (Preempted, KeyboardInterrupt)):
      status = "preempted"
    else:
      status = "failed"
    self._current["wall_time_s"] = round(time.monotonic() - self._t0, 3)
    self._current["status"] = status
    self._write()

  def tick(self, force: bool = False) -> None:
    if force or time.monotonic() - self._last_write >= self.every_s:
      self._write()

  def invocations(self) -> list[dict]:
    if self._current.get("status") == "running":
      self._current["wall_time_s"] = round(time.monotonic() - self._t0, 3)
    return [*self._previous, dict(self._current)] if self._current else list(self._previous)

  def summary(self) -> dict:
    """{"wall_time_s": the sum, "invocations": n, "invocation_wall_times_s": [...]} (rounded to 0.1 s)."""
    times = [float(e.get("wall_time_s", 0.0)) for e in self.invocations()]
    return {"wall_time_s": round(sum(times), 1), "invocations": len(times),
            "invocation_wall_times_s": [round(t, 1) for t in times]}

  def _read(self) -> list[dict]:
    if not self.path.exists():
      return []
    try:
      entries = json.loads(self.path.read_text())["invocations"]
      if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError("'invocations' is not a list of objects")
      return entries
    except (ValueError, KeyError, TypeError) as e:
      logging.warning("%s does not parse (%s): the time of earlier invocations of this stage is lost; "
                      "starting a new record", self.path, e)
      return []

  def _write(self) -> None:
    self._last_write = time.monotonic()
    if not self._writer:
      return
    text = json.dumps({"invocations": self.invocations()}, indent=2)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if str(self.path).startswith("/"):  # atomic locally: a kill mid-write leaves the previous file
      tmp = self.path.parent / f".{FILENAME}.tmp"
      tmp.write_text(text)
      tmp.replace(self.path)
    else:
      self.path.write_text(text)
