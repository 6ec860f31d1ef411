"""The device mesh, logical-axis rules and global arrays.

Models name their parameter and activation axes logically ('embed', 'mlp',
'act_batch', ...). One rules table (in the config) maps those names onto the
three mesh axes:

  data    pure data parallelism (parameters replicated),
  fsdp    data parallelism with parameters and optimizer state sharded,
  tensor  tensor (model) parallelism inside a layer.

Changing the parallelism of a run is then a config edit, not a model edit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from brainjax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# The default table. Parameters: 'embed' is the model width (sharded by fsdp),
# 'mlp'/'heads' are the dims tensor parallelism splits. Activations use
# 'act_*' names so that a parameter axis and an activation axis of the same
# size can be placed differently (the batch already occupies data+fsdp).
DEFAULT_LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("act_batch", ("data", "fsdp")),
    ("act_tokens", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("patch", None),
    ("tokens", None),
)


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves one -1 entry so that the product of the axes is `num_devices`."""
  sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
  unknown = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
  for axis, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise ConfigError(f"config.mesh.{axis} = {size}: must be a positive integer or -1 (fill).")
  extra = set(mesh_config) - set(MESH_AXES)
  if extra:
    raise ConfigError(f"config.mesh has unknown axes {sorted(extra)}; the mesh axes are {MESH_AXES}.")
  if len(unknown) > 1:
    raise ConfigError(f"config.mesh: only one axis may be -1, got {unknown}.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if unknown:
    if num_devices % known:
      raise ConfigError(
          f"config.mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not divisible by {known}.")
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ConfigError(
        f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices but "
        f"{num_devices} are in use; set one axis to -1 to fill.")
  return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all devices)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  # Auto axes: XLA's sharding propagation places intermediates, guided by the
  # logical constraints in the models (jax >= 0.7 defaults to Explicit axes).
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def rules_from_config(rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
  """ConfigDicts turn tuples into lists; the flax rules API wants tuples."""
  out = []
  for rule in rules:
    if len(rule) != 2:
      raise ConfigError(f"config.logical_axis_rules entry {rule!r}: must be (logical_name, mesh_axes).")
    name, axes = rule
    if isinstance(axes, list):
      axes = tuple(axes)
    for axis in (axes if isinstance(axes, tuple) else (axes,)):
      if axis is not None and axis not in MESH_AXES:
        raise ConfigError(f"config.logical_axis_rules: {name!r} -> {axis!r} is not a mesh axis {MESH_AXES}.")
    out.append((str(name), axes))
  return tuple(out)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> NamedSharding:
  """Shards the leading (batch) axis as the 'batch' rule says; other axes are whole."""
  axes = dict(rules).get("batch", ("data", "fsdp"))
  return NamedSharding(mesh, P(axes))


def batch_divisor(mesh_sizes: Mapping[str, int], rules: Sequence[tuple[str, Any]]) -> int:
  """How many ways the global batch is split (mesh axis sizes by name); batch sizes must be multiples."""
  axes = dict(rules).get("batch", ("data", "fsdp"))
  axes = axes if isinstance(axes, tuple) else (axes,)
  return int(np.prod([mesh_sizes[a] for a in axes if a is not None]))


def global_batch(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Turns this process's slice of the batch into global jax.Arrays.

  Each process holds `global_batch / process_count` rows; the result is one
  logical array sharded over every device of every process.
  """
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
