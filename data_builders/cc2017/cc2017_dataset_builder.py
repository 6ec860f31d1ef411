"""cc2017 (Wen et al. 2018, "Neural encoding and decoding with deep learning for dynamic natural vision") as TFDS.

Release (PURR, CC0; datasets.md §1, §8.1), unzipped into manual_dir (local or gs://):

  stimuli/seg{1..18}.mp4, stimuli/test{1..5}.mp4          8-min movies, 30 fps
  subject{1,2,3}/fmri/seg{k}/cifti/seg{k}_{r}_Atlas.dtseries.nii     r = 1, 2  (training: 2 repeats)
  subject{1,2,3}/fmri/test{k}/cifti/test{k}_{r}_Atlas.dtseries.nii   r = 1..10 (testing: 10 repeats)

Each dtseries is fsLR-32k (91282 grayordinates), TR 2 s, with 245 volumes (seg*, test1) or 246 (test2-5).

Processing per run, as Wen's official `movie_fmri_data_processing.m` does (brainjax.data.preprocess):
  1. trim to 240 volumes BY THE RUN'S LENGTH: 245 volumes -> drop the first 1 and the last 4, 246 -> drop the first
     2 and the last 4 (MATLAB `cdata(:, st:end-4)` with st = 2 for 245 volumes and 3 otherwise; numpy
     `x[1:241]` / `x[2:242]`); other lengths are a ReleaseError;
  2. keep the cortex grayordinates, found by structure name on the file's brain-model axis (never `[:59412]`);
     files stored [G, T] (MATLAB orientation) are read by axis type (brainjax.data.cifti.series);
  3. remove a 4th-order polynomial trend and z-score each vertex over time (MATLAB std, ddof 1).
Voxel selection (per subject, from the TRAINING runs only): per training segment the Fisher-z correlation between
its repeats, a one-sample t-test across segments, Bonferroni; keep p < p_threshold or the top_n vertices. The
selected columns are saved with the dataset (metadata `selected_grayordinates` and `subject{s}_voxels.npz` next to
the split files), so train and test use the same voxels.

Records (data_builders/common.py): layout 'shared' (every subject watched the same movies), response 'bold', one
record per stimulus TR t of each segment, in (segment, TR) order:
  fmri      {subject_k: float32[R, V_k]}  the volume acquired at trimmed TR t in every repeat (unshifted: the
            pipeline applies `hrf_shift_trs`; it averages or keeps repeats, and averages test repeats)
  frames    uint8[fps * 2, S, S, 3]  the movie during [2t, 2t + 2) s (volume t <-> movie time 2t, as the official
            code pairs 240 trimmed volumes with the 8-min movie), resampled by nearest timestamp to `fps` and
            centre-cropped/resized to `frame_size` (3 fps, 256 x 256 for MinD-Video)
  caption   from the optional caption file, else ''
  clip_id / scene_cut   from the optional clip-boundary file; without one clip_id = stimulus * 1000 + TR and
            scene_cut is False. stimulus = k for seg{k}, 100 + k for test{k}, so ids are unique over the movie.

User files (optional, JSON, paths absolute or relative to manual_dir):
  caption_file   {"seg1": {"0": "a woman walks a dog", "1": "...", ...}, "test1": {...}}: per stimulus, a caption
                 per trimmed TR index (a string key; a JSON list indexed by TR is accepted too). Missing TRs get ''.
                 (The papers used BLIP/BLIP-2 captions of the 2-s clips; the release has none.)
  clip_boundaries_file  {"seg1": [0.0, 4.2, 9.75, ...], ...}: the start time (s, from the movie start) of each
                 clip of a stimulus, first 0; or {"seg1": {"starts": [...], "ids": [...]}} to name the clips. A
                 record's clip_id is the clip shown at its first frame (index, or the given id); scene_cut is True
                 when the TR's frames show more than one clip.
  labels_file    {"seg1": {"<label key>": [int per TR], ...}}: per-TR labels for `label_keys` (-1 when absent).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from brainjax.data import cifti, preprocess, video
from data_builders import common

DATASET = "cc2017"
TR_S = 2.0
TRS_PER_RUN = 240
DROP_LAST = 4               # the official code drops the last 4 volumes of every run
FIRST_DROPPED = (1, 2)      # ... and the first 1 (245-volume runs) or 2 (246-volume runs)
SELECTIONS = ("bonferroni", "top_n", "none")
TEST_STIMULUS_OFFSET = 100  # clip/stimulus numbering: seg{k} -> k, test{k} -> 100 + k
CLIPS_PER_STIMULUS = 1000
SPLIT_PREFIX = {"train": "seg", "test": "test"}


def stimulus_name(split: str, number: int) -> str:
  return f"{SPLIT_PREFIX[split]}{number}"


def stimulus_code(split: str, number: int) -> int:
  return number + (TEST_STIMULUS_OFFSET if split == "test" else 0)


def run_path(root: epath.Path, subject: int, stimulus: str, repeat: int) -> epath.Path:
  return root / f"subject{subject}" / "fmri" / stimulus / "cifti" / f"{stimulus}_{repeat}_Atlas.dtseries.nii"


def video_path(root: epath.Path, stimulus: str) -> epath.Path:
  return root / "stimuli" / f"{stimulus}.mp4"


def kept_volumes(num_volumes: int, trs_per_run: int, what: str) -> slice:
  """The official trim: runs of trs_per_run + 5 volumes lose the first 1, of + 6 the first 2; both lose the last 4.

  cc2017 runs have 245 volumes (seg*, test1) or 246 (test2-5: acquisition started one TR earlier); the rule goes by
  the run's length, not its name, exactly as `movie_fmri_data_processing.m` does (`if size(cdata, 2) == 245`).
  """
  first = num_volumes - DROP_LAST - trs_per_run
  if first not in FIRST_DROPPED:
    allowed = " or ".join(str(trs_per_run + DROP_LAST + f) for f in FIRST_DROPPED)
    raise common.ReleaseError(f"{what}: {num_volumes} volumes; cc2017 runs have {allowed} (trimmed to "
                              f"{trs_per_run}); the file is incomplete or not a cc2017 run.")
  return slice(first, first + trs_per_run)


# ----------------------------------------------------------------------------------------------------------------
# Config


class Cc2017Config(tfds.core.BuilderConfig):
  """Options of the cc2017 build (the preset names say which paper's preprocessing they follow).

  subjects / train_segments / test_segments: which subject{s} and seg{k}/test{k} to read (1-based, release names).
  train_repeats / test_repeats: expected repeats per segment (None: found in the release; they must agree across
    subjects and segments). trs_per_run: volumes kept per run (240; a miniature release uses fewer).
  fps / frame_size: frames per second and square side of the stored frames; fps * 2 s must be an integer.
  detrend_order (None: no detrending) / zscore (per vertex over time, MATLAB ddof 1) / zscore_ddof.
  selection: 'bonferroni' (Bonferroni p < p_threshold), 'top_n' (the top_n most reproducible vertices) or 'none'
    (every cortex vertex); alternative: 'two-sided' (as Mind-Animator) or 'greater' for the t-test.
  expected_grayordinates: grayordinate counts accepted (91282 for the release; None: any).
  caption_file / clip_boundaries_file / labels_file / label_keys: the optional user files (module docstring).
  """

  def __init__(self, *, name: str, description: str = "", subjects: Sequence[int] = (1, 2, 3),
               train_segments: Sequence[int] = tuple(range(1, 19)), test_segments: Sequence[int] = tuple(range(1, 6)),
               train_repeats: int | None = None, test_repeats: int | None = None, trs_per_run: int = TRS_PER_RUN,
               fps: float = 3, frame_size: int = 256, detrend_order: int | None = 4, zscore: bool = True,
               zscore_ddof: int = 1, selection: str = "bonferroni", p_threshold: float = 0.05, top_n: int = 4500,
               alternative: str = "two-sided",
               expected_grayordinates: int | Sequence[int] | None = cifti.FSLR32K_GRAYORDINATES,
               caption_file: str = "", clip_boundaries_file: str = "", labels_file: str = "",
               label_keys: Sequence[str] = ()):
    super().__init__(name=name, description=description or "cc2017")
    self.subjects = tuple(int(s) for s in subjects)
    self.train_segments = tuple(int(k) for k in train_segments)
    self.test_segments = tuple(int(k) for k in test_segments)
    self.train_repeats = train_repeats
    self.test_repeats = test_repeats
    self.trs_per_run = trs_per_run
    self.fps = fps
    self.frame_size = frame_size
    self.detrend_order = detrend_order
    self.zscore = zscore
    self.zscore_ddof = zscore_ddof
    self.selection = selection
    self.p_threshold = p_threshold
    self.top_n = top_n
    self.alternative = alternative
    if expected_grayordinates is None or isinstance(expected_grayordinates, int):
      self.expected_grayordinates = expected_grayordinates
    else:
      self.expected_grayordinates = tuple(int(g) for g in expected_grayordinates)
    self.caption_file = str(caption_file or "")
    self.clip_boundaries_file = str(clip_boundaries_file or "")
    self.labels_file = str(labels_file or "")
    self.label_keys = tuple(label_keys)
    self.validate()

  @property
  def frames_per_tr(self) -> int:
    return round(self.fps * TR_S)

  def segments(self, split: str) -> tuple[int, ...]:
    return {"train": self.train_segments, "test": self.test_segments}[split]

  def expected_repeats(self, split: str) -> int | None:
    return {"train": self.train_repeats, "test": self.test_repeats}[split]

  def validate(self) -> None:
    """Errors name the field and the fix."""
    def fail(field, fix):
      raise ValueError(f"Cc2017Config.{field} = {getattr(self, field)!r}: {fix}")

    if not self.subjects or len(set(self.subjects)) != len(self.subjects) or min(self.subjects) < 1:
      fail("subjects", "list distinct subject numbers >= 1, e.g. (1, 2, 3).")
    for field in ("train_segments", "test_segments"):
      values = getattr(self, field)
      if not values or len(set(values)) != len(values) or min(values) < 1:
        fail(field, "list distinct segment numbers >= 1 (seg1..18 / test1..5 in the release).")
    for field in ("train_repeats", "test_repeats"):
      value = getattr(self, field)
      if value is not None and (not isinstance(value, int) or value < 1):
        fail(field, "None (found in the release) or the number of repeats per segment (2 / 10).")
    if not isinstance(self.trs_per_run, int) or self.trs_per_run < 2:
      fail("trs_per_run", "the volumes kept per run, an integer >= 2 (240 for the release).")
    if not (isinstance(self.fps, (int, float)) and self.fps > 0) or abs(self.fps * TR_S - round(self.fps * TR_S)) > 1e-9:
      fail("fps", f"fps x {TR_S:g} s must be a positive whole number of frames per TR (3 fps -> 6 frames).")
    if isinstance(self.frame_size, bool) or not isinstance(self.frame_size, int) or self.frame_size < 1:
      fail("frame_size", "the square frame side in pixels, e.g. 256.")
    if self.detrend_order is not None and (not isinstance(self.detrend_order, int) or self.detrend_order < 0):
      fail("detrend_order", "None (no detrending) or the polynomial order (4 as the official code).")
    if self.zscore_ddof not in (0, 1):
      fail("zscore_ddof", "1 (MATLAB std, the official code) or 0 (numpy std, Mind-Animator).")
    if self.selection not in SELECTIONS:
      fail("selection", f"one of {SELECTIONS}.")
    if self.selection == "bonferroni" and not 0 < self.p_threshold <= 1:
      fail("p_threshold", "a Bonferroni-corrected p in (0, 1], e.g. 0.05 (NeuroClips) or 0.01 (Wen 2018).")
    if self.selection == "top_n" and (not isinstance(self.top_n, int) or self.top_n < 1):
      fail("top_n", "a positive number of vertices, e.g. 4500 (Mind-Animator).")
    if self.selection != "none" and len(self.train_segments) < 2:
      fail("train_segments", "the reproducibility t-test runs across training segments: give at least 2, or set "
           "selection='none'.")
    if self.alternative not in ("two-sided", "greater"):
      fail("alternative", "'two-sided' or 'greater'.")
    if self.label_keys and not self.labels_file:
      fail("label_keys", "labels come from labels_file; set it too, or leave label_keys empty.")


_CONFIG_FIELDS = ("subjects", "train_segments", "test_segments", "train_repeats", "test_repeats", "trs_per_run", "fps",
                  "frame_size", "detrend_order", "zscore", "zscore_ddof", "selection", "p_threshold", "top_n",
                  "alternative", "expected_grayordinates", "caption_file", "clip_boundaries_file", "labels_file",
                  "label_keys")


def cc2017_config(preset: str = "mindvideo", **overrides) -> Cc2017Config:
  """A preset with field overrides; the name records the overrides so different builds never share files."""
  name, fields, description = common.preset_with_overrides(Builder, "cc2017", preset, _CONFIG_FIELDS, overrides)
  return Cc2017Config(name=name, description=description, **fields)


# ----------------------------------------------------------------------------------------------------------------
# The release: files, checks, per-run reading


class Release:
  """The configured part of a cc2017 release, checked (files, repeats, videos, user files) before any build."""

  def __init__(self, root: epath.Path, config: Cc2017Config):
    self.root = root
    self.config = config
    self.stimuli = {split: [stimulus_name(split, k) for k in config.segments(split)] for split in ("train", "test")}
    self._check_files_exist()
    self.repeats = {split: self._find_repeats(split) for split in ("train", "test")}
    self._check_videos()
    self.captions = self._load_captions()
    self.clips = self._load_clip_boundaries()
    self.labels = self._load_labels()

  # -- files --

  def user_file(self, name: str) -> epath.Path:
    path = epath.Path(name)
    return path if (path.is_absolute() or "://" in name) else self.root / name

  def _check_files_exist(self) -> None:
    cfg = self.config
    expected = [video_path(self.root, s) for split in ("train", "test") for s in self.stimuli[split]]
    for split in ("train", "test"):
      repeats = cfg.expected_repeats(split) or 1
      expected += [run_path(self.root, subject, s, r) for subject in cfg.subjects for s in self.stimuli[split]
                   for r in range(1, repeats + 1)]
    expected += [self.user_file(f) for f in (cfg.caption_file, cfg.clip_boundaries_file, cfg.labels_file) if f]
    common.require_files(expected, DATASET, fix=(
        "manual_dir should hold the unzipped PURR release: stimuli/seg{k}.mp4, stimuli/test{k}.mp4 and "
        "subject{s}/fmri/{seg,test}{k}/cifti/{seg,test}{k}_{r}_Atlas.dtseries.nii (unzip each subject's inner "
        "bundle.zip too), plus the caption/clip/label files the config names."))

  def _repeats_on_disk(self, subject: int, stimulus: str) -> list[int]:
    pattern = re.compile(rf"^{stimulus}_(\d+)_Atlas\.dtseries\.nii$")
    folder = run_path(self.root, subject, stimulus, 1).parent
    found = sorted(int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name)))
    if found != list(range(1, len(found) + 1)):
      missing = sorted(set(range(1, max(found) + 1)) - set(found))
      raise common.ReleaseError(f"{DATASET}: {folder} has repeats {found}; repeat(s) {missing} are missing "
                                "(runs are numbered 1..R).")
    return found

  def _find_repeats(self, split: str) -> int:
    """R of the split; every subject and segment must have the same (records hold one R per split)."""
    counts = {(subject, s): len(self._repeats_on_disk(subject, s))
              for subject in self.config.subjects for s in self.stimuli[split]}
    expected = self.config.expected_repeats(split)
    values = set(counts.values()) if expected is None else set(counts.values()) | {expected}
    if len(values) > 1:
      shown = ", ".join(f"subject{subj}/{s}: {n}" for (subj, s), n in sorted(counts.items()))
      raise common.ReleaseError(
          f"{DATASET}: mismatched repeat counts in the {split} split ({shown})"
          + (f"; the config expects {expected}" if expected is not None else "")
          + ". Every subject and segment of a split must have the same number of repeats; move the extra runs "
          "out of the release (or restrict subjects/segments in the config).")
    return values.pop()

  def _check_videos(self) -> None:
    cfg = self.config
    last_needed = (cfg.trs_per_run * cfg.frames_per_tr - 1) / cfg.fps
    for split in ("train", "test"):
      for s in self.stimuli[split]:
        path = video_path(self.root, s)
        fps, count, _, _ = video.video_info(path)
        if count / fps <= last_needed:
          raise common.ReleaseError(f"{path}: {count} frames at {fps:g} fps ({count / fps:.2f} s) but "
                                    f"{cfg.trs_per_run} TRs of {TR_S:g} s need {cfg.trs_per_run * TR_S:g} s.")

  def _read_json(self, name: str, what: str) -> dict:
    path = self.user_file(name)
    try:
      value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
      raise common.ReleaseError(f"{path}: the {what} file is not valid JSON ({e}).") from e
    if not isinstance(value, dict):
      raise common.ReleaseError(f"{path}: the {what} file must hold a JSON object keyed by stimulus ('seg1', ...).")
    return value

  def _per_tr(self, name: str, what: str, entries: Any, stimulus: str, default: Any) -> list:
    """A per-TR list from {"tr": value} or [value, ...]."""
    n = self.config.trs_per_run
    out = [default] * n
    items = entries.items() if isinstance(entries, dict) else enumerate(entries)
    for key, value in items:
      try:
        t = int(key)
      except ValueError:
        raise common.ReleaseError(f"{self.user_file(name)}: {what} key {key!r} of {stimulus} is not a TR index.")
      if not 0 <= t < n:
        raise common.ReleaseError(f"{self.user_file(name)}: {what} for TR {t} of {stimulus}; TRs are 0..{n - 1} "
                                  "(indices of the trimmed run).")
      out[t] = value
    return out

  def _load_captions(self) -> dict[str, list[str]]:
    name = self.config.caption_file
    table = self._read_json(name, "caption") if name else {}
    return {s: [str(c) for c in self._per_tr(name, "caption", table.get(s, {}), s, "")]
            for split in ("train", "test") for s in self.stimuli[split]}

  def _load_clip_boundaries(self) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """{stimulus: (clip starts in s, clip ids)} or None without a clip-boundary file."""
    name = self.config.clip_boundaries_file
    if not name:
      return None
    table = self._read_json(name, "clip-boundary")
    out = {}
    for split in ("train", "test"):
      for number, s in zip(self.config.segments(split), self.stimuli[split]):
        entry = table.get(s)
        if entry is None:
          raise common.ReleaseError(f"{self.user_file(name)}: no clip boundaries for {s}; list the clip start "
                                    "times of every configured stimulus.")
        starts = np.asarray(entry["starts"] if isinstance(entry, dict) else entry, np.float64)
        if isinstance(entry, dict) and "ids" in entry:
          ids = np.asarray(entry["ids"], np.int64)
        else:
          ids = stimulus_code(split, number) * CLIPS_PER_STIMULUS + np.arange(len(starts), dtype=np.int64)
        if (starts.ndim != 1 or not len(starts) or starts[0] != 0 or np.any(np.diff(starts) <= 0)
            or len(ids) != len(starts) or len(starts) > CLIPS_PER_STIMULUS):
          raise common.ReleaseError(f"{self.user_file(name)}: clip boundaries of {s} must be increasing start "
                                    f"times starting at 0 (at most {CLIPS_PER_STIMULUS}), with one id per clip.")
        out[s] = (starts, ids)
    return out

  def _load_labels(self) -> dict[str, dict[str, list[int]]]:
    name = self.config.labels_file
    table = self._read_json(name, "labels") if name else {}
    out = {}
    for split in ("train", "test"):
      for s in self.stimuli[split]:
        entry = table.get(s, {})
        out[s] = {k: [int(v) for v in self._per_tr(name, f"label {k!r}", entry.get(k, {}), s, -1)]
                  for k in self.config.label_keys}
    return out

  # -- per TR --

  def tr_clips(self, stimulus: str) -> tuple[np.ndarray, np.ndarray]:
    """Per TR: clip_id of the clip shown at the TR's first frame, and whether its frames show several clips."""
    cfg = self.config
    n, per_tr = cfg.trs_per_run, cfg.frames_per_tr
    if self.clips is None:
      split = "test" if stimulus.startswith("test") else "train"
      code = stimulus_code(split, int(stimulus[len(SPLIT_PREFIX[split]):]))
      return code * CLIPS_PER_STIMULUS + np.arange(n, dtype=np.int64), np.zeros(n, bool)
    starts, ids = self.clips[stimulus]
    # the times of the stored frames, frame f of the movie at f / fps (as brainjax.data.video samples them)
    times = np.arange(n * per_tr) / cfg.fps
    clip_of_frame = (np.searchsorted(starts, times, side="right") - 1).reshape(n, per_tr)
    return ids[clip_of_frame[:, 0]], clip_of_frame.min(axis=1) != clip_of_frame.max(axis=1)

  # -- fMRI --

  def read_run(self, subject: int, stimulus: str, repeat: int) -> tuple[np.ndarray, Any]:
    """float32[trs_per_run, cortex V] of one run (trimmed by its length; NaN/Inf fail) and its brain-model axis."""
    path = run_path(self.root, subject, stimulus, repeat)
    img = cifti.load_cifti(path)
    models = cifti.brain_models(img, str(path))
    cifti.check_grayordinates(len(models), self.config.expected_grayordinates, str(path))
    cortex = cifti.cortex_indices(models)
    if not len(cortex):
      raise common.ReleaseError(f"{path}: no cortical surface grayordinates (CIFTI_STRUCTURE_CORTEX_LEFT/RIGHT).")
    data = cifti.series(img, str(path), columns=cortex)
    data = common.require_finite(data[kept_volumes(len(data), self.config.trs_per_run, str(path))], str(path))
    return data, models

  def preprocess(self, run: np.ndarray) -> np.ndarray:
    cfg = self.config
    return preprocess.preprocess_run(run, detrend_order=cfg.detrend_order,
                                     zscore_ddof=cfg.zscore_ddof if cfg.zscore else None)

  def segment_runs(self, subject: int, split: str, stimulus: str) -> tuple[np.ndarray, Any]:
    """float64[R, T, cortex V] preprocessed runs of one segment, and the subject's brain-model axis."""
    runs, models = [], None
    for r in range(1, self.repeats[split] + 1):
      data, run_models = self.read_run(subject, stimulus, r)
      if models is not None and run_models != models:
        raise common.ReleaseError(f"{run_path(self.root, subject, stimulus, r)}: its grayordinates differ from "
                                  f"repeat 1 of {stimulus}; all runs of a subject must share one brain model.")
      models = run_models
      runs.append(self.preprocess(data))
    return np.stack(runs), models


class SubjectVoxels:
  """A subject's selected cortex vertices and where they are in the release's grayordinate order."""

  def __init__(self, subject: int, models, selected: np.ndarray, stats: preprocess.Reproducibility | None):
    self.subject = subject
    self.models = models
    self.cortex = cifti.cortex_indices(models)
    self.selected = np.asarray(selected, np.int64)   # indices into the cortex columns
    self.grayordinates = self.cortex[self.selected]  # indices into the file's grayordinate axis
    self.stats = stats

  def structures_and_vertices(self) -> tuple[np.ndarray, np.ndarray]:
    """The CIFTI structure name and mesh vertex of every selected column (robust to other grayordinate orders)."""
    return np.asarray(self.models.name)[self.grayordinates], np.asarray(self.models.vertex)[self.grayordinates]

  def save(self, path: epath.Path) -> None:
    structure, vertex = self.structures_and_vertices()
    arrays = {"grayordinates": self.grayordinates, "cortex_index": self.selected, "structure": structure.astype(str),
              "vertex": vertex}
    if self.stats is not None:
      arrays.update(mean_z=self.stats.mean_z[self.selected], t=self.stats.t[self.selected],
                    p_bonferroni=self.stats.p_bonferroni[self.selected])
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def select_subject_voxels(release: Release, subject: int) -> SubjectVoxels:
  """The subject's voxels by test-retest reproducibility of the TRAINING runs (the test runs are never read here)."""
  cfg = release.config
  if cfg.selection != "none" and release.repeats["train"] < 2:
    raise common.ReleaseError(f"{DATASET}: the training segments have {release.repeats['train']} repeat(s); "
                              "reproducibility selection needs 2 or more (or set selection='none').")
  z, models = [], None
  for s in release.stimuli["train"]:
    runs, models = release.segment_runs(subject, "train", s)
    if cfg.selection != "none":
      z.append(preprocess.segment_fisher_z(runs))
  if cfg.selection == "none":
    return SubjectVoxels(subject, models, np.arange(len(cifti.cortex_indices(models))), None)
  stats = preprocess.reproducibility(np.stack(z), cfg.alternative)
  if cfg.selection == "bonferroni":
    selected = preprocess.select_reproducible(stats, p_threshold=cfg.p_threshold)
  else:
    selected = preprocess.select_reproducible(stats, top_n=cfg.top_n)
  if not len(selected):
    raise common.ReleaseError(f"{DATASET}: subject{subject}: no vertex passes Bonferroni p < {cfg.p_threshold}; "
                              "the training runs show no test-retest reproducibility (wrong files?) or the "
                              "threshold is too strict for this many segments.")
  return SubjectVoxels(subject, models, selected, stats)


# ----------------------------------------------------------------------------------------------------------------
# Builder


class Builder(tfds.core.GeneratorBasedBuilder):
  """brainjax_cc2017: Wen 2018's movie fMRI (3 subjects, 18 training + 5 test 8-min segments)."""

  name = "brainjax_cc2017"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the cc2017 release from PURR (CC0): the stimuli (publication 2808) and subject1..3 (publication 2809;
  each zip holds a bundle.zip to unzip again), and unzip them so that manual_dir (local or gs://) holds
    stimuli/seg1.mp4 ... seg18.mp4, test1.mp4 ... test5.mp4
    subject1/fmri/seg1/cifti/seg1_1_Atlas.dtseries.nii ... subject3/fmri/test5/cifti/test5_10_Atlas.dtseries.nii
  Optionally add a caption JSON ({"seg1": {"0": "caption", ...}}), a clip-boundary JSON ({"seg1": [0.0, 4.2, ...]})
  and name them in the config (caption_file, clip_boundaries_file).
  """
  BUILDER_CONFIGS = [
      Cc2017Config(name="mindvideo", description=(
          "MinD-Video: 3 fps 256x256 frames; Bonferroni p < 0.05 reproducibility selection (MinD-Video's own "
          "selection is not published; this is NeuroClips' rule on Wen's preprocessing).")),
      Cc2017Config(name="neuroclips", fps=3, frame_size=256, selection="bonferroni", p_threshold=0.05,
                   description="NeuroClips: Wen's preprocessing, Bonferroni p < 0.05 (13447/14828/9114 vertices)."),
      Cc2017Config(name="wen2018", fps=3, frame_size=256, selection="bonferroni", p_threshold=0.01,
                   description="Wen et al. 2018: Bonferroni p < 0.01."),
      Cc2017Config(name="mind_animator", fps=4, frame_size=512, selection="top_n", top_n=4500, zscore_ddof=0,
                   description="Mind-Animator: the 4500 most reproducible vertices, 8 frames per 2-s clip, 512 px."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return common.DatasetInfo(
        builder=self,
        description=__doc__,
        features=common.record_features(layout="shared", voxels=[0] * len(cfg.subjects), frame_size=cfg.frame_size,
                                        label_keys=cfg.label_keys),
        metadata=tfds.core.MetadataDict(),
        # Record order carries meaning (segment, TR): the pipeline finds a TR's neighbours by index.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    root = common.manual_path(dl_manager.manual_dir, DATASET, "stimuli/ and subject{1,2,3}/ of the PURR release")
    release = Release(root, cfg)
    voxels = []
    for subject in cfg.subjects:
      logging.info("%s: subject%d: reading training runs for voxel selection", DATASET, subject)
      voxels.append(select_subject_voxels(release, subject))
      self._check_test_runs(release, subject)
    out_dir = epath.Path(self.data_dir)
    for v in voxels:
      v.save(out_dir / f"subject{v.subject}_voxels.npz")
    self.info.metadata.update(self._metadata(release, voxels))
    return {split: self._generate_examples(release, voxels, split) for split in ("train", "test")}

  @staticmethod
  def _check_test_runs(release: Release, subject: int) -> None:
    """Every test run readable, of a valid length and finite, before anything is written."""
    for s in release.stimuli["test"]:
      for r in range(1, release.repeats["test"] + 1):
        release.read_run(subject, s, r)

  def _metadata(self, release: Release, voxels: Sequence[SubjectVoxels]) -> dict:
    cfg = self.builder_config
    subjects = [{"name": f"subject{v.subject}", "num_voxels": int(len(v.selected)),
                 "num_cortex_vertices": int(len(v.cortex)), "voxel_file": f"subject{v.subject}_voxels.npz"}
                for v in voxels]
    return common.dataset_metadata(
        layout="shared", response="bold", tr_s=TR_S, subjects=subjects,
        segment_trs={split: [cfg.trs_per_run] * len(release.stimuli[split]) for split in ("train", "test")},
        repeats=dict(release.repeats), label_keys=cfg.label_keys,
        stimuli=release.stimuli, fps=float(cfg.fps), frame_size=cfg.frame_size, frames_per_tr=cfg.frames_per_tr,
        selected_grayordinates={f"subject_{k}": v.grayordinates.tolist() for k, v in enumerate(voxels)},
        preprocessing={"detrend_order": cfg.detrend_order, "zscore": cfg.zscore, "zscore_ddof": cfg.zscore_ddof,
                       "selection": cfg.selection, "p_threshold": cfg.p_threshold, "top_n": cfg.top_n,
                       "alternative": cfg.alternative, "selection_statistics": "train split only"},
        volume_time="record t holds the trimmed volume t (movie time 2t s); unshifted",
        clip_ids="from the clip-boundary file" if release.clips is not None else "stimulus * 1000 + TR",
    )

  def _generate_examples(self, release: Release, voxels: Sequence[SubjectVoxels], split: str
                         ) -> Iterator[tuple[str, dict]]:
    cfg = self.builder_config
    for segment, stimulus in enumerate(release.stimuli[split]):
      fmri = {}
      for k, v in enumerate(voxels):
        runs, _ = release.segment_runs(v.subject, split, stimulus)
        fmri[f"subject_{k}"] = runs[:, :, v.selected].astype(np.float32)
      frames = video.read_video(video_path(release.root, stimulus), fps=cfg.fps, size=cfg.frame_size,
                                duration_s=cfg.trs_per_run * TR_S)
      clip_ids, cuts = release.tr_clips(stimulus)
      captions, labels, per_tr = release.captions[stimulus], release.labels[stimulus], cfg.frames_per_tr
      for t in range(cfg.trs_per_run):
        yield f"{split}-{stimulus}-tr{t:04d}", {
            "segment": np.int32(segment),
            "tr": np.int32(t),
            "frames": frames[t * per_tr:(t + 1) * per_tr],
            "caption": captions[t],
            "clip_id": np.int64(clip_ids[t]),
            "scene_cut": bool(cuts[t]),
            "labels": {k: np.int32(values[t]) for k, values in labels.items()},
            "fmri": {key: value[:, t] for key, value in fmri.items()},
        }

