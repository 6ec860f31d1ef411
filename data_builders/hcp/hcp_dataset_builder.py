"""HCP-1200 resting state (MinD-Vis's MBM pretraining corpus) as a TFDS dataset (ArrayRecord files).

Release (datasets.md §2, §8.2): ConnectomeDB's "Resting State fMRI FIX-Denoised (Compact)" package, one folder per
subject, runs at
  <subject>/MNINonLinear/Results/rfMRI_REST{1,2}_{LR,RL}/rfMRI_REST{1,2}_{LR,RL}_Atlas_MSMAll_hp2000_clean.dtseries.nii
each a 1200 x 91282 CIFTI dtseries at TR 0.72 s, plus the user's copy of the Glasser MMP1.0 dlabel (BALSA 78X3;
`atlas_path`, never downloaded). Some subjects lack runs (e.g. 200614, 205119 REST1_LR in the open-access mirror):
they are reported, and skipped only when `on_missing_runs` says so.

Records (the contract of data_builders/common.py): layout 'per_subject', response 'bold', one split 'rest'; one
segment per run, one record per TR in acquisition order:
  fmri    float32[1, V]  the run's visual-ROI grayordinates (default V1, V2, V3, V4, concatenated area by area as
                         MinD-Vis's npz keys are), each z-scored over the run's time points (hcp_utils.normalize)
  subject int32, segment, tr; frames empty, caption '', clip_id -1, scene_cut False, no labels.

MinD-Vis's windows are the pipeline's job, not baked in, so one build serves every window ablation. To reproduce
`process_voxel_ts` (average non-overlapping windows of 8 // 0.75 = 10 TRs, np.array_split into 1200 // 10 = 120
windows per run, wrap-pad the voxels to a multiple of the 16-wide patch) set in config.data:
  window=1, temporal_average=10, stride=10, hrf_shift_trs=0, pad_multiple=16, voxel_padding='wrap'
which gives the same 120 windows per 1200-TR run (tests/data/test_builder_hcp.py checks the averages against
array_split on a planted series). Two MinD-Vis details differ on purpose: its `pad_to_patch_size` adds a full
patch when V is already a multiple of 16, and it z-scores each subject-run's windows once more with a single
global mean/std; a run whose length is not a multiple of 10 is split unevenly by array_split but into equal
windows (the remainder dropped) by the pipeline.

Large corpus (1096 subjects x 4 runs x 438 MB): subjects are preprocessed in `num_workers` processes, each into a
per-subject cache entry (see preprocess.py: written to a temporary name and renamed, so an interrupted build resumes
and re-runs skip finished subjects); records are then streamed subject by subject from the cache (the corpus is
never held in memory) and TFDS shards the ArrayRecord output. The release, the atlas, the cache and data_dir may
all be gs:// paths (read and written through epath).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from brainjax.data import cifti
from data_builders import common
from data_builders.hcp import preprocess

DATASET = "hcp"
HCP_RUNS = ("REST1_LR", "REST1_RL", "REST2_LR", "REST2_RL")
HCP_FILE_PATTERN = "{subject}/MNINonLinear/Results/rfMRI_{run}/rfMRI_{run}_Atlas_MSMAll_hp2000_clean.dtseries.nii"
BALSA_ATLAS = "Q1-Q6_RelatedValidation210.CorticalAreas_dil_Final_Final_Areas_Group_Colors.32k_fs_LR.dlabel.nii"
MISSING_RUN_POLICIES = ("error", "skip_subject", "keep_found_runs")
SPLIT = "rest"


class HcpConfig(tfds.core.BuilderConfig):
  """Options of the HCP resting-state build.

  atlas_path: the Glasser MMP1.0 dlabel (BALSA file or any dlabel with MMP names); a relative path is looked up
    inside manual_dir, so the default works when the BALSA file sits next to the subject folders.
  rois / hemisphere: Glasser areas to keep ('V1' or 'L_V1_ROI' style) and 'both' | 'left' | 'right'.
  runs / file_pattern: which rfMRI runs and where they are ('{subject}', '{run}' placeholders; change it for the
    flat `<sub>_rfMRI_…` variant or the non-FIX `_Atlas_MSMAll.dtseries.nii` files).
  subjects: subject folders to use; () = every folder in manual_dir whose name matches subject_pattern.
  on_missing_runs: 'error' (default: a build never silently shrinks), 'skip_subject', or 'keep_found_runs'.
  expected_grayordinates: accepted grayordinate counts (None: any); expected_timepoints: run length (None: any).
  num_workers: processes preprocessing subjects in parallel; start_method: 'spawn' (safe next to the JAX/TF
    threads of the parent) or 'fork' (faster start, for tests). cache_dir: per-subject cache ('' = under data_dir).
  """

  def __init__(self, *, name: str, description: str = "", atlas_path: str = BALSA_ATLAS,
               rois: Sequence[str] = cifti.MIND_VIS_ROIS, hemisphere: str = "both", runs: Sequence[str] = HCP_RUNS,
               file_pattern: str = HCP_FILE_PATTERN, subjects: Sequence[str] = (), subject_pattern: str = r"\d+",
               on_missing_runs: str = "error",
               expected_grayordinates: int | Sequence[int] | None = cifti.FSLR32K_GRAYORDINATES,
               expected_timepoints: int | None = None, num_workers: int = 2, start_method: str = "spawn",
               cache_dir: str = ""):
    super().__init__(name=name, description=description or f"HCP resting state, ROIs {list(rois)}")
    self.atlas_path = str(atlas_path)
    self.rois = tuple(rois)
    self.hemisphere = hemisphere
    self.runs = tuple(runs)
    self.file_pattern = file_pattern
    self.subjects = tuple(str(s) for s in subjects)
    self.subject_pattern = subject_pattern
    self.on_missing_runs = on_missing_runs
    if expected_grayordinates is None or isinstance(expected_grayordinates, int):
      self.expected_grayordinates = expected_grayordinates
    else:
      self.expected_grayordinates = tuple(int(g) for g in expected_grayordinates)
    self.expected_timepoints = expected_timepoints
    self.num_workers = int(num_workers)
    self.start_method = start_method
    self.cache_dir = str(cache_dir)
    self.validate()

  def validate(self) -> None:
    """Errors name the field and the fix."""
    if not self.atlas_path:
      raise ValueError("HcpConfig.atlas_path is empty: give the path of the Glasser MMP1.0 dlabel "
                       f"({BALSA_ATLAS} from BALSA), absolute or relative to manual_dir.")
    if not self.rois:
      raise ValueError("HcpConfig.rois is empty: list Glasser areas, e.g. ('V1', 'V2', 'V3', 'V4').")
    if self.hemisphere not in cifti.HEMISPHERE_STRUCTURES:
      raise ValueError(f"HcpConfig.hemisphere={self.hemisphere!r}: use one of {tuple(cifti.HEMISPHERE_STRUCTURES)}.")
    if not self.runs or len(set(self.runs)) != len(self.runs):
      raise ValueError(f"HcpConfig.runs={self.runs}: list distinct runs, e.g. {HCP_RUNS}.")
    if "{subject}" not in self.file_pattern or "{run}" not in self.file_pattern:
      raise ValueError(f"HcpConfig.file_pattern={self.file_pattern!r}: needs the '{{subject}}' and '{{run}}' "
                       f"placeholders, e.g. {HCP_FILE_PATTERN!r}.")
    if self.on_missing_runs not in MISSING_RUN_POLICIES:
      raise ValueError(f"HcpConfig.on_missing_runs={self.on_missing_runs!r}: use one of {MISSING_RUN_POLICIES}.")
    if self.num_workers < 1:
      raise ValueError(f"HcpConfig.num_workers={self.num_workers}: use 1 (in-process) or more processes.")
    if self.start_method not in ("spawn", "fork", "forkserver"):
      raise ValueError(f"HcpConfig.start_method={self.start_method!r}: 'spawn', 'fork' or 'forkserver'.")
    if self.expected_timepoints is not None and self.expected_timepoints < 2:
      raise ValueError("HcpConfig.expected_timepoints must be None or >= 2 (HCP runs have 1200).")

  def preprocessing_key(self) -> str:
    """A digest of everything that changes the cached arrays, so a changed config never reuses a stale cache."""
    fields = dict(atlas=self.atlas_path, rois=self.rois, hemisphere=self.hemisphere, pattern=self.file_pattern,
                  grayordinates=self.expected_grayordinates, timepoints=self.expected_timepoints,
                  format=preprocess.CACHE_FORMAT)
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=list).encode()).hexdigest()[:10]


def hcp_config(preset: str = "mindvis", **overrides) -> HcpConfig:
  """A preset (`mindvis` or `brainnetflix`) with field overrides; the name records the overrides."""
  name, fields, description = common.preset_with_overrides(Builder, "HCP", preset, _CONFIG_FIELDS, overrides)
  return HcpConfig(name=name, description=description, **fields)


_CONFIG_FIELDS = ("atlas_path", "rois", "hemisphere", "runs", "file_pattern", "subjects", "subject_pattern",
                  "on_missing_runs", "expected_grayordinates", "expected_timepoints", "num_workers", "start_method",
                  "cache_dir")


class Builder(tfds.core.GeneratorBasedBuilder):
  """brainjax_hcp: HCP-1200 resting-state visual-cortex time series for MBM pretraining."""

  name = "brainjax_hcp"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download HCP-1200 "Resting State fMRI FIX-Denoised (Compact)" from ConnectomeDB (HCP Open Access Data Use Terms;
  not redistributable) and unpack it so manual_dir holds one folder per subject:
    <manual_dir>/<subject>/{HCP_FILE_PATTERN.format(subject='', run='REST1_LR').lstrip('/')}
  (a gs:// bucket works too). Put the Glasser MMP1.0 atlas from BALSA (https://balsa.wustl.edu/78X3),
    {BALSA_ATLAS}
  in manual_dir or pass its path as the config's atlas_path.
  """
  BUILDER_CONFIGS = [
      HcpConfig(name="mindvis", description="MinD-Vis/MinD-Video pretraining: V1-V4, both hemispheres, 4 runs."),
      HcpConfig(name="brainnetflix", rois=cifti.BRAIN_NETFLIX_ROIS,
                description="Brain Netflix's MBM pretraining input: the 41 Group41 Glasser areas."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return common.DatasetInfo(
        builder=self,
        description=__doc__,
        features=common.record_features(layout="per_subject", voxels=[0], frame_size=None),
        metadata=tfds.core.MetadataDict(),
        # Record order carries meaning (segment, TR): the pipeline averages consecutive TRs of a run.
        disable_shuffling=True,
    )

  # ---- planning and checking the release (before anything is written) ----

  def _atlas_path(self, root: epath.Path) -> epath.Path:
    path = epath.Path(self.builder_config.atlas_path)
    if not path.is_absolute() and "://" not in self.builder_config.atlas_path:
      path = root / self.builder_config.atlas_path
    if not path.exists():
      raise common.ReleaseError(f"{DATASET}: Glasser atlas {path} not found; download {BALSA_ATLAS} from BALSA "
                                "(https://balsa.wustl.edu/78X3) and set the config's atlas_path.")
    return path

  def _cache_dir(self) -> str:
    cfg = self.builder_config
    if cfg.cache_dir:
      return cfg.cache_dir
    return str(epath.Path(self._data_dir_root) / "brainjax_hcp_cache" / f"{cfg.name}-{cfg.preprocessing_key()}")

  def _plan(self, root: epath.Path) -> tuple[list[preprocess.SubjectJob], dict[str, list[str]]]:
    """The jobs to run, and {subject: missing run files} of the subjects left out (policy permitting)."""
    cfg = self.builder_config
    subjects = list(cfg.subjects) or preprocess.find_subjects(root, cfg.subject_pattern)
    if not subjects:
      raise common.ReleaseError(f"{DATASET}: no subject folder in {root} (names matching {cfg.subject_pattern!r}); "
                                "manual_dir should hold one folder per HCP subject.")
    found, missing = preprocess.plan_subjects(root, subjects, cfg.runs, cfg.file_pattern)
    if missing and cfg.on_missing_runs == "error":
      files = [p for paths in missing.values() for p in paths]
      common.require_files([epath.Path(p) for p in files], DATASET,
                           fix=f"{len(missing)} subject(s) lack runs ({', '.join(sorted(missing)[:10])}); set "
                               "on_missing_runs='skip_subject' (or 'keep_found_runs') to build without them.")
    skipped = {}
    for subject, paths in missing.items():
      if cfg.on_missing_runs == "skip_subject" or not found[subject]:
        skipped[subject] = paths
      logging.warning("%s: subject %s lacks %d run file(s): %s", DATASET, subject, len(paths), paths)
    grayordinates = cfg.expected_grayordinates
    if isinstance(grayordinates, int):
      grayordinates = (grayordinates,)
    jobs = [preprocess.SubjectJob(subject=s, runs=tuple(found[s]), cache_dir=self._cache_dir(), rois=cfg.rois,
                                  hemisphere=cfg.hemisphere, expected_grayordinates=grayordinates,
                                  expected_timepoints=cfg.expected_timepoints)
            for s in subjects if s not in skipped]
    if not jobs:
      raise common.ReleaseError(f"{DATASET}: every subject was skipped for missing runs: {sorted(skipped)}.")
    return jobs, skipped

  def _run_jobs(self, jobs: list[preprocess.SubjectJob], atlas: cifti.GlasserAtlas) -> list[preprocess.SubjectSummary]:
    """Preprocesses every subject (in parallel processes), in subject order; cached subjects are not redone."""
    cfg = self.builder_config
    todo = [j for j in jobs if preprocess.finished(j) is None]
    logging.info("%s: %d subjects, %d cached, %d to preprocess with %d worker(s)", DATASET, len(jobs),
                 len(jobs) - len(todo), len(todo), cfg.num_workers)
    if todo and cfg.num_workers > 1:
      context = multiprocessing.get_context(cfg.start_method)
      with concurrent.futures.ProcessPoolExecutor(min(cfg.num_workers, len(todo)), mp_context=context) as pool:
        futures = [pool.submit(preprocess.process_subject, job, atlas) for job in todo]
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
          future.result()  # re-raises a worker's ReleaseError here, naming the file
          logging.info("%s: %d/%d subjects preprocessed", DATASET, done, len(todo))
    else:
      for job in todo:
        preprocess.process_subject(job, atlas)
    return [preprocess.process_subject(job, atlas) for job in jobs]  # all cached now: reads the summaries

  def _split_generators(self, dl_manager):
    root = common.manual_path(dl_manager.manual_dir, DATASET, "one folder per HCP subject with "
                              f"{HCP_FILE_PATTERN.format(subject='<subject>', run='<run>')}")
    atlas = cifti.GlasserAtlas.load(self._atlas_path(root))
    jobs, skipped = self._plan(root)
    summaries = self._run_jobs(jobs, atlas)
    self.info.metadata.update(self._metadata(summaries, skipped, atlas))
    return {SPLIT: self._generate_examples(summaries)}

  def _metadata(self, summaries: list[preprocess.SubjectSummary], skipped: dict, atlas: cifti.GlasserAtlas) -> dict:
    cfg = self.builder_config
    voxels = {s.num_voxels for s in summaries}
    if len(voxels) > 1:
      logging.warning("%s: subjects have different ROI voxel counts %s (different grayordinate axes); the pipeline "
                      "pads them with voxel_padding='wrap'.", DATASET, sorted(voxels))
    steps = sorted({round(s.tr_s, 4) for s in summaries})
    return common.dataset_metadata(
        layout="per_subject", response="bold", tr_s=steps[0],
        subjects=[{"name": s.subject, "num_voxels": s.num_voxels, "runs": list(s.runs), "roi_sizes": s.roi_sizes}
                  for s in summaries],
        segment_trs={SPLIT: [n for s in summaries for n in s.run_trs]},
        segment_subjects={SPLIT: [k for k, s in enumerate(summaries) for _ in s.runs]},
        repeats={SPLIT: 1},
        segment_runs={SPLIT: [r for s in summaries for r in s.runs]},
        rois=list(cfg.rois), hemisphere=cfg.hemisphere, atlas=str(cfg.atlas_path), atlas_numbering=atlas.numbering,
        tr_s_found=steps, skipped_subjects=skipped,
        mindvis_windows={"window": 1, "temporal_average": 10, "stride": 10, "hrf_shift_trs": 0, "pad_multiple": 16,
                         "voxel_padding": "wrap"},
    )

  def _generate_examples(self, summaries: list[preprocess.SubjectSummary]):
    """One record per TR, streamed from the cache one subject-run at a time."""
    cache_dir = self._cache_dir()
    key, segment = 0, 0
    frames = common.empty_frames(None)
    for subject, summary in enumerate(summaries):
      for _, series in preprocess.load_runs(cache_dir, summary):
        for t in range(series.shape[0]):
          yield key, {
              "segment": segment, "tr": t, "frames": frames, "caption": "", "clip_id": -1, "scene_cut": False,
              "labels": {}, "fmri": series[t][None].astype(np.float32), "subject": subject,
          }
          key += 1
        segment += 1


__all__ = ["Builder", "HcpConfig", "hcp_config"]
