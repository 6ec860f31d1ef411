r"""Run a recipe's ablations: one workdir per variant, shared stages computed once.

  python -m brainjax.ablate --config=configs/mindvideo.py:demo --workdir=/tmp/ablate
  python -m brainjax.ablate --config=configs/mindvideo.py:demo --workdir=/tmp/ablate \
      --variant="window1:data.window=1" --variant="text_only:align.modalities=('text',)"

Without --variant the recipe's own `config.ablations` (name -> list of
"field=value" overrides) are run. The base recipe runs in `<workdir>/base`;
each variant runs in `<workdir>/<name>`, where the stages whose settings
are identical to the base's, and whose inputs (the "stage:..." paths in their
config) are all reused too, are linked from the base instead of recomputed;
every other stage runs again. The summaries of the last stage of every run are gathered into
`<workdir>/ablation.json` and a Markdown table `<workdir>/ablation.md`.
"""

from __future__ import annotations

import ast
import copy
import json
import os

import ml_collections
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from brainjax import runner
from brainjax.stages import evaluate



def _define_flags() -> None:
  """Command-line flags; defined only when run as a program, so importing this module is side-effect free."""
  global _CONFIG, _WORKDIR, _VARIANTS
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/mindvideo.py:demo.")
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory for all runs (local path).")
  _VARIANTS = flags.DEFINE_multi_string("variant", [], "name:field=value[,field=value...]")
  flags.mark_flags_as_required(["config", "workdir"])


def parse_variant(text: str) -> tuple[str, list[str]]:
  name, sep, overrides = text.partition(":")
  if not sep or not name or not overrides:
    raise ValueError(f"--variant={text!r}: expected name:field=value[,field=value...]")
  return name, _split_overrides(overrides)


def _split_overrides(text: str) -> list[str]:
  """Splits on commas that are not inside brackets or quotes."""
  parts, depth, quote, current = [], 0, None, ""
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      parts.append(current)
      current = ""
      continue
    current += ch
  return parts + [current]


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
  """A copy of `config` with "a.b=value" overrides (values as Python literals, else strings).

  The copy keeps the recipe's field references (e.g. NeuralFlix's one `neuralflix_beta` read by
  several stages), so overriding the referenced field changes every stage that reads it.
  """
  config = copy.deepcopy(config)
  for item in overrides:
    path, sep, raw = item.partition("=")
    if not sep:
      raise ValueError(f"override {item!r}: expected field=value")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    *parents, leaf = path.strip().split(".")
    node = config
    for key in parents:
      if key not in node:
        raise ValueError(f"override {item!r}: config has no field {path!r}")
      node = node[key]
    if leaf not in node:
      raise ValueError(f"override {item!r}: config has no field {path!r}")
    node[leaf] = list(value) if isinstance(value, tuple) and isinstance(node[leaf], (list, tuple)) else value
  return config


def link_shared_stages(base: ml_collections.ConfigDict, variant: ml_collections.ConfigDict,
                       base_dir: epath.Path, variant_dir: epath.Path) -> list[str]:
  """Links every finished base stage whose settings equal the variant's and whose inputs are all linked
  too (so a stage that does not depend on what the variant changes, e.g. the VAE when the fMRI window
  changes, is reused even after a stage that does); returns their names."""
  linked = []
  variant_dir.mkdir(parents=True, exist_ok=True)
  for name in variant.stages:
    if name not in base.stages or runner.changed_settings(runner.stage_fingerprint(base, name),
                                                          runner.stage_fingerprint(variant, name), name):
      continue
    if not (base_dir / name / "DONE.json").exists():
      continue
    if not set(runner.stage_inputs(variant, name)) <= set(linked):
      continue
    target = variant_dir / name
    if not target.exists():
      os.symlink(os.path.abspath(base_dir / name), target)
    linked.append(name)
  return linked


def run_ablation(config: ml_collections.ConfigDict, workdir: str,
                 variants: dict[str, list[str]]) -> dict[str, dict]:
  root = epath.Path(workdir)
  if not str(root).startswith("/"):
    raise ValueError("the ablation workdir must be a local path (variants link the base's stage directories).")
  results = {"base": runner.run(config, str(root / "base"))}
  for name, overrides in variants.items():
    variant = apply_overrides(config, overrides)
    linked = link_shared_stages(config, variant, root / "base", root / name)
    logging.info("variant %s: %s; reusing %s", name, overrides, linked or "nothing")
    results[name] = runner.run(variant, str(root / name))
  last = config.stages[-1]
  table = {name: {"overrides": variants.get(name, []), **summary[last]} for name, summary in results.items()}
  (root / "ablation.json").write_text(json.dumps(table, indent=2, sort_keys=True, default=str))
  (root / "ablation.md").write_text(markdown_table(table))
  return table


def _baselines() -> tuple[str, ...]:
  """evaluate's baselines (`<metric>_<baseline>` next to `<metric>`), registered pipelines included."""
  return ("chance", *evaluate.known_baselines())


_BOOKKEEPING = ("samples", "s_per_sample", "wall_time_s", "steps")


def markdown_table(table: dict[str, dict]) -> str:
  """One row per run, one column per metric; a metric's cell also shows its std and baselines when the
  summary has them ("0.76 ± 0.03 (chance 0.75, shuffled 0.81)"). ablation.json keeps every number."""
  numeric = {k for row in table.values() for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
  baselines = _baselines()

  def auxiliary(key: str) -> bool:
    base = next((key[:-len(suffix)] for suffix in ("_std", *(f"_{b}" for b in baselines)) if key.endswith(suffix)),
                None)
    return key in _BOOKKEEPING or (base is not None and base in numeric)

  metrics = sorted(k for k in numeric if not auxiliary(k))
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)

  def cell(row: dict, metric: str) -> str:
    if metric not in row:
      return ""
    text = fmt(row[metric]) + (f" ± {row[metric + '_std']:.2g}" if metric + "_std" in row else "")
    extras = [f"{b.replace('_', '-')} {fmt(row[f'{metric}_{b}'])}" for b in baselines if f"{metric}_{b}" in row]
    return text + (f" ({', '.join(extras)})" if extras else "")

  lines = ["| variant | overrides | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
  for name, row in table.items():
    lines.append(f"| {name} | {', '.join(row['overrides']) or '-'} | " + " | ".join(cell(row, m) for m in metrics)
                 + " |")
  return "\n".join(lines) + "\n"


def main(argv) -> None:
  del argv
  runner.quiet_library_logs()
  config = _CONFIG.value
  if _VARIANTS.value:
    variants = dict(parse_variant(v) for v in _VARIANTS.value)
  else:
    variants = {k: list(v) for k, v in (config.get("ablations") or {}).items()}
  if not variants:
    raise app.UsageError("no variants: pass --variant=name:field=value or define config.ablations in the recipe.")
  table = run_ablation(config, _WORKDIR.value, variants)
  print(markdown_table(table))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
