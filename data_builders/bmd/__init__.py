"""TFDS builder for BOLD Moments (OpenNeuro ds005165): single-trial betas, captions and 3-s videos."""

from data_builders.bmd.bmd_dataset_builder import BmdConfig, BmdOptions, Builder, load_pickle_from_release

__all__ = ["BmdConfig", "BmdOptions", "Builder", "load_pickle_from_release"]
