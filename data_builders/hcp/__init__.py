"""TFDS builder for HCP-1200 resting state (MinD-Vis's MBM pretraining corpus)."""

from data_builders.hcp.hcp_dataset_builder import Builder, HcpConfig, hcp_config

__all__ = ["Builder", "HcpConfig", "hcp_config"]
