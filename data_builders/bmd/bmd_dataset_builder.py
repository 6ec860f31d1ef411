"""BOLD Moments (BMD, OpenNeuro ds005165) as a TFDS dataset of single-trial betas.

What the release holds (datasets.md §3, §8.3):

* `derivatives/versionB/fsLR32k/GLM/sub-XX/prepared_betas/sub-XX_organized_betas_task-{train,test}_normalized.pkl`:
  a pickled tuple (betas float64 [N, R, 91282], video ids ['vid0001', ...]); train N=1000 videos x R=3 repeats,
  test N=102 x R=10. Betas are z-scored per session with the train trials' statistics (the authors' code). The
  arrays are NaN-initialised, so a repeat a subject did not see stays NaN.
* `derivatives/stimuli_metadata/annotations.json`: {"0001": {"text_descriptions": [>= 5 sentences], ...}}.
* The videos (removed from OpenNeuro for licensing; downloaded from the BMD site): `stimuli/{train,test}/NNNN.mp4`,
  3-s clips; 'vidNNNN' in a pickle is `NNNN.mp4`.

Records (data_builders/common.py contract): one per video (a trial: every segment is 1 record long), layout
'shared' (all 10 subjects saw the same 1102 videos), response 'beta'. `fmri[subject_k]` is float32 [R, V] with all
R repeats of the split: a repeat the subject did not see is a row of NaN (never zeros), and the metadata lists it
under `missing_repeats`, so the pipeline averages only the present repeats and skips missing ones when repeats are
used one by one. A partly-NaN repeat is a corrupt file and fails the build.

`caption` is the video's first human text description (the papers caption a video with one sentence); all of them
(>= 5) are kept in `captions`.

Grayordinates: the pickles carry no CIFTI header. Their columns are the standard fsLR-32k 91k order (the GLM ran on
fMRIPrep `space-fsLR_den-91k` files), whose first 59412 columns are the cortex in the Glasser dlabel's own
(structure, vertex) order. ROI columns are therefore mapped through a brain-model axis that describes the pickle's
columns: by default the atlas's cortical axis (checked: the pickle has `grayordinates` columns and, for 91282, the
atlas covers exactly the 59412 cortical ones); or `template`, any CIFTI file of the release (e.g. an fMRIPrep
`*_space-fsLR_den-91k_bold.dtseries.nii`) whose axis is used as is (checked to have as many columns as the pickle).

SECURITY: the betas are pickles, and unpickling a file executes code it contains. The builder unpickles only files
inside the configured release folder (`manual_dir`) and refuses any other path; only build from a copy of the
release you downloaded from OpenNeuro yourself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from brainjax.data import cifti
from data_builders import common

DATASET = "bmd"
SPLITS = ("train", "test")
GLM_DIR = "derivatives/versionB/fsLR32k/GLM"
ANNOTATIONS = "derivatives/stimuli_metadata/annotations.json"
BALSA_ATLAS = "Q1-Q6_RelatedValidation210.CorticalAreas_dil_Final_Final_Areas_Group_Colors.32k_fs_LR.dlabel.nii"
ALL_SUBJECTS = tuple(f"{k:02d}" for k in range(1, 11))  # sub-01 .. sub-10 (participants.tsv)

EXPECTED = f"""the BOLD Moments release (OpenNeuro ds005165) plus its stimuli:
  {GLM_DIR}/sub-XX/prepared_betas/sub-XX_organized_betas_task-{{train,test}}_normalized.pkl
  {ANNOTATIONS}
  stimuli/train/0001.mp4 ... stimuli/test/1102.mp4   (from boldmomentsdataset.csail.mit.edu)
  the Glasser atlas dlabel ({BALSA_ATLAS}) unless config rois=()"""


@dataclasses.dataclass(frozen=True)
class BmdOptions:
  """Everything a build depends on (validated by `BmdConfig`)."""

  subjects: tuple[str, ...] = ALL_SUBJECTS
  rois: tuple[str, ...] = cifti.BRAIN_NETFLIX_ROIS   # Glasser areas (both hemispheres); () = every grayordinate
  atlas: str = BALSA_ATLAS                           # relative to manual_dir, or an absolute path / URL
  template: str = ""                                 # optional CIFTI whose brain models describe the pickle columns
  grayordinates: int = 91282                         # columns of every pickle (fsLR-32k 91k)
  num_train_videos: int = 1000                       # train = 0001..N, test = N+1..N+M
  num_test_videos: int = 102
  train_repeats: int = 3
  test_repeats: int = 10
  fps: float = 5.0                                   # Brain Netflix samples 15 frames per 3-s clip
  frame_size: int = 256
  clip_s: float = 3.0                                # every BMD video lasts 3 s
  min_captions: int = 5                              # "at least 5" text descriptions per video (fieldnames.json)
  videos_dir: str = "stimuli"
  annotations: str = ANNOTATIONS
  glm_dir: str = GLM_DIR


class BmdConfig(common.OptionsConfig):
  """A BMD builder config: `BmdConfig(name=..., **BmdOptions fields)`."""
  OPTIONS = BmdOptions

  def validate(self, options: BmdOptions) -> None:
    validate_options(options, self.name)


def validate_options(o: BmdOptions, name: str) -> None:
  def fail(field, problem, fix):
    raise ValueError(f"BmdConfig {name!r}: {field} {problem}; {fix}.")

  if not o.subjects or len(set(o.subjects)) != len(o.subjects):
    fail("subjects", f"= {o.subjects!r} is empty or repeats a subject", "list each subject once, e.g. ('01', '02')")
  for s in o.subjects:
    if not re.fullmatch(r"\d{2}", str(s)):
      fail("subjects", f"contains {s!r}", "give two-digit subject numbers as in sub-01 ('01')")
  for field in ("grayordinates", "num_train_videos", "num_test_videos", "train_repeats", "test_repeats",
                "frame_size", "min_captions"):
    if not isinstance(getattr(o, field), int) or getattr(o, field) < 1:
      fail(field, f"= {getattr(o, field)!r}", "must be a positive integer")
  if o.num_train_videos + o.num_test_videos > 9999:
    fail("num_train_videos + num_test_videos", "exceeds 9999", "videos are named NNNN.mp4")
  if not o.fps > 0 or not o.clip_s > 0:
    fail("fps/clip_s", f"= {o.fps!r}/{o.clip_s!r}", "both must be > 0")
  if o.rois and not o.atlas and not o.template:
    fail("atlas", "is empty but rois are selected", "give the Glasser dlabel path or set rois=()")


def video_id(number: int) -> str:
  return f"{number:04d}"


def split_video_numbers(o: BmdOptions, split: str) -> list[int]:
  """train = 1..num_train_videos, test = the next num_test_videos (the official 1000/102 split)."""
  if split == "train":
    return list(range(1, o.num_train_videos + 1))
  return list(range(o.num_train_videos + 1, o.num_train_videos + o.num_test_videos + 1))


def beta_pickle(glm: epath.Path, subject: str, split: str) -> epath.Path:
  return glm / f"sub-{subject}" / "prepared_betas" / f"sub-{subject}_organized_betas_task-{split}_normalized.pkl"


def _inside(path: epath.Path, root: epath.Path) -> bool:
  """Whether `path` lies inside `root` after normalising '..' (local paths and URLs alike)."""
  norm = lambda p: os.path.normpath(os.fspath(p)).rstrip("/")  # noqa: E731
  if "://" not in os.fspath(path) and "://" not in os.fspath(root):
    norm = lambda p: os.path.realpath(os.fspath(p)).rstrip("/")  # noqa: E731
  return norm(path).startswith(norm(root) + "/")


def load_pickle_from_release(path: epath.Path, manual_dir: epath.Path):
  """Unpickles a file of the release. Unpickling EXECUTES code stored in the file, so only files inside the
  user's release folder (`manual_dir`) are ever opened; any other path is refused."""
  if not _inside(path, manual_dir):
    raise common.ReleaseError(f"{DATASET}: refusing to unpickle {path}: it is outside the release folder "
                              f"{manual_dir} (unpickling runs code; only the release's own files are loaded).")
  try:
    return pickle.loads(path.read_bytes())
  except Exception as e:  # truncated downloads raise EOFError/UnpicklingError/...
    raise common.ReleaseError(f"{path}: not a readable pickle ({type(e).__name__}: {e}); re-download it.") from e


def _resolve(manual_dir: epath.Path, name: str) -> epath.Path:
  return epath.Path(name) if (os.path.isabs(name) or "://" in name) else manual_dir / name


@dataclasses.dataclass
class SubjectBetas:
  """One subject's betas of one split, ROI-selected: float32 [N, R, V] by video (row k = k-th video of the split)."""

  betas: np.ndarray
  missing: list[tuple[int, int]]  # (video row, repeat) pairs the subject did not see (all-NaN rows)


class Builder(tfds.core.GeneratorBasedBuilder):
  """brainjax_bmd: BOLD Moments single-trial betas (versionB, fsLR-32k), captions and 3-s videos."""

  name = "brainjax_bmd"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""Download, into one folder that you pass as --manual_dir (local or gs://):
  aws s3 sync --no-sign-request s3://openneuro.org/ds005165/derivatives/versionB/fsLR32k/GLM/ {GLM_DIR}/
      (only the prepared_betas/ folders are read)
  aws s3 cp --no-sign-request s3://openneuro.org/ds005165/{ANNOTATIONS} {ANNOTATIONS}
  the stimulus videos from https://boldmomentsdataset.csail.mit.edu/stimuli_metadata (terms of use; password in
      derivatives/stimuli_metadata/stimuli_access.txt) into stimuli/train/ and stimuli/test/
  the Glasser MMP1.0 atlas {BALSA_ATLAS} (BALSA https://balsa.wustl.edu/78X3) into the folder root.
The betas are pickles: unpickling runs code, so only build from files you downloaded from OpenNeuro yourself."""
  BUILDER_CONFIGS = [
      BmdConfig(name="brain_netflix", description="Brain Netflix's 41 Glasser ROIs, 15 frames per 3-s clip at 256 px."),
      BmdConfig(name="all_grayordinates", rois=(), description="All 91282 grayordinates (no atlas needed)."),
  ]

  @property
  def options(self) -> BmdOptions:
    return self.builder_config.options

  def _info(self) -> tfds.core.DatasetInfo:
    o = self.options
    features = common.record_features(
        layout="shared", voxels=[0] * len(o.subjects), frame_size=o.frame_size,
        extra={"captions": tfds.features.Sequence(tfds.features.Text()), "video_id": tfds.features.Text()})
    return common.DatasetInfo(builder=self, description=__doc__, features=features,
                                 metadata=tfds.core.MetadataDict(), disable_shuffling=True)

  # -- reading the release ------------------------------------------------------------------------------------------

  def _split_generators(self, dl_manager):
    o = self.options
    root = common.manual_path(dl_manager.manual_dir, DATASET, EXPECTED)
    numbers = {split: split_video_numbers(o, split) for split in SPLITS}
    videos = {split: [root / o.videos_dir / split / f"{video_id(n)}.mp4" for n in numbers[split]] for split in SPLITS}
    glm = _resolve(root, o.glm_dir)
    pickles = [beta_pickle(glm, s, split) for s in o.subjects for split in SPLITS]
    needed = pickles + [_resolve(root, o.annotations)] + [v for split in SPLITS for v in videos[split]]
    if o.rois:
      needed.append(_resolve(root, o.template or o.atlas))
    common.require_files(needed, DATASET, fix="Pass the folder holding the whole release as --manual_dir "
                         "(or list fewer subjects in the builder config).")
    captions = self._captions(root, numbers)
    columns, roi_info = self._columns(root)
    betas = {split: [self._subject_betas(root, glm, s, split, numbers[split], columns) for s in o.subjects]
             for split in SPLITS}
    _check_videos([v for split in SPLITS for v in videos[split]])
    self.info.metadata.update(self._metadata(numbers, betas, columns, roi_info))
    return {split: self._generate_examples(split, numbers[split], videos[split], captions, betas[split])
            for split in SPLITS}

  def _captions(self, root: epath.Path, numbers: dict[str, list[int]]) -> dict[int, list[str]]:
    """Every video's text descriptions, checked to number at least `min_captions`."""
    path = _resolve(root, self.options.annotations)
    try:
      annotations = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
      raise common.ReleaseError(f"{path}: not valid JSON ({e}); re-download it.") from e
    out, bad = {}, []
    for n in (n for split in SPLITS for n in numbers[split]):
      texts = (annotations.get(video_id(n)) or {}).get("text_descriptions") or []
      texts = [str(t).strip() for t in texts if str(t).strip()]
      if len(texts) < self.options.min_captions:
        bad.append(f"{video_id(n)} ({len(texts)})")
      out[n] = texts
    if bad:
      raise common.ReleaseError(f"{path}: {len(bad)} video(s) have fewer than {self.options.min_captions} "
                                f"text_descriptions: {', '.join(bad[:10])}; is this the release's annotations.json?")
    return out

  def _columns(self, root: epath.Path) -> tuple[np.ndarray | None, dict]:
    """The pickle columns kept (None: all) and the ROI sizes, mapped through a brain-model axis (module doc)."""
    o = self.options
    if not o.rois:
      return None, {}
    atlas = cifti.GlasserAtlas.load(_resolve(root, o.atlas))
    if o.template:
      axis = cifti.brain_models(cifti.load_cifti(_resolve(root, o.template)))
      cifti.check_grayordinates(len(axis), o.grayordinates, f"template {o.template}")
      how = f"the brain models of {o.template}"
    else:
      axis = atlas.brain_models
      cortex = len(cifti.cortex_indices(axis))
      if o.grayordinates == cifti.FSLR32K_GRAYORDINATES:
        cifti.check_grayordinates(cortex, cifti.FSLR32K_CORTEX, f"atlas {o.atlas} (cortex)")
      if cortex > o.grayordinates:
        raise common.ReleaseError(f"atlas {o.atlas}: {cortex} cortical grayordinates but the betas have only "
                                  f"{o.grayordinates}; set grayordinates or give a template CIFTI.")
      how = "the atlas's cortex (the first columns of a standard fsLR-32k 91k file)"
    columns = atlas.roi_columns(axis, list(o.rois))
    if len(columns) == 0:
      raise common.ReleaseError(f"{DATASET}: the ROIs {list(o.rois)} select no grayordinate through {how}.")
    sizes = atlas.roi_sizes(axis, list(o.rois))
    empty = [n for n, k in sizes.items() if k == 0]
    if empty:
      logging.warning("%s: ROIs %s have no grayordinate in the data", DATASET, empty)
    return columns, {"roi_sizes": sizes, "brain_models": how, "atlas_numbering": atlas.numbering}

  def _subject_betas(self, root, glm, subject: str, split: str, numbers: Sequence[int],
                     columns: np.ndarray | None) -> SubjectBetas:
    """One organised-beta pickle, checked (shape, ids, NaN pattern) and reduced to the kept columns."""
    o = self.options
    path = beta_pickle(glm, subject, split)
    loaded = load_pickle_from_release(path, root)
    if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
      raise common.ReleaseError(f"{path}: expected a pickled (betas, video ids) tuple, got {type(loaded).__name__}.")
    betas, ids = np.asarray(loaded[0]), [str(v) for v in loaded[1]]
    repeats = o.train_repeats if split == "train" else o.test_repeats
    expected = (len(numbers), repeats, o.grayordinates)
    if betas.ndim != 3 or betas.shape != expected:
      field = "grayordinates" if betas.ndim == 3 and betas.shape[:2] == expected[:2] else (
          f"{split}_repeats" if betas.ndim == 3 and betas.shape[0] == expected[0] else f"num_{split}_videos")
      raise common.ReleaseError(f"{path}: betas have shape {list(betas.shape)}, expected [videos, repeats, "
                                f"grayordinates] = {list(expected)} (check the builder config's {field}).")
    rows = _rows_by_video(ids, numbers, path)
    kept = betas[rows] if columns is None else betas[rows][:, :, columns]
    return SubjectBetas(kept.astype(np.float32), _missing_repeats(kept, path, numbers))

  def _metadata(self, numbers, betas, columns, roi_info) -> dict:
    o = self.options
    voxels = o.grayordinates if columns is None else len(columns)
    missing = {split: {str(k): [list(p) for p in b.missing] for k, b in enumerate(betas[split]) if b.missing}
               for split in SPLITS}
    for split in SPLITS:
      for k, b in enumerate(betas[split]):
        if b.missing:
          logging.warning("%s: sub-%s misses %d %s repeat(s) (NaN in the release); they are stored as NaN rows and "
                          "skipped by the pipeline", DATASET, o.subjects[k], len(b.missing), split)
    return common.dataset_metadata(
        layout="shared", response="beta", tr_s=o.clip_s,
        subjects=[{"name": f"sub-{s}", "num_voxels": int(voxels)} for s in o.subjects],
        segment_trs={split: [1] * len(numbers[split]) for split in SPLITS},
        repeats={"train": o.train_repeats, "test": o.test_repeats}, label_keys=(),
        missing_repeats=missing, rois=list(o.rois), voxel_columns=None if columns is None else columns.tolist(),
        video_ids={split: [video_id(n) for n in numbers[split]] for split in SPLITS},
        fps=o.fps, frame_size=o.frame_size, clip_s=o.clip_s, **roi_info)

  def _generate_examples(self, split, numbers, videos, captions, betas: list[SubjectBetas]):
    from brainjax.data import video

    o = self.options
    for row, (n, path) in enumerate(zip(numbers, videos)):
      yield row, {
          "segment": row, "tr": 0,
          "frames": video.read_video(path, fps=o.fps, size=o.frame_size, duration_s=o.clip_s),
          "caption": captions[n][0], "captions": captions[n], "video_id": f"vid{video_id(n)}",
          "clip_id": n, "scene_cut": False, "labels": {},
          "fmri": {f"subject_{k}": b.betas[row] for k, b in enumerate(betas)},
      }


def _rows_by_video(ids: Sequence[str], numbers: Sequence[int], path) -> np.ndarray:
  """Pickle row of each video of the split, from the 'vidNNNN' ids (never assuming the row order)."""
  parsed = {}
  for row, raw in enumerate(ids):
    m = re.fullmatch(r"vid(\d+)", raw)
    if not m:
      raise common.ReleaseError(f"{path}: video id {raw!r} (row {row}) is not of the form 'vidNNNN'.")
    if int(m.group(1)) in parsed:
      raise common.ReleaseError(f"{path}: video id {raw!r} appears twice (rows {parsed[int(m.group(1))]}, {row}).")
    parsed[int(m.group(1))] = row
  wrong = sorted(set(parsed) - set(numbers))
  absent = sorted(set(numbers) - set(parsed))
  if wrong or absent:
    raise common.ReleaseError(
        f"{path}: the video ids do not match the split's videos {video_id(numbers[0])}..{video_id(numbers[-1])}: "
        f"unexpected {[video_id(n) for n in wrong[:10]]}, missing {[video_id(n) for n in absent[:10]]}.")
  return np.asarray([parsed[n] for n in numbers], np.int64)


def _missing_repeats(betas: np.ndarray, path, numbers: Sequence[int]) -> list[tuple[int, int]]:
  """(video row, repeat) of the all-NaN repeats (not seen: the arrays are NaN-initialised); a partly-NaN or
  infinite repeat is corrupt and fails."""
  finite = np.isfinite(betas)
  nan = np.isnan(betas)
  absent = nan.all(axis=2)
  broken = ~finite.all(axis=2) & ~absent
  if broken.any():
    row, rep = (int(v) for v in np.argwhere(broken)[0])
    raise common.ReleaseError(
        f"{path}: {int(broken.sum())} repeat(s) hold NaN/Inf in some of the kept grayordinates only (first: video "
        f"{video_id(numbers[row])}, repeat {rep}: {int((~finite[row, rep]).sum())} values); a repeat is either "
        "all NaN (not seen) or finite. The file is corrupt; re-download it.")
  return [(int(r), int(k)) for r, k in np.argwhere(absent)]


def _check_videos(paths: Sequence[epath.Path]) -> None:
  """Every stimulus video opens and has frames, before anything is written."""
  from brainjax.data import video

  bad = []
  for path in paths:
    try:
      video.video_info(path)
    except common.ReleaseError as e:
      bad.append(str(e))
  if bad:
    raise common.ReleaseError(f"{DATASET}: {len(bad)} unreadable stimulus video(s):\n  " + "\n  ".join(bad[:10]))
