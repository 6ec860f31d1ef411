"""Stage `mbm_pretrain`: masked brain modelling on resting-state (or any) fMRI.

Reads `config.data` (with `config.mbm_pretrain.data_overrides`, by default the
resting-state split averaged over ~8 s, all subjects wrap-padded to one
length), trains `MaskedBrainModel`, and writes `mbm_pretrain/params` plus
`model.json`. At the end it reports how well masked patches of held-out test
fMRI are reconstructed (mean Pearson r between predicted and true voxels of
masked patches), the number MinD-Vis tracks during pretraining.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from brainjax import config as cfg
from brainjax.data import pipeline
from brainjax.models import mbm
from brainjax.stages import StageContext
from brainjax.stages import common
from brainjax.train.optim import optim_config

CONFIG_KEYS = ("seed", "data", "mbm_pretrain")


def stage_config(**overrides) -> ml_collections.ConfigDict:
  """`config.mbm_pretrain` at the paper's settings; recipes override what differs."""
  stage = ml_collections.ConfigDict(dict(
      split="rest",
      # MBM reads single volumes averaged over ~8 s (4 TRs of 2 s), non-overlapping,
      # every subject wrap-padded to one length (MinD-Vis lineage).
      data_overrides=dict(window=1, hrf_shift_trs=0, temporal_average=4, stride=4, voxel_padding="wrap",
                          repeats="each"),
      model=mbm.model_config(),
      optim=optim_config(),
      batch_size=500,
      num_steps=100_000,
      log_every_steps=100,
      checkpoint_every_steps=2000,
      keep_checkpoints=2,
  ))
  stage.update(overrides)
  return stage


def validate(config: ml_collections.ConfigDict) -> None:
  data = common.stage_data_config(config, "mbm_pretrain")
  cfg.require_choice(config, "mbm_pretrain.split", ("rest", "train"))
  pipeline.validate_data(ml_collections.ConfigDict({"data": data}), splits=(config.mbm_pretrain.split, "test"))
  common.validate_train(config, "mbm_pretrain")
  if data.window != 1:
    raise cfg.ConfigError(f"config.mbm_pretrain.data_overrides.window = {data.window}: MBM reads single "
                          "volumes; set it to 1.")
  model = config.mbm_pretrain.model
  for field in ("patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
                "decoder_num_heads"):
    cfg.require_positive_int(config, f"mbm_pretrain.model.{field}")
  cfg.require_in_range(config, "mbm_pretrain.model.mask_ratio", 0.0, 0.99)
  if model.embed_dim % model.num_heads or model.decoder_embed_dim % model.decoder_num_heads:
    raise cfg.ConfigError("config.mbm_pretrain.model: embed_dim must be divisible by num_heads and "
                          "decoder_embed_dim by decoder_num_heads.")
  if data.pad_multiple % model.patch_size:
    raise cfg.ConfigError(f"config.data.pad_multiple = {data.pad_multiple} must be a multiple of "
                          f"config.mbm_pretrain.model.patch_size = {model.patch_size}.")


def run(ctx: StageContext) -> dict:
  stage = ctx.config.mbm_pretrain
  data = common.stage_data_config(ctx.config, "mbm_pretrain")
  source = pipeline.make_source(data, stage.split)
  model = mbm.build(stage.model, source.num_voxels)
  dummy = jnp.zeros((1, source.num_voxels), jnp.float32)

  def init_variables(rng):
    params_rng, mask_rng = jax.random.split(rng)
    return model.init({"params": params_rng}, dummy, mask_rng)

  def loss_fn(params, model_state, batch, rng):
    out = model.apply({"params": params}, batch["fmri"][:, 0], rng)
    return out["loss"], ({}, model_state)

  iterator = pipeline.make_iterator(source, batch_size=stage.batch_size, seed=ctx.config.seed)
  state = common.train(ctx, init_variables=init_variables, loss_fn=loss_fn, iterator=iterator,
                       batch_keys=("fmri",))
  params = jax.device_get(state.params)
  common.save_params(ctx.stage_dir, params, {"kind": "mbm", "num_voxels": source.num_voxels,
                                             "model": stage.model.to_dict()})
  test = pipeline.make_source(data, "test")
  corr = masked_patch_correlation(model, params, test, seed=ctx.config.seed)
  return {"steps": int(jax.device_get(state.step)), "num_voxels": source.num_voxels,
          "train_windows": len(source), "test_masked_patch_corr": corr}


def masked_patch_correlation(model: mbm.MaskedBrainModel, params, source, *, seed: int,
                             max_examples: int = 512, batch_size: int = 64) -> float:
  """Mean over samples of Pearson r between predicted and true voxels of the masked patches."""
  apply = jax.jit(lambda p, x, r: model.apply({"params": p}, x, r))
  n = min(len(source), max_examples)
  rs = []
  for start in range(0, n, batch_size):
    x = np.stack([source[i]["fmri"][0] for i in range(start, min(n, start + batch_size))])
    out = jax.device_get(apply(params, x, jax.random.PRNGKey(seed + start)))
    for pred, target, mask in zip(out["pred"], out["target"], out["mask"]):
      masked = mask.astype(bool)
      rs.append(np.corrcoef(pred[masked].ravel(), target[masked].ravel())[0, 1])
  return float(np.mean(rs))
