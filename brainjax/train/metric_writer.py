"""Metric writers: JSON lines + TensorBoard, with the clu `MetricWriter` interface.

clu's writers import TensorFlow at import time and brainjax does not depend on
TensorFlow, so this module gives the same four calls (write_scalars,
write_hparams, write_texts, flush) over JSON lines (readable by anything,
written through etils.epath so gs:// works) and TensorBoard event files
(tensorboardX). Only process 0 writes; the others get a no-op writer.
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

  def __init__(self, logdir: epath.PathLike, *, tensorboard: bool = True, log_to_console: bool = True):
    self.logdir = epath.Path(logdir)
    self.logdir.mkdir(parents=True, exist_ok=True)
    self._jsonl = self.logdir / "metrics.jsonl"
    self._remote = not str(self.logdir).startswith("/")
    self._pending: list[str] = []
    self._log_to_console = log_to_console
    self._tb = None
    self._tb_local_dir = None
    if tensorboard:
      import tensorboardX  # light, pure Python; no TensorFlow needed
      # tensorboardX writes local files; for gs:// logdirs they are copied on flush.
      self._tb_local_dir = tempfile.mkdtemp(prefix="brainjax_tb_") if self._remote else str(self.logdir)
      self._tb = tensorboardX.SummaryWriter(self._tb_local_dir, flush_secs=30)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = {k: _scalar(v) for k, v in scalars.items()}
    self._pending.append(json.dumps({"step": int(step), "time": time.time(), **values}))
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, int(step))
    if self._log_to_console:
      shown = ", ".join(f"{k}={v:.4g}" if math.isfinite(v) else f"{k}={v}" for k, v in values.items())
      logging.info("[%d] %s", step, shown)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    self._pending.append(json.dumps({"step": int(step), "time": time.time(), "texts": dict(texts)}))
    if self._tb is not None:
      for k, v in texts.items():
        self._tb.add_text(k, v, int(step))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    (self.logdir / "hparams.json").write_text(json.dumps(dict(hparams), indent=2, sort_keys=True, default=str))

  def flush(self) -> None:
    if self._pending:
      text = "\n".join(self._pending) + "\n"
      if self._remote:  # object stores have no append: rewrite the whole (small) file
        old = self._jsonl.read_text() if self._jsonl.exists() else ""
        self._jsonl.write_text(old + text)
      else:
        with self._jsonl.open("a") as f:
          f.write(text)
      self._pending = []
    if self._tb is not None:
      self._tb.flush()
      if self._remote:
        for path in epath.Path(self._tb_local_dir).iterdir():
          (self.logdir / path.name).write_bytes(path.read_bytes())

  def close(self) -> None:
    self.flush()
    if self._tb is not None:
      self._tb.close()


class NullWriter:
  """What processes other than 0 use: every call is a no-op."""

  def write_scalars(self, step, scalars): del step, scalars

  def write_texts(self, step, texts): del step, texts

  def write_hparams(self, hparams): del hparams

  def flush(self): pass

  def close(self): pass


def create_writer(logdir: epath.PathLike, **kwargs: Any) -> MetricWriter | NullWriter:
  return MetricWriter(logdir, **kwargs) if jax.process_index() == 0 else NullWriter()


def read_metrics(logdir: epath.PathLike) -> list[dict]:
  """The scalar rows written so far (for reports and tests)."""
  path = epath.Path(logdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
