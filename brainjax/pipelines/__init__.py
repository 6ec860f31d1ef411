"""Turning test fMRI windows (or captions) into videos: one pipeline object per way of doing it.

`base` holds the protocol (`Reconstruction`, built by a registered module from the
artifacts of a run, `Shared` across the pipelines of one evaluation) and the registry;
`fmri_to_video` (MinD-Video / NeuralFlix, and the mean-fMRI baseline) and
`caption_to_video` (the true-caption and ridge baselines) implement it; `generation`
holds what they share with the stages' sample writers (the configured sampler with
per-sample seeds, VAE decoding, side-by-side GIFs).
"""

from brainjax.pipelines.base import REGISTRY, Reconstruction, Shared, get_pipeline, sample_keys

__all__ = ["REGISTRY", "Reconstruction", "Shared", "get_pipeline", "sample_keys"]
