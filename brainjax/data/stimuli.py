"""What the stages read of a dataset's stimuli and windows, beyond one example at a time."""

from __future__ import annotations

import ml_collections
import numpy as np

from brainjax.config import ConfigError
from brainjax.data import pipeline


def clip_frames(frames: np.ndarray, num_frames: int, what: str) -> np.ndarray:
  """The first `num_frames` frames of each TR's clip ([B, F, H, W, 3] -> [B, num_frames, ...])."""
  if frames.shape[1] < num_frames:
    raise ConfigError(f"{what} have {frames.shape[1]} frames per TR; config.video_finetune.num_frames = "
                      f"{num_frames} asks for more. Lower it (MinD-Video: 6 = 3 FPS x 2 s).")
  return frames[:, :num_frames]


def dataset_fps(data: ml_collections.ConfigDict) -> float:
  """Frames per second of the dataset's stimuli (for the GIFs): the builder's metadata, else 3 (cc2017 as used)."""
  metadata = dict(pipeline.load_builder(data).info.metadata or {})
  return float(metadata.get("fps", metadata.get("spec", {}).get("fps", 3.0)))


def caption_windows(source, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every window of `source`, read once: its fMRI [n, w, V], subject [n] and its stimulus TR's caption
  hidden states [n, L, C] (`hidden`: clip_embed's, in record order)."""
  fmri, subject, record = [], [], []
  for i in range(len(source)):
    ex = source[i]
    fmri.append(ex["fmri"])
    subject.append(ex["subject"])
    record.append(int(ex["record"]))
  return np.stack(fmri), np.stack(subject), hidden[np.asarray(record)]


def mean_fmri(source) -> np.ndarray:
  """MindVideo's `uncon_fmri`: the mean fMRI window of `source` ([window, V])."""
  total = None
  for i in range(len(source)):
    x = source[i]["fmri"].astype(np.float64)
    total = x if total is None else total + x
  return (total / len(source)).astype(np.float32)
