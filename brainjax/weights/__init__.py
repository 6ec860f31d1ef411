"""Weights in and out: PyTorch (transformers/diffusers) checkpoints <-> Flax param trees.

`mapping` holds the declarative rule tables (one per model, both directions);
`checkpoint_io` reads and writes the config.json + safetensors directory layout
(local or gs://). The model files (e.g. brainjax.models.clip) own their tables.
"""

from brainjax.weights.checkpoint_io import (
    Checkpoint,
    CheckpointError,
    CheckpointNotFoundError,
    read_checkpoint,
    read_config,
    read_state_dict,
    write_checkpoint,
)
from brainjax.weights.mapping import (
    CONV,
    IDENTITY,
    LINEAR,
    ConversionError,
    Rule,
    Table,
    Transform,
    conv,
    embedding,
    flatten,
    linear,
    norm,
    param,
    prefixed,
    unflatten,
)

__all__ = [
    "CONV", "IDENTITY", "LINEAR", "Checkpoint", "CheckpointError", "CheckpointNotFoundError", "ConversionError",
    "Rule", "Table", "Transform", "conv", "embedding", "flatten", "linear", "norm", "param", "prefixed",
    "read_checkpoint", "read_config", "read_state_dict", "unflatten", "write_checkpoint",
]
