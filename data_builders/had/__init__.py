"""TFDS builder for HAD, the Human Action Dataset (OpenNeuro ds004488): ciftify betas + HACS clips."""

from data_builders.had.had_dataset_builder import Builder, HadConfig, had_config

__all__ = ["Builder", "HadConfig", "had_config"]
