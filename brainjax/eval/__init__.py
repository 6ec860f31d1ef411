"""Evaluation: the papers' reconstruction metrics (metrics.py).

The classifiers the N-way tests use live with the models: brainjax.models.vit
(google/vit-base-patch16-224, ImageNet) and brainjax.models.videomae
(MCG-NJU/videomae-base-finetuned-kinetics, Kinetics-400).
"""

from brainjax.eval.metrics import (
    FrameIndexSummary,
    NWayResult,
    VideoSummary,
    derangement,
    draw_distractors,
    frame_scores,
    gt_class_sets,
    n_way_chance,
    n_way_hits,
    n_way_top_k,
    per_frame_index,
    per_video,
    psnr,
    shuffled_pairs,
    ssim,
)

__all__ = [
    "FrameIndexSummary", "NWayResult", "VideoSummary", "derangement", "draw_distractors", "frame_scores",
    "gt_class_sets", "n_way_chance", "n_way_hits", "n_way_top_k", "per_frame_index", "per_video", "psnr",
    "shuffled_pairs", "ssim",
]
