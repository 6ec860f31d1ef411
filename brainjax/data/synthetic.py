"""A seeded, deterministic synthetic fMRI-video benchmark (pure NumPy).

It stands in for cc2017-style data (people watching a long movie in the
scanner) at a size that builds in seconds, while keeping the mechanisms the
video-from-fMRI papers depend on: a hemodynamic lag, voxels tuned to what is
on screen, repeat-averaging, test-retest voxel selection and resting state.

Stimulus
--------
The movie is a sequence of *segments* (train or test); each segment is a run
of `segment_trs` TRs filled with back-to-back *clips* whose durations are
drawn uniformly from `clip_seconds`, so cuts fall at arbitrary times, usually
inside a TR. A clip shows one object class (`CLASSES`) in one colour
(`COLOURS`) moving in one direction (`DIRECTIONS`) at one speed (`SPEEDS`)
over one background (`SCENES`). Consecutive clips always differ in object
class and scene, so every cut is a visible scene change. Objects are drawn
from exact signed-distance functions with a one-pixel soft edge
(anti-aliasing) and a dark outline, so a saturated object never blends into
the (deliberately muted) background. Objects move at constant velocity and
wrap around the frame edges (a torus), so the named direction is true for the
whole clip (bouncing would flip it) and the object is always entirely on
screen. Frame f of a segment is shown at time f / fps.

Captions are templated ("a red triangle moves left slowly over a striped
floor"). A TR whose frames show several clips is captioned "A. Then B."

Voxels
------
Each subject's voxel vector is ordered along a visual hierarchy, one
contiguous block per group of `VOXEL_GROUPS`:

  retinotopic  Gaussian receptive field (RF) on the RETINOTOPIC_GRID^2
               area-averaged frame (RF sizes log-uniform in 0.05-0.3 frame
               widths, growing with eccentricity: small V1-like to large
               V4-like fields), times sparse non-negative weights over 10
               visual channels: luminance contrast relative to the frame
               mean (rectified on / off; contrast, not raw light level,
               drives the response) and 8 hue-tuned chroma channels.
               Rectified, hue-tuned coding is what makes an object's colour
               linearly decodable wherever it is. Ordered by RF position
               (serpentine over horizontal bands).
  motion       von Mises tuning to the direction of motion (kappa 1-4) times
               a power-law speed gain (exponent in [-1, 1], so some voxels
               prefer slow and some fast motion). Ordered by preferred
               direction.
  category     sparse tuning over object classes: one preferred class,
               a second one for half of the voxels, weak random baseline for
               the rest. Ordered by preferred class.
  scene        the same over background scenes. Ordered by preferred scene.
  noise        no stimulus drive (non-visual cortex).

Each voxel's drive is normalised to unit variance over the stimulus
distribution (analytically for the categorical and motion tunings; by a
calibrated constant for the retinotopic one), mixed with its two neighbours
within its group (weights 0.2/0.6/0.2: partial-volume blurring), and scaled
by a per-voxel gain (group amplitude x log-normal jitter).

Group sizes: `group_fractions` times a per-subject uniform jitter in
[0.85, 1.15], renormalised and rounded by largest remainder, at least one
voxel per group.

BOLD and noise
--------------
simulate_run: the drive (at frame rate) minus its run mean (BOLD is relative
to an unknown baseline; removing it also avoids an artificial onset ramp) is
convolved causally with the subject's double-gamma HRF (peak drawn per subject
from `hrf_peak_s`) at the frame rate. The volume at TR t is the BOLD signal at
time t * tr_s, i.e. at the first frame of TR t: the response to what is shown
during TR t peaks ~(hrf_peak + tr_s / 2) s later, 2-4 TRs for the defaults.
Noise is generated at TR rate and multiplied by `noise_scale`:

  drift     DCT cosine basis below 1/128 Hz (SPM's high-pass cutoff),
            random amplitudes (sd ~0.45 per voxel);
  physio    AR(1) with per-voxel rho in [0.3, 0.6] (sd ~0.55), half of its
            variance shared through PHYSIO_LATENTS latent AR(1) components
            with random loadings, so it is spatially correlated;
  thermal   white Gaussian (sd ~0.7).

Each voxel is then z-scored over the run. Group amplitudes are calibrated so
that with noise_scale = 1 the correlation between two single repeats of the
default test movie averages ~0.5 for retinotopic voxels and ~0.4 for motion,
category and scene voxels (individual voxels spread ~0.1-0.7 through the
log-normal gains), and 0 for noise voxels.

Every train segment is run `train_repeats` times and every test segment
`test_repeats` times: the stimulus-driven signal is identical, the noise is
independent.

Resting state: NETWORKS latent slow AR(1) fluctuations (time constant 4 s)
loaded on groups of voxels (one network per visual group plus a global visual
network; noise voxels get none) replace the stimulus drive, with the same HRF
and noise model.

Determinism
-----------
Every random stream is a fresh generator seeded by
`np.random.SeedSequence(spec.seed, spawn_key=(stream, ...))` with a stable
integer key per purpose (subject tuning, clips of a segment, noise of a
repeat, a rest run), so any split or segment can be generated alone and the
same seed gives bit-identical output. Nothing is global or mutable.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NoReturn

import numpy as np
from scipy import signal as sp_signal

from brainjax.data import hrf

# ----------------------------------------------------------------------------
# Vocabulary.
# ----------------------------------------------------------------------------

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross", "ring",
                            "hexagon", "crescent", "arrow", "heart", "bar")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
SPEEDS: tuple[str, ...] = ("slowly", "quickly")
SCENES: tuple[str, ...] = ("striped floor", "checkered floor", "dotted wall", "sky gradient",
                           "plain grey room", "brick wall")
VOXEL_GROUPS: tuple[str, ...] = ("retinotopic", "motion", "category", "scene", "noise")
LABEL_KEYS: tuple[str, ...] = ("category", "colour", "direction", "speed", "scene")

# Saturated, bright object colours; the backgrounds below are muted and darker.
# (Module-level tables are read-only views: nothing global can be mutated.)
COLOUR_RGB: Mapping[str, tuple[float, float, float]] = MappingProxyType({
    "red": (0.92, 0.10, 0.10), "green": (0.10, 0.80, 0.15), "blue": (0.15, 0.30, 1.00),
    "yellow": (0.98, 0.90, 0.10), "magenta": (0.92, 0.15, 0.88), "cyan": (0.10, 0.88, 0.92),
    "orange": (1.00, 0.55, 0.00), "white": (0.97, 0.97, 0.97)})
_OUTLINE_RGB = (0.04, 0.04, 0.04)
# Unit velocity per direction in image coordinates (x right, y down).
_DIRECTION_VECTORS: Mapping[str, tuple[float, float]] = MappingProxyType({
    "left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)})
# Frame widths per second: at 64 px and 3 fps, ~1.7 vs ~5.3 px per frame.
_SPEED_FRAMES_PER_S: Mapping[str, float] = MappingProxyType({"slowly": 0.08, "quickly": 0.25})
_SCENE_PHRASES: Mapping[str, str] = MappingProxyType({
    "striped floor": "over a striped floor", "checkered floor": "over a checkered floor",
    "dotted wall": "in front of a dotted wall", "sky gradient": "against a sky gradient",
    "plain grey room": "in a plain grey room", "brick wall": "in front of a brick wall"})

# ----------------------------------------------------------------------------
# Model constants (see the module docstring for what they mean).
# ----------------------------------------------------------------------------

RETINOTOPIC_GRID = 16          # side of the low-resolution image retinotopic RFs see
_HUE_CHANNELS = 8              # hue-tuned chroma channels, 45 degrees apart
_VISUAL_CHANNELS = 2 + _HUE_CHANNELS  # + luminance contrast on / off
_HUE_KAPPA = 2.0               # von Mises concentration of hue tuning (~50 degrees half width)
_SHAPE_EXTENT = 1.1            # every unit shape fits in |x|, |y| <= this
# Signal amplitude per group, relative to a total noise sd of ~1 (calibrated, see above).
_GROUP_AMPLITUDE = MappingProxyType({"retinotopic": 1.5, "motion": 1.0, "category": 1.1, "scene": 1.0, "noise": 0.0})
_RETINOTOPIC_DRIVE_SD = 0.033  # typical sd of the raw retinotopic drive, measured on the demo movie
_VOXEL_GAIN_SIGMA = 0.3        # log-normal spread of per-voxel gain
_NEIGHBOUR_WEIGHT = 0.2        # mixing with each neighbour along the voxel vector
_THERMAL_SD, _PHYSIO_SD, _DRIFT_SD = 0.70, 0.55, 0.45
_PHYSIO_SHARED_FRACTION = 0.5
PHYSIO_LATENTS = 4
_PHYSIO_LATENT_RHO = 0.5
_DRIFT_CUTOFF_S = 128.0
NETWORKS = 5                   # one per visual group + one global visual network
_NETWORK_TIME_CONSTANT_S = 4.0
_REST_AMPLITUDE = 0.8
_HRF_PEAK_MAX_S = 10.0         # the canonical undershoot is at 15 s
_MIN_TRS = 10                  # z-scoring and the drift basis need a handful of volumes
_MIN_VOXELS_PER_GROUP = 4

# Stable integer keys of the random streams (never reorder: they define the data).
_STREAMS = MappingProxyType({"subject": 1, "clips": 2, "task_noise": 3, "rest": 4})
_SPLIT_CODES = MappingProxyType({"train": 0, "test": 1, "rest": 2})


def _rng(seed: int, stream: str, *keys: int) -> np.random.Generator:
  """An independent generator for one purpose; depends only on seed and keys."""
  sequence = np.random.SeedSequence(seed, spawn_key=(_STREAMS[stream], *keys))
  return np.random.Generator(np.random.PCG64(sequence))


# ----------------------------------------------------------------------------
# Spec.
# ----------------------------------------------------------------------------


def _fail(field: str, value: Any, requirement: str) -> NoReturn:
  raise ValueError(f"SyntheticSpec.{field} = {value!r}: {requirement}")


def _check_int(field: str, value: Any, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    _fail(field, value, f"must be an integer >= {minimum}.")
  if value < minimum:
    _fail(field, value, f"must be >= {minimum}; raise it.")


def _check_real(field: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    _fail(field, value, "must be a real number.")
  if not math.isfinite(value):
    _fail(field, value, "must be finite.")
  return float(value)


def _check_range_pair(field: str, value: Any, lowest: float, highest: float) -> None:
  """A (low, high) pair with lowest <= low <= high <= highest."""
  if not isinstance(value, Sequence) or len(value) != 2:
    _fail(field, value, "must be a (low, high) pair.")
  low, high = (_check_real(field, v) for v in value)
  if not lowest <= low <= high <= highest:
    _fail(field, value, f"must satisfy {lowest:g} <= low <= high <= {highest:g}.")


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """Everything that determines the synthetic dataset (bit-exactly)."""

  seed: int = 0
  resolution: int = 64           # H = W
  fps: int = 3
  tr_s: float = 2.0              # fps * tr_s frames per TR; must be an integer
  num_subjects: int = 3
  voxels_per_subject: tuple[int, ...] = (1500, 1800, 2100)  # not multiples of 16 on purpose
  train_segments: int = 8
  test_segments: int = 3
  segment_trs: int = 110
  train_repeats: int = 2
  test_repeats: int = 10
  rest_runs: int = 4             # per subject
  rest_trs: int = 200
  clip_seconds: tuple[float, float] = (4.0, 12.0)
  hrf_peak_s: tuple[float, float] = (4.0, 6.0)
  group_fractions: tuple[float, ...] = (0.35, 0.15, 0.2, 0.1, 0.2)  # per VOXEL_GROUPS
  noise_scale: float = 1.0       # multiplies all noise
  # Unit shape radius in frame widths: 0.16 spans ~1/4-1/3 of the frame. Larger objects keep their shape
  # legible at low resolution (the CPU demo renders 32 px frames).
  object_radius: float = 0.16

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Raises ValueError naming the first bad field and how to fix it."""
    _check_int("seed", self.seed, 0)
    _check_int("resolution", self.resolution, RETINOTOPIC_GRID)
    _check_int("fps", self.fps, 1)
    if _check_real("tr_s", self.tr_s) <= 0:
      _fail("tr_s", self.tr_s, "must be > 0 seconds.")
    frames = self.fps * self.tr_s
    if abs(frames - round(frames)) > 1e-9 or round(frames) < 1:
      _fail("tr_s", self.tr_s, f"fps * tr_s = {self.fps} * {self.tr_s} = {frames:g} frames per TR "
            "must be a positive integer; change tr_s or fps.")
    self._validate_subjects()
    for field in ("train_segments", "test_segments", "train_repeats", "test_repeats"):
      _check_int(field, getattr(self, field), 1)
    _check_int("rest_runs", self.rest_runs, 0)
    _check_int("segment_trs", self.segment_trs, _MIN_TRS)
    _check_int("rest_trs", self.rest_trs, _MIN_TRS)
    _check_range_pair("clip_seconds", self.clip_seconds, 1.0 / self.fps, math.inf)
    _check_range_pair("hrf_peak_s", self.hrf_peak_s, 1e-3, _HRF_PEAK_MAX_S)
    self._validate_group_fractions()
    if _check_real("noise_scale", self.noise_scale) < 0:
      _fail("noise_scale", self.noise_scale, "must be >= 0.")
    if not 0.05 <= _check_real("object_radius", self.object_radius) <= 0.4:
      _fail("object_radius", self.object_radius, "must be in [0.05, 0.4] frame widths.")

  def _validate_subjects(self) -> None:
    _check_int("num_subjects", self.num_subjects, 1)
    voxels = self.voxels_per_subject
    if not isinstance(voxels, Sequence) or len(voxels) != self.num_subjects:
      _fail("voxels_per_subject", voxels, f"must list one voxel count per subject "
            f"(num_subjects = {self.num_subjects}).")
    minimum = _MIN_VOXELS_PER_GROUP * len(VOXEL_GROUPS)
    for count in voxels:
      if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < minimum:
        _fail("voxels_per_subject", voxels, f"every count must be an integer >= {minimum} "
              f"({_MIN_VOXELS_PER_GROUP} per voxel group).")

  def _validate_group_fractions(self) -> None:
    fractions = self.group_fractions
    if not isinstance(fractions, Sequence) or len(fractions) != len(VOXEL_GROUPS):
      _fail("group_fractions", fractions, f"must give one fraction per group of {VOXEL_GROUPS}.")
    for f in fractions:
      if _check_real("group_fractions", f) <= 0:
        _fail("group_fractions", fractions, "every fraction must be > 0 (every group is present); "
              "they are renormalised to sum 1.")

  @property
  def frames_per_tr(self) -> int:
    return round(self.fps * self.tr_s)

  @property
  def segment_frames(self) -> int:
    return self.segment_trs * self.frames_per_tr

  def num_segments(self, split: str) -> int:
    return {"train": self.train_segments, "test": self.test_segments}[_check_split(split, ("train", "test"))]

  def num_repeats(self, split: str) -> int:
    return {"train": self.train_repeats, "test": self.test_repeats}[_check_split(split, ("train", "test"))]


def _check_split(split: str, allowed: tuple[str, ...]) -> str:
  if split not in allowed:
    raise ValueError(f"split = {split!r}: must be one of {allowed}.")
  return split


# ----------------------------------------------------------------------------
# Clips and captions.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Clip:
  """One clip of the movie; times are seconds from the start of its segment."""

  clip_id: int
  start_s: float
  duration_s: float
  category: int
  colour: int
  direction: int
  speed: int
  scene: int
  caption: str
  start_xy: tuple[float, float] = (0.5, 0.5)      # object centre at clip start, frame units (x right, y down)
  texture_shift: tuple[float, float] = (0.0, 0.0)  # background texture phase, frame units


def clip_caption(category: int, colour: int, direction: int, speed: int, scene: int) -> str:
  colour_name = COLOURS[colour]
  article = "an" if colour_name[0] in "aeiou" else "a"
  return (f"{article} {colour_name} {CLASSES[category]} moves {DIRECTIONS[direction]} "
          f"{SPEEDS[speed]} {_SCENE_PHRASES[SCENES[scene]]}")


def _draw_different(rng: np.random.Generator, n: int, previous: int | None) -> int:
  """Uniform over range(n), excluding `previous` so every cut changes it."""
  if previous is None:
    return int(rng.integers(n))
  value = int(rng.integers(n - 1))
  return value + (value >= previous)


def _draw_clip(rng: np.random.Generator, clip_id: int, start_s: float, duration_s: float,
               previous: Clip | None) -> Clip:
  category = _draw_different(rng, len(CLASSES), None if previous is None else previous.category)
  scene = _draw_different(rng, len(SCENES), None if previous is None else previous.scene)
  colour = int(rng.integers(len(COLOURS)))
  direction = int(rng.integers(len(DIRECTIONS)))
  speed = int(rng.integers(len(SPEEDS)))
  # Start away from the edges so most clips open on an intact object.
  start_xy = tuple(float(v) for v in rng.uniform(0.2, 0.8, size=2))
  texture_shift = tuple(float(v) for v in rng.uniform(0.0, 1.0, size=2))
  return Clip(clip_id=clip_id, start_s=start_s, duration_s=duration_s, category=category, colour=colour,
              direction=direction, speed=speed, scene=scene,
              caption=clip_caption(category, colour, direction, speed, scene),
              start_xy=start_xy, texture_shift=texture_shift)


def _max_clips_per_segment(spec: SyntheticSpec) -> int:
  """Upper bound on clips per segment: all but the last last >= clip_seconds[0]."""
  return int(spec.segment_trs * spec.tr_s // spec.clip_seconds[0]) + 1


def _first_clip_id(spec: SyntheticSpec, split: str, segment: int) -> int:
  """Clip ids are unique over the whole movie: train segments first, then test."""
  movie_segment = segment + (spec.train_segments if split == "test" else 0)
  return movie_segment * _max_clips_per_segment(spec)


def _check_segment(spec: SyntheticSpec, split: str, segment: int) -> None:
  count = spec.num_segments(split)
  if isinstance(segment, bool) or not isinstance(segment, (int, np.integer)) or not 0 <= segment < count:
    raise ValueError(f"segment = {segment!r}: the {split} split has segments 0..{count - 1}.")


def make_segment_clips(spec: SyntheticSpec, split: str, segment: int) -> list[Clip]:
  """The clips of one segment, back to back from 0 s to the end of the segment.

  Ids are consecutive within a segment and unique across both splits (there
  are gaps between segments). The last clip is cut off by the segment end (or,
  rarely, lengthened by less than one frame interval to reach it).
  """
  _check_segment(spec, split, segment)
  rng = _rng(spec.seed, "clips", _SPLIT_CODES[split], segment)
  segment_s = spec.segment_trs * spec.tr_s
  low, high = spec.clip_seconds
  first_id = _first_clip_id(spec, split, segment)
  clips: list[Clip] = []
  start = 0.0
  while start < segment_s:
    duration = float(rng.uniform(low, high))
    previous = clips[-1] if clips else None
    clips.append(_draw_clip(rng, first_id + len(clips), start, min(duration, segment_s - start), previous))
    start += duration
  # A final sliver shorter than one frame interval may hold no frame at all:
  # drop it and let the clip before it run to the end of the segment.
  shown = clips[:int(frame_clip_index(spec, clips).max()) + 1]
  last = shown[-1]
  return shown[:-1] + [dataclasses.replace(last, duration_s=segment_s - last.start_s)]


def frame_clip_index(spec: SyntheticSpec, clips: Sequence[Clip]) -> np.ndarray:
  """int64[segment_frames]: index into `clips` of the clip shown at each frame."""
  if not clips or clips[0].start_s != 0.0:
    raise ValueError("clips must be non-empty and the first must start at 0 s (segment start).")
  frame_times = np.arange(spec.segment_frames) / spec.fps
  starts = np.array([c.start_s for c in clips])
  return np.searchsorted(starts, frame_times, side="right").astype(np.int64) - 1


def _tr_frame_clips(spec: SyntheticSpec, clips: Sequence[Clip]) -> np.ndarray:
  """int64[segment_trs, frames_per_tr]: clip index of every frame, by TR."""
  return frame_clip_index(spec, clips).reshape(spec.segment_trs, spec.frames_per_tr)


def tr_captions(spec: SyntheticSpec, clips: Sequence[Clip]) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Per TR: caption, clip_id at the TR's first frame, and whether a cut falls inside it.

  A TR showing several clips is captioned "A. Then B." (more clips: all of them,
  in order, joined by ". Then ").
  """
  captions, clip_ids, cuts = [], [], []
  for tr_clips in _tr_frame_clips(spec, clips):
    shown = [clips[i] for i in np.unique(tr_clips)]  # clip indices are non-decreasing in time
    if len(shown) == 1:
      captions.append(shown[0].caption)
    else:
      captions.append(". Then ".join(c.caption for c in shown) + ".")
    clip_ids.append(clips[tr_clips[0]].clip_id)
    cuts.append(len(shown) > 1)
  return captions, np.asarray(clip_ids, dtype=np.int64), np.asarray(cuts, dtype=bool)


def tr_labels(spec: SyntheticSpec, clips: Sequence[Clip]) -> dict[str, np.ndarray]:
  """Per TR int32 labels of the clip shown at the TR's middle frame."""
  middle = _tr_frame_clips(spec, clips)[:, spec.frames_per_tr // 2]
  return {key: np.asarray([getattr(clips[i], key) for i in middle], dtype=np.int32) for key in LABEL_KEYS}


# ----------------------------------------------------------------------------
# Rendering: shapes as signed distance functions (unit radius, y up).
# ----------------------------------------------------------------------------


def _polygon_sdf(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
  """Exact signed distance to a simple polygon (negative inside), even-odd rule."""
  vx, vy = vertices[:, 0], vertices[:, 1]
  squared = (x - vx[0]) ** 2 + (y - vy[0]) ** 2
  inside = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=bool)
  for i in range(len(vertices)):
    j = i - 1
    ex, ey = vx[j] - vx[i], vy[j] - vy[i]
    wx, wy = x - vx[i], y - vy[i]
    t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    squared = np.minimum(squared, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
    above, below, left = y >= vy[i], y < vy[j], ex * wy > ey * wx
    inside ^= (above & below & left) | (~above & ~below & ~left)
  return np.where(inside, -1.0, 1.0).astype(squared.dtype) * np.sqrt(squared)


def _circle_sdf(x: np.ndarray, y: np.ndarray, cx: float, cy: float, radius: float) -> np.ndarray:
  return np.hypot(x - cx, y - cy) - radius


def _regular_polygon(n: int, radius: float, phase_deg: float) -> np.ndarray:
  angles = np.deg2rad(phase_deg + 360.0 * np.arange(n) / n)
  return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _star_vertices(points: int, outer: float, inner: float) -> np.ndarray:
  angles = np.deg2rad(90.0 + 180.0 * np.arange(2 * points) / points)
  radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
  return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _rotated(vertices: np.ndarray, degrees: float) -> np.ndarray:
  c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
  return vertices @ np.array([[c, s], [-s, c]])


def _read_only(array: np.ndarray) -> np.ndarray:
  array.flags.writeable = False
  return array


_CROSS = _read_only(np.array([(0.3, 1.0), (-0.3, 1.0), (-0.3, 0.3), (-1.0, 0.3), (-1.0, -0.3), (-0.3, -0.3),
                             (-0.3, -1.0), (0.3, -1.0), (0.3, -0.3), (1.0, -0.3), (1.0, 0.3), (0.3, 0.3)]))
_ARROW = _read_only(np.array([(-1.0, -0.22), (0.15, -0.22), (0.15, -0.62), (1.0, 0.0), (0.15, 0.62),
                              (0.15, 0.22), (-1.0, 0.22)]))
_HEART_TIP = _read_only(np.array([(-0.96, 0.18), (0.96, 0.18), (0.0, -1.0)]))
_BAR = _read_only(_rotated(np.array([(-1.05, -0.24), (1.05, -0.24), (1.05, 0.24), (-1.05, 0.24)]), 45.0))

# Sizes differ on purpose so that compact shapes (circle, square, hexagon)
# overlap little when centred on each other: pairwise IoU <= ~0.72.
_SHAPE_SDFS: Mapping[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = MappingProxyType({
    "circle": lambda x, y: _circle_sdf(x, y, 0.0, 0.0, 0.66),
    "square": lambda x, y: _polygon_sdf(x, y, np.array([(-0.72, -0.72), (0.72, -0.72), (0.72, 0.72), (-0.72, 0.72)])),
    "triangle": lambda x, y: _polygon_sdf(x, y, _regular_polygon(3, 1.08, 90.0) + (0.0, -0.1)),
    "diamond": lambda x, y: _polygon_sdf(x, y, np.array([(0.0, -1.08), (0.55, 0.0), (0.0, 1.08), (-0.55, 0.0)])),
    "star": lambda x, y: _polygon_sdf(x, y, _star_vertices(5, 1.08, 0.42)),
    "cross": lambda x, y: _polygon_sdf(x, y, _CROSS),
    "ring": lambda x, y: np.abs(np.hypot(x, y) - 0.74) - 0.26,
    "hexagon": lambda x, y: _polygon_sdf(x, y, _regular_polygon(6, 1.08, 0.0)),
    "crescent": lambda x, y: np.maximum(_circle_sdf(x, y, 0.0, 0.0, 1.0), -_circle_sdf(x, y, 0.45, 0.25, 0.8)),
    "arrow": lambda x, y: _polygon_sdf(x, y, _ARROW),
    "heart": lambda x, y: np.minimum(np.minimum(_circle_sdf(x, y, -0.45, 0.38, 0.52),
                                                _circle_sdf(x, y, 0.45, 0.38, 0.52)),
                                     _polygon_sdf(x, y, _HEART_TIP)),
    "bar": lambda x, y: _polygon_sdf(x, y, _BAR),
})
assert tuple(_SHAPE_SDFS) == CLASSES


# ----------------------------------------------------------------------------
# Rendering: backgrounds (muted, textured, float RGB in [0, 1]).
# ----------------------------------------------------------------------------


def _soft_square_wave(phase_cycles: np.ndarray, pixels_per_cycle: float) -> np.ndarray:
  """0/1 square wave with ~1 pixel linear edges (anti-aliased)."""
  wave = np.sin(2 * np.pi * phase_cycles)
  # Near a zero crossing, wave / slope-per-pixel is the signed distance in pixels.
  return np.clip(0.5 + wave * pixels_per_cycle / (2 * np.pi), 0.0, 1.0)


def _blend(alpha: np.ndarray, low_rgb: Sequence[float], high_rgb: Sequence[float]) -> np.ndarray:
  """alpha[..., None] interpolates from low_rgb (0) to high_rgb (1)."""
  low, high = np.asarray(low_rgb, np.float32), np.asarray(high_rgb, np.float32)
  return low + alpha[..., None] * (high - low)


def _horizon(v: np.ndarray, level: float, size: int) -> np.ndarray:
  """1 below the horizon line at height `level`, with an anti-aliased edge."""
  return np.clip(0.5 + (v - level) * size, 0.0, 1.0)


def _striped_floor(u, v, shift, size):
  stripes = _soft_square_wave(6.0 * v + shift[1], size / 6.0)
  floor = _blend(stripes, (0.27, 0.18, 0.11), (0.50, 0.36, 0.22))
  wall = _blend(np.zeros_like(u), (0.32, 0.29, 0.27), (0.32, 0.29, 0.27))
  below = _horizon(v, 0.4, size)[..., None]
  return wall * (1 - below) + floor * below


def _checkered_floor(u, v, shift, size):
  a = _soft_square_wave(5.0 * u + shift[0], size / 5.0)
  b = _soft_square_wave(5.0 * v + shift[1], size / 5.0)
  floor = _blend(a + b - 2 * a * b, (0.13, 0.13, 0.15), (0.50, 0.50, 0.46))
  wall = _blend(np.zeros_like(u), (0.20, 0.24, 0.30), (0.20, 0.24, 0.30))
  below = _horizon(v, 0.35, size)[..., None]
  return wall * (1 - below) + floor * below


def _dotted_wall(u, v, shift, size):
  cells = 7.0
  fu = np.mod(cells * u + shift[0], 1.0) - 0.5
  fv = np.mod(cells * v + shift[1], 1.0) - 0.5
  distance_px = (np.hypot(fu, fv) - 0.22) * size / cells
  return _blend(np.clip(0.5 - distance_px, 0.0, 1.0), (0.16, 0.24, 0.36), (0.50, 0.56, 0.66))


def _sky_gradient(u, v, shift, size):
  del shift  # a sky has no texture to shift
  sky = _blend(np.clip(v / 0.8, 0.0, 1.0), (0.10, 0.16, 0.42), (0.52, 0.58, 0.66))
  ground = _blend(np.zeros_like(u), (0.18, 0.22, 0.12), (0.18, 0.22, 0.12))
  below = _horizon(v, 0.8, size)[..., None]
  return sky * (1 - below) + ground * below


def _plain_grey_room(u, v, shift, size):
  del shift
  room = _blend(_horizon(v, 0.7, size), (0.40, 0.40, 0.40), (0.26, 0.26, 0.26))
  vignette = 1.0 - 0.25 * ((u - 0.5) ** 2 + (v - 0.5) ** 2)
  return room * vignette[..., None]


def _brick_wall(u, v, shift, size):
  rows, columns, mortar = 7.0, 4.0, 0.06
  row = np.floor(rows * v + shift[1])
  fu = np.mod(columns * u + 0.5 * np.mod(row, 2.0) + shift[0], 1.0)
  fv = np.mod(rows * v + shift[1], 1.0)
  edge_px = np.minimum(np.minimum(fu, 1 - fu) * size / columns, np.minimum(fv, 1 - fv) * size / rows)
  brick = np.clip(0.5 + edge_px - mortar * size / rows, 0.0, 1.0)
  return _blend(brick, (0.58, 0.56, 0.52), (0.46, 0.23, 0.16))


_BACKGROUNDS = MappingProxyType({"striped floor": _striped_floor, "checkered floor": _checkered_floor,
                                 "dotted wall": _dotted_wall, "sky gradient": _sky_gradient,
                                 "plain grey room": _plain_grey_room, "brick wall": _brick_wall})
assert tuple(_BACKGROUNDS) == SCENES


def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
  """u (x) and v (y) of every pixel centre in frame units, each [size, size]."""
  centres = ((np.arange(size) + 0.5) / size).astype(np.float32)
  return np.meshgrid(centres, centres, indexing="xy")


def render_background(scene: int, size: int, texture_shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
  """float32[size, size, 3] background of scene `scene`."""
  u, v = _pixel_centres(size)
  return _BACKGROUNDS[SCENES[scene]](u, v, texture_shift, size).astype(np.float32)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _object_centres(clip: Clip, times_s: np.ndarray) -> np.ndarray:
  """float64[len(times_s), 2] object centre (x, y) in frame units, wrapped on a torus."""
  velocity = np.asarray(_clip_velocity(clip))
  return np.mod(np.asarray(clip.start_xy) + (times_s[:, None] - clip.start_s) * velocity, 1.0)


def _clip_velocity(clip: Clip) -> tuple[float, float]:
  dx, dy = _DIRECTION_VECTORS[DIRECTIONS[clip.direction]]
  speed = _SPEED_FRAMES_PER_S[SPEEDS[clip.speed]]
  return dx * speed, dy * speed


def _draw_objects(frames: np.ndarray, centres: np.ndarray, category: int, colour: int, radius: float) -> None:
  """Composites the outlined object at `centres` (one per frame) into uint8 `frames` in place.

  Only a box around each object is touched; box indices wrap modulo the frame
  size, which is what makes the object wrap around the edges.
  """
  size = frames.shape[1]
  radius_px = radius * size
  outline_px = max(1.0, size / 64.0)
  half = math.ceil(_SHAPE_EXTENT * radius_px + outline_px + 1.0)
  offsets = np.arange(-half, half)
  cx, cy = centres[:, 0] * size, centres[:, 1] * size
  cols = np.floor(cx).astype(np.int64)[:, None] + offsets  # [n, box]
  rows = np.floor(cy).astype(np.int64)[:, None] + offsets
  x = ((cols + 0.5 - cx[:, None]) / radius_px).astype(np.float32)[:, None, :]
  y = (-(rows + 0.5 - cy[:, None]) / radius_px).astype(np.float32)[:, :, None]  # y up
  distance_px = _SHAPE_SDFS[CLASSES[category]](x, y) * radius_px
  fill = np.clip(0.5 - distance_px, 0.0, 1.0)[..., None]
  outline = np.clip(0.5 - (distance_px - outline_px), 0.0, 1.0)[..., None]
  index = (np.arange(len(frames))[:, None, None], (rows % size)[:, :, None], (cols % size)[:, None, :])
  box = frames[index].astype(np.float32) / 255.0
  box = box + outline * (np.asarray(_OUTLINE_RGB, np.float32) - box)
  box = box + fill * (np.asarray(COLOUR_RGB[COLOURS[colour]], np.float32) - box)
  frames[index] = _to_uint8(box)


def render_segment(spec: SyntheticSpec, clips: Sequence[Clip]) -> np.ndarray:
  """uint8[segment_trs * frames_per_tr, H, W, 3]: the frames of one segment."""
  size = spec.resolution
  frames = np.empty((spec.segment_frames, size, size, 3), dtype=np.uint8)
  clip_of_frame = frame_clip_index(spec, clips)
  for i, clip in enumerate(clips):
    shown = np.flatnonzero(clip_of_frame == i)
    if shown.size == 0:
      continue
    clip_frames = frames[shown[0]:shown[-1] + 1]  # a clip's frames are contiguous
    clip_frames[:] = _to_uint8(render_background(clip.scene, size, clip.texture_shift))
    _draw_objects(clip_frames, _object_centres(clip, shown / spec.fps), clip.category, clip.colour,
                  spec.object_radius)
  return frames


# ----------------------------------------------------------------------------
# Stimulus features.
# ----------------------------------------------------------------------------


def _area_resample_matrix(size: int, grid: int) -> np.ndarray:
  """float32[grid, size]: row i averages the pixels overlapping output cell i."""
  edges = np.arange(size + 1) * (grid / size)  # pixel edges in grid-cell units
  cells = np.arange(grid)
  overlap = (np.minimum(edges[1:], cells[:, None] + 1) - np.maximum(edges[:-1], cells[:, None])).clip(0)
  return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def _low_resolution(frames: np.ndarray, grid: int) -> np.ndarray:
  """float32[F, grid, grid, 3] area-averaged frames in [0, 1]."""
  count, size = frames.shape[:2]
  if size % grid == 0:  # block sums in integers: ~5x faster than float resampling at 256 px
    block = size // grid
    sums = frames.reshape(count, grid, block, grid, block, 3).sum(axis=(2, 4), dtype=np.uint32)
    return sums.astype(np.float32) / np.float32(255.0 * block * block)
  resample = _area_resample_matrix(size, grid)
  pixels = frames.astype(np.float32).reshape(count, size, size * 3) / 255.0
  rows = (resample @ pixels).reshape(count, grid, size, 3)              # average over y
  return (rows.transpose(0, 1, 3, 2) @ resample.T).transpose(0, 1, 3, 2)  # average over x


def _visual_channels(low_res: np.ndarray) -> np.ndarray:
  """float32[F, g, g, 10]: luminance contrast on/off, then 8 hue-tuned chroma channels.

  Luminance is taken relative to the frame's mean (contrast, not raw light
  level, drives early visual cortex; rectified into on and off channels).
  Colour is coded like hue-tuned cells: chroma magnitude in the red-green /
  blue-yellow plane times von Mises tuning to hue. Rectified, hue-tuned coding
  is what lets a linear readout tell the object's colour wherever it is; the
  muted backgrounds have little chroma, so the saturated object dominates it.
  """
  r, g, b = low_res[..., 0], low_res[..., 1], low_res[..., 2]
  luminance = (r + g + b) / 3.0
  contrast = luminance - luminance.mean(axis=(1, 2), keepdims=True)
  red_green, blue_yellow = r - g, (r + g) / 2.0 - b
  chroma = np.hypot(red_green, blue_yellow)
  hue = np.arctan2(blue_yellow, red_green)
  preferred = 2 * np.pi * np.arange(_HUE_CHANNELS) / _HUE_CHANNELS
  hue_tuning = np.exp(_HUE_KAPPA * (np.cos(hue[..., None] - preferred) - 1.0))
  return np.concatenate([np.maximum(contrast, 0.0)[..., None], np.maximum(-contrast, 0.0)[..., None],
                         chroma[..., None] * hue_tuning], axis=-1).astype(np.float32)


def stimulus_features(spec: SyntheticSpec, clips: Sequence[Clip], frames: np.ndarray,
                      chunk_frames: int = 64) -> dict[str, np.ndarray]:
  """Per-frame ground truth that drives the voxels.

  Returns (F = number of frames, g = RETINOTOPIC_GRID):
    'pixels'    float32[F, g*g*10] visual channels of the area-averaged g x g frame,
                flattened in (y, x, channel) order: luminance contrast vs the frame
                mean, on and off (rectified), then chroma x von Mises hue tuning
                for 8 hues 45 degrees apart in the (red-green, blue-yellow) plane.
    'motion'    float32[F, 2] object velocity (vx, vy) in frame widths per second,
                image coordinates (x right, y down).
    'category'  float32[F, len(CLASSES)] one-hot object class times visibility (the
                object wraps around the edges, so visibility is always 1).
    'scene'     float32[F, len(SCENES)] one-hot background scene.
  """
  if frames.shape[0] != spec.segment_frames:
    raise ValueError(f"frames has {frames.shape[0]} frames; a segment has {spec.segment_frames}.")
  clip_of_frame = frame_clip_index(spec, clips)
  pixels = np.concatenate([
      _visual_channels(_low_resolution(frames[i:i + chunk_frames], RETINOTOPIC_GRID))
      for i in range(0, len(frames), chunk_frames)])  # chunks bound memory at 256 px
  velocity = np.asarray([_clip_velocity(c) for c in clips], dtype=np.float32)
  return {
      "pixels": pixels.reshape(len(frames), -1).astype(np.float32),
      "motion": velocity[clip_of_frame],
      "category": _one_hot([c.category for c in clips], len(CLASSES))[clip_of_frame],
      "scene": _one_hot([c.scene for c in clips], len(SCENES))[clip_of_frame],
  }


def _one_hot(indices: Sequence[int], depth: int) -> np.ndarray:
  return np.eye(depth, dtype=np.float32)[np.asarray(indices, dtype=np.int64)]


# ----------------------------------------------------------------------------
# Subjects.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Subject:
  """One simulated brain: voxel layout, tunings, HRF and noise parameters."""

  index: int
  num_voxels: int
  hrf_peak_s: float
  voxel_group: np.ndarray              # int8[V] index into VOXEL_GROUPS, non-decreasing
  voxel_gain: np.ndarray               # float32[V] stimulus signal amplitude (0 for noise voxels)
  rf_centre: np.ndarray                # float32[n_retinotopic, 2] (x, y) in frame units
  rf_sigma: np.ndarray                 # float32[n_retinotopic] frame units
  rf_channel_weights: np.ndarray       # float32[n_retinotopic, 10] non-negative, sum 1
  motion_direction: np.ndarray         # float32[n_motion] preferred direction, radians, atan2(vy, vx)
  motion_kappa: np.ndarray             # float32[n_motion] von Mises concentration
  motion_speed_exponent: np.ndarray    # float32[n_motion] gain = (speed / reference) ** exponent
  category_tuning: np.ndarray          # float32[len(CLASSES), n_category]
  scene_tuning: np.ndarray             # float32[len(SCENES), n_scene]
  thermal_sd: np.ndarray               # float32[V]
  physio_sd: np.ndarray                # float32[V]
  physio_rho: np.ndarray               # float32[V]
  physio_loadings: np.ndarray          # float32[PHYSIO_LATENTS, V], unit norm per voxel
  drift_sd: np.ndarray                 # float32[V]
  network_loadings: np.ndarray         # float32[NETWORKS, V] resting-state loadings

  def group_slice(self, group: str) -> slice:
    """The contiguous block of voxels of `group`."""
    code = VOXEL_GROUPS.index(group)
    return slice(int(np.searchsorted(self.voxel_group, code, side="left")),
                 int(np.searchsorted(self.voxel_group, code, side="right")))


def _group_counts(rng: np.random.Generator, fractions: Sequence[float], num_voxels: int) -> np.ndarray:
  """Voxels per group: jittered fractions, largest-remainder rounding, >= 1 each."""
  weights = np.asarray(fractions, dtype=np.float64) * rng.uniform(0.85, 1.15, size=len(fractions))
  exact = weights / weights.sum() * num_voxels
  counts = np.floor(exact).astype(np.int64)
  remainder_order = np.argsort(-(exact - counts), kind="stable")
  counts[remainder_order[:num_voxels - counts.sum()]] += 1
  while counts.min() < 1:  # only for tiny fractions: take from the largest group
    counts[np.argmax(counts)] -= 1
    counts[np.argmin(counts)] += 1
  return counts


def _retinotopic_tuning(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
  centre = rng.uniform(0.0, 1.0, size=(count, 2))
  eccentricity = np.hypot(centre[:, 0] - 0.5, centre[:, 1] - 0.5)
  # Small (V1-like) to large (V4-like) fields, growing with eccentricity as in
  # visual cortex; large fields make colour readable wherever the object is.
  sigma = np.exp(rng.uniform(np.log(0.05), np.log(0.3), size=count)) * (1 + eccentricity)
  channels = rng.dirichlet(np.full(_VISUAL_CHANNELS, 0.15), size=count)  # 1-2 channels each
  # Serpentine order over 4 horizontal bands keeps neighbouring voxels' RFs close.
  band = np.floor(centre[:, 1] * 4)
  along = np.where(band % 2 == 0, centre[:, 0], 1.0 - centre[:, 0])
  order = np.lexsort((along, band))
  return {"rf_centre": centre[order], "rf_sigma": sigma[order], "rf_channel_weights": channels[order]}


def _motion_tuning(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
  direction = rng.uniform(-np.pi, np.pi, size=count)
  kappa = rng.uniform(1.0, 4.0, size=count)
  exponent = rng.uniform(-1.0, 1.0, size=count)
  order = np.argsort(direction, kind="stable")
  return {"motion_direction": direction[order], "motion_kappa": kappa[order],
          "motion_speed_exponent": exponent[order]}


def _sparse_tuning(rng: np.random.Generator, count: int, options: int, second_probability: float) -> np.ndarray:
  """float64[options, count]: one preferred option (weight 1), maybe a second, weak baseline."""
  tuning = rng.uniform(0.0, 0.15, size=(options, count))
  preferred = rng.integers(options, size=count)
  second = (preferred + 1 + rng.integers(options - 1, size=count)) % options
  has_second = rng.uniform(size=count) < second_probability
  second_weight = rng.uniform(0.4, 0.8, size=count)
  voxels = np.arange(count)
  tuning[second[has_second], voxels[has_second]] = second_weight[has_second]
  tuning[preferred, voxels] = 1.0
  return tuning[:, np.argsort(preferred, kind="stable")]


def _noise_parameters(rng: np.random.Generator, num_voxels: int) -> dict[str, np.ndarray]:
  def jittered(sd: float, sigma: float) -> np.ndarray:
    return sd * rng.lognormal(0.0, sigma, size=num_voxels)

  loadings = rng.standard_normal((PHYSIO_LATENTS, num_voxels))
  return {"thermal_sd": jittered(_THERMAL_SD, 0.2), "physio_sd": jittered(_PHYSIO_SD, 0.2),
          "physio_rho": rng.uniform(0.3, 0.6, size=num_voxels),
          "physio_loadings": loadings / np.linalg.norm(loadings, axis=0, keepdims=True),
          "drift_sd": jittered(_DRIFT_SD, 0.3)}


def _network_loadings(rng: np.random.Generator, voxel_group: np.ndarray) -> np.ndarray:
  """One network per visual group, plus a global visual network (the last)."""
  num_voxels = voxel_group.size
  loadings = rng.normal(0.0, 0.1, size=(NETWORKS, num_voxels))
  visual = voxel_group < VOXEL_GROUPS.index("noise")
  own = np.minimum(voxel_group, NETWORKS - 2)
  loadings[own[visual], np.flatnonzero(visual)] = rng.uniform(0.6, 1.0, size=visual.sum())
  loadings[NETWORKS - 1, visual] = rng.uniform(0.2, 0.5, size=visual.sum())
  loadings[:, ~visual] = 0.0
  return loadings * _REST_AMPLITUDE


def _make_subject(spec: SyntheticSpec, index: int) -> Subject:
  rng = _rng(spec.seed, "subject", index)
  num_voxels = int(spec.voxels_per_subject[index])
  hrf_peak_s = float(rng.uniform(*spec.hrf_peak_s))
  counts = _group_counts(rng, spec.group_fractions, num_voxels)
  voxel_group = np.repeat(np.arange(len(VOXEL_GROUPS)), counts).astype(np.int8)
  amplitude = np.asarray([_GROUP_AMPLITUDE[g] for g in VOXEL_GROUPS])[voxel_group]
  gain = amplitude * rng.lognormal(-_VOXEL_GAIN_SIGMA ** 2 / 2, _VOXEL_GAIN_SIGMA, size=num_voxels)
  arrays = {
      **_retinotopic_tuning(rng, counts[0]),
      **_motion_tuning(rng, counts[1]),
      "category_tuning": _sparse_tuning(rng, counts[2], len(CLASSES), second_probability=0.5),
      "scene_tuning": _sparse_tuning(rng, counts[3], len(SCENES), second_probability=0.3),
      **_noise_parameters(rng, num_voxels),
      "network_loadings": _network_loadings(rng, voxel_group),
      "voxel_gain": gain,
  }
  return Subject(index=index, num_voxels=num_voxels, hrf_peak_s=hrf_peak_s, voxel_group=voxel_group,
                 **{k: v.astype(np.float32) for k, v in arrays.items()})


def make_subjects(spec: SyntheticSpec) -> list[Subject]:
  """The simulated subjects; subject k depends only on (seed, k, its voxel count)."""
  return [_make_subject(spec, k) for k in range(spec.num_subjects)]


# ----------------------------------------------------------------------------
# Neural drive.
# ----------------------------------------------------------------------------


def _rf_weights(subject: Subject, grid: int) -> np.ndarray:
  """float32[grid*grid*channels, n_retinotopic]: Gaussian RF (sum 1) x channel weights."""
  centres = (np.arange(grid) + 0.5) / grid
  dx = centres[None, :] - subject.rf_centre[:, 0:1]
  dy = centres[None, :] - subject.rf_centre[:, 1:2]
  two_var = 2.0 * subject.rf_sigma[:, None] ** 2
  field = np.exp(-dy[:, :, None] ** 2 / two_var[:, :, None]) * np.exp(-dx[:, None, :] ** 2 / two_var[:, :, None])
  field /= field.sum(axis=(1, 2), keepdims=True)
  weights = field[..., None] * subject.rf_channel_weights[:, None, None, :]
  return weights.reshape(len(field), -1).T.astype(np.float32)


def _retinotopic_drive(subject: Subject, pixels: np.ndarray) -> np.ndarray:
  grid = round(math.sqrt(pixels.shape[1] / _VISUAL_CHANNELS))
  return (pixels @ _rf_weights(subject, grid)) / _RETINOTOPIC_DRIVE_SD


def _motion_response(subject: Subject, velocity: np.ndarray) -> np.ndarray:
  """Von Mises direction tuning x power-law speed gain; 0 when nothing moves."""
  speed = np.hypot(velocity[:, 0], velocity[:, 1])
  angle = np.arctan2(velocity[:, 1], velocity[:, 0])
  tuning = np.exp(subject.motion_kappa * (np.cos(angle[:, None] - subject.motion_direction) - 1.0))
  reference = math.sqrt(np.prod(list(_SPEED_FRAMES_PER_S.values())))
  safe_speed = np.where(speed > 0, speed, reference)[:, None]
  gain = np.where(speed[:, None] > 0, (safe_speed / reference) ** subject.motion_speed_exponent, 0.0)
  return tuning * gain


def _motion_drive(subject: Subject, velocity: np.ndarray) -> np.ndarray:
  # Normalise by the sd over all (direction, speed) stimuli, which are equiprobable.
  stimuli = np.asarray([np.multiply(_DIRECTION_VECTORS[d], _SPEED_FRAMES_PER_S[s])
                        for d in DIRECTIONS for s in SPEEDS])
  scale = _motion_response(subject, stimuli).std(axis=0) + 1e-6
  return _motion_response(subject, velocity) / scale


def _categorical_drive(one_hot: np.ndarray, tuning: np.ndarray) -> np.ndarray:
  # Options are equiprobable, so the sd over options is the drive's sd.
  return (one_hot @ tuning) / (tuning.std(axis=0) + 1e-6)


def _mix_neighbours(drive: np.ndarray, voxel_group: np.ndarray) -> np.ndarray:
  """Blurs each voxel with its neighbours along the vector, never across groups."""
  mixed = np.empty_like(drive)
  for code in np.unique(voxel_group):
    block = drive[:, voxel_group == code]
    padded = np.concatenate([block[:, :1], block, block[:, -1:]], axis=1)
    mixed[:, voxel_group == code] = ((1 - 2 * _NEIGHBOUR_WEIGHT) * block
                                     + _NEIGHBOUR_WEIGHT * (padded[:, :-2] + padded[:, 2:]))
  return mixed


def neural_drive(subject: Subject, features: dict[str, np.ndarray]) -> np.ndarray:
  """float32[F, num_voxels] stimulus-driven activity at frame rate; noise voxels get 0."""
  frames = features["category"].shape[0]
  drive = np.zeros((frames, subject.num_voxels), dtype=np.float64)
  drive[:, subject.group_slice("retinotopic")] = _retinotopic_drive(subject, features["pixels"])
  drive[:, subject.group_slice("motion")] = _motion_drive(subject, features["motion"])
  drive[:, subject.group_slice("category")] = _categorical_drive(features["category"], subject.category_tuning)
  drive[:, subject.group_slice("scene")] = _categorical_drive(features["scene"], subject.scene_tuning)
  return (_mix_neighbours(drive, subject.voxel_group) * subject.voxel_gain).astype(np.float32)


# ----------------------------------------------------------------------------
# BOLD runs.
# ----------------------------------------------------------------------------


def _ar1(rng: np.random.Generator, steps: int, rho: np.ndarray) -> np.ndarray:
  """float64[steps, len(rho)] stationary unit-variance AR(1) processes."""
  rho = np.asarray(rho, dtype=np.float64)
  innovations = rng.standard_normal((steps, rho.size))
  series = np.empty_like(innovations)
  series[0] = innovations[0]  # stationary start
  innovation_scale = np.sqrt(1.0 - rho ** 2)
  for t in range(1, steps):
    series[t] = rho * series[t - 1] + innovation_scale * innovations[t]
  return series


def _drift_basis(n_trs: int, tr_s: float) -> np.ndarray:
  """float64[n_trs, K] DCT regressors slower than _DRIFT_CUTOFF_S, at least one."""
  count = max(1, int(2 * n_trs * tr_s // _DRIFT_CUTOFF_S))
  t = np.arange(n_trs) + 0.5
  return np.cos(np.pi * t[:, None] * np.arange(1, count + 1)[None, :] / n_trs)


def _structured_noise(spec: SyntheticSpec, subject: Subject, n_trs: int, rng: np.random.Generator) -> np.ndarray:
  """float64[n_trs, V]: drift + partly shared AR(1) physiological noise + thermal noise."""
  thermal = rng.standard_normal((n_trs, subject.num_voxels)) * subject.thermal_sd
  private = _ar1(rng, n_trs, subject.physio_rho)
  shared = _ar1(rng, n_trs, np.full(PHYSIO_LATENTS, _PHYSIO_LATENT_RHO)) @ subject.physio_loadings
  physio = subject.physio_sd * (math.sqrt(1 - _PHYSIO_SHARED_FRACTION) * private
                                + math.sqrt(_PHYSIO_SHARED_FRACTION) * shared)
  basis = _drift_basis(n_trs, spec.tr_s)
  # Each cosine has variance 1/2 over the run: scale so the drift's variance is drift_sd^2.
  amplitudes = rng.standard_normal((basis.shape[1], subject.num_voxels)) * math.sqrt(2.0 / basis.shape[1])
  drift = (basis @ amplitudes) * subject.drift_sd
  return (thermal + physio + drift) * spec.noise_scale


def _resting_drive(spec: SyntheticSpec, subject: Subject, frames: int, rng: np.random.Generator) -> np.ndarray:
  """float64[frames, V]: slow latent network fluctuations projected onto voxels."""
  rho = math.exp(-1.0 / (spec.fps * _NETWORK_TIME_CONSTANT_S))
  innovations = rng.standard_normal((frames, NETWORKS))
  scale = math.sqrt(1.0 - rho ** 2)
  initial = innovations[0] * rho  # lfilter state giving a stationary unit-variance start
  latent, _ = sp_signal.lfilter([scale], [1.0, -rho], innovations[1:], axis=0, zi=initial[None, :])
  latent = np.concatenate([innovations[:1], latent], axis=0)
  return latent @ subject.network_loadings


def _bold(spec: SyntheticSpec, subject: Subject, drive: np.ndarray, n_trs: int) -> np.ndarray:
  """float64[n_trs, V]: HRF-convolved drive sampled at the first frame of each TR."""
  centred = drive - drive.mean(axis=0, keepdims=True)
  bold = hrf.convolve_hrf(centred, dt_s=1.0 / spec.fps, peak_s=subject.hrf_peak_s, axis=0)
  return bold[::spec.frames_per_tr][:n_trs]


def _zscore(volumes: np.ndarray) -> np.ndarray:
  centred = volumes - volumes.mean(axis=0, keepdims=True)
  sd = centred.std(axis=0, keepdims=True)
  # A constant voxel (e.g. noise_scale = 0 and no drive) becomes all zeros, not NaN.
  return np.divide(centred, sd, out=np.zeros_like(centred), where=sd > 1e-12)


def _noisy_run(spec: SyntheticSpec, subject: Subject, bold: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """float32[n_trs, V]: BOLD plus one draw of structured noise, z-scored per voxel."""
  return _zscore(bold + _structured_noise(spec, subject, bold.shape[0], rng)).astype(np.float32)


def simulate_run(spec: SyntheticSpec, subject: Subject, drive: np.ndarray | None, n_trs: int,
                 rng: np.random.Generator) -> np.ndarray:
  """float32[n_trs, V] one z-scored run.

  Args:
    spec: the dataset spec (fps, TR, noise scale).
    subject: whose HRF, noise and network parameters to use.
    drive: float[n_trs * frames_per_tr, V] neural drive at frame rate, or None
      for a resting-state run (latent network fluctuations drawn from `rng`).
    n_trs: number of volumes.
    rng: the run's own generator: all its randomness (noise, rest fluctuations).
  """
  if isinstance(n_trs, bool) or not isinstance(n_trs, (int, np.integer)) or n_trs < 2:
    raise ValueError(f"n_trs = {n_trs!r}: must be an integer >= 2 (z-scoring needs two volumes).")
  frames = n_trs * spec.frames_per_tr
  if drive is None:
    drive = _resting_drive(spec, subject, frames, rng)
  elif np.shape(drive) != (frames, subject.num_voxels):
    raise ValueError(f"drive has shape {np.shape(drive)}; expected (n_trs * frames_per_tr, num_voxels) = "
                     f"({frames}, {subject.num_voxels}).")
  return _noisy_run(spec, subject, _bold(spec, subject, np.asarray(drive, dtype=np.float64), n_trs), rng)


# ----------------------------------------------------------------------------
# Records.
# ----------------------------------------------------------------------------


def _segment_responses(spec: SyntheticSpec, subject: Subject, drive: np.ndarray, split: str,
                       segment: int) -> np.ndarray:
  """float32[repeats, segment_trs, V]: the same BOLD signal, independent noise per repeat.

  Equal to calling simulate_run once per repeat; the BOLD signal is computed once.
  """
  bold = _bold(spec, subject, drive.astype(np.float64), spec.segment_trs)
  return np.stack([
      _noisy_run(spec, subject, bold,
                 _rng(spec.seed, "task_noise", subject.index, _SPLIT_CODES[split], segment, repeat))
      for repeat in range(spec.num_repeats(split))])


def _stimulus_records(spec: SyntheticSpec, split: str) -> Iterator[tuple[str, dict]]:
  subjects = make_subjects(spec)
  fpt = spec.frames_per_tr
  for segment in range(spec.num_segments(split)):
    clips = make_segment_clips(spec, split, segment)
    frames = render_segment(spec, clips)
    features = stimulus_features(spec, clips, frames)
    fmri = {f"subject_{s.index}": _segment_responses(spec, s, neural_drive(s, features), split, segment)
            for s in subjects}
    captions, clip_ids, cuts = tr_captions(spec, clips)
    labels = tr_labels(spec, clips)
    for t in range(spec.segment_trs):
      yield f"{split}-seg{segment:03d}-tr{t:04d}", {
          "frames": frames[t * fpt:(t + 1) * fpt].copy(),
          "caption": captions[t],
          "clip_id": np.int64(clip_ids[t]),
          "segment": np.int32(segment),
          "tr": np.int32(t),
          "scene_cut": bool(cuts[t]),
          "labels": {k: np.int32(v[t]) for k, v in labels.items()},
          "fmri": {k: v[:, t].copy() for k, v in fmri.items()},
      }


def _rest_records(spec: SyntheticSpec) -> Iterator[tuple[str, dict]]:
  subjects = make_subjects(spec)
  no_frames = np.zeros((0, spec.resolution, spec.resolution, 3), dtype=np.uint8)
  for run in range(spec.rest_runs):
    fmri = {f"subject_{s.index}": simulate_run(spec, s, None, spec.rest_trs, _rng(spec.seed, "rest", s.index, run))
            for s in subjects}
    for t in range(spec.rest_trs):
      yield f"rest-run{run:03d}-tr{t:04d}", {
          "frames": no_frames,
          "caption": "",
          "clip_id": np.int64(-1),
          "segment": np.int32(run),
          "tr": np.int32(t),
          "scene_cut": False,
          "labels": {k: np.int32(-1) for k in LABEL_KEYS},
          "fmri": {k: v[t:t + 1].copy() for k, v in fmri.items()},
      }


def iter_records(spec: SyntheticSpec, split: str) -> Iterator[tuple[str, dict]]:
  """(key, record) pairs of one split, generated segment by segment, in (segment, TR) order.

  train/test: one record per (segment, TR t); 'fmri' holds, per subject, the
  volumes acquired *at* TR t in every repeat (float32[R, V]), unshifted: the
  hemodynamic offset is the data pipeline's job. rest: one record per (run, TR)
  with no frames, caption '', clip_id -1, labels -1 and fmri float32[1, V].
  """
  _check_split(split, ("train", "test", "rest"))
  if split == "rest":
    return _rest_records(spec)
  return _stimulus_records(spec, split)


def dataset_metadata(spec: SyntheticSpec) -> dict:
  """JSON-serialisable description of the dataset (no records are generated)."""
  subjects = make_subjects(spec)
  segment_trs = {"train": [spec.segment_trs] * spec.train_segments,
                 "test": [spec.segment_trs] * spec.test_segments,
                 "rest": [spec.rest_trs] * spec.rest_runs}
  return {
      "spec": _json_ready(dataclasses.asdict(spec)),
      "frames_per_tr": spec.frames_per_tr,
      "volume_time": "the volume at TR t is the BOLD signal at t * tr_s (first frame of TR t); unshifted",
      "classes": list(CLASSES), "colours": list(COLOURS), "directions": list(DIRECTIONS),
      "speeds": list(SPEEDS), "scenes": list(SCENES), "voxel_groups": list(VOXEL_GROUPS),
      "label_keys": list(LABEL_KEYS),
      "subjects": [{"num_voxels": s.num_voxels, "hrf_peak_s": s.hrf_peak_s,
                    "voxel_group": [int(g) for g in s.voxel_group]} for s in subjects],
      "segment_trs": segment_trs,
      "repeats": {"train": spec.train_repeats, "test": spec.test_repeats, "rest": 1},
      "num_records": {split: sum(lengths) for split, lengths in segment_trs.items()},
  }


def _json_ready(value: Any) -> Any:
  if isinstance(value, (tuple, list)):
    return [_json_ready(v) for v in value]
  if isinstance(value, dict):
    return {k: _json_ready(v) for k, v in value.items()}
  if isinstance(value, np.generic):
    return value.item()
  return value
