"""HAD, the Human Action Dataset (OpenNeuro ds004488), as a TFDS dataset (ArrayRecord files).

Release (datasets.md §4, §8.4; layout and traps in release.py): 30 subjects, each shown 720 different 2-s HACS
clips (4 per action category, 180 categories, no clip repeated) in 12 runs; the categories cycle once every 3 runs,
giving 4 cycles. ciftify's GLM gives one beta map per (cycle, category): `cycle-{k}_beta.dscalar.nii`, 180 rows on
the 59412 cortical grayordinates, with `cycle-{k}_label.txt` naming the clip of each row.

Records (data_builders/common.py contract): layout 'per_subject' (each subject saw different clips), response
'beta', one record per (subject, cycle, row), in that order; each record is its own segment:
  fmri     float32[1, V]   the row's beta on the cortex (V = 59412) or on the Glasser ROIs of the config
  frames   uint8[T, S, S, 3]  the clip read at `fps`, centre-cropped to `frame_size` (T = clip_s * fps)
  labels   {category}: the index of the clip's category among the stimulus folders sorted by name (180-way);
           events.tsv's float `trial_type` ids are cross-checked against the folders (one id per category)
  clip_id  the clip's index in all stimulus files sorted by (category folder, file name); caption ''.
Metadata adds `categories` (the vocabulary), `segment_cycles` and `trial_type_to_label`.

Split rule (config `train_cycles` / `test_cycles`; default cycles 1-3 train, cycle 4 test): HAD has no official
split, and every subject sees each category exactly once per cycle with a new clip. Holding out whole cycles keeps
all 180 categories in both splits (so 180-way classification is tested on every class), the test clips are never
seen in training, and the held-out runs (10-12) were acquired after the training runs and fitted in a separate GLM,
so no beta shares a design matrix across the split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from brainjax.data import cifti, video
from data_builders import common
from data_builders.had import release

DATASET = "had"
NORMALIZE = ("none", "zscore_per_cycle")


class HadConfig(tfds.core.BuilderConfig):
  """Options of the HAD build.

  fps / frame_size / clip_s: frames per second read from each clip, square side, and clip length in seconds.
  rois: Glasser areas to keep ('V1', 'L_MT_ROI', ...) through `atlas_path` (a dlabel; relative paths are looked up
    in manual_dir); () keeps the whole cortex (59412). hemisphere: 'both' | 'left' | 'right'.
  train_cycles / test_cycles: the split rule (module docstring). num_cycles / runs_per_cycle: the design (4 x 3).
  num_categories: rows per beta file and size of the vocabulary (180); None accepts what the release has.
  check_row_names: rows are the trial_type order; True checks every row's label.txt/ScalarAxis name against the
    clip events.tsv shows for that id (a mismatch is an error), False maps rows by events.tsv alone.
  normalize: 'none' (the GLM's betas as released) or 'zscore_per_cycle' (each voxel over a cycle's rows).
  check_videos: open every clip before writing (an unreadable video fails the build before anything is written).
  """

  def __init__(self, *, name: str, description: str = "", fps: float = 3.0, frame_size: int = 256,
               clip_s: float = 2.0, rois: Sequence[str] = (), atlas_path: str = "", hemisphere: str = "both",
               train_cycles: Sequence[int] = (1, 2, 3), test_cycles: Sequence[int] = (4,), num_cycles: int = 4,
               runs_per_cycle: int = 3, num_categories: int | None = 180, subjects: Sequence[str] = (),
               session: str = release.SESSION, check_row_names: bool = True, normalize: str = "none",
               expected_grayordinates: int | Sequence[int] | None = (cifti.FSLR32K_CORTEX, cifti.FSLR32K_GRAYORDINATES),
               check_videos: bool = True):
    super().__init__(name=name, description=description or "HAD betas")
    self.fps = float(fps)
    self.frame_size = int(frame_size)
    self.clip_s = float(clip_s)
    self.rois = tuple(rois)
    self.atlas_path = str(atlas_path)
    self.hemisphere = hemisphere
    self.train_cycles = tuple(int(c) for c in train_cycles)
    self.test_cycles = tuple(int(c) for c in test_cycles)
    self.num_cycles = int(num_cycles)
    self.runs_per_cycle = int(runs_per_cycle)
    self.num_categories = num_categories
    self.subjects = tuple(release.subject_label(str(s)) for s in subjects)
    self.session = session
    self.check_row_names = bool(check_row_names)
    self.normalize = normalize
    if expected_grayordinates is None or isinstance(expected_grayordinates, int):
      self.expected_grayordinates = expected_grayordinates
    else:
      self.expected_grayordinates = tuple(int(g) for g in expected_grayordinates)
    self.check_videos = bool(check_videos)
    self.validate()

  def validate(self) -> None:
    """Errors name the field and the fix."""
    if self.fps <= 0 or self.frame_size < 1 or self.clip_s <= 0:
      raise ValueError(f"HadConfig: fps ({self.fps}), frame_size ({self.frame_size}) and clip_s ({self.clip_s}) "
                       "must be positive (HAD clips are 2 s; MinD-Video reads 3 fps at 256 px).")
    if self.rois and not self.atlas_path:
      raise ValueError("HadConfig.rois needs HadConfig.atlas_path: the Glasser MMP1.0 dlabel to find them in.")
    if self.hemisphere not in cifti.HEMISPHERE_STRUCTURES:
      raise ValueError(f"HadConfig.hemisphere={self.hemisphere!r}: use one of {tuple(cifti.HEMISPHERE_STRUCTURES)}.")
    cycles = set(range(1, self.num_cycles + 1))
    for field in ("train_cycles", "test_cycles"):
      value = getattr(self, field)
      if not value or not set(value) <= cycles:
        raise ValueError(f"HadConfig.{field}={value}: list cycles among 1..{self.num_cycles}.")
    if set(self.train_cycles) & set(self.test_cycles):
      raise ValueError(f"HadConfig.train_cycles {self.train_cycles} and test_cycles {self.test_cycles} overlap; "
                       "a cycle belongs to one split.")
    if self.runs_per_cycle < 1:
      raise ValueError("HadConfig.runs_per_cycle must be >= 1 (HAD: 3 runs per cycle).")
    if self.normalize not in NORMALIZE:
      raise ValueError(f"HadConfig.normalize={self.normalize!r}: one of {NORMALIZE}.")

  @property
  def splits(self) -> dict[str, tuple[int, ...]]:
    return {"train": self.train_cycles, "test": self.test_cycles}


_CONFIG_FIELDS = ("fps", "frame_size", "clip_s", "rois", "atlas_path", "hemisphere", "train_cycles", "test_cycles",
                  "num_cycles", "runs_per_cycle", "num_categories", "subjects", "session", "check_row_names",
                  "normalize", "expected_grayordinates", "check_videos")


def had_config(preset: str = "mindvideo", **overrides) -> HadConfig:
  """A preset (`mindvideo`: cortex, 3 fps, 256 px; `brainnetflix`: Group41 ROIs, 15 frames at 268 px) with field
  overrides; the name records the overrides."""
  name, fields, description = common.preset_with_overrides(Builder, "HAD", preset, _CONFIG_FIELDS, overrides)
  return HadConfig(name=name, description=description, **fields)


class Builder(tfds.core.GeneratorBasedBuilder):
  """brainjax_had: HAD beta maps per (subject, cycle, clip) with the clip's frames and its 180-way action label."""

  name = "brainjax_had"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download OpenNeuro ds004488 (HAD, CC0) with its ciftify derivatives and stimuli, e.g.
    aws s3 sync --no-sign-request s3://openneuro.org/ds004488 <manual_dir>
  so manual_dir holds derivatives/ciftify/sub-XX/results/ses-action01_task-action_cycle-{1..4}_beta.dscalar.nii and
  _label.txt, sub-XX/ses-action01/func/*_events.tsv and stimuli/<Category>/*.mp4 (local or gs://). For ROI
  presets also put the Glasser MMP1.0 dlabel (BALSA 78X3) there or give its path as atlas_path.
  """
  BUILDER_CONFIGS = [
      HadConfig(name="mindvideo", description="Cortex betas (59412), 3 fps at 256 px like MinD-Video's frames."),
      HadConfig(name="brainnetflix", rois=cifti.BRAIN_NETFLIX_ROIS, fps=7.5, frame_size=268,
                atlas_path="Q1-Q6_RelatedValidation210.CorticalAreas_dil_Final_Final_Areas_Group_Colors.32k_fs_LR"
                           ".dlabel.nii",
                description="Brain Netflix: the 41 Group41 Glasser areas; 15 frames per 2-s clip at 268 px."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return common.DatasetInfo(
        builder=self,
        description=__doc__,
        features=common.record_features(layout="per_subject", voxels=[0], frame_size=self.builder_config.frame_size,
                                        label_keys=("category",)),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # record order (subject, cycle, row) carries meaning
    )

  # ---- checking the release (everything before any record is written) ----

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    root = common.manual_path(dl_manager.manual_dir, DATASET,
                              "derivatives/ciftify/sub-XX/results/*_beta.dscalar.nii, sub-XX/ses-action01/func/"
                              "*_events.tsv and stimuli/<Category>/*.mp4")
    subjects = list(cfg.subjects) or release.find_subjects(root)
    if not subjects:
      raise common.ReleaseError(f"{DATASET}: no subject under {root}/derivatives/ciftify (sub-XX folders).")
    self._require_files(root, subjects)
    stimuli = release.StimulusIndex.scan(root)
    if cfg.num_categories is not None and len(stimuli.categories) != cfg.num_categories:
      raise common.ReleaseError(f"{DATASET}: {root}/stimuli has {len(stimuli.categories)} category folders, expected "
                                f"{cfg.num_categories} (set num_categories=None to accept them).")
    atlas = self._atlas(root)
    trials, id_to_category, voxels = self._plan_trials(root, subjects, stimuli, atlas)
    if cfg.check_videos:
      self._check_videos(root, stimuli, trials)
    self.info.metadata.update(self._metadata(subjects, trials, id_to_category, voxels, stimuli))
    return {split: self._generate_examples(root, stimuli, atlas, [t for t in trials if t["split"] == split])
            for split in cfg.splits}

  def _require_files(self, root: epath.Path, subjects: list[str]) -> None:
    """Every beta, label and events file the config needs, all missing ones named at once."""
    cfg = self.builder_config
    paths = []
    for subject in subjects:
      for cycle in range(1, cfg.num_cycles + 1):
        paths += [release.beta_path(root, subject, cycle, cfg.session),
                  release.label_path(root, subject, cycle, cfg.session)]
      paths += [release.events_path(root, subject, run, cfg.session)
                for run in range(1, cfg.num_cycles * cfg.runs_per_cycle + 1)]
    common.require_files(paths, DATASET, fix="events.tsv are BIDS-named (run-01); betas come from ciftify's results.")

  def _atlas(self, root: epath.Path) -> cifti.GlasserAtlas | None:
    cfg = self.builder_config
    if not cfg.rois:
      return None
    path = epath.Path(cfg.atlas_path)
    if "://" not in cfg.atlas_path and not path.is_absolute():
      path = root / cfg.atlas_path
    if not path.exists():
      raise common.ReleaseError(f"{DATASET}: Glasser atlas {path} not found; set the config's atlas_path.")
    return cifti.GlasserAtlas.load(path)

  def _columns(self, bm, atlas: cifti.GlasserAtlas | None, where: str) -> np.ndarray:
    cfg = self.builder_config
    cifti.check_grayordinates(len(bm), cfg.expected_grayordinates, where)
    cols = cifti.cortex_indices(bm) if atlas is None else atlas.roi_columns(bm, cfg.rois, cfg.hemisphere)
    if len(cols) == 0:
      raise common.ReleaseError(f"{where}: no grayordinate selected (rois={list(cfg.rois)}).")
    return cols

  def _plan_trials(self, root, subjects, stimuli, atlas):
    """One dict per record, checking every row against label.txt, the ScalarAxis and events.tsv."""
    cfg = self.builder_config
    split_of = {c: s for s, cycles in cfg.splits.items() for c in cycles}
    clip_ids = {n: i for i, n in enumerate(sorted(stimuli.files, key=lambda n: (stimuli.files[n], n)))}
    label_of = {c: i for i, c in enumerate(stimuli.categories)}
    id_to_category: dict[int, tuple[str, str]] = {}
    trials, voxels = [], {}
    for s, subject in enumerate(subjects):
      runs = range(1, cfg.num_cycles * cfg.runs_per_cycle + 1)
      events = {run: release.read_events(release.events_path(root, subject, run, cfg.session)) for run in runs}
      for run_events in events.values():
        for e in run_events:
          self._check_event(e, stimuli, id_to_category)
      for cycle in range(1, cfg.num_cycles + 1):
        if cycle not in split_of:
          continue
        rows = self._check_cycle(root, subject, cycle, events, atlas, voxels, s)
        for row, event in enumerate(rows):
          trials.append({"split": split_of[cycle], "subject": s, "cycle": cycle, "row": row,
                         "stimulus": event.stimulus, "label": label_of[event.category],
                         "clip_id": clip_ids[event.stimulus]})
    return trials, id_to_category, voxels

  def _check_event(self, event, stimuli, id_to_category) -> None:
    """The stimulus exists in its category folder, and one trial_type id means one category everywhere."""
    if event.category not in stimuli.categories:
      raise common.ReleaseError(f"{event.where}: category folder {event.category!r} is not in stimuli/.")
    if stimuli.files.get(event.stimulus) != event.category:
      raise common.ReleaseError(f"{event.where}: stimulus stimuli/{event.category}/{event.stimulus} is missing.")
    seen = id_to_category.setdefault(event.trial_type, (event.category, event.where))
    if seen[0] != event.category:
      raise common.ReleaseError(f"{event.where}: trial_type {event.trial_type} is {event.category!r} here but "
                                f"{seen[0]!r} at {seen[1]}; the category ids are inconsistent.")

  def _check_cycle(self, root, subject, cycle, events, atlas, voxels, s) -> list[release.Event]:
    """The events of the cycle's beta rows in row order, after checking the beta file against them."""
    cfg = self.builder_config
    beta = release.beta_path(root, subject, cycle, cfg.session)
    label_file = release.label_path(root, subject, cycle, cfg.session)
    runs = release.cycle_runs(cycle, cfg.runs_per_cycle)
    by_id = release.cycle_events(events, runs, f"{subject} cycle {cycle} (runs {runs})")
    img = cifti.load_cifti(beta)
    cols = self._columns(cifti.brain_models(img, str(beta)), atlas, str(beta))
    betas, names = cifti.scalars(img, str(beta), columns=cols)
    common.require_finite(betas, str(beta))
    voxels.setdefault(s, len(cols))
    if voxels[s] != len(cols):
      raise common.ReleaseError(f"{beta}: {len(cols)} voxels selected, but {voxels[s]} in the subject's other cycles.")
    labels = release.read_labels(label_file)
    expected_rows = cfg.num_categories or len(by_id)
    for what, count in ((f"{beta} rows", len(names)), (f"{label_file} lines", len(labels)),
                        (f"events of runs {runs}", len(by_id))):
      if count != expected_rows:
        raise common.ReleaseError(f"{what}: {count}, expected {expected_rows} (one per category per cycle).")
    rows = []
    for row, (name, line) in enumerate(zip(names, labels)):
      if name != line:
        raise common.ReleaseError(f"{beta} row {row} is named {name!r} but {label_file} line {row + 1} says "
                                  f"{line!r}; the label file does not belong to this beta file.")
      event = by_id.get(row)
      if event is None:
        raise common.ReleaseError(f"{beta} row {row}: no event with trial_type {row} in runs {runs}.")
      if cfg.check_row_names and name != event.stimulus:
        raise common.ReleaseError(
            f"{beta} row {row} is named {name!r} (category {release.stimulus_category(name, str(label_file))!r}) "
            f"but row {row} is the beta of trial_type {row}, which events.tsv shows as {event.stimulus!r} at "
            f"{event.where}. The GLM orders rows by trial_type while label.txt is sorted by category name; set "
            "check_row_names=False to map rows by events.tsv.")
      rows.append(event)
    return rows

  def _check_videos(self, root, stimuli, trials) -> None:
    """Opens every clip the build will read, so an unreadable video fails before anything is written."""
    for name in sorted({t["stimulus"] for t in trials}):
      fps, count, _, _ = video.video_info(stimuli.path(root, name))
      if count / fps + 1e-6 < self.builder_config.clip_s - 1.0 / fps:
        raise common.ReleaseError(f"{stimuli.path(root, name)}: {count / fps:.2f} s long, shorter than clip_s = "
                                  f"{self.builder_config.clip_s} s.")

  def _metadata(self, subjects, trials, id_to_category, voxels, stimuli) -> dict:
    cfg = self.builder_config
    segment_trs, segment_subjects, segment_cycles = {}, {}, {}
    for split in cfg.splits:
      ts = [t for t in trials if t["split"] == split]
      segment_trs[split] = [1] * len(ts)
      segment_subjects[split] = [t["subject"] for t in ts]
      segment_cycles[split] = [t["cycle"] for t in ts]
    label_of = {c: i for i, c in enumerate(stimuli.categories)}
    id_to_label = {str(k): label_of[c] for k, (c, _) in sorted(id_to_category.items())}
    alphabetical = all(int(k) == v for k, v in id_to_label.items())
    if not alphabetical:
      logging.warning("%s: events.tsv category ids are not in alphabetical order of the stimulus folders; labels are "
                      "the alphabetical index (metadata trial_type_to_label maps them).", DATASET)
    return common.dataset_metadata(
        layout="per_subject", response="beta", tr_s=cfg.clip_s,
        subjects=[{"name": name, "num_voxels": int(voxels[s])} for s, name in enumerate(subjects)],
        segment_trs=segment_trs, segment_subjects=segment_subjects, repeats={split: 1 for split in cfg.splits},
        label_keys=["category"], categories=list(stimuli.categories), segment_cycles=segment_cycles,
        trial_type_to_label=id_to_label, trial_type_is_alphabetical=alphabetical, rois=list(cfg.rois),
        split_cycles={k: list(v) for k, v in cfg.splits.items()}, fps=cfg.fps, frame_size=cfg.frame_size,
        normalize=cfg.normalize,
    )

  # ---- writing ----

  def _load_cycle(self, root, subject: str, cycle: int, atlas) -> np.ndarray:
    cfg = self.builder_config
    beta = release.beta_path(root, subject, cycle, cfg.session)
    img = cifti.load_cifti(beta)
    betas, _ = cifti.scalars(img, str(beta), columns=self._columns(cifti.brain_models(img), atlas, str(beta)))
    if cfg.normalize == "zscore_per_cycle":
      std = betas.std(axis=0)
      betas = (betas - betas.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return betas.astype(np.float32)

  def _generate_examples(self, root, stimuli, atlas, trials):
    cfg = self.builder_config
    subjects = self.info.metadata["subjects"]
    loaded: tuple | None = None
    for key, trial in enumerate(trials):
      where = (trial["subject"], trial["cycle"])
      if loaded is None or loaded[0] != where:  # trials come grouped by (subject, cycle): one file in memory
        loaded = (where, self._load_cycle(root, subjects[trial["subject"]]["name"], trial["cycle"], atlas))
      frames = video.read_video(stimuli.path(root, trial["stimulus"]), fps=cfg.fps, size=cfg.frame_size,
                                duration_s=cfg.clip_s)
      yield key, {
          "segment": key, "tr": 0, "frames": frames, "caption": "", "clip_id": trial["clip_id"], "scene_cut": False,
          "labels": {"category": trial["label"]}, "fmri": loaded[1][trial["row"]][None],
          "subject": trial["subject"],
      }


__all__ = ["Builder", "HadConfig", "had_config"]
