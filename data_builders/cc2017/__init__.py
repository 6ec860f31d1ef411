"""TFDS builder for cc2017 (Wen et al. 2018) over the real PURR release."""

from data_builders.cc2017.cc2017_dataset_builder import Builder, Cc2017Config, cc2017_config

__all__ = ["Builder", "Cc2017Config", "cc2017_config"]
