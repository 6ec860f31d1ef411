"""Reading and writing the stimulus videos of the real dataset releases (PyAV).

Everything goes through `etils.epath`, so a release copied to a bucket
(`gs://...`) is read the same way as a local one: local files are opened by
path, remote ones as the seekable file objects epath returns.

Time convention: a video's first frame is shown at t = 0 (its own start
timestamp is subtracted, since some encoders start at a non-zero pts) and each
frame stays on screen until the next one. Resampling to `fps` takes, for every
target time `start_s + j / fps`, the decoded frame whose timestamp is nearest;
an exact tie (e.g. 30 -> 12 fps) goes to the earlier frame, the one on screen
at that time. For cc2017 (30 fps, 2-s TRs) at 3 fps this picks source frames
60 t + 10 j, j < 6, for TR t: exactly the 6 frames MinD-Video pairs with a TR.

`size` crops the largest centred square and resizes it to size x size
(antialiased bilinear), the framing the video papers feed their models.
"""

from __future__ import annotations

import fractions
import io
import math
import os
from collections.abc import Iterator

import av
import numpy as np
from etils import epath
from PIL import Image

from brainjax.data.errors import ReleaseError

_TIME_EPS = 1e-6  # seconds: timestamps are rationals printed as floats; this absorbs the rounding


def _is_local(path: epath.Path) -> bool:
  return "://" not in os.fspath(path)


class _Opened:
  """An open container plus the file object under it (closed together)."""

  def __init__(self, path: epath.Path):
    self.path = path
    self._file = None
    if not path.exists():
      raise ReleaseError(f"{path}: video file not found.")
    try:
      if _is_local(path):
        self.container = av.open(os.fspath(path))
      else:  # gs:// etc.: epath's file object is seekable, which the mp4 demuxer needs
        self._file = path.open("rb")
        self.container = av.open(self._file)
    except Exception as e:  # av raises InvalidDataError, EOFError, ... for a foreign or truncated file
      self.close()
      raise ReleaseError(f"{path}: not a readable video ({type(e).__name__}: {e}); the file is corrupt or "
                         "incomplete; re-download it.") from e
    if not self.container.streams.video:
      self.close()
      raise ReleaseError(f"{path}: the file holds no video stream; it is not a stimulus video.")
    self.stream = self.container.streams.video[0]

  def close(self) -> None:
    if getattr(self, "container", None) is not None:
      self.container.close()
    if self._file is not None:
      self._file.close()

  def __enter__(self) -> "_Opened":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  @property
  def native_fps(self) -> float | None:
    rate = self.stream.average_rate or self.stream.guessed_rate
    return float(rate) if rate else None

  def frames(self) -> Iterator[tuple[float, av.VideoFrame]]:
    """(seconds since the first frame, frame) in presentation order; decode errors become ReleaseError."""
    first = None
    index = 0
    fallback_fps = self.native_fps or 1.0
    try:
      for frame in self.container.decode(self.stream):
        time = frame.time if frame.time is not None else index / fallback_fps
        if first is None:
          first = time
        yield time - first, frame
        index += 1
    except av.error.FFmpegError as e:
      raise ReleaseError(f"{self.path}: decoding failed after {index} frames ({e}); the file is corrupt or "
                         "truncated; re-download it.") from e


def _check_options(fps, size, start_s, duration_s) -> None:
  if fps is not None and not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
    raise ValueError(f"fps = {fps!r}: must be a positive number of frames per second, or None for the native rate.")
  if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1):
    raise ValueError(f"size = {size!r}: must be a positive integer (square side in pixels), or None to keep "
                     "the native frame size.")
  if not (math.isfinite(start_s) and start_s >= 0):
    raise ValueError(f"start_s = {start_s!r}: must be >= 0 seconds.")
  if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
    raise ValueError(f"duration_s = {duration_s!r}: must be > 0 seconds, or None for the rest of the video.")


def centre_square(rgb: np.ndarray, size: int | None) -> np.ndarray:
  """uint8[H, W, 3] -> uint8[size, size, 3]: the largest centred square, resized (None: unchanged)."""
  if size is None:
    return rgb
  height, width = rgb.shape[:2]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  square = rgb[top:top + side, left:left + side]
  if side == size:
    return np.ascontiguousarray(square)
  return np.asarray(Image.fromarray(np.ascontiguousarray(square)).resize((size, size), Image.Resampling.BILINEAR))


class _Converter:
  """Frame -> cropped/resized RGB, converting each decoded frame at most once (upsampling repeats frames)."""

  def __init__(self, size: int | None):
    self.size = size
    self._last_key = None
    self._last = None

  def __call__(self, frame: av.VideoFrame) -> np.ndarray:
    if frame is not self._last_key:
      self._last_key = frame
      self._last = centre_square(frame.to_ndarray(format="rgb24"), self.size)
    return self._last


def _native_frames(video: _Opened, convert: _Converter, start_s: float, end_s: float) -> list[np.ndarray]:
  out = []
  for time, frame in video.frames():
    if time >= end_s - _TIME_EPS:
      break
    if time >= start_s - _TIME_EPS:
      out.append(convert(frame))
  return out


def _resampled_frames(video: _Opened, convert: _Converter, fps: float, start_s: float,
                      count: int | None) -> list[np.ndarray]:
  """Nearest-timestamp frames for targets start_s + j / fps (j < count; None: to the end of the video)."""
  out: list[np.ndarray] = []
  previous: tuple[float, av.VideoFrame] | None = None
  target = lambda j: start_s + j / fps  # noqa: E731
  for time, frame in video.frames():
    while (count is None or len(out) < count) and target(len(out)) <= time + _TIME_EPS:
      wanted = target(len(out))
      # Tie -> the earlier frame (the one on screen at `wanted`).
      if previous is not None and wanted - previous[0] <= time - wanted + _TIME_EPS:
        out.append(convert(previous[1]))
      else:
        out.append(convert(frame))
    if count is not None and len(out) == count:
      return out
    previous = (time, frame)
  if previous is None:
    return out
  # Past the last timestamp: the last frame is on screen for one native frame interval more.
  last_time, last = previous
  interval = 1.0 / video.native_fps if video.native_fps else 0.0
  end_s = last_time + interval
  while count is None or len(out) < count:
    wanted = target(len(out))
    if wanted >= end_s - _TIME_EPS:
      if count is None:
        break
      raise ReleaseError(f"{video.path}: the video ends at {end_s:.3f} s but frames up to "
                         f"{target(count - 1):.3f} s were asked for (start {start_s:g} s, {count} frames at "
                         f"{fps:g} fps); the file is shorter than the release's stimulus (truncated?).")
    out.append(convert(last))
  return out


def read_video(path: str | os.PathLike, *, fps: float | None = None, size: int | None = None, start_s: float = 0.0,
               duration_s: float | None = None) -> np.ndarray:
  """The frames shown in [start_s, start_s + duration_s) as uint8[T, H, W, 3].

  Args:
    path: the video (local or gs://, read through epath).
    fps: resample to this rate by nearest timestamp (module docstring); None keeps every native frame whose
      timestamp falls in the interval.
    size: centre-crop to a square and resize to size x size; None keeps the native size.
    start_s: start of the interval, seconds from the first frame.
    duration_s: length of the interval; None reads to the end of the video. With `fps`, exactly the targets
      start_s + j / fps < start_s + duration_s are returned (e.g. 2 s at 3 fps: 6 frames), and a video too short
      to cover them is a ReleaseError.

  Raises:
    ReleaseError naming the file: missing, unreadable, corrupt, no video stream, or no frame in the interval.
  """
  _check_options(fps, size, start_s, duration_s)
  path = epath.Path(path)
  convert = _Converter(size)
  with _Opened(path) as video:
    if fps is None:
      end_s = math.inf if duration_s is None else start_s + duration_s
      frames = _native_frames(video, convert, start_s, end_s)
    else:
      count = None if duration_s is None else max(1, math.ceil(duration_s * fps - _TIME_EPS))
      frames = _resampled_frames(video, convert, float(fps), start_s, count)
  if not frames:
    raise ReleaseError(f"{path}: no video frame in [{start_s:g} s, "
                       f"{'end' if duration_s is None else f'{start_s + duration_s:g} s'}); the video is empty or "
                       "shorter than the requested start.")
  return np.stack(frames).astype(np.uint8, copy=False)


def video_info(path: str | os.PathLike) -> tuple[float, int, int, int]:
  """(frames per second, number of frames, height, width) from the container (frames counted if not stored)."""
  path = epath.Path(path)
  with _Opened(path) as video:
    stream = video.stream
    fps = video.native_fps
    height, width = stream.codec_context.height, stream.codec_context.width
    count = int(stream.frames or 0)
    if count <= 0:  # some containers do not store it: count packets (no decoding)
      try:
        count = sum(1 for packet in video.container.demux(stream) if packet.size)
      except av.error.FFmpegError as e:
        raise ReleaseError(f"{path}: reading failed ({e}); the file is corrupt; re-download it.") from e
  if not count or not fps or not height or not width:
    raise ReleaseError(f"{path}: the video is empty or its stream has no rate/size "
                       f"(fps={fps}, frames={count}, {height}x{width}).")
  return float(fps), count, int(height), int(width)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float, *, lossless: bool = True) -> epath.Path:
  """Writes uint8[T, H, W, 3] frames as an H.264 mp4 (through epath: local or gs://).

  lossless=True encodes RGB with libx264rgb at qp 0, so a read gives the frames back bit-exactly (tests and the
  synthetic release compare frames exactly). lossless=False writes ordinary yuv420p H.264 like the real releases
  (lossy; H and W must be even).
  """
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
    raise ValueError(f"frames: expected uint8[T>=1, H, W, 3], got {frames.dtype}{list(frames.shape)}.")
  if not (isinstance(fps, (int, float, fractions.Fraction)) and fps > 0):
    raise ValueError(f"fps = {fps!r}: must be > 0.")
  height, width = frames.shape[1:3]
  if not lossless and (height % 2 or width % 2):
    raise ValueError(f"lossless=False (yuv420p) needs even frame sizes; got {height}x{width}.")
  rate = fractions.Fraction(fps).limit_denominator(1001)
  buffer = io.BytesIO()
  with av.open(buffer, mode="w", format="mp4") as container:
    stream = container.add_stream("libx264rgb" if lossless else "libx264", rate=rate)
    stream.width, stream.height = width, height
    stream.pix_fmt = "rgb24" if lossless else "yuv420p"
    stream.options = {"qp": "0"} if lossless else {"crf": "18"}
    for rgb in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buffer.getvalue())
  return path
