"""Optimizers and learning-rate schedules from config.

The papers train with AdamW, linear warm-up then cosine decay and global-norm
gradient clipping (MinD-Video SC-MBM: lr 2.5e-4, betas (0.9, 0.95), wd 0.05,
clip 0.8). Weight decay skips biases, norms and embeddings-of-rank-1 as MAE
does. `trainable` restricts training to parameters whose path matches a
regex; the rest are frozen and get no optimizer state at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import optax

from brainjax.config import ConfigError


def param_path(path: Sequence[Any]) -> str:
  """'encoder/block_0/attn/qkv/kernel' for a tree path."""
  parts = []
  for entry in path:
    key = getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))
    parts.append(str(key))
  return "/".join(parts)


def trainable_labels(params: Any, patterns: Sequence[str]) -> Any:
  """'train' for params whose path matches any regex (all if no pattern), else 'freeze'."""
  if not patterns:
    return jax.tree.map(lambda _: "train", params)
  compiled = [re.compile(p) for p in patterns]
  labels = jax.tree_util.tree_map_with_path(
      lambda path, _: "train" if any(c.search(param_path(path)) for c in compiled) else "freeze", params)
  if "train" not in jax.tree.leaves(labels):
    raise ConfigError(f"optim.trainable = {list(patterns)} matches no parameter; check the regexes against "
                      "parameter paths such as 'encoder/block_0/attn/qkv/kernel'.")
  return labels


def trainable_mask(params: Any, patterns: Sequence[str]) -> Any:
  """True for the params `trainable_labels` trains: what `make_train_step` differentiates."""
  return jax.tree.map(lambda label: label == "train", trainable_labels(params, patterns))


def make_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  warmup = int(optim.get("warmup_steps", 0))
  if warmup >= total_steps and optim.schedule != "constant":
    raise ConfigError(f"optim.warmup_steps = {warmup} must be smaller than the {total_steps} training steps.")
  if optim.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim.lr, warmup_steps=warmup, decay_steps=total_steps,
        end_value=optim.lr * optim.get("final_lr_ratio", 0.0))
  if optim.schedule == "constant":
    if warmup:
      return optax.join_schedules(
          [optax.linear_schedule(0.0, optim.lr, warmup), optax.constant_schedule(optim.lr)], [warmup])
    return optax.constant_schedule(optim.lr)
  raise ConfigError(f"optim.schedule = {optim.schedule!r}: must be 'cosine' or 'constant'.")


def _decay_mask(params: Any) -> Any:
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int, params: Any) -> optax.GradientTransformation:
  """AdamW (or Adam/SGD) + schedule + clipping, restricted to the trainable subset.

  `params` may be abstract (ShapeDtypeStructs): only paths and ranks are read.
  """
  schedule = make_schedule(optim, total_steps)
  if optim.name == "adamw":
    core = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.get("eps", 1e-8),
                       weight_decay=optim.weight_decay, mask=_decay_mask)
  elif optim.name == "adam":
    core = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.get("eps", 1e-8))
  elif optim.name == "sgd":
    core = optax.sgd(schedule, momentum=optim.get("momentum", 0.9))
  else:
    raise ConfigError(f"optim.name = {optim.name!r}: must be 'adamw', 'adam' or 'sgd'.")
  chain = [core]
  if optim.get("grad_clip_norm", 0.0):
    chain.insert(0, optax.clip_by_global_norm(optim.grad_clip_norm))
  tx = optax.chain(*chain)
  labels = trainable_labels(params, list(optim.get("trainable", ())))
  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)


def optim_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The papers' defaults (MinD-Video SC-MBM); recipes override what differs."""
  base = dict(name="adamw", lr=2.5e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05,
              warmup_steps=0, schedule="cosine", final_lr_ratio=0.0, grad_clip_norm=0.8, trainable=())
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def validate_optim(config: ml_collections.ConfigDict, path: str) -> None:
  from brainjax import config as cfg
  cfg.require_choice(config, f"{path}.name", ("adamw", "adam", "sgd"))
  cfg.require_positive(config, f"{path}.lr")
  cfg.require_choice(config, f"{path}.schedule", ("cosine", "constant"))
  cfg.require_positive_int(config, f"{path}.warmup_steps", allow_zero=True)
  cfg.require_positive(config, f"{path}.weight_decay", allow_zero=True)
  cfg.require_positive(config, f"{path}.grad_clip_norm", allow_zero=True)
  cfg.require_in_range(config, f"{path}.b1", 0.0, 0.999999)
  cfg.require_in_range(config, f"{path}.b2", 0.0, 0.999999)
