"""CLIP embeddings of every caption and frame of a dataset, per stimulus TR (the pipeline's `record`).

A cache directory holds, per split:

  <split>/text_embeds.npy   float32 [R, P]      projected caption embedding
  <split>/image_embeds.npy  float32 [R, F, P]   projected embedding of every frame
  <split>/text_hidden.npy   float32 [R, L, D]   last hidden states (the diffusion
                                                condition), if store_text_hidden
  uncond_hidden.npy         float32 [L, D]      the same for the empty caption: the
                                                unconditional input of classifier-free guidance
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from etils import epath

from brainjax.data import pipeline
from brainjax.data.tokenizer import load_tokenizer
from brainjax.models import clip

SPLITS = ("train", "test")


def save_array(path: epath.Path, array: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.save(buffer, array)
  path.write_bytes(buffer.getvalue())


def load_array(path: epath.Path) -> np.ndarray:
  if not path.exists():
    raise FileNotFoundError(f"{path} is missing; re-run stage clip_embed (delete its DONE.json).")
  return np.load(io.BytesIO(path.read_bytes()))


def load_cache(cache_dir: epath.Path, split: str) -> dict[str, np.ndarray]:
  """The cached embeddings of a split, keyed by name."""
  out = {name: load_array(cache_dir / split / f"{name}.npy") for name in ("text_embeds", "image_embeds")}
  if (cache_dir / split / "text_hidden.npy").exists():
    out["text_hidden"] = load_array(cache_dir / split / "text_hidden.npy")
  return out


def load_uncond_hidden(cache_dir: epath.Path) -> np.ndarray:
  """[L, D]: the text tower's last hidden states for the empty caption."""
  return load_array(cache_dir / "uncond_hidden.npy")


def load_caption_condition(cache_dir: epath.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(caption hidden states [R, L, D] of `split` in record order, the empty caption's [L, D])."""
  cache = load_cache(cache_dir, split)
  if "text_hidden" not in cache:
    raise FileNotFoundError(f"{cache_dir} has no {split}/text_hidden.npy: run clip_embed with store_text_hidden=True.")
  return cache["text_hidden"], load_uncond_hidden(cache_dir)


def embed_stimuli(text_dir: epath.Path, vision_dir: epath.Path, data: ml_collections.ConfigDict,
                  out_dir: epath.Path, *, batch_size: int, store_text_hidden: bool = True,
                  splits: Sequence[str] = SPLITS) -> dict:
  """Computes the cache of the stimuli `data` names into `out_dir` with the CLIP towers in `text_dir` /
  `vision_dir` (transformers checkpoint directories); returns a summary (records per split, width)."""
  text_model, text_params = clip.load_clip_text(text_dir, with_projection=True)
  vision_model, vision_params = clip.load_clip_vision(vision_dir, with_projection=True)
  tokenizer = load_tokenizer(text_dir, text_model.config.max_position_embeddings)
  image_size = vision_model.config.image_size
  encode_images = jax.jit(
      lambda p, f: vision_model.apply({"params": p}, clip.frames_to_pixels(f, image_size)).image_embeds)
  summary = {}
  for split in splits:
    source = pipeline.make_stimulus_source(data, split)
    text_embeds, hidden, image_embeds = [], [], []
    for start in range(0, len(source), batch_size):
      exs = [source[i] for i in range(start, min(len(source), start + batch_size))]
      ids, mask = tokenizer.encode([e["caption"] for e in exs])
      out = clip.encode_text(text_model, text_params, ids, mask)
      text_embeds.append(np.asarray(out.text_embeds))
      if store_text_hidden:
        hidden.append(np.asarray(out.last_hidden_state))
      frames = np.stack([e["frames"] for e in exs])  # [B, F, H, W, 3]
      flat = encode_images(vision_params, frames.reshape((-1,) + frames.shape[2:]))
      image_embeds.append(np.asarray(flat).reshape(frames.shape[:2] + (-1,)))
    if jax.process_index() == 0:
      (out_dir / split).mkdir(parents=True, exist_ok=True)
      save_array(out_dir / split / "text_embeds.npy", np.concatenate(text_embeds))
      save_array(out_dir / split / "image_embeds.npy", np.concatenate(image_embeds))
      if store_text_hidden:
        save_array(out_dir / split / "text_hidden.npy", np.concatenate(hidden))
    summary[f"{split}_records"] = len(source)
  if store_text_hidden and jax.process_index() == 0:
    ids, mask = tokenizer.encode([""])
    save_array(out_dir / "uncond_hidden.npy",
               np.asarray(clip.encode_text(text_model, text_params, ids, mask).last_hidden_state)[0])
  summary["embed_dim"] = int(text_embeds[0].shape[-1])
  return summary
