"""Writing videos and image grids for people to look at (GIF / PNG), to local or gs:// paths."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from etils import epath
from PIL import Image


def _uint8_frames(frames: np.ndarray, what: str) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"{what} has shape {frames.shape}; expected frames [T, H, W, 3].")
  if frames.dtype != np.uint8:
    raise ValueError(f"{what} has dtype {frames.dtype}; convert to uint8 first (brainjax.models.vae.to_uint8).")
  return frames


def side_by_side(videos: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
  """Videos [T, H, W, 3] of equal length and height, placed left to right with a white gap."""
  videos = [_uint8_frames(v, f"video {i}") for i, v in enumerate(videos)]
  t, h = videos[0].shape[:2]
  if any(v.shape[:2] != (t, h) for v in videos):
    raise ValueError(f"videos have shapes {[v.shape for v in videos]}; they need the same frame count and height.")
  spacer = np.full((t, h, gap, 3), 255, np.uint8)
  parts = [p for v in videos for p in (v, spacer)][:-1]
  return np.concatenate(parts, axis=2)


def grid(videos: Sequence[np.ndarray], columns: int, gap: int = 2) -> np.ndarray:
  """Videos (or images as 1-frame videos) [T, H, W, 3] of one shape in rows of `columns`."""
  videos = [_uint8_frames(v, f"video {i}") for i, v in enumerate(videos)]
  blank = np.full_like(videos[0], 255)
  rows = []
  for start in range(0, len(videos), columns):
    row = videos[start:start + columns]
    row += [blank] * (columns - len(row))
    rows.append(side_by_side(row, gap))
  spacer = np.full((rows[0].shape[0], gap, rows[0].shape[2], 3), 255, np.uint8)
  parts = [p for r in rows for p in (r, spacer)][:-1]
  return np.concatenate(parts, axis=1)


def write_gif(path: str | epath.PathLike, frames: np.ndarray, fps: float, scale: int = 1) -> epath.Path:
  """An endlessly looping GIF of frames [T, H, W, 3] uint8 at `fps`, upscaled `scale` x (nearest)."""
  frames = _uint8_frames(frames, "the GIF's frames")
  if scale > 1:
    frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
  images = [Image.fromarray(f) for f in frames]
  buffer = io.BytesIO()
  images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], loop=0,
                 duration=max(int(round(1000 / fps)), 20))
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buffer.getvalue())
  return path


def read_gif(path: str | epath.PathLike) -> np.ndarray:
  """Frames [T, H, W, 3] uint8 of a GIF (for tests and reports)."""
  image = Image.open(io.BytesIO(epath.Path(path).read_bytes()))
  frames = []
  for i in range(getattr(image, "n_frames", 1)):
    image.seek(i)
    frames.append(np.asarray(image.convert("RGB")))
  return np.stack(frames)


def write_png(path: str | epath.PathLike, image: np.ndarray, scale: int = 1) -> epath.Path:
  """One uint8 image [H, W, 3] as PNG, upscaled `scale` x (nearest)."""
  image = _uint8_frames(np.asarray(image)[None], "the image")[0]
  if scale > 1:
    image = image.repeat(scale, axis=0).repeat(scale, axis=1)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buffer.getvalue())
  return path
