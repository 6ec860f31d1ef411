"""Builds a dataset from the user's copy of its release: `python -m brainjax.data.build`.

  python -m brainjax.data.build <dataset> --manual_dir=PATH --data_dir=PATH [--config=NAME] [--overwrite]

<dataset> is one of data_builders.NAMES (synthetic, cc2017, hcp, bmd, had, cinebrain); --config names one of the
builder's presets (default: its first); --manual_dir is the release folder (local or gs://); --data_dir is where
the ArrayRecord files go (local or gs://; default: TFDS's). Training configs then name the same dataset, config
and data_dir (config.data.name / builder_config / data_dir).

Progress: TFDS shows a progress bar per split while it generates records. Resuming: a finished build is reported
and skipped (--overwrite rebuilds it). An interrupted build never looks finished (TFDS writes into an
`incomplete.*` folder and renames it at the end); its leftovers are removed and the build starts again from
scratch, except where a builder caches its own intermediate work (HCP caches per subject). The end of a run
prints a summary from the dataset's metadata: records per split and subject, voxels per subject.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import tensorflow_datasets as tfds
from etils import epath

from brainjax.data import registry
from data_builders import common  # the command that builds datasets is the one place brainjax reaches the builders


def make_builder(dataset: str, config, data_dir: str | None):
  """The builder of `dataset` with config `config` (a preset name, None for the first preset, or a config)."""
  cls = registry.builder_class(dataset)
  presets = [c.name for c in cls.BUILDER_CONFIGS]
  if config is None:
    config = presets[0]
  if isinstance(config, str) and config not in presets:
    raise ValueError(f"--config={config}: the {dataset} builder's configs are {presets}.")
  return cls(config=config, data_dir=data_dir, file_format="array_record")


def remove_leftovers(builder) -> list[str]:
  """Deletes the `incomplete.*` folders an interrupted build of this config left behind."""
  parent = epath.Path(builder.data_dir).parent  # .../<name>/<config>/<version> -> .../<name>/<config>
  removed = []
  if parent.exists():
    for path in parent.glob("incomplete.*"):
      path.rmtree()
      removed.append(str(path))
  return removed


def summary(builder) -> str:
  """Records per split and subject and voxels per subject, from the metadata."""
  meta = dict(builder.info.metadata or {})
  subjects = meta.get("subjects", [])
  names = [s.get("name", f"subject {k}") for k, s in enumerate(subjects)]
  lines = [f"{builder.name}/{builder.builder_config.name} in {builder.data_dir}",
           f"  layout {meta.get('layout', 'shared')}, response {meta.get('response', 'bold')}, "
           f"TR {meta.get('tr_s', '?')} s"]
  for split, lengths in meta.get("segment_trs", {}).items():
    per_subject = _records_per_subject(meta, split, len(subjects))
    counts = ", ".join(f"{n} {c}" for n, c in zip(names, per_subject))
    lines.append(f"  {split}: {sum(lengths)} records in {len(lengths)} segments, repeats "
                 f"{meta.get('repeats', {}).get(split, '?')} ({counts})")
  lines.append("  voxels: " + ", ".join(f"{n} {s.get('num_voxels', '?')}" for n, s in zip(names, subjects)))
  duplicates = meta.get("duplicates") or []
  for d in duplicates:
    lines.append(f"  WARNING: {d['subject']} duplicates {d['duplicate_of']}"
                 + (" (dropped)" if d.get("dropped") else ""))
  return "\n".join(lines)


def _records_per_subject(meta: dict, split: str, num_subjects: int) -> list[int]:
  """Records with a response of each subject: its segments' lengths ('per_subject') or every record less the
  ones listed as entirely missing ('shared')."""
  lengths = meta["segment_trs"][split]
  if meta.get("layout") == "per_subject":
    counts = [0] * num_subjects
    for owner, n in zip(meta["segment_subjects"][split], lengths):
      counts[owner] += n
    return counts
  repeats = meta.get("repeats", {}).get(split, 1)
  missing = (meta.get("missing_repeats") or {}).get(split, {})
  counts = []
  for k in range(num_subjects):
    gone: dict[int, set] = {}
    for record, repeat in missing.get(str(k), []):
      gone.setdefault(record, set()).add(repeat)
    absent = sum(1 for r in gone.values() if -1 in r or len(r) >= repeats)
    counts.append(sum(lengths) - absent)
  return counts


def run(dataset: str, *, manual_dir: str | None, data_dir: str | None = None, config=None,
        overwrite: bool = False, out=sys.stdout) -> object:
  """Builds (or reports) one dataset; returns the prepared builder."""
  registry.check_name(dataset)
  builder = make_builder(dataset, config, data_dir)
  if builder.is_prepared() and not overwrite:
    print(f"already built, skipping (pass --overwrite to rebuild):\n{summary(builder)}", file=out)
    return builder
  if dataset != "synthetic":  # TFDS would only assert; name the folder and what it should hold
    common.manual_path(manual_dir, dataset, "the release files listed by the builder's MANUAL_DOWNLOAD_INSTRUCTIONS")
  if builder.is_prepared():
    epath.Path(builder.data_dir).rmtree()
    print(f"--overwrite: removed {builder.data_dir}", file=out)
  for path in remove_leftovers(builder):
    print(f"removed the leftovers of an interrupted build: {path}", file=out)
  builder = make_builder(dataset, config, data_dir)
  start = time.perf_counter()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  seconds = time.perf_counter() - start
  builder = make_builder(dataset, config, data_dir)
  records = sum(dict(builder.info.metadata or {}).get("num_records", {}).values())
  print(f"built in {seconds:.1f} s ({records / max(seconds, 1e-9):.1f} records/s):\n{summary(builder)}", file=out)
  return builder


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m brainjax.data.build", description=__doc__.split("\n\n")[0])
  parser.add_argument("dataset", choices=registry.NAMES)
  parser.add_argument("--manual_dir", default=None, help="the release folder (local or gs://)")
  parser.add_argument("--data_dir", default=None, help="where the dataset is written (default: TFDS's)")
  parser.add_argument("--config", default=None, help="a preset of the builder (default: its first)")
  parser.add_argument("--overwrite", action="store_true", help="rebuild a finished dataset")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.dataset != "synthetic" and not args.manual_dir:
    print(f"error: --manual_dir is required for {args.dataset}: the folder holding your copy of the release.\n"
          f"{registry.builder_class(args.dataset).MANUAL_DOWNLOAD_INSTRUCTIONS}", file=sys.stderr)
    return 2
  try:
    run(args.dataset, manual_dir=args.manual_dir, data_dir=args.data_dir, config=args.config,
        overwrite=args.overwrite)
  except (ValueError, FileNotFoundError) as e:  # ReleaseError is a ValueError: a bad release or config
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
