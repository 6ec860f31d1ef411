"""Grain pipelines: stimulus-TR records -> fMRI windows in the common schema.

Every example the pipeline yields follows the schema of DESIGN.md §5:

  fmri      float32[window, voxels]   z-scored, hemodynamically shifted
  frames    uint8[T, H, W, 3]         the frames shown during the stimulus TR
  caption   str                       "A. Then B." when the TR spans a cut
  subject   int32,  clip_id  int64,   repeat int32 (-1: repeats averaged)
  labels    {key: int32} for the dataset's `label_keys` (metadata; the synthetic benchmark's are
            category, colour, direction, speed, scene; real datasets may have none)

Real datasets (data_builders/<name>, built beforehand with `python -m brainjax.data.build`) come in the
layouts of data_builders/common.py: 'shared' records hold every subject's responses, 'per_subject' records
belong to the subject of their segment (`segment_subjects`). 'beta' datasets (one response per trial) are read
with window 1 and no shift. Repeats a subject did not see are listed in the metadata (`missing_repeats`):
averaging uses the present repeats only and `repeats='each'` skips the missing ones.

For stimulus TR t of a segment, `fmri[j]` is the volume at TR
t + hrf_shift_trs + j (j < window), so the window starts `hrf_shift_trs` TRs
after the stimulus to cover the hemodynamic delay; windows that would run past
the end of the segment are not formed (the shift never borrows from the next
segment). `temporal_average` > 1 averages that many consecutive TRs into each
window element (the MinD-Vis lineage averages ~8 s for pretraining).

Subjects with different voxel counts share a batch only when
`voxel_padding='wrap'` pads every subject to one length (as MinD-Video did);
otherwise the pipeline refuses to mix them.

Several datasets at once (Brain Netflix's joint multi-dataset, multi-subject
training): `make_mixture_source` joins one FmriWindowSource per dataset into a
`MixtureSource`. Its examples add

  dataset          int32   index in the list (0: the stage's main dataset)
  subject          int32   GLOBAL subject id: dataset 0's subjects first, then
                           dataset 1's, ... (offset = all subjects of the
                           earlier datasets, read or not, so ids never move
                           when a subject selection changes)
  dataset_subject  int32   the subject's index within its dataset
  num_voxels       int32   the subject's real voxel count

and every `fmri` is padded past `num_voxels` to the mixture's length (the
largest subject rounded up to `pad_multiple`, or `num_voxels` of the main
dataset's config). The models take `num_voxels` and ignore the padding (zeroed,
hidden from attention, out of the loss), so `voxel_padding` only chooses the
fill: 'wrap' repeats the subject's voxels, 'none' pads with zeros. Stages
configure the list with `config.<stage>.extra_datasets` (brainjax/stages/common.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from brainjax import config as cfg
from brainjax.data import registry
from brainjax.config import ConfigError

LABEL_KEYS = ("category", "colour", "direction", "speed", "scene")
SPLITS = ("train", "test", "rest")


@dataclasses.dataclass(frozen=True)
class WindowSpec:
  window: int = 2
  hrf_shift_trs: int = 2
  temporal_average: int = 1
  stride: int = 1                 # step between window starts, in TRs
  repeats: str = "average"        # 'average' | 'each'
  voxel_padding: str = "none"     # 'none' | 'wrap'
  num_voxels: int = 0             # padded length; 0 = max over subjects rounded up to pad_multiple
  pad_multiple: int = 16          # MBM patch size: voxel vectors are wrap-padded to a multiple of it

  @classmethod
  def from_config(cls, data: ml_collections.ConfigDict) -> "WindowSpec":
    return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

  @property
  def span_trs(self) -> int:
    """TRs a window covers after the shift."""
    return self.window * self.temporal_average


REAL_DATASETS = registry.REAL_NAMES


def _check_dataset_name(name: str) -> None:
  if name not in registry.DATASETS:
    raise ConfigError(f"config.data.name = {name!r}: unknown dataset; choose 'synthetic' or one of {REAL_DATASETS}.")


def _real_builder_class(data: ml_collections.ConfigDict):
  """The builder class of a real dataset and the builder config `config.data.builder_config` names."""
  try:
    cls = registry.builder_class(data.name)
  except ValueError as e:
    raise ConfigError(f"config.data.name = {data.name!r}: {e}") from e
  presets = [c.name for c in cls.BUILDER_CONFIGS]
  if data.builder_config not in presets:
    raise ConfigError(f"config.data.builder_config = {data.builder_config!r}: the {data.name} builder's configs are "
                      f"{presets}; set --config.data.builder_config to one of them.")
  return cls, data.builder_config


def build_command(data: ml_collections.ConfigDict) -> str:
  """The command that prepares the dataset `config.data` names."""
  command = f"python -m brainjax.data.build {data.name} --manual_dir=<your copy of the release>"
  if data.data_dir:
    command += f" --data_dir={data.data_dir}"
  return command + f" --config={data.builder_config}"


def synthetic_builder_config(data: ml_collections.ConfigDict):
  """The builder config `config.data` names: a preset ('demo', 'full256') or a custom `data.spec`."""
  synthetic_builder = registry.builder_module("synthetic")
  from brainjax.data import synthetic

  presets = {c.name: c for c in synthetic_builder.Builder.BUILDER_CONFIGS}
  if data.get("spec"):
    try:
      spec = synthetic.SyntheticSpec(**_spec_kwargs(data.spec))
    except TypeError as e:
      raise ConfigError(f"config.data.spec: {e}; the fields are those of brainjax.data.synthetic.SyntheticSpec.")
    return synthetic_builder.builder_config_for(spec)
  if data.builder_config not in presets:
    raise ConfigError(f"config.data.builder_config = {data.builder_config!r}: choose one of {sorted(presets)} "
                      "or give a custom config.data.spec.")
  return presets[data.builder_config]


def load_builder(data: ml_collections.ConfigDict, *, prepare: bool = True):
  """The TFDS builder named by `config.data`, generated on first use."""
  return _load_builder(data.to_json(sort_keys=True) if hasattr(data, "to_json") else json.dumps(data), prepare)


@functools.lru_cache(maxsize=8)
def _load_builder(data_json: str, prepare: bool):
  # Cached: stages build several sources from one dataset; TFDS re-reads its
  # metadata (and warns about custom configs) on every construction.
  data = ml_collections.ConfigDict(json.loads(data_json))
  _check_dataset_name(data.name)
  if data.name != "synthetic":
    return _load_real_builder(data, prepare)
  synthetic_builder = registry.builder_module("synthetic")

  config = synthetic_builder_config(data)
  data_dir = str(epath.Path(data.data_dir).expanduser()) if data.data_dir else None
  builder = synthetic_builder.Builder(config=config, data_dir=data_dir, file_format="array_record")
  if prepare and not builder.is_prepared():
    if jax.process_index() == 0:
      logging.info("generating the synthetic benchmark into %s (first use; reused afterwards)", builder.data_dir)
      builder.download_and_prepare()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("brainjax_data_prepared")
    builder = synthetic_builder.Builder(config=config, data_dir=data_dir, file_format="array_record")
  return builder


def _load_real_builder(data: ml_collections.ConfigDict, prepare: bool):
  """A real dataset's builder. Real data are never built on first use (building reads the user's copy of the
  release, which the training config does not name, and can take hours): a missing dataset is an error that
  gives the build command."""
  cls, config = _real_builder_class(data)
  data_dir = str(epath.Path(data.data_dir).expanduser()) if data.data_dir else None
  builder = cls(config=config, data_dir=data_dir, file_format="array_record")
  if prepare and not builder.is_prepared():
    raise ConfigError(f"the {data.name} dataset (config {config!r}) is not prepared in "
                      f"{data_dir or 'the default TFDS data_dir'}; build it once with\n  {build_command(data)}")
  return builder


def _spec_kwargs(spec: Any) -> dict:
  spec = spec.to_dict() if isinstance(spec, ml_collections.ConfigDict) else dict(spec)
  return {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}


class FmriWindowSource:
  """Random-access source of windows (a Grain data source: `__len__`, `__getitem__`)."""

  def __init__(self, records, metadata: dict, split: str, subjects: Sequence[int], spec: WindowSpec):
    if split not in SPLITS:
      raise ConfigError(f"split {split!r}: must be one of {SPLITS}.")
    self._records = records
    self._spec = spec
    self._split = split
    self._metadata = metadata
    self.layout = metadata.get("layout", "shared")
    self.response = metadata.get("response", "bold")
    self.label_keys = tuple(metadata.get("label_keys", LABEL_KEYS))
    if self.response == "beta":
      _require_trial_window(spec, "this dataset")
    voxels = [s["num_voxels"] for s in metadata["subjects"]]
    self.dataset_subjects = len(voxels)
    for s in subjects:
      if not 0 <= s < len(voxels):
        raise ConfigError(f"config.data.subjects contains {s}; this dataset has subjects 0..{len(voxels) - 1}.")
    self.subjects = tuple(subjects)
    self.subject_voxels = {s: int(voxels[s]) for s in subjects}  # real voxel count of each subject read
    self.num_voxels = self._target_voxels([voxels[s] for s in subjects])
    lengths = metadata["segment_trs"][split]
    self._missing = _missing_repeats(metadata, split)
    self._index = self._build_index(lengths)
    if len(self._index) == 0:
      raise ConfigError(
          f"no fMRI window fits in the {split} segments (lengths {sorted(set(lengths))} TRs): "
          f"hrf_shift_trs ({spec.hrf_shift_trs}) + window ({spec.window}) x temporal_average "
          f"({spec.temporal_average}) must not exceed a segment; reduce them.")

  def _target_voxels(self, counts: list[int]) -> int:
    spec = self._spec
    if spec.voxel_padding == "none":
      if len(set(counts)) > 1:
        raise ConfigError(
            f"subjects {list(self.subjects)} have different voxel counts {counts}; set "
            "config.data.voxel_padding='wrap' to pad them to one length, or train one subject at a time.")
      return counts[0]
    target = spec.num_voxels or -(-max(counts) // spec.pad_multiple) * spec.pad_multiple
    if target < max(counts):
      raise ConfigError(f"config.data.num_voxels = {spec.num_voxels} is smaller than the largest subject "
                        f"({max(counts)} voxels); raise it or set it to 0 (automatic).")
    return target

  def _build_index(self, lengths: Sequence[int]) -> np.ndarray:
    """Rows (subject, first record of the stimulus TR, first fMRI record, repeat)."""
    spec = self._spec
    rows, owners = [], []
    offset = 0
    shift = spec.hrf_shift_trs if self._split != "rest" else 0
    owner_of = self._metadata.get("segment_subjects", {}).get(self._split) if self.layout == "per_subject" else None
    if self.layout == "per_subject" and owner_of is None:
      raise ValueError(f"a per_subject dataset must list segment_subjects for the {self._split} split; rebuild it.")
    for segment, length in enumerate(lengths):
      for t in range(0, length - shift - spec.span_trs + 1, spec.stride):
        rows.append((offset + t, offset + t + shift))
        owners.append(owner_of[segment] if owner_of is not None else -1)
      offset += length
    self.num_records = offset
    repeats = [-1] if spec.repeats == "average" else list(range(self._num_repeats()))
    index = [(s, stim, first, r) for s in self.subjects for r in repeats
             for (stim, first), owner in zip(rows, owners) if owner in (-1, s)]
    if self._missing:
      index = [row for row in index if self._window_present(*row)]
    return np.asarray(index, dtype=np.int64).reshape(-1, 4)

  def _window_present(self, subject: int, stim: int, first: int, repeat: int) -> bool:
    """Whether every record of the window has a response of `subject` (repeat `repeat`, or any when averaging)."""
    missing = self._missing.get(subject)
    if not missing:
      return True
    total = self._num_repeats()
    for record in range(first, first + self._spec.span_trs):
      gone = missing.get(record, ())
      if -1 in gone or (repeat < 0 and len(gone) >= total) or repeat in gone:
        return False
    return True

  def _num_repeats(self) -> int:
    repeats = self._metadata.get("repeats", {})
    if self._split in repeats:
      return int(repeats[self._split])
    return int(self._response(self._records[0], self.subjects[0]).shape[0])

  def _response(self, record, subject: int) -> np.ndarray:
    """float32 [R, V] of `subject` in a record, in either layout."""
    return record["fmri"] if self.layout == "per_subject" else record["fmri"][f"subject_{subject}"]

  def _average_present(self, record_index: int, volume: np.ndarray, subject: int) -> np.ndarray:
    """Mean over the repeats the subject saw (the metadata lists the others; their rows are NaN or absent)."""
    gone = self._missing.get(subject, {}).get(record_index, ())
    keep = [r for r in range(volume.shape[0]) if r not in gone]
    return volume[keep].mean(axis=0)

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, i: int) -> dict[str, Any]:
    subject, stim, first, repeat = (int(v) for v in self._index[i])
    spec = self._spec
    responses = [self._response(self._records[first + k], subject) for k in range(spec.span_trs)]  # [R, V] each
    missing = self._missing.get(subject, {})
    if repeat < 0 and any(first + k in missing for k in range(spec.span_trs)):
      volumes = np.stack([self._average_present(first + k, v, subject) for k, v in enumerate(responses)])
    else:
      volumes = np.stack(responses)  # [span, R, V]
      volumes = volumes.mean(axis=1) if repeat < 0 else volumes[:, repeat]
    fmri = volumes.reshape(spec.window, spec.temporal_average, -1).mean(axis=1)
    if not np.all(np.isfinite(fmri)):
      raise FloatingPointError(f"{self._split} record {first}: subject {subject} has NaN/Inf voxels; "
                               "rebuild the dataset (the files may be corrupt).")
    fmri = fit_voxels(fmri, self.num_voxels)
    stim_record = self._records[stim]
    return {
        "record": np.int64(stim),  # index of the stimulus TR: the key into per-TR caches (CLIP embeddings)
        "fmri": fmri.astype(np.float32),
        "frames": stim_record["frames"],
        "caption": _text(stim_record["caption"]),
        "subject": np.int32(subject),
        "clip_id": np.int64(stim_record["clip_id"]),
        "repeat": np.int32(repeat),
        "labels": {k: np.int32(stim_record["labels"][k]) for k in self.label_keys},
    }


def _missing_repeats(metadata: dict, split: str) -> dict[int, dict[int, set[int]]]:
  """{subject: {record: repeats}} of the responses a subject does not have (metadata `missing_repeats`;
  repeat -1: the record has no response of that subject at all)."""
  out: dict[int, dict[int, set[int]]] = {}
  for subject, pairs in (metadata.get("missing_repeats") or {}).get(split, {}).items():
    for record, repeat in pairs:
      out.setdefault(int(subject), {}).setdefault(int(record), set()).add(int(repeat))
  return out


class StimulusSource:
  """The stimulus TRs of a split without fMRI (for training and caching the CLIP towers)."""

  def __init__(self, records, label_keys: Sequence[str] = LABEL_KEYS):
    self._records = records
    self.label_keys = tuple(label_keys)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int) -> dict[str, Any]:
    record = self._records[i]
    return {"record": np.int64(i), "frames": record["frames"], "caption": _text(record["caption"]),
            "clip_id": np.int64(record["clip_id"]),
            "labels": {k: np.int32(record["labels"][k]) for k in self.label_keys}}


def make_stimulus_source(data: ml_collections.ConfigDict, split: str) -> StimulusSource:
  if split == "rest":
    raise ConfigError("the rest split has no stimulus; use 'train' or 'test'.")
  builder = load_builder(data)
  label_keys = dict(builder.info.metadata or {}).get("label_keys", LABEL_KEYS)
  return StimulusSource(builder.as_data_source(split=split), label_keys)


def _text(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def fit_voxels(fmri: np.ndarray, num_voxels: int) -> np.ndarray:
  """Wrap-pads the last axis to `num_voxels` (repeating voxels from the start, as MinD-Vis does)."""
  extra = num_voxels - fmri.shape[-1]
  if extra < 0:
    raise ValueError(f"{fmri.shape[-1]} voxels do not fit in {num_voxels}")
  if extra == 0:
    return fmri
  return np.pad(fmri, [(0, 0)] * (fmri.ndim - 1) + [(0, extra)], mode="wrap")


def make_source(data: ml_collections.ConfigDict, split: str, spec: WindowSpec | None = None) -> FmriWindowSource:
  builder = load_builder(data)
  records = builder.as_data_source(split=split)
  metadata = dict(builder.info.metadata)
  _check_record_order(records, metadata, split)
  # No subjects listed: all of the dataset's (MinD-Vis pretrains on every HCP subject).
  subjects = tuple(data.subjects) or tuple(range(len(metadata["subjects"])))
  return FmriWindowSource(records, metadata, split, subjects, spec or WindowSpec.from_config(data))


def dataset_key(data: ml_collections.ConfigDict) -> str:
  """What identifies a dataset's subjects: its name and builder config (a custom spec by its digest),
  not where its files are. Global subject tables (model.json) are keyed by it."""
  if data.name == "synthetic":
    return f"synthetic/{synthetic_builder_config(data).name}"
  return f"{data.name}/{data.builder_config}"


# Why pad to one length instead of batching per subject: one static batch shape
# is one compiled step for every subject and dataset (per-subject batches would
# compile once per voxel count and leave devices idle on small subjects), and
# every global batch mixes datasets and subjects, as Brain Netflix's
# ConcatDataset + shuffle does: the shared encoder gets gradients from all
# subjects each step and the contrastive loss draws negatives across datasets.
# The price is the padding's compute. The models mask it out (see
# brainjax/models/mbm.py), so it never reaches a loss.
class MixtureSource:
  """Several datasets' windows as one Grain data source (see the module docstring).

  Examples are dataset 0's windows, then dataset 1's, ...; `make_iterator`
  shuffles the whole, so each window is seen once per epoch and datasets are
  drawn in proportion to their size. With `weights` (one per dataset),
  `make_iterator` instead interleaves the datasets in those proportions (each
  dataset reshuffled and repeated on its own) and an epoch is `len(self)`
  examples.
  """

  variable_voxels = True  # examples carry `num_voxels`; models must be given it

  def __init__(self, sources: Sequence[FmriWindowSource], keys: Sequence[str], *, num_voxels: int = 0,
               pad_multiple: int = 16, fill: str = "wrap", weights: Sequence[float] | None = None):
    if not sources:
      raise ValueError("a mixture needs at least one dataset")
    if len(keys) != len(sources):
      raise ValueError(f"{len(keys)} dataset keys for {len(sources)} datasets")
    if weights is not None and (len(weights) != len(sources) or min(weights) <= 0):
      raise ConfigError(f"dataset weights {list(weights)}: give one positive weight per dataset ({len(sources)}).")
    if fill not in ("wrap", "zero"):
      raise ValueError(f"fill {fill!r}: 'wrap' or 'zero'")
    windows = {s._spec.window for s in sources}
    if len(windows) > 1:
      raise ConfigError(f"the datasets of a mixture have different windows {sorted(windows)}; they share one.")
    self.sources = tuple(sources)
    self.dataset_keys = tuple(keys)
    self.weights = tuple(float(w) for w in weights) if weights is not None else None
    self._fill = fill
    lengths = [len(s) for s in sources]
    self._starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    self._ends = np.cumsum(lengths).astype(np.int64)
    counts = [s.dataset_subjects for s in sources]
    self.subject_offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(counts)[:-1]]))
    self.dataset_subjects = int(sum(counts))  # rows of a per-subject patch embedding
    largest = max(n for s in sources for n in s.subject_voxels.values())
    self.num_voxels = num_voxels or -(-largest // pad_multiple) * pad_multiple
    if self.num_voxels < largest:
      raise ConfigError(f"config.data.num_voxels = {num_voxels} is smaller than the largest subject of the "
                        f"datasets ({largest} voxels); raise it or set it to 0 (automatic).")

  @property
  def subject_table(self) -> list[list]:
    """Row g (a global subject id) -> [dataset key, subject index within it]."""
    return [[key, s] for key, source in zip(self.dataset_keys, self.sources) for s in range(source.dataset_subjects)]

  def __len__(self) -> int:
    return int(self._ends[-1])

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"index {i} out of range for a mixture of {len(self)} windows")
    d = int(np.searchsorted(self._ends, i, side="right"))
    return self._example(d, i - int(self._starts[d]))

  def _example(self, d: int, j: int) -> dict[str, Any]:
    source = self.sources[d]
    ex = source[j]
    local = int(ex["subject"])
    n = source.subject_voxels[local]
    fmri = ex["fmri"][:, :n]
    if self._fill == "wrap":
      fmri = fit_voxels(fmri, self.num_voxels)
    else:
      fmri = np.pad(fmri, [(0, 0), (0, self.num_voxels - n)])
    ex.update(fmri=np.ascontiguousarray(fmri, np.float32), dataset=np.int32(d),
              subject=np.int32(self.subject_offsets[d] + local), dataset_subject=np.int32(local),
              num_voxels=np.int32(n))
    return ex

  def part(self, d: int) -> "_MixturePart":
    """Dataset d's examples (in mixture form) as a source of their own."""
    return _MixturePart(self, d)


class _MixturePart:
  def __init__(self, mixture: MixtureSource, d: int):
    self._mixture, self._d = mixture, d

  def __len__(self) -> int:
    return len(self._mixture.sources[self._d])

  def __getitem__(self, j: int) -> dict[str, Any]:
    return self._mixture._example(self._d, int(j))


def make_mixture_source(datas: Sequence[ml_collections.ConfigDict], split: str, *,
                        weights: Sequence[float] | None = None) -> MixtureSource:
  """One FmriWindowSource per data config (datas[0]: the main dataset, whose window, num_voxels,
  pad_multiple and voxel_padding the mixture uses), joined with global subject ids."""
  main = WindowSpec.from_config(datas[0])
  members = []
  for data in datas:
    # Each dataset keeps its own windowing (shift, averaging, stride, repeats); the mixture does the
    # padding, so a member may hold subjects of any voxel counts.
    spec = dataclasses.replace(WindowSpec.from_config(data), voxel_padding="wrap", num_voxels=0)
    members.append(make_source(data, split, spec))
  return MixtureSource(members, [dataset_key(d) for d in datas], num_voxels=main.num_voxels,
                       pad_multiple=main.pad_multiple, fill="wrap" if main.voxel_padding == "wrap" else "zero",
                       weights=weights)


def _check_record_order(records, metadata: dict, split: str) -> None:
  """The index math assumes generation order; verify it on segment borders."""
  lengths = metadata["segment_trs"][split]
  if len(records) != sum(lengths):
    raise ValueError(f"the {split} split has {len(records)} records but its metadata lists {sum(lengths)}; "
                     "the dataset files are incomplete or stale: delete them and let brainjax regenerate them.")
  offset = 0
  for segment, length in enumerate(lengths[:3]):
    for t in (0, length - 1):
      record = records[offset + t]
      if (int(record["segment"]), int(record["tr"])) != (segment, t):
        raise ValueError(f"the {split} split is not in (segment, TR) order at record {offset + t}; "
                         "rebuild the dataset with this version of brainjax.")
    offset += length


def make_iterator(source, *, batch_size: int, seed: int, shuffle: bool = True, num_epochs: int | None = None,
                  drop_remainder: bool = True, num_threads: int = 4, transform=None) -> grain.DatasetIterator:
  """Shuffled, repeated, per-process, batched; its state is checkpointable.

  `batch_size` is the global batch. Process p of P reads rows
  [p*B/P, (p+1)*B/P) of every global batch, so a global batch holds the same
  examples in the same order whatever the number of processes: a run on one
  host and on a pod slice see identical data. The order depends only on
  `seed`, never on the number of threads or on when the run was interrupted.
  """
  processes, process = jax.process_count(), jax.process_index()
  if batch_size % processes:
    raise ConfigError(f"batch size {batch_size} is not divisible by the {processes} processes.")
  if getattr(source, "weights", None):
    ds = _weighted_mixture(source, seed=seed, shuffle=shuffle, num_epochs=num_epochs)
  else:
    ds = grain.MapDataset.source(source)
    if shuffle:
      ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
  ds = _process_rows(ds, batch_size, process, processes, drop_remainder)
  if transform is not None:
    ds = ds.map(transform)
  ds = ds.batch(batch_size // processes, drop_remainder=drop_remainder)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads))
  return iter(it_ds)


def _weighted_mixture(source: MixtureSource, *, seed: int, shuffle: bool, num_epochs: int | None) -> grain.MapDataset:
  """The datasets of `source` interleaved in proportion to `source.weights`, each shuffled and repeated
  on its own (a new order every pass); an epoch is len(source) examples. A pure function of the index,
  like the unweighted path, so global batches do not depend on the process count."""
  parts = []
  for d in range(len(source.sources)):
    part = grain.MapDataset.source(source.part(d))
    if shuffle:
      part = part.shuffle(seed=int(np.random.SeedSequence([seed, d]).generate_state(1)[0]))
    parts.append(part.repeat(None))
  ds = grain.MapDataset.mix(parts, weights=list(source.weights))
  return ds if num_epochs is None else ds[:len(source) * num_epochs]


def _process_rows(ds: grain.MapDataset, batch_size: int, process: int, processes: int,
                  drop_remainder: bool) -> grain.MapDataset:
  """This process's rows of each consecutive global batch of `ds`."""
  local = batch_size // processes
  full, rest = divmod(len(ds), batch_size)
  length = full * local + (0 if drop_remainder else max(0, min(local, rest - process * local)))

  def global_index(i: int) -> int:
    batch, row = divmod(i, local)
    return batch * batch_size + process * local + row

  return grain.MapDataset.range(length).map(lambda i: ds[global_index(i)])


def data_config(**overrides: Any) -> ml_collections.ConfigDict:
  """`config.data` defaults: the demo's synthetic benchmark, window 2 after a 4 s shift."""
  base = dict(name="synthetic", builder_config="demo", data_dir="", spec=None, subjects=(0,),
              **dataclasses.asdict(WindowSpec()))
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def validate_data(config: ml_collections.ConfigDict, splits: Sequence[str] = ("train", "test")) -> None:
  """Checks `config.data` without touching the files (they may not exist yet)."""
  _check_dataset_name(cfg.get_path(config, "data.name"))
  cfg.require_positive_int(config, "data.window")
  cfg.require_positive_int(config, "data.hrf_shift_trs", allow_zero=True)
  cfg.require_positive_int(config, "data.temporal_average")
  cfg.require_positive_int(config, "data.stride")
  cfg.require_positive_int(config, "data.num_voxels", allow_zero=True)
  cfg.require_positive_int(config, "data.pad_multiple")
  cfg.require_choice(config, "data.repeats", ("average", "each"))
  cfg.require_choice(config, "data.voxel_padding", ("none", "wrap"))
  subjects = cfg.get_path(config, "data.subjects")
  if subjects is None or not all(isinstance(s, int) and s >= 0 for s in subjects):
    raise ConfigError(f"config.data.subjects = {subjects!r}: must be a list of subject indices (empty: all).")
  if len(set(subjects)) != len(subjects):
    raise ConfigError(f"config.data.subjects = {subjects!r} lists a subject twice.")
  if config.data.name != "synthetic":
    _validate_real_data(config.data)
    return
  spec = synthetic_builder_config(config.data).spec
  spec.validate()
  if subjects and max(subjects) >= spec.num_subjects:
    raise ConfigError(f"config.data.subjects = {list(subjects)}: the dataset has subjects 0..{spec.num_subjects - 1}.")
  window = WindowSpec.from_config(config.data)
  for split in splits:
    length = spec.rest_trs if split == "rest" else spec.segment_trs
    shift = 0 if split == "rest" else window.hrf_shift_trs
    if shift + window.span_trs > length:
      raise ConfigError(
          f"config.data: a window of {window.window} x temporal_average {window.temporal_average} TRs after a "
          f"shift of {shift} TRs does not fit in a {length}-TR {split} segment; reduce data.window, "
          "data.temporal_average or data.hrf_shift_trs.")


def _validate_real_data(data: ml_collections.ConfigDict) -> None:
  """What can be checked about a real dataset before it is built: its builder config exists, and a beta
  dataset is read one trial at a time. Subject counts and segment lengths are checked when the data are read."""
  _real_builder_class(data)
  if registry.DATASETS[data.name]["response"] == "beta":
    _require_trial_window(WindowSpec.from_config(data), data.name)


def _require_trial_window(spec: WindowSpec, dataset: str) -> None:
  """Beta datasets hold one response per trial: no window of TRs, no hemodynamic shift, no averaging."""
  if (spec.window, spec.hrf_shift_trs, spec.temporal_average) != (1, 0, 1):
    raise ConfigError(
        f"config.data: {dataset} holds one beta per trial (response 'beta'); set config.data.window=1, "
        f"config.data.hrf_shift_trs=0 and config.data.temporal_average=1 (got window={spec.window}, "
        f"hrf_shift_trs={spec.hrf_shift_trs}, temporal_average={spec.temporal_average}).")
