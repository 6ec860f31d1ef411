r"""MinD-Vis / Brain Netflix MBM checkpoints and MindVideo fMRI-encoder folders <-> brainjax.

Two tables, each serving both directions (brainjax.weights.mapping), each in its model's file:

`mbm.MBM_TABLE`  MinD-Vis `MAEforFMRI` state dict <-> `MaskedBrainModel` params
  patch_embed.proj.{weight [D,1,P] Conv1d, bias}   patch_embed/{kernel [P,D], bias}
  cls_token, mask_token                            cls_token, mask_token
  blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}   encoder/block_{i}/...
  norm                                             encoder_norm
  decoder_embed, decoder_blocks.{i}..., decoder_norm, decoder_pred    decoder_embed, decoder/block_{i}/..., ...
  pos_embed, decoder_pos_embed   fixed sin-cos buffers: checked against brainjax's table, not stored

`fmri_encoder.FMRI_ENCODER_TABLE`  MindVideo `fMRIEncoder` state dict <-> encoder + head params
  patch_embed.proj, blocks.{i}.{norm1,attn,norm_temp,attn_temp,norm2,mlp}, norm  -> encoder/...
  proj_head.{channel_mapper,projection,fc} (no bias), proj_head.layer_norm      -> head/...
  pos_embed (checked), cls_token, mask_token, logit_scale: present in MindVideo's module but unused by
  its forward pass; brainjax has no such params, so they are dropped on load and written on export.

Where the files come from
-------------------------
* MinD-Vis (`code/sc_mbm/utils.py::save_model`) and BrainNetflixMBM save
  `torch.save({'model': state_dict, 'config': Config_MBM_fMRI(), ...})` to a
  `.pth`. brainjax opens it only with `torch.load(..., weights_only=True)`,
  which rebuilds tensors and plain containers and never runs code from the file.
  The `config` there is an instance of the repo's own class (module `config`);
  weights_only refuses unknown classes, so for the known MinD-Vis config class
  names only, brainjax allow-lists an inert attribute holder of that name (it
  has no methods; the unpickler just fills its `__dict__` with plain values).
  Any other class or function in the file is refused, with how to re-save it.
* MindVideo's `fmri_encoder/` folder holds `config.json` (diffusers ConfigMixin:
  num_voxels, patch_size, embed_dim, in_chans, depth, num_heads, mlp_ratio,
  out_channel, out_dim, use_norm, dropout, window_size, use_temp_attn,
  logit_scale_init_value) and `model.pth` or `diffusion_pytorch_model.bin`.
  brainjax writes `diffusion_pytorch_model.safetensors` (and, on request, a
  weights-only `model.pth` that MindVideo's own `from_pretrained` reads).

Sizes come from the weights (embed_dim, patch_size, depth, decoder sizes, mlp
ratio, voxel count from the pos_embed length as MinD-Vis' stage A2 does);
head counts, which weights cannot tell, come from the checkpoint's config or
keyword overrides.

Command line (paths may be gs://):
  python -m brainjax.convert.mbm mbm-import CHECKPOINT.pth OUT_DIR [--num_heads 16 ...]
  python -m brainjax.convert.mbm encoder-import FMRI_ENCODER_DIR OUT_DIR
  python -m brainjax.convert.mbm encoder-export PARAMS_DIR FMRI_ENCODER_DIR [--torch_pickle]
OUT_DIR / PARAMS_DIR hold `params/` (Orbax) and `model.json`, as a brainjax stage writes them.
"""

from __future__ import annotations

import argparse
import io
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from brainjax.weights import checkpoint_io
from brainjax.weights import mapping as mp
from brainjax import artifacts
from brainjax.models import fmri_encoder, layers, mbm

ConversionError = mp.ConversionError
CheckpointError = checkpoint_io.CheckpointError

# The config classes MinD-Vis (code/config.py) and its copies pickle into their checkpoints.
CONFIG_CLASS_NAMES = ("Config_MBM_fMRI", "Config_MAE_fMRI", "Config_MBM_finetune", "Config_MAE_finetune")
TORCH_NORM_EPS = 1e-5  # torch nn.LayerNorm's default: the only eps MinD-Vis / MindVideo modules have
POS_EMBED_ATOL = 1e-4  # float64- (MinD-Vis) and float32-computed (MindVideo) sin-cos tables differ by ~1e-5
MINDVIDEO_WEIGHTS = "diffusion_pytorch_model.safetensors"
MINDVIDEO_PICKLES = ("model.pth", "diffusion_pytorch_model.bin")  # the names MindVideo's from_pretrained reads


# ----------------------------------------------------------------------------------------- reading .pth safely


class _ConfigRecord:
  """Inert stand-in for a pickled MinD-Vis config object: only holds attributes."""


def _config_stub(full_name: str) -> type:
  module, _, name = full_name.rpartition(".")
  return type(name, (_ConfigRecord,), {"__module__": module, "__qualname__": name})


def _repickle_hint(path: str) -> str:
  return (f"Re-save it once, in an environment where you trust the file and have its code importable: "
          f"python -c \"import torch; c = torch.load('{path}', map_location='cpu', weights_only=False); "
          f"torch.save({{'model': c['model'], 'config': dict(vars(c['config'])) if 'config' in c else {{}}}}, "
          f"'clean.pth')\" and convert clean.pth (plain dicts and tensors only).")


def _import_torch(path: str):
  try:
    import torch  # noqa: PLC0415 -- an optional dependency, only needed for .pth files
  except ImportError as e:
    raise CheckpointError(f"reading {path} needs PyTorch (`pip install torch`, the CPU build is enough); or "
                          f"convert the weights to safetensors where PyTorch is installed.") from e
  return torch


def _weights_only_load(torch, data: bytes, path: str) -> Any:
  """torch.load(weights_only=True); on a refusal, retry only if the unknown globals are MinD-Vis config classes."""
  try:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as refusal:
    unsafe = _unsafe_globals(torch, data)
    if unsafe is None:
      first_line = str(refusal).strip().splitlines()[0] if str(refusal).strip() else type(refusal).__name__
      raise CheckpointError(
          f"{path} is not a PyTorch checkpoint torch.load(weights_only=True) can read ({first_line}). If it is a "
          f"legacy-format or otherwise pickled file, brainjax will not unpickle it. " + _repickle_hint(path)
      ) from refusal
    if any(name.rpartition(".")[2] not in CONFIG_CLASS_NAMES for name in unsafe):
      raise CheckpointError(
          f"{path} holds pickled Python objects besides tensors and plain containers: {unsafe}. brainjax loads "
          f"PyTorch checkpoints only with torch.load(weights_only=True), which never executes code stored in the "
          f"file, and refuses this one. " + _repickle_hint(path)) from refusal
    with torch.serialization.safe_globals([_config_stub(name) for name in unsafe]):
      return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
  except (RuntimeError, ValueError, EOFError) as e:
    raise CheckpointError(f"{path} is not a PyTorch checkpoint torch.load can read ({e}).") from e


def _unsafe_globals(torch, data: bytes) -> list[str] | None:
  """The classes/functions a zip checkpoint's pickle names beyond torch's allow-list (read statically), or None."""
  try:
    return torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
  except Exception:  # not a zip checkpoint: a legacy file, or not torch's at all
    return None


def _to_numpy(torch, value: Any) -> np.ndarray:
  value = value.detach().cpu()
  if value.dtype == torch.bfloat16:  # numpy has no bfloat16; keep the bits exactly
    import ml_dtypes  # noqa: PLC0415
    return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return value.numpy()


def _config_dict(config: Any, path: str) -> dict[str, Any]:
  if config is None:
    return {}
  if isinstance(config, Mapping):
    return dict(config)
  if isinstance(config, _ConfigRecord):
    return dict(vars(config))
  raise CheckpointError(f"{path}: 'config' is a {type(config).__name__}, expected a dict or a MinD-Vis config "
                        f"object.")


def read_torch_checkpoint(path: str | epath.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(state dict as numpy, config dict) of a `.pth` (local or gs://).

  Accepts `{'model': state_dict, 'config': ...}` (MinD-Vis, BrainNetflixMBM,
  MindVideo's wrapped form) or a bare state dict. Optimizer state and other
  entries are ignored.
  """
  path = str(path)
  file = epath.Path(path)
  if not file.exists():
    raise checkpoint_io.CheckpointNotFoundError(f"checkpoint {path} does not exist.")
  torch = _import_torch(path)
  obj = _weights_only_load(torch, file.read_bytes(), path)
  if not isinstance(obj, Mapping):
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a state dict or "
                          f"{{'model': state_dict, 'config': ...}}.")
  state_dict, config = (obj["model"], obj.get("config")) if "model" in obj else (obj, None)
  if not isinstance(state_dict, Mapping):
    raise CheckpointError(f"{path}: 'model' is a {type(state_dict).__name__}, expected a state dict.")
  tensors = {k: _to_numpy(torch, v) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
  others = sorted(set(state_dict) - set(tensors))
  if others:
    raise CheckpointError(f"{path}: state-dict entries that are not tensors: {others[:10]}")
  return tensors, _config_dict(config, path)


# ----------------------------------------------------------------------------------------- shared checks


def _check_positions(state_dict: Mapping[str, np.ndarray], key: str, num_patches: int, dim: int,
                     origin: str) -> None:
  """The checkpoint's fixed position buffer must be the sin-cos table brainjax computes."""
  if key not in state_dict:
    return
  table = np.asarray(state_dict[key], np.float32)
  expected = positions_buffer(num_patches, dim)
  if table.shape != expected.shape:
    raise ConversionError(f"{origin}: {key} has shape {table.shape}, expected {expected.shape} for {num_patches} "
                          f"patches of width {dim}.")
  err = float(np.max(np.abs(table - expected)))
  if err > POS_EMBED_ATOL:
    raise ConversionError(
        f"{origin}: {key} differs from the fixed 1-D sin-cos table by up to {err:.3g}. brainjax uses fixed "
        f"sin-cos positions, as MinD-Vis and MindVideo do; this buffer was changed (e.g. by MindVideo's "
        f"interpolate_pos_embed for another voxel count, or trained), which brainjax cannot represent. "
        f"Convert a checkpoint made for this voxel count.")


def positions_buffer(num_patches: int, dim: int) -> np.ndarray:
  """The originals' `pos_embed` buffer [1, 1 + N, dim]: a zero row for the cls token, then sin-cos."""
  return np.concatenate([np.zeros((1, dim), np.float32), layers.sincos_1d(num_patches, dim)])[None]


def _count(state_dict: Mapping[str, Any], prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
  found = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
  return max(found) + 1 if found else 0


def _require(state_dict: Mapping[str, np.ndarray], key: str, what: str, origin: str) -> np.ndarray:
  if key not in state_dict:
    raise ConversionError(f"{origin} is not {what}: it has no {key!r}. Its keys start with: "
                          f"{sorted(state_dict)[:12]}")
  return np.asarray(state_dict[key])


def _mlp_ratio(hidden: int, dim: int, configured: float | None) -> float:
  """A ratio r with int(dim * r) == hidden, preferring the configured one (the originals' rounding)."""
  for r in ([configured] if configured is not None else []) + [hidden / dim]:
    if int(dim * r) == hidden:
      return float(r)
  return (hidden + 0.5) / dim  # int() truncation then lands on hidden


def _abstract(module: nn.Module, *inputs: Any) -> Any:
  variables = jax.eval_shape(lambda: module.init({"params": jax.random.key(0)}, *inputs))
  return nn.meta.unbox(variables)["params"]


def _as_jax(params: Any, dtype: Any) -> Any:
  return jax.tree.map(lambda x: jnp.asarray(x, dtype), params)


def _unbox(params: Any) -> Any:
  params = nn.meta.unbox(params)
  return params["params"] if set(params) == {"params"} else params


def _require_torch_eps(norm_eps: float, what: str) -> None:
  if norm_eps != TORCH_NORM_EPS:
    raise ConversionError(f"{what} has norm_eps={norm_eps}; the PyTorch original's LayerNorms use torch's default "
                          f"eps {TORCH_NORM_EPS} and cannot be configured, so its outputs would differ. Export a "
                          f"model built with norm_eps={TORCH_NORM_EPS}.")


# ----------------------------------------------------------------------------------------- MBM (MinD-Vis)

_MBM_WHAT = "a MinD-Vis MAEforFMRI checkpoint"


def mbm_config_from_checkpoint(state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any], *,
                               origin: str = "the checkpoint",
                               **overrides: Any) -> tuple[ml_collections.ConfigDict, int]:
  """(brainjax `mbm.model_config`, num_voxels) for a MAEforFMRI state dict and its pickled config.

  Sizes are read off the weights; `num_heads`, `decoder_num_heads` and
  `mask_ratio` from `overrides`, else the checkpoint config. A config value that
  contradicts the weights is an error (the checkpoint would not load in MinD-Vis).
  """
  config = {**config, **overrides}
  embed_dim, _, patch_size = _require(state_dict, "patch_embed.proj.weight", _MBM_WHAT, origin).shape
  decoder_embed_dim = _require(state_dict, "decoder_embed.weight", _MBM_WHAT, origin).shape[0]
  depth, decoder_depth = _count(state_dict, "blocks"), _count(state_dict, "decoder_blocks")
  if not depth or not decoder_depth:
    raise ConversionError(f"{origin} is not {_MBM_WHAT}: no blocks.<i> or decoder_blocks.<i> keys.")
  hidden = _require(state_dict, "blocks.0.mlp.fc1.weight", _MBM_WHAT, origin).shape[0]
  decoder_hidden = _require(state_dict, "decoder_blocks.0.mlp.fc1.weight", _MBM_WHAT, origin).shape[0]
  if "pos_embed" in state_dict:
    num_voxels = (state_dict["pos_embed"].shape[1] - 1) * patch_size  # as MinD-Vis' stage A2 infers it
  elif "num_voxels" in config:
    num_voxels = int(config["num_voxels"])
  else:
    raise ConversionError(f"{origin} has no pos_embed and its config no num_voxels; pass num_voxels=.")
  sizes = dict(patch_size=patch_size, embed_dim=embed_dim, depth=depth, decoder_embed_dim=decoder_embed_dim,
               decoder_depth=decoder_depth, num_voxels=num_voxels)
  clashes = [f"{k}: config {config[k]}, weights {v}" for k, v in sizes.items()
             if config.get(k) is not None and int(config[k]) != v]
  configured_ratio = config.get("mlp_ratio")
  mlp_ratio = _mlp_ratio(hidden, embed_dim, configured_ratio)
  decoder_mlp_ratio = _mlp_ratio(decoder_hidden, decoder_embed_dim, config.get("decoder_mlp_ratio", configured_ratio))
  if configured_ratio is not None and int(embed_dim * configured_ratio) != hidden:
    clashes.append(f"mlp_ratio: config {configured_ratio}, weights {hidden}/{embed_dim}")
  if clashes:
    raise ConversionError(f"{origin}: the config contradicts the weights ({'; '.join(clashes)}); the weights "
                          f"decide the sizes, so drop or fix the overrides.")
  heads = {}
  for field in ("num_heads", "decoder_num_heads"):
    if config.get(field) is None:
      raise ConversionError(f"{origin}: {field} is not in the checkpoint's config and cannot be read off the "
                            f"weights; pass {field}=... (MinD-Vis uses 16).")
    heads[field] = int(config[field])
  for field, dim in (("num_heads", embed_dim), ("decoder_num_heads", decoder_embed_dim)):
    if dim % heads[field]:
      raise ConversionError(f"{origin}: {field}={heads[field]} does not divide the width {dim}.")
  model_cfg = mbm.model_config(
      patch_size=int(patch_size), embed_dim=int(embed_dim), depth=depth, num_heads=heads["num_heads"],
      mlp_ratio=mlp_ratio, decoder_embed_dim=int(decoder_embed_dim), decoder_depth=decoder_depth,
      decoder_num_heads=heads["decoder_num_heads"], decoder_mlp_ratio=decoder_mlp_ratio,
      mask_ratio=float(config.get("mask_ratio", 0.75)), norm_eps=TORCH_NORM_EPS)
  return model_cfg, int(num_voxels)


def mbm_from_state_dict(state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any] | None = None, *,
                        origin: str = "the state dict", param_dtype: Any = jnp.float32,
                        **overrides: Any) -> tuple[mbm.MaskedBrainModel, Any, ml_collections.ConfigDict]:
  """(module, params, model config) from a MAEforFMRI state dict (numpy arrays)."""
  model_cfg, num_voxels = mbm_config_from_checkpoint(state_dict, config or {}, origin=origin, **overrides)
  model = mbm.build(model_cfg, num_voxels)
  _check_positions(state_dict, "pos_embed", model.num_patches, model.embed_dim, origin)
  _check_positions(state_dict, "decoder_pos_embed", model.num_patches, model.decoder_embed_dim, origin)
  x = jnp.zeros((1, num_voxels), jnp.float32)
  params = mbm.MBM_TABLE.to_flax(state_dict, _abstract(model, x, jax.random.key(0)), origin=origin)
  return model, _as_jax(params, param_dtype), model_cfg


def load_mindvis_mbm(path: str | epath.PathLike, **overrides: Any
                     ) -> tuple[mbm.MaskedBrainModel, Any, ml_collections.ConfigDict]:
  """(module, params, model config) from a MinD-Vis / BrainNetflixMBM `.pth` (local or gs://).

  overrides: num_heads, decoder_num_heads, mask_ratio (when the checkpoint has
  no config), or num_voxels (when it has no pos_embed).
  """
  state_dict, config = read_torch_checkpoint(path)
  return mbm_from_state_dict(state_dict, config, origin=str(path), **overrides)


def mbm_state_dict(model: mbm.MaskedBrainModel, params: Any) -> dict[str, np.ndarray]:
  """MAEforFMRI state dict (numpy) of brainjax MBM params, fixed position buffers included (loads strict)."""
  _require_torch_eps(model.norm_eps, "the MBM")
  if model.decoder_mlp_ratio != model.mlp_ratio:
    raise ConversionError(f"MAEforFMRI has one mlp_ratio for encoder and decoder; this model has "
                          f"{model.mlp_ratio} and {model.decoder_mlp_ratio}.")
  state_dict = mbm.MBM_TABLE.to_torch(_unbox(params))
  state_dict["pos_embed"] = positions_buffer(model.num_patches, model.embed_dim)
  state_dict["decoder_pos_embed"] = positions_buffer(model.num_patches, model.decoder_embed_dim)
  return state_dict


def mindvis_config(model: mbm.MaskedBrainModel) -> dict[str, Any]:
  """The fields of MinD-Vis' Config_MBM_fMRI that describe the model (plus num_voxels, decoder_depth)."""
  return dict(num_voxels=model.num_voxels, patch_size=model.patch_size, embed_dim=model.embed_dim,
              depth=model.depth, num_heads=model.num_heads, decoder_embed_dim=model.decoder_embed_dim,
              decoder_depth=model.decoder_depth, decoder_num_heads=model.decoder_num_heads,
              mlp_ratio=model.mlp_ratio, mask_ratio=model.mask_ratio)


def save_mindvis_mbm(path: str | epath.PathLike, model: mbm.MaskedBrainModel, params: Any) -> epath.Path:
  """Writes `{'model': state_dict, 'config': dict}` with torch.save (loads with weights_only=True).

  MinD-Vis builds `MAEforFMRI(**sizes)` and calls `load_state_dict(ck['model'])`;
  the config is a plain dict here (MinD-Vis reads attributes of its own class).
  """
  torch = _import_torch(str(path))
  state_dict = {k: torch.from_numpy(np.array(v)) for k, v in mbm_state_dict(model, params).items()}
  buffer = io.BytesIO()
  torch.save({"model": state_dict, "config": mindvis_config(model)}, buffer)
  out = epath.Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_bytes(buffer.getvalue())
  return out


# ----------------------------------------------------------------------------------------- fMRI encoder (MindVideo)

_ENCODER_WHAT = ("a MindVideo fmri_encoder folder with config.json and model.pth, diffusion_pytorch_model.bin or "
                 "diffusion_pytorch_model.safetensors")
# fMRIEncoder.__init__ defaults (what ConfigMixin fills in for a field config.json lacks).
MINDVIDEO_DEFAULTS = dict(num_voxels=224, patch_size=16, embed_dim=1024, in_chans=1, depth=24, num_heads=16,
                          mlp_ratio=4.0, out_channel=1, out_dim=768, use_norm=False, dropout=0.0, window_size=1,
                          use_temp_attn=False, logit_scale_init_value=1.0)


def fmri_model_from_config(config: Mapping[str, Any], *, num_voxels: int | None = None, remat: bool = False,
                           dtype: Any = jnp.float32, param_dtype: Any = jnp.float32
                           ) -> fmri_encoder.WindowedFmriModel:
  """The brainjax encoder + head a MindVideo `config.json` describes.

  num_voxels overrides the config's, as MindVideo's `from_pretrained(path, num_voxels)` does.
  """
  c = {**MINDVIDEO_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
  if num_voxels is not None:
    c["num_voxels"] = num_voxels
  if int(c["in_chans"]) != 1:
    raise ConversionError(f"config in_chans={c['in_chans']}: brainjax embeds one fMRI channel per volume.")
  window, temporal = int(c["window_size"]), bool(c["use_temp_attn"])
  if temporal != (window > 1):
    raise ConversionError(
        f"config window_size={window} with use_temp_attn={temporal}: brainjax's encoder attends across the window "
        f"exactly when window > 1 (MindVideo's BlockTemp). A window of 1 with temporal attention (a one-token "
        f"attention that still adds proj(v)) or a window > 1 without it has no brainjax equivalent.")
  if int(c["num_voxels"]) % int(c["patch_size"]):
    raise ConversionError(f"num_voxels={c['num_voxels']} is not a multiple of patch_size={c['patch_size']}.")
  kw = dict(dtype=dtype, param_dtype=param_dtype, norm_eps=TORCH_NORM_EPS)
  encoder = fmri_encoder.FmriEncoder(
      num_voxels=int(c["num_voxels"]), window=window, patch_size=int(c["patch_size"]), embed_dim=int(c["embed_dim"]),
      depth=int(c["depth"]), num_heads=int(c["num_heads"]), mlp_ratio=float(c["mlp_ratio"]), remat=remat, **kw)
  head = fmri_encoder.ProjectionHead(out_tokens=int(c["out_channel"]), out_dim=int(c["out_dim"]),
                                     dropout=float(c["dropout"]), use_norm=bool(c["use_norm"]), **kw)
  return fmri_encoder.WindowedFmriModel(encoder, head)


def mindvideo_config(model: fmri_encoder.WindowedFmriModel, *, logit_scale_init_value: float = 1.0) -> dict[str, Any]:
  """MindVideo's fMRIEncoder config.json for a brainjax encoder + head."""
  enc, head = model.encoder, model.head
  if head.readout_rank:
    raise ConversionError(f"the projection head has brainjax's caption readout (readout_rank={head.readout_rank}), "
                          "which MindVideo's fMRIEncoder has no weights for; only an encoder trained with "
                          "config.align.head.readout_rank = 0 (and cotrain.readout_fit.alpha = 0) exports.")
  for part, what in ((enc, "the encoder"), (head, "the projection head")):
    _require_torch_eps(part.norm_eps, what)
  return dict(_class_name="fMRIEncoder", num_voxels=enc.num_voxels, patch_size=enc.patch_size,
              embed_dim=enc.embed_dim, in_chans=1, depth=enc.depth, num_heads=enc.num_heads,
              mlp_ratio=enc.mlp_ratio, out_channel=head.out_tokens, out_dim=head.out_dim, use_norm=head.use_norm,
              dropout=head.dropout, window_size=enc.window, use_temp_attn=enc.window > 1,
              logit_scale_init_value=logit_scale_init_value)


def _read_encoder_weights(path: str | epath.PathLike) -> tuple[dict[str, np.ndarray], str]:
  directory = epath.Path(path)
  safetensors_names = (MINDVIDEO_WEIGHTS, checkpoint_io.TRANSFORMERS_WEIGHTS)
  if directory.is_dir() and not any((directory / n).exists() for n in safetensors_names):
    for name in MINDVIDEO_PICKLES:  # MindVideo's own names; read with weights_only only
      if (directory / name).exists():
        state_dict, _ = read_torch_checkpoint(directory / name)
        return state_dict, str(directory / name)
  return checkpoint_io.read_state_dict(path, _ENCODER_WHAT, safetensors_names)


def fmri_model_from_state_dict(state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any], *,
                               origin: str = "the state dict", num_voxels: int | None = None,
                               param_dtype: Any = jnp.float32) -> tuple[fmri_encoder.WindowedFmriModel, Any]:
  model = fmri_model_from_config(config, num_voxels=num_voxels, param_dtype=param_dtype)
  enc = model.encoder
  _check_positions(state_dict, "pos_embed", enc.num_patches, enc.embed_dim, origin)
  x = jnp.zeros((1, enc.window, enc.num_voxels), jnp.float32)
  params = fmri_encoder.FMRI_ENCODER_TABLE.to_flax(state_dict, _abstract(model, x), origin=origin)
  return model, _as_jax(params, param_dtype)


def load_mindvideo_fmri_encoder(path: str | epath.PathLike, *, num_voxels: int | None = None,
                                param_dtype: Any = jnp.float32) -> tuple[fmri_encoder.WindowedFmriModel, Any]:
  """(module, params {'encoder', 'head'}) from a MindVideo `fmri_encoder/` folder (local or gs://)."""
  config = checkpoint_io.read_config(path, _ENCODER_WHAT)
  state_dict, origin = _read_encoder_weights(path)
  return fmri_model_from_state_dict(state_dict, config, origin=origin, num_voxels=num_voxels,
                                    param_dtype=param_dtype)


def fmri_encoder_state_dict(model: fmri_encoder.WindowedFmriModel, params: Any, *,
                            logit_scale: float = 1.0) -> dict[str, np.ndarray]:
  """fMRIEncoder state dict (numpy), including the buffers and unused tokens its module declares."""
  state_dict = fmri_encoder.FMRI_ENCODER_TABLE.to_torch(_unbox(params))
  enc = model.encoder
  state_dict["pos_embed"] = positions_buffer(enc.num_patches, enc.embed_dim)
  # Declared by fMRIEncoder but unused in its forward pass; zeros keep a strict load_state_dict happy.
  state_dict["cls_token"] = np.zeros((1, 1, enc.embed_dim), np.float32)
  state_dict["mask_token"] = np.zeros((1, 1, enc.embed_dim), np.float32)
  state_dict["logit_scale"] = np.asarray(logit_scale, np.float32)
  return state_dict


def save_mindvideo_fmri_encoder(path: str | epath.PathLike, model: fmri_encoder.WindowedFmriModel, params: Any, *,
                                logit_scale: float = 1.0, torch_pickle: bool = False) -> epath.Path:
  """Writes MindVideo's `fmri_encoder/` folder: config.json + diffusion_pytorch_model.safetensors.

  torch_pickle=True also writes `model.pth` (`{'model': state_dict}`, tensors
  only), the file MindVideo's own `fMRIEncoder.from_pretrained` opens.
  """
  config = mindvideo_config(model, logit_scale_init_value=logit_scale)
  state_dict = fmri_encoder_state_dict(model, params, logit_scale=logit_scale)
  directory = checkpoint_io.write_checkpoint(path, config, state_dict, weights_name=MINDVIDEO_WEIGHTS)
  if torch_pickle:
    torch = _import_torch(str(path))
    buffer = io.BytesIO()
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}}, buffer)
    (directory / "model.pth").write_bytes(buffer.getvalue())
  return directory


# ----------------------------------------------------------------------------------------- brainjax params dirs


def fmri_model_meta(model: fmri_encoder.WindowedFmriModel | fmri_encoder.FmriAligner) -> dict[str, Any]:
  """`model.json` for an encoder + head (fmri_encoder.model_meta: the one `fmri_encoder` artifact kind)."""
  return fmri_encoder.model_meta(model)


def build_fmri_model(meta: Mapping[str, Any]) -> fmri_encoder.WindowedFmriModel:
  """The encoder + head of an `fmri_encoder` artifact's model.json (imported here or trained by align / cotrain)."""
  model = fmri_encoder.build(dict(meta))
  if model.encoder.num_subjects:
    raise ConversionError("this encoder has per-subject patch embeddings, which MindVideo's fMRIEncoder (one "
                          "shared patch embedding) cannot hold; export a model trained with "
                          "align.encoder.per_subject_patch_embed=False.")
  return fmri_encoder.WindowedFmriModel(model.encoder, model.head)


def import_mindvis_mbm(path: str | epath.PathLike, out_dir: str | epath.PathLike, **overrides: Any) -> epath.Path:
  """A MinD-Vis `.pth` -> `out_dir/params` (Orbax) + `model.json`, as the mbm_pretrain stage writes them."""
  model, params, model_cfg = load_mindvis_mbm(path, **overrides)
  out = epath.Path(out_dir)
  artifacts.save_params(out, params, {"kind": "mbm", "num_voxels": model.num_voxels, "model": model_cfg.to_dict(),
                                      "converted_from": str(path)})
  return out


def import_mindvideo_fmri_encoder(path: str | epath.PathLike, out_dir: str | epath.PathLike, *,
                                  num_voxels: int | None = None) -> epath.Path:
  """A MindVideo `fmri_encoder/` folder -> an `fmri_encoder` artifact (`params/` + `model.json`), the kind
  stage align writes: it feeds cotrain (`encoder_from`) and evaluate as it is."""
  model, params = load_mindvideo_fmri_encoder(path, num_voxels=num_voxels)
  out = epath.Path(out_dir)
  fmri_encoder.save(out, model, params, converted_from=str(path))
  return out


def export_mindvideo_fmri_encoder(params_dir: str | epath.PathLike, path: str | epath.PathLike, *,
                                  torch_pickle: bool = False) -> epath.Path:
  """An `fmri_encoder` artifact (imported, or trained by align / cotrain) -> MindVideo `fmri_encoder/` folder.

  Of a trained one only the encoder and head are exported (its `to_clip` projection
  and CLIP-style log logit scale have no counterpart in MindVideo's module, whose
  `logit_scale` is written as its default 1.0).
  """
  params, meta = artifacts.load_params(epath.Path(params_dir), kinds=(fmri_encoder.KIND, *fmri_encoder.LEGACY_KINDS))
  params = {k: params[k] for k in ("encoder", "head")}
  return save_mindvideo_fmri_encoder(path, build_fmri_model(meta), params, torch_pickle=torch_pickle)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m brainjax.convert.mbm", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("mbm-import", help="MinD-Vis / BrainNetflixMBM .pth -> brainjax params dir")
  p.add_argument("checkpoint"), p.add_argument("out_dir")
  for field in ("num_heads", "decoder_num_heads", "num_voxels"):
    p.add_argument(f"--{field}", type=int)
  p.add_argument("--mask_ratio", type=float)
  p = sub.add_parser("encoder-import", help="MindVideo fmri_encoder folder -> brainjax params dir")
  p.add_argument("folder"), p.add_argument("out_dir"), p.add_argument("--num_voxels", type=int)
  p = sub.add_parser("encoder-export", help="brainjax params dir -> MindVideo fmri_encoder folder")
  p.add_argument("params_dir"), p.add_argument("folder"), p.add_argument("--torch_pickle", action="store_true")
  args = parser.parse_args(argv)
  if args.command == "mbm-import":
    overrides = {k: getattr(args, k) for k in ("num_heads", "decoder_num_heads", "num_voxels", "mask_ratio")
                 if getattr(args, k) is not None}
    print(import_mindvis_mbm(args.checkpoint, args.out_dir, **overrides))
  elif args.command == "encoder-import":
    print(import_mindvideo_fmri_encoder(args.folder, args.out_dir, num_voxels=args.num_voxels))
  else:
    print(export_mindvideo_fmri_encoder(args.params_dir, args.folder, torch_pickle=args.torch_pickle))


if __name__ == "__main__":
  main()
