"""Stage `clip_embed`: CLIP embeddings of every caption and frame, computed once and cached.

The text and vision towers are frozen in every recipe, so running them inside
each train step would only burn compute. This stage reads the towers from
`config.clip_embed.text_path` / `vision_path` (a transformers checkpoint
directory, local or gs://, or `stage:clip_fit/text` for the demo's own CLIP)
and writes, per split and per stimulus TR (the pipeline's `record` index):

  <split>/text_embeds.npy   float32 [R, P]      projected caption embedding
  <split>/image_embeds.npy  float32 [R, F, P]   projected embedding of every frame
  <split>/text_hidden.npy   float32 [R, L, D]   last hidden states (the diffusion
                                                condition), if store_text_hidden
  uncond_hidden.npy         float32 [L, D]      the same for the empty caption: the
                                                unconditional input of classifier-free guidance
"""

from __future__ import annotations

import io

import jax
import ml_collections
import numpy as np
from etils import epath

from brainjax import config as cfg
from brainjax.data import pipeline
from brainjax.data.tokenizer import load_tokenizer
from brainjax.models import clip
from brainjax.stages import StageContext, common, resolve_path
from brainjax.stages.clip_fit import frames_to_pixels

CONFIG_KEYS = ("seed", "data")
fingerprint = common.dataset_fingerprint
SPLITS = ("train", "test")


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


def save_array(path: epath.Path, array: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.save(buffer, array)
  path.write_bytes(buffer.getvalue())


def load_array(path: epath.Path) -> np.ndarray:
  if not path.exists():
    raise FileNotFoundError(f"{path} is missing; re-run stage clip_embed (delete its DONE.json).")
  return np.load(io.BytesIO(path.read_bytes()))


def load_cache(stage_dir: epath.Path, split: str) -> dict[str, np.ndarray]:
  """The cached embeddings of a split, keyed by name."""
  out = {name: load_array(stage_dir / split / f"{name}.npy") for name in ("text_embeds", "image_embeds")}
  if (stage_dir / split / "text_hidden.npy").exists():
    out["text_hidden"] = load_array(stage_dir / split / "text_hidden.npy")
  return out


def load_uncond_hidden(stage_dir: epath.Path) -> np.ndarray:
  """[L, D]: the text tower's last hidden states for the empty caption."""
  return load_array(stage_dir / "uncond_hidden.npy")


def run(ctx: StageContext) -> dict:
  stage = ctx.config.clip_embed
  text_dir = resolve_path(ctx, stage.text_path)
  text_model, text_params = clip.load_clip_text(text_dir, with_projection=True)
  vision_model, vision_params = clip.load_clip_vision(resolve_path(ctx, stage.vision_path), with_projection=True)
  tokenizer = load_tokenizer(text_dir, text_model.config.max_position_embeddings)
  image_size = vision_model.config.image_size
  encode_images = jax.jit(lambda p, f: vision_model.apply({"params": p}, frames_to_pixels(f, image_size)).image_embeds)
  summary = {}
  for split in SPLITS:
    source = pipeline.make_stimulus_source(ctx.config.data, split)
    text_embeds, hidden, image_embeds = [], [], []
    for start in range(0, len(source), stage.batch_size):
      exs = [source[i] for i in range(start, min(len(source), start + stage.batch_size))]
      ids, mask = tokenizer.encode([e["caption"] for e in exs])
      out = clip.encode_text(text_model, text_params, ids, mask)
      text_embeds.append(np.asarray(out.text_embeds))
      if stage.store_text_hidden:
        hidden.append(np.asarray(out.last_hidden_state))
      frames = np.stack([e["frames"] for e in exs])  # [B, F, H, W, 3]
      flat = encode_images(vision_params, frames.reshape((-1,) + frames.shape[2:]))
      image_embeds.append(np.asarray(flat).reshape(frames.shape[:2] + (-1,)))
    if jax.process_index() == 0:
      (ctx.stage_dir / split).mkdir(parents=True, exist_ok=True)
      save_array(ctx.stage_dir / split / "text_embeds.npy", np.concatenate(text_embeds))
      save_array(ctx.stage_dir / split / "image_embeds.npy", np.concatenate(image_embeds))
      if stage.store_text_hidden:
        save_array(ctx.stage_dir / split / "text_hidden.npy", np.concatenate(hidden))
    summary[f"{split}_records"] = len(source)
  if stage.store_text_hidden and jax.process_index() == 0:
    ids, mask = tokenizer.encode([""])
    save_array(ctx.stage_dir / "uncond_hidden.npy",
               np.asarray(clip.encode_text(text_model, text_params, ids, mask).last_hidden_state)[0])
  summary["embed_dim"] = int(text_embeds[0].shape[-1])
  return summary
