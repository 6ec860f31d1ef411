"""Reading and writing the transformers / diffusers checkpoint directory layout.

A checkpoint is a directory (local or `gs://`, through etils.epath) holding

  config.json                                  the model's hyper-parameters
  model.safetensors                            transformers' weights, or
  diffusion_pytorch_model.safetensors          diffusers' weights, or
  <either>.safetensors.index.json + shards     a sharded copy ("weight_map": key -> shard file)

Only safetensors are read. Pickled PyTorch weights (`pytorch_model.bin`,
`.pt`, `.ckpt`, ...) are refused: unpickling runs arbitrary code from the file.
The error message says how to convert such a file once, in a trusted setting.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
from etils import epath

TRANSFORMERS_WEIGHTS = "model.safetensors"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
WEIGHTS_NAMES = (TRANSFORMERS_WEIGHTS, DIFFUSERS_WEIGHTS)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

# safetensors.numpy.load has no bfloat16 (numpy lacks the type), yet many hub
# checkpoints are bf16; ml_dtypes (a jax dependency) provides it.
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


class CheckpointError(ValueError):
  """A checkpoint directory is missing, incomplete or in a format brainjax does not read."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
  """The directory, its config.json or its weights file does not exist."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  config: dict[str, Any]
  state_dict: dict[str, np.ndarray]
  origin: str  # the weights file (or index) read, for error messages


def _contents(directory: epath.Path) -> str:
  try:
    names = sorted(p.name for p in directory.iterdir())
  except OSError:  # only decorates an error message
    return ""
  return f" It contains: {names[:20]}{' ...' if len(names) > 20 else ''}."


def _pickle_refusal(file: epath.Path) -> CheckpointError:
  safe = file.parent / (DIFFUSERS_WEIGHTS if file.name.startswith("diffusion_") else TRANSFORMERS_WEIGHTS)
  one_file = (f"python -c \"import torch, safetensors.torch as st; st.save_file(torch.load('{file}', "
              f"map_location='cpu', weights_only=True), '{safe}', metadata={{'format': 'pt'}})\" "
              f"(weights_only=True restricts unpickling to tensors), or ")
  return CheckpointError(
      f"{file} holds pickled PyTorch weights; brainjax reads only safetensors, because unpickling executes "
      f"arbitrary code stored in the file. Convert it once, in an environment you trust with that file: "
      f"{'' if file.name.endswith('.json') else one_file}load the directory with transformers/diffusers "
      f"`from_pretrained` and write it back with `save_pretrained(out_dir, safe_serialization=True)`.")


def _directory(path: str | epath.PathLike, what: str) -> epath.Path:
  directory = epath.Path(path)
  if not directory.exists():
    raise CheckpointNotFoundError(f"checkpoint directory {directory} does not exist; expected {what}.")
  if not directory.is_dir():
    if directory.suffix in PICKLE_SUFFIXES:
      raise _pickle_refusal(directory)
    raise CheckpointError(f"{directory} is a file; pass the directory that holds it, config.json and the "
                          f"weights ({what}).")
  return directory


def read_config(path: str | epath.PathLike, what: str = "a checkpoint directory with config.json") -> dict[str, Any]:
  directory = _directory(path, what)
  config_file = directory / "config.json"
  if not config_file.exists():
    raise CheckpointNotFoundError(f"{config_file} not found; expected {what}.{_contents(directory)}")
  try:
    return json.loads(config_file.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{config_file} is not valid JSON ({e}).") from e


def load_safetensors(data: bytes, origin: str = "safetensors data") -> dict[str, np.ndarray]:
  """The tensors of one safetensors file (its bytes), as read-only numpy arrays."""
  try:
    views = safetensors.deserialize(data)
  except Exception as e:  # the library raises its own error types
    raise CheckpointError(f"{origin} is not a readable safetensors file ({e}).") from e
  out = {}
  for name, view in views:
    if view["dtype"] not in _DTYPES:
      raise CheckpointError(f"{origin}: tensor {name!r} has dtype {view['dtype']}, which brainjax does not read.")
    out[name] = np.frombuffer(view["data"], dtype=_DTYPES[view["dtype"]]).reshape(view["shape"])
  return out


def _read_sharded(index_file: epath.Path) -> dict[str, np.ndarray]:
  try:
    weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
  except (json.JSONDecodeError, KeyError) as e:
    raise CheckpointError(f"{index_file} is not a safetensors index (expected a 'weight_map' entry).") from e
  state_dict: dict[str, np.ndarray] = {}
  for shard_name in sorted(set(weight_map.values())):
    shard = index_file.parent / shard_name
    if not shard.exists():
      raise CheckpointNotFoundError(f"shard {shard} listed in {index_file} does not exist.")
    state_dict.update(load_safetensors(shard.read_bytes(), str(shard)))
  absent = sorted(set(weight_map) - set(state_dict))
  if absent:
    raise CheckpointError(f"{index_file} lists tensors its shards do not hold: {absent[:20]}")
  return state_dict


def read_state_dict(path: str | epath.PathLike, what: str = "a checkpoint directory",
                    weights_names: Sequence[str] = WEIGHTS_NAMES) -> tuple[dict[str, np.ndarray], str]:
  """(state dict, file read). Tries each weights name, then its sharded index."""
  directory = _directory(path, what)
  for name in weights_names:
    single, index = directory / name, directory / f"{name}.index.json"
    if single.exists():
      return load_safetensors(single.read_bytes(), str(single)), str(single)
    if index.exists():
      return _read_sharded(index), str(index)
  pickled = sorted((p for p in directory.iterdir()
                    if p.suffix in PICKLE_SUFFIXES or p.name.endswith(".bin.index.json")), key=lambda p: p.name)
  if pickled:
    raise _pickle_refusal(pickled[0])
  raise CheckpointNotFoundError(
      f"no weights in {directory}: expected {' or '.join(weights_names)} (or a sharded *.safetensors.index.json); "
      f"expected {what}.{_contents(directory)}")


def read_checkpoint(path: str | epath.PathLike, what: str = "a checkpoint directory",
                    weights_names: Sequence[str] = WEIGHTS_NAMES) -> Checkpoint:
  """config.json and the weights of a transformers/diffusers directory.

  Args:
    path: local or gs:// directory.
    what: what the caller expects there, for error messages, e.g. "a
      transformers CLIP checkpoint directory with config.json and model.safetensors".
  """
  config = read_config(path, what)
  state_dict, origin = read_state_dict(path, what, weights_names)
  return Checkpoint(config, state_dict, origin)


def write_checkpoint(path: str | epath.PathLike, config: Mapping[str, Any], state_dict: Mapping[str, Any],
                     weights_name: str = TRANSFORMERS_WEIGHTS) -> epath.Path:
  """Writes config.json and one safetensors file; returns the directory.

  The safetensors metadata says format 'pt', which transformers' and
  diffusers' `from_pretrained` expect of a PyTorch checkpoint.
  """
  directory = epath.Path(path)
  directory.mkdir(parents=True, exist_ok=True)
  tensors = {k: np.ascontiguousarray(np.asarray(v)) for k, v in state_dict.items()}
  (directory / weights_name).write_bytes(safetensors.numpy.save(tensors, metadata={"format": "pt"}))
  (directory / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
  return directory
