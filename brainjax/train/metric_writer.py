"""Metric writers: JSON lines + TensorBoard, with the clu `MetricWriter` interface.

clu's writers import TensorFlow at import time and brainjax does not depend on
TensorFlow, so this module gives the same four calls (write_scalars,
write_hparams, write_texts, flush) over JSON lines (readable by anything,
written through etils.epath so gs:// works) and TensorBoard event files
(tensorboardX). Only process 0 writes; the others get a no-op writer.

`metrics.jsonl` is appended to and flushed as each row is written, so a run
killed with SIGKILL keeps every row it logged (on gs://, which cannot append,
the file is rewritten at most every `remote_flush_s` seconds and on flush()).
A resumed run appends to the same file; `rewind(step)` (called by the train
loop with the step it resumed from) first drops the rows of later steps: the
earlier invocation logged them after its last checkpoint, and the resumed run
re-does those steps (with the same batches and so the same metrics) and logs
them again, so every step is in the history once. TensorBoard is told the same
with tensorboardX's `purge_step`.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath


def _scalar(value: Any) -> float:
  return float(np.asarray(value))


class MetricWriter:
  """Writes to `<logdir>/metrics.jsonl` and TensorBoard events under `<logdir>/`."""

  def __init__(self, logdir: epath.PathLike, *, tensorboard: bool = True, log_to_console: bool = True,
               remote_flush_s: float = 30.0):
    self.logdir = epath.Path(logdir)
    self.logdir.mkdir(parents=True, exist_ok=True)
    self._jsonl = self.logdir / "metrics.jsonl"
    self._remote = not str(self.logdir).startswith("/")
    self._remote_flush_s = remote_flush_s
    self._last_remote_flush = time.monotonic()
    self._pending: list[str] = []  # gs:// rows not yet in the file
    self._file = None  # local: metrics.jsonl open for appending
    self._log_to_console = log_to_console
    self._tensorboard = tensorboard
    self._purge_step: int | None = None
    self._tb = None  # created at the first write, so that `rewind` can still set its purge_step
    self._tb_local_dir = None

  def _tb_writer(self):
    if self._tb is None and self._tensorboard:
      import tensorboardX  # light, pure Python; no TensorFlow needed
      # tensorboardX writes local files; for gs:// logdirs they are copied on flush.
      if self._tb_local_dir is None:
        self._tb_local_dir = tempfile.mkdtemp(prefix="brainjax_tb_") if self._remote else str(self.logdir)
      self._tb = tensorboardX.SummaryWriter(self._tb_local_dir, flush_secs=30, purge_step=self._purge_step)
    return self._tb

  def _append(self, row: dict) -> None:
    line = json.dumps(row) + "\n"
    if self._remote:
      self._pending.append(line)
      if time.monotonic() - self._last_remote_flush >= self._remote_flush_s:
        self._flush_jsonl()
      return
    if self._file is None:
      # a run killed mid-write may have left half a row: start on a line of our own
      partial = self._jsonl.exists() and _ends_without_newline(self._jsonl)
      self._file = open(self._jsonl, "a")  # noqa: SIM115 -- held open until close()
      if partial:
        self._file.write("\n")
    self._file.write(line)
    self._file.flush()  # in the OS's hands: survives SIGKILL of this process

  def _flush_jsonl(self) -> None:
    if self._remote:
      if self._pending:  # object stores have no append: rewrite the whole (small) file
        old = self._jsonl.read_text() if self._jsonl.exists() else ""
        self._jsonl.write_text(old + "".join(self._pending))
        self._pending = []
      self._last_remote_flush = time.monotonic()
    elif self._file is not None:
      self._file.flush()

  def rewind(self, step: int) -> None:
    """Drops the rows of steps after `step` (a resumed run re-does them) and tells TensorBoard so."""
    step = int(step)
    self._flush_jsonl()
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._jsonl.exists():
      lines = self._jsonl.read_text().splitlines()
      kept, dropped, broken = [], 0, 0
      for line in lines:
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except ValueError:
          broken += 1  # half a row from a kill mid-write
          continue
        if int(row.get("step", 0)) > step:
          dropped += 1
        else:
          kept.append(line)
      if dropped or broken:
        logging.info("%s: resuming at step %d, dropped %d rows of later steps (to be re-done)%s", self._jsonl,
                     step, dropped, f" and {broken} unreadable rows" if broken else "")
        text = "".join(line + "\n" for line in kept)
        if self._remote:
          self._jsonl.write_text(text)
        else:  # atomic: a kill now leaves the old file, not half of the new one
          tmp = self.logdir / ".metrics.jsonl.tmp"
          tmp.write_text(text)
          tmp.replace(self._jsonl)
    self._purge_step = step + 1
    if self._tb is not None:  # already writing: start a new event file that purges the later steps
      self._tb.close()
      self._tb = None

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = {k: _scalar(v) for k, v in scalars.items()}
    self._append({"step": int(step), "time": time.time(), **values})
    if self._tb_writer() is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, int(step))
    if self._log_to_console:
      shown = ", ".join(f"{k}={v:.4g}" if math.isfinite(v) else f"{k}={v}" for k, v in values.items())
      logging.info("[%d] %s", step, shown)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    self._append({"step": int(step), "time": time.time(), "texts": dict(texts)})
    if self._tb_writer() is not None:
      for k, v in texts.items():
        self._tb.add_text(k, v, int(step))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    (self.logdir / "hparams.json").write_text(json.dumps(dict(hparams), indent=2, sort_keys=True, default=str))

  def flush(self) -> None:
    self._flush_jsonl()
    if self._tb is not None:
      self._tb.flush()
      if self._remote:
        for path in epath.Path(self._tb_local_dir).iterdir():
          (self.logdir / path.name).write_bytes(path.read_bytes())

  def close(self) -> None:
    self.flush()
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()


class NullWriter:
  """What processes other than 0 use: every call is a no-op."""

  def write_scalars(self, step, scalars): del step, scalars

  def write_texts(self, step, texts): del step, texts

  def write_hparams(self, hparams): del hparams

  def rewind(self, step): del step

  def flush(self): pass

  def close(self): pass


def create_writer(logdir: epath.PathLike, **kwargs: Any) -> MetricWriter | NullWriter:
  return MetricWriter(logdir, **kwargs) if jax.process_index() == 0 else NullWriter()


def read_metrics(logdir: epath.PathLike) -> list[dict]:
  """The scalar rows written so far (for reports and tests); a row cut short by a kill is skipped."""
  path = epath.Path(logdir) / "metrics.jsonl"
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    if line.strip():
      try:
        rows.append(json.loads(line))
      except ValueError:
        logging.warning("%s: skipping an unreadable row (cut short by a kill?): %.80s", path, line)
  return rows


def _ends_without_newline(path: epath.Path) -> bool:
  with open(path, "rb") as f:
    f.seek(0, 2)
    if f.tell() == 0:
      return False
    f.seek(-1, 2)
    return f.read(1) != b"\n"
