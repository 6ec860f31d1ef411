"""Retrieval between fMRI embeddings and CLIP image embeddings (align's test; NeuroClips and CineNeuron's).

Test windows are split into groups of `candidates` (300 in the papers; chance 1 / candidates);
in each group every window's pooled fMRI embedding retrieves its stimulus TR's mean frame
embedding among the group's, and the other way round.
"""

from __future__ import annotations

import jax
import numpy as np

from brainjax import losses


def embed_windows(model, params, source, batch_size: int = 64, *,
                  with_datasets: bool = False) -> tuple[np.ndarray, ...]:
  """Pooled fMRI embeddings of every window of `source`, with their stimulus record and clip ids
  (and, with `with_datasets`, each window's dataset index: 0 for a single dataset)."""
  per_subject = bool(model.encoder.num_subjects)
  variable = getattr(source, "variable_voxels", False)
  apply = jax.jit(lambda p, x, s, v: model.apply({"params": p}, x, subject=s if per_subject else None,
                                                 num_voxels=v)["embed"])
  embeds, records, clips, datasets = [], [], [], []
  for start in range(0, len(source), batch_size):
    exs = [source[i] for i in range(start, min(len(source), start + batch_size))]
    counts = np.stack([e["num_voxels"] for e in exs]) if variable else None
    embeds.append(np.asarray(apply(params, np.stack([e["fmri"] for e in exs]),
                                   np.stack([e["subject"] for e in exs]), counts)))
    records.extend(int(e["record"]) for e in exs)
    clips.extend(int(e["clip_id"]) for e in exs)
    datasets.extend(int(e.get("dataset", 0)) for e in exs)
  out = (np.concatenate(embeds), np.asarray(records), np.asarray(clips))
  return out + (np.asarray(datasets),) if with_datasets else out


def retrieval(model, params, source, cache: dict[str, np.ndarray] | list[dict[str, np.ndarray]],
              candidates: int) -> dict[str, float]:
  """Top-1 fMRI->image and image->fMRI among `candidates`; the image of a TR is its mean frame embedding.

  With several datasets (`cache`: one per dataset), also per dataset
  (`<metric>/dataset_<d>`, for datasets with at least `candidates` test windows).
  """
  caches = [cache] if isinstance(cache, dict) else list(cache)
  f, records, clips, datasets = embed_windows(model, params, source, with_datasets=True)
  images = np.stack([caches[d]["image_embeds"][r].mean(axis=0) for d, r in zip(datasets, records)])
  # A clip is identified by (dataset, clip_id): ids of different datasets may coincide.
  clips = np.unique(np.stack([datasets, clips], axis=1), axis=0, return_inverse=True)[1].reshape(-1)
  out = _retrieval_scores(f, images, clips, candidates)
  if out is None:
    raise ValueError(f"the test set has {len(f)} windows, fewer than the {candidates} retrieval candidates; "
                     "lower config.align.retrieval_candidates.")
  if len(caches) > 1:
    for d in range(len(caches)):
      rows = datasets == d
      per = _retrieval_scores(f[rows], images[rows], clips[rows], candidates)
      for k, v in (per or {}).items():
        if k.endswith("top1"):
          out[f"{k}/dataset_{d}"] = v
  return out


def _retrieval_scores(f, images, clips, candidates: int) -> dict[str, float] | None:
  groups = [slice(s, s + candidates) for s in range(0, len(f) - candidates + 1, candidates)]
  if not groups:
    return None
  score = lambda q, k, g=None: float(np.mean([losses.retrieval_top1(q[s], k[s], None if g is None else g[s])
                                              for s in groups]))
  return {"retrieval_candidates": candidates, "retrieval_groups": len(groups),
          "fmri_to_image_top1": score(f, images), "image_to_fmri_top1": score(images, f),
          "fmri_to_image_same_clip_top1": score(f, images, clips)}
