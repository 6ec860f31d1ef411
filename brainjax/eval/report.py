"""The evaluation report: one self-contained HTML page a browser opens from disk.

  write_report(path, metrics, clips, config)   report.html: the metrics with their baselines, per
                                               frame index and per subject, the reconstructed test
                                               clips next to the ground truth (animated GIFs,
                                               referenced relatively), and the run's config

Plain HTML with inline CSS, no scripts and nothing fetched from the network, so
the page works offline and from a copied directory (`gs://.../evaluate/` pulled
with gsutil -m cp -r). `metrics` is what stage evaluate writes to metrics.json;
`clips` are dicts {gif, subject, record, caption, ssim, psnr} with `gif` relative
to the page.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
.note { color: #666; font-size: 13px; }
.clips { display: flex; flex-wrap: wrap; gap: 16px; }
.clip { width: 300px; font-size: 13px; }
.clip img { image-rendering: pixelated; width: 100%; border: 1px solid #ddd; }
pre { background: #f7f7f7; padding: 10px; font-size: 12px; overflow-x: auto; }
"""

BASELINE_TITLES = {"chance": "chance", "shuffled": "shuffled pairs", "mean_fmri": "mean-fMRI condition",
                   "caption": "true caption (text-to-video)", "ridge": "ridge fMRI → caption"}


def _fmt(value: Any, std: Any = None, digits: int = 3) -> str:
  if value is None:
    return "&ndash;"
  text = f"{value:.{digits}f}"
  return text + (f" &plusmn; {std:.{digits}f}" if std is not None else "")


def _headline_rows(metrics: Mapping[str, Any], columns: Sequence[str]) -> list[list[str]]:
  rows = []
  for name, title, digits in (("ssim", "SSIM", 3), ("psnr", "PSNR (dB)", 2)):
    block = metrics[name]
    row = [title, _fmt(block["mean"], block["std"], digits)]
    row += [_fmt(block["baselines"].get(c, {}).get("mean"), None, digits) for c in columns]
    rows.append(row)
  for kind, title in (("image_nway", "image"), ("video_nway", "video")):
    for entry in metrics.get(kind, {}).get("results", []):
      capped = "" if entry["n"] == entry["requested"] else f" (asked {entry['requested']})"
      row = [f"{title} {entry['n']}-way top-{entry['top_k']}{capped}", _fmt(entry["mean"], entry["binomial_std"])]
      row += [_fmt(entry["baselines"].get(c)) for c in columns]
      rows.append(row)
  motion = metrics.get("motion")
  if motion:
    baselines = motion["baselines"]
    rows.append([f"motion direction agreement ({motion['scored']} clips)", _fmt(motion["direction_agreement"])]
                + [_fmt(baselines.get(c)) for c in columns])
    steps = motion["baseline_step_px"]
    rows.append([f"object step, px per frame (ground truth {_fmt(motion['gt_step_px'], None, 1)})",
                 _fmt(motion["step_px"], None, 1)] + [_fmt(steps.get(c), None, 1) for c in columns])
  return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
  return f"<table><tr>{head}</tr>{body}</table>"


def _frame_index_table(metrics: Mapping[str, Any]) -> str:
  t = len(metrics["ssim"]["per_frame_index"]["mean"])
  rows = [["SSIM"] + [_fmt(m, s) for m, s in zip(metrics["ssim"]["per_frame_index"]["mean"],
                                                  metrics["ssim"]["per_frame_index"]["std"])]]
  rows.append(["PSNR (dB)"] + [_fmt(m, s, 2) for m, s in zip(metrics["psnr"]["per_frame_index"]["mean"],
                                                             metrics["psnr"]["per_frame_index"]["std"])])
  for entry in metrics.get("image_nway", {}).get("results", []):
    rows.append([f"image {entry['n']}-way"] + [_fmt(m) for m in entry["per_frame_index"]])
  return _table(["frame"] + [str(i) for i in range(t)], rows)


def _subject_table(per_subject: Mapping[str, Any]) -> str:
  keys = [k for k in next(iter(per_subject.values())) if k != "samples"]
  rows = [[html.escape(s), str(v["samples"])] + [_fmt(v[k]) for k in keys] for s, v in per_subject.items()]
  return _table(["subject", "samples"] + keys, rows)


def _clips_html(clips: Sequence[Mapping[str, Any]], panels: Sequence[str]) -> str:
  out, subjects = [], sorted({c["subject"] for c in clips})
  for subject in subjects:
    out.append(f"<h3>subject {subject}</h3><div class='clips'>")
    for c in (c for c in clips if c["subject"] == subject):
      out.append(
          f"<div class='clip'><img src='{html.escape(c['gif'])}' alt='test clip {c['record']}'>"
          f"<div>{html.escape(c['caption'])}</div>"
          f"<div class='note'>stimulus TR {c['record']} &middot; SSIM {c['ssim']:.3f} &middot; "
          f"PSNR {c['psnr']:.2f} dB</div></div>")
    out.append("</div>")
  legend = " | ".join(panels)
  return f"<p class='note'>Each GIF, left to right: {html.escape(legend)}.</p>" + "".join(out)


def write_report(path: str | epath.PathLike, metrics: Mapping[str, Any], clips: Sequence[Mapping[str, Any]],
                 config: Mapping[str, Any], *, panels: Sequence[str] = ("ground truth", "reconstruction"),
                 title: str = "brainjax evaluation") -> epath.Path:
  """Writes the report page to `path` (see the module docstring); returns the path."""
  columns = ["chance"] + [b for b in metrics.get("baselines", ()) if b != "chance"]
  header = ["metric", "reconstruction"] + [BASELINE_TITLES.get(c, c) for c in columns]
  setup = metrics.get("setup", {})
  parts = [
      "<!DOCTYPE html><html><head><meta charset='utf-8'>",
      f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
      f"<h1>{html.escape(title)}</h1>",
      f"<p>{metrics['samples']} test windows"
      + "".join(f" &middot; {html.escape(str(k))}: {html.escape(str(v))}" for k, v in setup.items()) + "</p>",
      "<h2>Metrics</h2>", _table(header, _headline_rows(metrics, columns)),
      "<p class='note'>SSIM / PSNR: per frame, averaged per video, mean &plusmn; std over videos. N-way top-K "
      "(MinD-Video): mean accuracy &plusmn; mean binomial std over samples; the image classifier scores each "
      "frame, the video classifier each clip. Baselines: chance = the accuracy of predictions independent of "
      "the ground truth; shuffled pairs = each reconstruction scored against another clip's ground truth; "
      "mean-fMRI condition = generated from the mean test fMRI (no sample-specific information), same seeds."
      + (" Motion (brainjax.eval.motion): the saturated object tracked in every frame; agreement = the share of "
         "clips whose ground truth moves one clear way in which the object's net displacement points within 45 "
         "degrees of it; step = the median distance it moves from frame to frame." if metrics.get("motion") else "")
      + "</p>",
  ]
  for note in metrics.get("notes", ()):
    parts.append(f"<p class='note'>Note: {html.escape(note)}</p>")
  parts += ["<h2>Per frame index</h2>", _frame_index_table(metrics)]
  if metrics.get("per_subject"):
    parts += ["<h2>Per subject</h2>", _subject_table(metrics["per_subject"])]
  if clips:
    parts += ["<h2>Test clips</h2>", _clips_html(clips, panels)]
  parts += ["<h2>Config</h2>", f"<pre>{html.escape(json.dumps(config, indent=2, sort_keys=True, default=str))}</pre>",
            "</body></html>"]
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(parts))
  return path
