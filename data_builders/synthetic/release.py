"""The synthetic benchmark written as a miniature cc2017 release: one path for real and simulated data.

`write_release(spec, root)` writes what `brainjax.data.synthetic.iter_records(spec, split)` generates in the
on-disk format of Wen et al.'s PURR release (datasets.md §1.2), and `builder_config(spec)` is the
`data_builders.cc2017` config that reads it back into the same records as `data_builders.synthetic`:

  stimuli/seg{k}.mp4, stimuli/test{k}.mp4     the rendered segment, spec.fps, spec.resolution², lossless H.264
                                              (libx264rgb, qp 0: frames come back bit-exactly)
  subject{s}/fmri/{seg,test}{k}/cifti/{seg,test}{k}_{r}_Atlas.dtseries.nii
      [dummies + segment_trs + 4 dummies, V_s + 2] float32 CIFTI dtseries, TR 2 s: the simulated run of repeat r
      between dummy volumes laid out as the real runs are (1 leading dummy for seg*/test1 -> 245-style length,
      2 for test2.. -> 246-style; 4 trailing), so the builder's trim-by-length rule is exercised; the brain model
      is a tiny fsLR-like cortex (voxels split over left and right hemisphere meshes, in voxel order) plus two
      subcortical voxels that the builder's cortex selection must drop
  captions.json, clip_boundaries.json, labels.json   the user files the cc2017 builder reads (its docstring):
      per-TR captions, clip start times with the simulator's clip ids, per-TR labels.

Preprocessing choice: the simulator's runs are already z-scored per voxel (numpy std, no detrending) and the
selection of voxels is part of the simulator (its noise voxels are known), so `builder_config` turns the cc2017
builder's detrend, z-score and voxel selection off; the round trip then checks every I/O step exactly (files,
trimming, orientation, cortex columns, repeats, frames, captions, clip ids, cuts, labels) with equality, not a
tolerance, while the preprocessing itself is checked against scipy/numpy in tests/data/test_preprocess.py. (Writing data
that survive detrending would mean changing the simulated signal, which would no longer be the benchmark.)

Not carried over: the `rest` split (cc2017 has no resting-state runs).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np
from etils import epath
from nibabel import cifti2 as ci

from brainjax.data import synthetic, video

SUBCORTICAL_VOXELS = 2
TRAILING_DUMMIES = 4  # as the real runs: the official code drops the last 4 volumes


def leading_dummies(split: str, number: int) -> int:
  """1 for seg* and test1 (245-volume runs), 2 for test2.. (246-volume runs)."""
  return 2 if (split == "test" and number >= 2) else 1


def brain_models(num_voxels: int) -> ci.BrainModelAxis:
  """Cortex: the first ceil(V/2) voxels on the left mesh, the rest on the right, in voxel order; + 2 subcortical."""
  left = (num_voxels + 1) // 2
  right = num_voxels - left
  mask = np.zeros((2, 2, 2), bool)
  mask.flat[:SUBCORTICAL_VOXELS] = True
  return (ci.BrainModelAxis.from_surface(np.arange(left), num_voxels, "CortexLeft")
          + ci.BrainModelAxis.from_surface(np.arange(right), num_voxels, "CortexRight")
          + ci.BrainModelAxis.from_mask(mask, name="ThalamusLeft", affine=np.diag([2.0, 2.0, 2.0, 1.0])))


def _write_dtseries(path: epath.Path, data: np.ndarray, models: ci.BrainModelAxis, tr_s: float) -> None:
  img = ci.Cifti2Image(np.asarray(data, np.float32),
                       header=ci.Cifti2Header.from_axes((ci.SeriesAxis(0.0, tr_s, data.shape[0], "SECOND"), models)))
  img.nifti_header.set_intent("ConnDenseSeries")
  path.parent.mkdir(parents=True, exist_ok=True)
  if "://" in os.fspath(path):
    path.write_bytes(img.to_bytes())
  else:
    img.to_filename(os.fspath(path))


def _padded_run(run: np.ndarray, lead: int, rng: np.random.Generator, extra_columns: int) -> np.ndarray:
  """[lead + T + 4, V + extra]: dummy volumes (noise, to be trimmed) around the run, extra (subcortical) columns."""
  volumes = lead + run.shape[0] + TRAILING_DUMMIES
  out = rng.normal(size=(volumes, run.shape[1] + extra_columns)).astype(np.float32)
  out[lead:lead + run.shape[0], :run.shape[1]] = run
  return out


def _segments(spec: synthetic.SyntheticSpec, split: str):
  """Per segment: (number, frames, fmri {subject_k: [R, T, V]}, captions, labels) from iter_records."""
  current, rows = None, []
  for _, record in synthetic.iter_records(spec, split):
    if current is not None and record["segment"] != current:
      yield _collect(current, rows)
      rows = []
    current = int(record["segment"])
    rows.append(record)
  if rows:
    yield _collect(current, rows)


def _collect(segment: int, rows: list[dict]):
  frames = np.concatenate([r["frames"] for r in rows])
  fmri = {k: np.stack([r["fmri"][k] for r in rows], axis=1) for k in rows[0]["fmri"]}
  captions = [r["caption"] for r in rows]
  labels = {k: [int(r["labels"][k]) for r in rows] for k in rows[0]["labels"]}
  return segment + 1, frames, fmri, captions, labels


def write_release(spec: synthetic.SyntheticSpec, root: str | os.PathLike, *, seed: int = 0) -> epath.Path:
  """Writes the spec's train and test splits as a cc2017-format release under `root` (local or gs://)."""
  if abs(spec.tr_s - 2.0) > 1e-9:
    raise ValueError(f"SyntheticSpec.tr_s = {spec.tr_s}: the cc2017 format has a TR of 2 s; use tr_s=2.0.")
  root = epath.Path(root)
  rng = np.random.default_rng(seed)
  models = [brain_models(v) for v in spec.voxels_per_subject]
  captions, clips, labels = {}, {}, defaultdict(dict)
  for split, prefix in (("train", "seg"), ("test", "test")):
    for number, frames, fmri, tr_captions, tr_labels in _segments(spec, split):
      stimulus = f"{prefix}{number}"
      video.write_mp4(root / "stimuli" / f"{stimulus}.mp4", frames, spec.fps)
      lead = leading_dummies(split, number)
      for k, responses in enumerate(fmri.values()):
        for r, run in enumerate(responses, 1):
          path = root / f"subject{k + 1}" / "fmri" / stimulus / "cifti" / f"{stimulus}_{r}_Atlas.dtseries.nii"
          _write_dtseries(path, _padded_run(run, lead, rng, SUBCORTICAL_VOXELS), models[k], spec.tr_s)
      captions[stimulus] = tr_captions
      segment_clips = synthetic.make_segment_clips(spec, split, number - 1)
      clips[stimulus] = {"starts": [c.start_s for c in segment_clips], "ids": [c.clip_id for c in segment_clips]}
      labels[stimulus] = tr_labels
  (root / "captions.json").write_text(json.dumps(captions))
  (root / "clip_boundaries.json").write_text(json.dumps(clips))
  (root / "labels.json").write_text(json.dumps(labels))
  return root


def builder_config(spec: synthetic.SyntheticSpec, name: str | None = None, **overrides):
  """The cc2017 builder config that reads `write_release(spec, ...)` back into the synthetic builder's records."""
  from data_builders import cc2017  # noqa: PLC0415 -- a real builder: imported when asked

  fields = dict(
      subjects=tuple(range(1, spec.num_subjects + 1)),
      train_segments=tuple(range(1, spec.train_segments + 1)), test_segments=tuple(range(1, spec.test_segments + 1)),
      train_repeats=spec.train_repeats, test_repeats=spec.test_repeats, trs_per_run=spec.segment_trs,
      fps=spec.fps, frame_size=spec.resolution,
      detrend_order=None, zscore=False, selection="none",  # the simulator's runs are final (module docstring)
      expected_grayordinates=tuple(sorted({v + SUBCORTICAL_VOXELS for v in spec.voxels_per_subject})),
      caption_file="captions.json", clip_boundaries_file="clip_boundaries.json", labels_file="labels.json",
      label_keys=synthetic.LABEL_KEYS)
  fields.update(overrides)
  if name is None:
    return cc2017.cc2017_config("mindvideo", **fields)
  return cc2017.Cc2017Config(name=name, description="the synthetic benchmark as a cc2017 release", **fields)
