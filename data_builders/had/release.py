"""Reading and cross-checking the HAD release (OpenNeuro ds004488; datasets.md §4, §8.4).

Layout (under manual_dir):
  derivatives/ciftify/sub-XX/results/ses-action01_task-action_cycle-{1..4}_beta.dscalar.nii   (180, 59412) betas
  derivatives/ciftify/sub-XX/results/ses-action01_task-action_cycle-{1..4}_label.txt          180 stimulus names
  sub-XX/ses-action01/func/sub-XX_ses-action01_task-action_run-{01..12}_events.tsv           BIDS: zero-padded run
  stimuli/<Category>/v_<Category>_id_<youtube id>_start_<s>_label_1.mp4                       names contain spaces

Traps handled here:
* Run numbers: BIDS events are `run-01` … `run-12`, ciftify's derivatives `run-1` … `run-12`. `run_label` writes
  both; `events_path` takes the BIDS name and falls back to the ciftify spelling for copies renamed that way.
* Beta rows: the GLM (Blink621/HAD-fmri validation/GLM.py) estimates one beta per design column 'category-000' …
  'category-179', so row i is the clip whose events.tsv `trial_type` is i in that cycle's runs; label.txt (and the
  ScalarAxis names) list stimulus names sorted by category NAME. The two orders agree only if the category ids are
  alphabetical, so every row is checked: its name must be the clip events.tsv shows for trial_type i
  (ReleaseError naming the file and row otherwise).
* Cycles: the 180 categories cycle once every 3 runs, so cycle k = runs 3k-2 … 3k, each category once per cycle.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from collections.abc import Sequence

from etils import epath

from data_builders.common import ReleaseError

SESSION = "ses-action01"
STIMULUS_NAME = re.compile(r"^v_(?P<category>.+?)_id_(?P<youtube>.+)_start_(?P<start>[0-9.]+)_label_\d+\.mp4$")


def subject_label(subject: str) -> str:
  """'01' or 'sub-01' -> 'sub-01'."""
  return subject if subject.startswith("sub-") else f"sub-{subject}"


def run_label(run: int, style: str = "bids") -> str:
  """'run-01' (BIDS raw data, events.tsv) or 'run-1' (ciftify derivatives)."""
  if style == "bids":
    return f"run-{run:02d}"
  if style == "ciftify":
    return f"run-{run}"
  raise ValueError(f"style {style!r}: 'bids' or 'ciftify'")


def beta_path(root: epath.Path, subject: str, cycle: int, session: str = SESSION) -> epath.Path:
  return (root / "derivatives" / "ciftify" / subject_label(subject) / "results"
          / f"{session}_task-action_cycle-{cycle}_beta.dscalar.nii")


def label_path(root: epath.Path, subject: str, cycle: int, session: str = SESSION) -> epath.Path:
  return (root / "derivatives" / "ciftify" / subject_label(subject) / "results"
          / f"{session}_task-action_cycle-{cycle}_label.txt")


def events_candidates(root: epath.Path, subject: str, run: int, session: str = SESSION) -> list[epath.Path]:
  """The BIDS name first (run-01), then the ciftify spelling (run-1)."""
  sub = subject_label(subject)
  folder = root / sub / session / "func"
  return [folder / f"{sub}_{session}_task-action_{run_label(run, style)}_events.tsv" for style in ("bids", "ciftify")]


def events_path(root: epath.Path, subject: str, run: int, session: str = SESSION) -> epath.Path:
  """The run's events.tsv as found (BIDS `run-01`, or `run-1`); the BIDS name when neither exists."""
  candidates = events_candidates(root, subject, run, session)
  return next((p for p in candidates if p.exists()), candidates[0])


def cycle_runs(cycle: int, runs_per_cycle: int) -> list[int]:
  """Runs of a cycle (1-based): cycle k = runs (k-1)*n+1 … k*n."""
  return list(range((cycle - 1) * runs_per_cycle + 1, cycle * runs_per_cycle + 1))


def find_subjects(root: epath.Path) -> list[str]:
  """Subjects with a ciftify results folder, sorted ('sub-01', …)."""
  base = root / "derivatives" / "ciftify"
  if not base.exists():
    return []
  return sorted(p.name for p in base.iterdir() if p.is_dir() and re.fullmatch(r"sub-\w+", p.name))


def stimulus_category(name: str, where: str) -> str:
  """The category encoded in a stimulus file name (`v_<Category>_id_…`)."""
  match = STIMULUS_NAME.match(name)
  if not match:
    raise ReleaseError(f"{where}: {name!r} is not a HAD stimulus name (v_<Category>_id_<id>_start_<s>_label_1.mp4).")
  return match.group("category")


@dataclasses.dataclass(frozen=True)
class StimulusIndex:
  """The stimulus folders: the category vocabulary (sorted folder names) and {file name: category}."""

  categories: tuple[str, ...]
  files: dict

  @classmethod
  def scan(cls, root: epath.Path) -> "StimulusIndex":
    base = root / "stimuli"
    if not base.exists():
      raise ReleaseError(f"had: stimulus folder {base} not found; it should hold stimuli/<Category>/*.mp4.")
    categories = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not categories:
      raise ReleaseError(f"had: {base} has no category folders.")
    files = {}
    for category in categories:
      for video in (base / category).iterdir():
        if video.name.endswith(".mp4"):
          files[video.name] = category
    return cls(categories=tuple(categories), files=files)

  def path(self, root: epath.Path, name: str) -> epath.Path:
    return root / "stimuli" / self.files[name] / name


@dataclasses.dataclass(frozen=True)
class Event:
  trial_type: int
  category: str      # the folder in stim_file
  stimulus: str      # the file name (no folder)
  where: str         # file:line, for errors


def read_events(path: epath.Path) -> list[Event]:
  """The stimulus events of one run (`trial_type` is a category id written as a float, e.g. 46.0)."""
  rows = list(csv.DictReader(io.StringIO(path.read_text()), delimiter="\t"))
  if rows and not {"trial_type", "stim_file"} <= set(rows[0]):
    raise ReleaseError(f"{path}: expected columns trial_type and stim_file, found {sorted(rows[0])}.")
  events = []
  for line, row in enumerate(rows, start=2):
    stim = (row.get("stim_file") or "").strip()
    if not stim or stim == "n/a":
      continue
    where = f"{path}:{line}"
    try:
      value = float(row["trial_type"])
    except (TypeError, ValueError):
      raise ReleaseError(f"{where}: trial_type {row['trial_type']!r} is not a category number.") from None
    if value != int(value) or value < 0:
      raise ReleaseError(f"{where}: trial_type {value} is not a category number.")
    category, _, name = stim.rpartition("/")
    if not category:
      raise ReleaseError(f"{where}: stim_file {stim!r} has no category folder (<Category>/<file>.mp4).")
    events.append(Event(trial_type=int(value), category=category, stimulus=name, where=where))
  return events


def read_labels(path: epath.Path) -> list[str]:
  """label.txt: one stimulus file name per line (blank lines ignored)."""
  return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def cycle_events(events_by_run: dict[int, list[Event]], runs: Sequence[int], cycle_name: str) -> dict[int, Event]:
  """{trial_type: event} of one cycle; a category twice in a cycle is an error (each is shown once per cycle)."""
  by_id: dict[int, Event] = {}
  for run in runs:
    for event in events_by_run[run]:
      if event.trial_type in by_id:
        raise ReleaseError(f"{event.where}: trial_type {event.trial_type} appears twice in {cycle_name} (also at "
                           f"{by_id[event.trial_type].where}); each category is shown once per cycle.")
      by_id[event.trial_type] = event
  return by_id
