"""TFDS builder for CineBrain (HF Fudan-fMRI/CineBrain): per-TR fMRI streamed from the tars, 4-s clips, optional EEG."""

from data_builders.cinebrain.cinebrain_dataset_builder import (Builder, CinebrainConfig, CinebrainOptions,
                                                               find_duplicates, split_blocks)

__all__ = ["Builder", "CinebrainConfig", "CinebrainOptions", "find_duplicates", "split_blocks"]
