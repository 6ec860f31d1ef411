"""Stage `clip_fit` (demo only): a small CLIP trained on the synthetic frames and captions.

The papers condition on OpenAI's CLIP ViT-L/14; no pretrained CLIP exists for
the synthetic world, so this stage trains one (symmetric InfoNCE between a
caption and a random frame of its TR) and saves both towers in the
transformers layout. `clip_embed` then reads them exactly as it would read a
downloaded checkpoint: one code path for the demo and the paper.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from brainjax import config as cfg
from brainjax import losses
from brainjax.data import pipeline
from brainjax.data.tokenizer import WordTokenizer
from brainjax.models import clip
from brainjax.stages import StageContext, common
from brainjax.train.optim import optim_config

CONFIG_KEYS = ("seed", "data")
# Artifact kinds: what its path fields read and what it writes (checked before anything runs).
INPUTS = {}
OUTPUTS = {"text": "clip_text", "vision": "clip_vision"}
fingerprint = common.dataset_fingerprint


def stage_config(**overrides) -> ml_collections.ConfigDict:
  stage = ml_collections.ConfigDict(dict(
      max_length=32,
      text=dict(hidden_size=64, intermediate_size=128, projection_dim=64, num_hidden_layers=2,
                num_attention_heads=4, hidden_act="quick_gelu"),
      vision=dict(hidden_size=64, intermediate_size=128, projection_dim=64, num_hidden_layers=2,
                  num_attention_heads=4, patch_size=8, hidden_act="quick_gelu"),
      optim=optim_config(lr=1e-3, weight_decay=0.1, warmup_steps=50, grad_clip_norm=1.0, b2=0.98),
      batch_size=64, num_steps=400, log_every_steps=50, checkpoint_every_steps=200, keep_checkpoints=2,
  ))
  stage.update(overrides)
  return stage


class DualEncoder(nn.Module):
  text_config: clip.CLIPTextConfig
  vision_config: clip.CLIPVisionConfig

  @nn.compact
  def __call__(self, ids, mask, pixels):
    text = clip.CLIPTextModelWithProjection(self.text_config, name="text")(ids, mask).text_embeds
    image = clip.CLIPVisionModelWithProjection(self.vision_config, name="vision")(pixels).image_embeds
    log_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), ())
    # CLIP clamps the scale at 100 so the logits cannot blow up.
    return text, image, jnp.exp(jnp.minimum(log_scale, np.log(100.0)))


def validate(config: ml_collections.ConfigDict, name: str) -> None:
  del name
  if config.data.name != "synthetic":
    raise cfg.ConfigError("stage clip_fit trains a stand-in CLIP for the synthetic benchmark only; with real data "
                          "point config.clip_embed.text_path/vision_path at pretrained CLIP checkpoints instead.")
  common.validate_train(config, "clip_fit")
  for tower in ("text", "vision"):
    for field in ("hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads"):
      cfg.require_positive_int(config, f"clip_fit.{tower}.{field}")
  if config.clip_fit.text.projection_dim != config.clip_fit.vision.projection_dim:
    raise cfg.ConfigError("config.clip_fit.text.projection_dim and vision.projection_dim must be equal.")


def build(stage: ml_collections.ConfigDict, resolution: int, tokenizer: WordTokenizer) -> DualEncoder:
  text = clip.CLIPTextConfig(**stage.text.to_dict(), vocab_size=tokenizer.vocab_size,
                             max_position_embeddings=tokenizer.max_length, pad_token_id=tokenizer.pad_id,
                             bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
  vision = clip.CLIPVisionConfig(**stage.vision.to_dict(), image_size=resolution)
  return DualEncoder(text, vision)


def run(ctx: StageContext) -> dict:
  stage = ctx.config.clip_fit
  tokenizer = WordTokenizer.for_synthetic_captions(stage.max_length)
  source = pipeline.make_stimulus_source(ctx.config.data, "train")
  resolution = int(source[0]["frames"].shape[1])
  model = build(stage, resolution, tokenizer)

  def tokenize(ex):
    ids, mask = tokenizer.encode([ex["caption"]])
    return {"ids": ids[0], "mask": mask[0], "frames": ex["frames"]}

  def init_variables(rng):
    ids = jnp.zeros((1, tokenizer.max_length), jnp.int32)
    return model.init(rng, ids, jnp.ones_like(ids), jnp.zeros((1, resolution, resolution, 3)))

  def loss_fn(params, model_state, batch, rng):
    frames = batch["frames"]
    pick = jax.random.randint(rng, (frames.shape[0],), 0, frames.shape[1])  # a random frame of each TR
    pixels = clip.frames_to_pixels(frames[jnp.arange(frames.shape[0]), pick], resolution)
    text, image, scale = model.apply({"params": params}, batch["ids"], batch["mask"], pixels)
    return losses.clip_loss(text, image, scale), ({"logit_scale": scale}, model_state)

  iterator = pipeline.make_iterator(source, batch_size=stage.batch_size, seed=ctx.config.seed, transform=tokenize)
  state = common.train(ctx, init_variables=init_variables, loss_fn=loss_fn, iterator=iterator,
                       batch_keys=("ids", "mask", "frames"))
  params = jax.device_get(state.params)
  if jax.process_index() == 0:
    clip.save_clip_text(ctx.stage_dir / "text", model.text_config, params["text"])
    clip.save_clip_vision(ctx.stage_dir / "vision", model.vision_config, params["vision"])
    tokenizer.save(ctx.stage_dir / "text")
  top1 = _test_retrieval(model, params, pipeline.make_stimulus_source(ctx.config.data, "test"), tokenizer,
                         resolution)
  return {"steps": int(jax.device_get(state.step)), "test_caption_to_clip_top1": top1}


def _test_retrieval(model, params, source, tokenizer, resolution) -> float:
  """Caption -> middle-frame top-1 retrieval over the test split; a frame of the caption's clip counts."""
  apply = jax.jit(lambda p, i, m, x: model.apply({"params": p}, i, m, clip.frames_to_pixels(x, resolution))[:2])
  texts, images, clips = [], [], []
  for start in range(0, len(source), 64):
    exs = [source[i] for i in range(start, min(len(source), start + 64))]
    ids, mask = tokenizer.encode([e["caption"] for e in exs])
    frames = np.stack([e["frames"][len(e["frames"]) // 2] for e in exs])
    t, v = apply(params, ids, mask, frames)
    texts.append(np.asarray(t))
    images.append(np.asarray(v))
    clips.extend(e["clip_id"] for e in exs)
  return float(losses.retrieval_top1(jnp.concatenate(texts), jnp.concatenate(images), np.asarray(clips)))
