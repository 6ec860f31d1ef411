"""Per-subject HCP resting-state preprocessing, run in worker processes and cached per subject.

A subject's work: read each rfMRI run (a 1200 x 91282 dtseries, ~438 MB), keep
the visual-ROI grayordinates through the Glasser atlas, z-score every kept
grayordinate over the run's time points (what `hcp_utils.normalize` does in the
reconstruction of MinD-Vis's npz script, datasets.md §2.2), and store the runs
as float32 [T, V] in `<cache_dir>/<subject>.npz`, then a `<subject>.json`
summary. The summary is the completion mark: both files are written to a
temporary name and renamed, json last, so an interrupted build leaves either a
complete cache entry or stray temporaries that are never trusted (the subject is
redone). All I/O goes through epath, so the release and the cache may be on gs://.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import uuid
from collections.abc import Sequence

import numpy as np
from etils import epath

from brainjax.data import cifti
from data_builders.common import ReleaseError, require_finite

CACHE_FORMAT = 1  # bump when the cached arrays change meaning


@dataclasses.dataclass(frozen=True)
class SubjectJob:
  """What one worker needs: the subject's run files, where to cache, and how to select and normalise."""

  subject: str
  runs: tuple[tuple[str, str], ...]  # (run name, dtseries path), in segment order
  cache_dir: str
  rois: tuple[str, ...]
  hemisphere: str
  expected_grayordinates: tuple[int, ...] | None
  expected_timepoints: int | None


@dataclasses.dataclass(frozen=True)
class SubjectSummary:
  """A cached subject, as the builder's metadata needs it (no arrays)."""

  subject: str
  runs: tuple[str, ...]
  run_trs: tuple[int, ...]
  num_voxels: int
  roi_sizes: dict
  tr_s: float
  from_cache: bool = False

  def to_json(self) -> str:
    d = dataclasses.asdict(self)
    d.pop("from_cache")
    return json.dumps({"format": CACHE_FORMAT, **d})

  @classmethod
  def from_json(cls, text: str) -> "SubjectSummary":
    d = json.loads(text)
    if d.pop("format", None) != CACHE_FORMAT:
      raise ValueError("old cache format")
    return cls(subject=d["subject"], runs=tuple(d["runs"]), run_trs=tuple(d["run_trs"]),
               num_voxels=int(d["num_voxels"]), roi_sizes=dict(d["roi_sizes"]), tr_s=float(d["tr_s"]),
               from_cache=True)


def cache_paths(cache_dir: str | os.PathLike, subject: str) -> tuple[epath.Path, epath.Path]:
  """(arrays .npz, summary .json) of a subject's cache entry."""
  base = epath.Path(cache_dir)
  return base / f"{subject}.npz", base / f"{subject}.json"


def cached_summary(cache_dir: str | os.PathLike, subject: str) -> SubjectSummary | None:
  """The subject's summary if its cache entry is complete (npz and json both renamed into place), else None."""
  npz, summary = cache_paths(cache_dir, subject)
  if not (npz.exists() and summary.exists()):
    return None
  try:
    return SubjectSummary.from_json(summary.read_text())
  except (ValueError, KeyError, TypeError):
    return None  # unreadable or from an older format: redo the subject


def zscore_columns(x: np.ndarray) -> np.ndarray:
  """Each column to zero mean and unit (population, ddof=0) std over time, as hcp_utils.normalize.

  A constant column (no signal, e.g. a vertex outside the subject's brain mask)
  becomes 0 instead of NaN, so one dead vertex does not poison every window.
  """
  x = x.astype(np.float64)
  mean = x.mean(axis=0)
  std = x.std(axis=0)
  out = (x - mean) / np.where(std > 0, std, 1.0)
  out[:, std == 0] = 0.0
  return out.astype(np.float32)


def read_run(path: str, job: SubjectJob, atlas: cifti.GlasserAtlas) -> tuple[np.ndarray, dict, float]:
  """One run: (z-scored ROI series float32 [T, V] in ROI order, {roi: columns}, seconds per TR)."""
  img = cifti.load_cifti(path)
  bm = cifti.brain_models(img, path)
  cifti.check_grayordinates(len(bm), job.expected_grayordinates, path)
  columns = atlas.roi_columns(bm, job.rois, job.hemisphere, order="roi")
  if len(columns) == 0:
    raise ReleaseError(f"{path}: none of the ROIs {list(job.rois)} has a grayordinate in this file; is the atlas "
                       "on the same fsLR-32k mesh as the data?")
  x = cifti.series(img, path, columns=columns)
  if job.expected_timepoints is not None and x.shape[0] != job.expected_timepoints:
    raise ReleaseError(f"{path}: {x.shape[0]} time points, expected {job.expected_timepoints} "
                       "(HCP rfMRI runs have 1200); set expected_timepoints=None to accept any length.")
  if x.shape[0] < 2:
    raise ReleaseError(f"{path}: {x.shape[0]} time point(s); a run needs at least 2 to be z-scored.")
  require_finite(x, path)
  sizes = atlas.roi_sizes(bm, job.rois, job.hemisphere)
  return zscore_columns(x), sizes, cifti.series_step(img)


def _write_atomically(path: epath.Path, data: bytes) -> None:
  """Write to a unique temporary name next to `path`, then move it into place: readers never see a partial file."""
  tmp = path.parent / f"{path.name}.tmp-{uuid.uuid4().hex[:8]}"
  tmp.write_bytes(data)
  tmp.replace(path)  # replace, not rename: an untrusted leftover (npz without json) may be there


def finished(job: SubjectJob) -> SubjectSummary | None:
  """The job's cache entry if it is complete and holds exactly the job's runs (a changed run list redoes it)."""
  done = cached_summary(job.cache_dir, job.subject)
  if done is None or done.runs != tuple(run for run, _ in job.runs):
    return None
  return done


def process_subject(job: SubjectJob, atlas: cifti.GlasserAtlas) -> SubjectSummary:
  """Preprocesses one subject into its cache entry (or returns the finished entry's summary)."""
  done = finished(job)
  if done is not None:
    return done
  arrays, names, lengths, tr_s, sizes = {}, [], [], None, None
  for i, (run, path) in enumerate(job.runs):
    x, run_sizes, step = read_run(path, job, atlas)
    if sizes is not None and (run_sizes != sizes or x.shape[1] != arrays["run_0"].shape[1]):
      raise ReleaseError(f"{path}: ROI sizes {run_sizes} differ from the subject's first run {sizes}; the runs of "
                         f"subject {job.subject} are on different grayordinate axes.")
    sizes, tr_s = run_sizes, step if tr_s is None else tr_s
    arrays[f"run_{i}"] = x
    names.append(run)
    lengths.append(int(x.shape[0]))
  npz_path, json_path = cache_paths(job.cache_dir, job.subject)
  npz_path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  _write_atomically(npz_path, buffer.getvalue())
  summary = SubjectSummary(subject=job.subject, runs=tuple(names), run_trs=tuple(lengths),
                           num_voxels=int(arrays["run_0"].shape[1]), roi_sizes=sizes, tr_s=float(tr_s))
  _write_atomically(json_path, summary.to_json().encode())
  return summary


def load_runs(cache_dir: str | os.PathLike, summary: SubjectSummary):
  """Yields (run name, float32 [T, V]) of a cached subject, one run at a time."""
  npz_path, _ = cache_paths(cache_dir, summary.subject)
  try:
    with npz_path.open("rb") as f:
      data = np.load(io.BytesIO(f.read()), allow_pickle=False)
      for i, run in enumerate(summary.runs):
        yield run, data[f"run_{i}"]
  except (OSError, ValueError, KeyError) as e:
    raise ReleaseError(f"{npz_path}: unreadable cache entry ({e}); delete it (and {summary.subject}.json) "
                       "and build again.") from e


# ----------------------------------------------------------------------------------------------------------------
# Finding subjects and runs


def find_subjects(root: epath.Path, pattern: str) -> list[str]:
  """Subject folders of the release: directories whose name matches `pattern` (HCP ids are 6 digits), sorted."""
  regex = re.compile(pattern)
  return sorted(p.name for p in root.iterdir() if p.is_dir() and regex.fullmatch(p.name))


def run_path(root: epath.Path, file_pattern: str, subject: str, run: str) -> epath.Path:
  return root / file_pattern.format(subject=subject, run=run)


def plan_subjects(root: epath.Path, subjects: Sequence[str], runs: Sequence[str], file_pattern: str,
                  ) -> tuple[dict[str, list[tuple[str, str]]], dict[str, list[str]]]:
  """({subject: [(run, path) found]}, {subject: [missing run files]})."""
  found, missing = {}, {}
  for subject in subjects:
    have, lack = [], []
    for run in runs:
      path = run_path(root, file_pattern, subject, run)
      (have if path.exists() else lack).append((run, os.fspath(path)))
    found[subject] = have
    if lack:
      missing[subject] = [p for _, p in lack]
  return found, missing
