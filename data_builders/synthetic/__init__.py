"""TFDS builder for the built-in synthetic fMRI–video benchmark."""

from data_builders.synthetic.synthetic_dataset_builder import Builder, builder_config_for

__all__ = ["Builder", "builder_config_for"]
