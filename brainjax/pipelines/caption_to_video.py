"""Baselines through the text-to-video UNet (video_finetune's): what the generator makes of a caption condition.

"caption": each window's stimulus caption (the hidden states clip_embed cached, `text_cache`),
with classifier-free guidance against the empty caption at the same scale when the
reconstructions are guided: the generator's ceiling for a perfect description.
"ridge": the same UNet and seeds on a linear decoder's condition, a ridge regression
(`ridge_alpha`, brainjax.ridge) from the training fMRI windows to their captions' hidden
states (Brain Netflix's kind of decoder): what the fMRI supports through this generator
without a learned encoder. The map is applied on the host (its weights are windows x
voxels by tokens x width: larger than a device should hold at the papers' sizes).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from brainjax import config as cfg
from brainjax import ridge
from brainjax.data import pipeline, stimuli
from brainjax.features import clip_cache
from brainjax.models import vae
from brainjax.models import video_unet as vu
from brainjax.pipelines import base, generation

LABELS = {"caption": "true caption", "ridge": "ridge from fMRI"}


def validate(settings: ml_collections.ConfigDict, name: str) -> None:
  for field in ("caption_unet_from", "text_cache"):
    if not settings[field]:
      raise cfg.ConfigError(f"config.evaluate.{field} is empty but config.evaluate.baselines has {name!r}; "
                            "point it at video_finetune's UNet / clip_embed's cache or drop the baseline.")
  if name == "ridge":
    cfg.require_positive(ml_collections.ConfigDict({"evaluate": settings}), "evaluate.ridge_alpha")


def build(shared: base.Shared, name: str) -> base.Reconstruction:
  s = shared.settings
  module, params = shared.load(("video_unet", s.caption_unet_from), lambda: vu.load_video_unet(
      shared.resolve(s.caption_unet_from), attention_query_chunk=s.attention_query_chunk))
  cache_dir = shared.resolve(s.text_cache)
  hidden, uncond = shared.load(("captions", s.text_cache, s.split),
                               lambda: clip_cache.load_caption_condition(cache_dir, s.split))
  if module.config.context_dim != hidden.shape[-1]:
    raise cfg.ConfigError(f"the caption baseline's UNet ({s.caption_unet_from}) cross-attends to "
                          f"{module.config.context_dim} but the captions of {s.text_cache} are {hidden.shape[-1]} "
                          "wide; point caption_unet_from and text_cache at the video_finetune and clip_embed "
                          "stages of this run.")
  sampler = generation.make_sampler(module, shared.schedule, s.sample, float(s.dependent_noise_beta))
  guided, seed = bool(s.sample.adversarial), int(s.sample.seed)

  if name == "caption":
    def host_inputs(batch):
      return {"hidden": hidden[batch["record"]], "record": batch["record"]}
  else:
    train_hidden = clip_cache.load_caption_condition(cache_dir, "train")[0]
    fmri, _, captions = stimuli.caption_windows(pipeline.make_source(shared.data, "train"), train_hidden)
    fitted = ridge.fit_ridge(fmri, captions, float(s.ridge_alpha))

    def host_inputs(batch):
      predicted = fitted.predict(batch["fmri"]).reshape((len(batch["fmri"]),) + hidden.shape[1:])
      return {"hidden": predicted.astype(np.float32), "record": batch["record"]}

  def reconstruct(p, inputs):
    cond = inputs["hidden"]
    negative = jnp.broadcast_to(jnp.asarray(uncond), cond.shape) if guided else None
    latents = sampler(p["caption_unet"], cond, negative, base.sample_keys(seed, inputs["record"]),
                      shape=(cond.shape[0],) + tuple(shared.latent_shape))
    return vae.to_uint8(vae.decode_video(shared.vae, p["vae"], latents))

  return base.Reconstruction(name=name, label=LABELS[name], reconstruct=reconstruct, host_inputs=host_inputs,
                             params={"caption_unet": params, "vae": shared.vae_params})
