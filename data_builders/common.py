"""What every brainjax dataset builder writes, and the helpers they share.

The record contract (read by `brainjax.data.pipeline`; the synthetic benchmark
follows it too, so real and simulated data take one path):

Records are *stimulus TRs* (or, for beta datasets, one record per stimulus
trial) in generation order, grouped into segments: a segment is a run of
consecutive TRs (a cc2017 movie segment, an HCP run, a CineBrain episode) or a
single trial (BOLD Moments, HAD). Every record carries

  segment    int32   index of its segment within the split
  tr         int32   index of the TR within the segment (0 for a trial)
  frames     uint8[T, H, W, 3]   frames shown during the TR/trial (T may be 0: rest)
  caption    str     '' when the dataset has none
  clip_id    int64   the stimulus clip (-1: none)
  scene_cut  bool    the TR spans a boundary between two clips
  labels     {name: int32}   the dataset's `label_keys` (may be empty)
  fmri       the responses, in one of two layouts (metadata['layout']):
     'shared'       {f"subject_{k}": float32[R, V_k]}: every subject saw the
                    same stimuli (cc2017, BOLD Moments); R repeats (R may be 0
                    for a subject who has no response to this record).
     'per_subject'  float32[R, V], with an extra `subject: int32` field: each
                    segment belongs to one subject (HCP, HAD, CineBrain).

Responses are stored *unshifted* (the volume acquired at that TR), z-scored as
the dataset's reference preprocessing does; the hemodynamic shift, windowing,
repeat averaging and voxel padding are the pipeline's job, so one build serves
every window/shift ablation.

Metadata (`builder.info.metadata`, JSON) holds at least

  layout        'shared' | 'per_subject'
  response      'bold' (a TR time series) | 'beta' (one estimate per trial:
                the pipeline then uses window 1 and no shift)
  tr_s          seconds per TR (per trial for beta datasets)
  subjects      [{"name": str, "num_voxels": int, ...}]   index = subject id
  segment_trs   {split: [TRs of each segment]}
  segment_subjects  {split: [subject of each segment]}    ('per_subject' only)
  repeats       {split: R}
  label_keys    [str]
  num_records   {split: int}

and optionally

  missing_repeats  {split: {str(subject): [[record, repeat], ...]}}: responses a subject does not have (a
                repeat not seen: a NaN row; repeat -1: the whole record, R = 0). The pipeline averages the
                present repeats only and skips missing ones; a NaN anywhere else is an error.

Metadata known only while building (voxel counts after selection, run
lengths) is set on `self.info.metadata` inside `_split_generators`; TFDS
writes it with the dataset.

Builders never write a half-finished dataset that looks complete: TFDS writes
into a temporary directory and renames it when the split files are done; the
builders check the release *before* writing anything (`check_release`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from brainjax.data.errors import ReleaseError  # noqa: F401 -- raised here, re-exported for the builders

LAYOUTS = ("shared", "per_subject")
RESPONSES = ("bold", "beta")


class DatasetInfo(tfds.core.DatasetInfo):
  """tfds.core.DatasetInfo for datasets TFDS's public GCS bucket does not hold: every brainjax dataset.

  A builder whose dataset is not built yet asks that bucket for precomputed info. tensorflow_datasets makes
  a temporary directory for the answer before it asks and never removes it (DatasetInfo.
  initialize_from_bucket): one empty /tmp/tmp*tfds per builder, hundreds over a test run. There is nothing
  to fetch for these datasets, so the lookup is skipped.
  """

  def initialize_from_bucket(self) -> None:
    pass


def manual_path(manual_dir: str | epath.PathLike | None, dataset: str, expected: str) -> epath.Path:
  """The user's copy of the release (local or gs://), checked to exist.

  `expected` describes what the folder should contain, for the error message.
  """
  if not manual_dir:
    raise ReleaseError(
        f"{dataset}: no manual_dir given. Download the release yourself and pass its folder with "
        f"--manual_dir=PATH (local or gs://); it should contain {expected}.")
  path = epath.Path(manual_dir)
  if not path.exists():
    raise ReleaseError(f"{dataset}: manual_dir {path} does not exist; it should contain {expected}.")
  return path


def require_files(paths: Iterable[epath.Path], dataset: str, fix: str = "") -> None:
  """Fails naming every missing file (not just the first), before anything is written."""
  missing = [str(p) for p in paths if not p.exists()]
  if missing:
    shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
    raise ReleaseError(f"{dataset}: {len(missing)} expected file(s) are missing from the release:\n  {shown}"
                       + (f"\n{fix}" if fix else ""))


def require_finite(array: np.ndarray, what: str) -> np.ndarray:
  """NaN/Inf in a response array is an error naming the file (callers decide what NaN means first)."""
  bad = ~np.isfinite(array)
  if bad.any():
    where = np.argwhere(bad)[0].tolist()
    raise ReleaseError(f"{what}: {int(bad.sum())} NaN/Inf values (first at index {where}); "
                       "the file is corrupt or was exported incompletely; re-download it.")
  return array


def record_features(*, layout: str, voxels: Sequence[int], frame_size: int | None,
                    label_keys: Sequence[str] = (), extra: Mapping[str, Any] | None = None) -> tfds.features.FeaturesDict:
  """The TFDS features of the record contract above.

  voxels: V_k per subject ('shared') or [V] once ('per_subject'); 0 = known only at build time.
  frame_size: the square frame side (None: no frames, e.g. resting state).
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r}: one of {LAYOUTS}")
  size = frame_size if frame_size else 1
  features: dict[str, Any] = {
      "segment": np.int32,
      "tr": np.int32,
      "frames": tfds.features.Tensor(shape=(None, size, size, 3), dtype=np.uint8,
                                     encoding=tfds.features.Encoding.ZLIB),
      "caption": tfds.features.Text(),
      "clip_id": np.int64,
      "scene_cut": np.bool_,
      "labels": tfds.features.FeaturesDict({k: np.int32 for k in label_keys}),
  }
  if layout == "shared":
    features["fmri"] = tfds.features.FeaturesDict({
        f"subject_{k}": tfds.features.Tensor(shape=(None, v or None), dtype=np.float32,
                                             encoding=tfds.features.Encoding.BYTES)
        for k, v in enumerate(voxels)})
  else:
    v = voxels[0] if voxels and voxels[0] else None
    features["fmri"] = tfds.features.Tensor(shape=(None, v), dtype=np.float32, encoding=tfds.features.Encoding.BYTES)
    features["subject"] = np.int32
  features.update(extra or {})
  return tfds.features.FeaturesDict(features)


def empty_frames(frame_size: int | None) -> np.ndarray:
  """The `frames` value of a record without a stimulus."""
  size = frame_size if frame_size else 1
  return np.zeros((0, size, size, 3), np.uint8)


def dataset_metadata(*, layout: str, response: str, tr_s: float, subjects: Sequence[Mapping[str, Any]],
                     segment_trs: Mapping[str, Sequence[int]], repeats: Mapping[str, int],
                     label_keys: Sequence[str] = (), segment_subjects: Mapping[str, Sequence[int]] | None = None,
                     **extra: Any) -> dict:
  """The metadata dict of the contract above, checked for consistency."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r}: one of {LAYOUTS}")
  if response not in RESPONSES:
    raise ValueError(f"response {response!r}: one of {RESPONSES}")
  if layout == "per_subject":
    if segment_subjects is None:
      raise ValueError("a per_subject dataset must list segment_subjects")
    for split, lengths in segment_trs.items():
      if len(segment_subjects.get(split, ())) != len(lengths):
        raise ValueError(f"{split}: {len(lengths)} segments but {len(segment_subjects.get(split, ()))} subjects")
  if response == "beta" and any(n != 1 for lengths in segment_trs.values() for n in lengths):
    raise ValueError("a beta dataset has one record per trial: every segment is 1 long")
  meta = {
      "layout": layout, "response": response, "tr_s": float(tr_s),
      "subjects": [dict(s) for s in subjects],
      "segment_trs": {k: [int(n) for n in v] for k, v in segment_trs.items()},
      "repeats": {k: int(v) for k, v in repeats.items()},
      "label_keys": list(label_keys),
      "num_records": {k: int(sum(v)) for k, v in segment_trs.items()},
  }
  if segment_subjects is not None:
    meta["segment_subjects"] = {k: [int(s) for s in v] for k, v in segment_subjects.items()}
  meta.update(extra)
  return meta


def preset_with_overrides(builder_cls, dataset: str, preset: str, field_names: Sequence[str],
                          overrides: Mapping[str, Any]) -> tuple[str, dict, str]:
  """(name, fields, description) of a builder preset with some fields overridden.

  The name records the overrides (`<preset>_<digest>`), so builds with different options never share files.
  """
  base = {c.name: c for c in builder_cls.BUILDER_CONFIGS}
  if preset not in base:
    raise ValueError(f"{dataset} preset {preset!r}: one of {sorted(base)}.")
  fields = {k: getattr(base[preset], k) for k in field_names}
  unknown = set(overrides) - set(fields)
  if unknown:
    raise ValueError(f"{dataset} config has no field(s) {sorted(unknown)}; fields: {sorted(fields)}.")
  fields.update(overrides)
  digest = hashlib.sha1(json.dumps(dict(overrides), sort_keys=True, default=str).encode()).hexdigest()[:8]
  return (preset if not overrides else f"{preset}_{digest}"), fields, base[preset].description


class OptionsConfig(tfds.core.BuilderConfig):
  """A builder config holding a frozen options dataclass: `SubClass(name=..., **option fields)`.

  Subclasses set OPTIONS (the dataclass) and may override `validate(options)`; list values become tuples
  (so configs from JSON/command lines hash and compare like the presets).
  """
  OPTIONS: type

  def __init__(self, *, name: str, description: str = "", **options):
    super().__init__(name=name, description=description or name)
    what = type(self).__name__
    try:
      self.options = self.OPTIONS(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    except TypeError as e:
      raise ValueError(f"{what} {name!r}: {e}; the options are the fields of {self.OPTIONS.__name__}.") from e
    self.validate(self.options)

  def validate(self, options) -> None:
    """Raises ValueError naming the bad option and its fix."""
