"""Stage `clip_embed`: CLIP embeddings of every caption and frame, computed once and cached.

The text and vision towers are frozen in every recipe, so running them inside
each train step would only burn compute. This stage reads the towers from
`config.clip_embed.text_path` / `vision_path` (a transformers checkpoint
directory, local or gs://, or `stage:clip_fit/text` for the demo's own CLIP)
and writes, per split and per stimulus TR (the pipeline's `record` index), the
cache brainjax.features.clip_cache describes (its readers are there too).
"""

from __future__ import annotations

import ml_collections

from brainjax import config as cfg
from brainjax.features import clip_cache
from brainjax.stages import StageContext, common, resolve_path

CONFIG_KEYS = ("seed", "data")
# Artifact kinds: what its path fields read and what it writes (checked before anything runs).
INPUTS = {"text_path": ("clip_text",), "vision_path": ("clip_vision",)}
OUTPUTS = {"": "clip_cache"}
fingerprint = common.dataset_fingerprint


def stage_config(**overrides) -> ml_collections.ConfigDict:
  stage = ml_collections.ConfigDict(dict(
      text_path="stage:clip_fit/text", vision_path="stage:clip_fit/vision", store_text_hidden=True,
      batch_size=64))
  stage.update(overrides)
  return stage


def validate(config: ml_collections.ConfigDict, name: str) -> None:
  del name
  cfg.require_positive_int(config, "clip_embed.batch_size")
  for field in ("text_path", "vision_path"):
    path = cfg.get_path(config, f"clip_embed.{field}")
    if not path:
      raise cfg.ConfigError(f"config.clip_embed.{field} is empty: give a transformers CLIP checkpoint directory "
                            "(e.g. a local or gs:// copy of openai/clip-vit-large-patch14).")
    common.validate_stage_path(config, "clip_embed", field, path)


def run(ctx: StageContext) -> dict:
  stage = ctx.config.clip_embed
  return clip_cache.embed_stimuli(resolve_path(ctx, stage.text_path), resolve_path(ctx, stage.vision_path),
                                  ctx.config.data, ctx.stage_dir, batch_size=stage.batch_size,
                                  store_text_hidden=stage.store_text_hidden)
