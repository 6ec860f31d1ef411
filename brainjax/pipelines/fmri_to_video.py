"""MinD-Video / NeuralFlix reconstruction: the fMRI encoder's condition -> the inflated video UNet -> VAE.

"fmri": each window's condition, sampled with adversarial guidance when `sample.adversarial`
(negative condition: the encoder's output for the mean fMRI window of its subject, scale
`sample.guidance_scale`; MinD-Video §3.4) and NeuralFlix's dependent noise when
`dependent_noise_beta` > 0 (Eq. 7).
"mean_fmri": the same generator on the mean window's condition, unguided (guidance with
negative == condition is the unguided prediction): what the decoder makes without
sample-specific information.

Reads `encoder_from` (an `fmri_encoder` artifact) and `unet_from` (a video UNet).
"""

from __future__ import annotations

from brainjax.config import ConfigError
from brainjax.models import fmri_encoder, vae
from brainjax.models import video_unet as vu
from brainjax.pipelines import base, generation

LABELS = {"fmri": "reconstruction", "mean_fmri": "mean-fMRI baseline"}


def load_generator(shared: base.Shared):
  """(encoder module, its params, UNet module, its params), loaded once per evaluation."""
  s = shared.settings
  encoder, encoder_params, _ = shared.load(("fmri_encoder", s.encoder_from),
                                           lambda: fmri_encoder.load(shared.resolve(s.encoder_from)))
  unet, unet_params = shared.load(("video_unet", s.unet_from), lambda: vu.load_video_unet(
      shared.resolve(s.unet_from), attention_query_chunk=s.attention_query_chunk))
  if unet.config.context_dim != encoder.head.out_dim:
    raise ConfigError(f"the fMRI encoder from {s.encoder_from} makes a {encoder.head.out_dim}-wide condition but "
                      f"the UNet from {s.unet_from} cross-attends to {unet.config.context_dim}; point both at the "
                      "same cotrain run.")
  return encoder, encoder_params, unet, unet_params


def build(shared: base.Shared, name: str) -> base.Reconstruction:
  s = shared.settings
  encoder, encoder_params, unet, unet_params = load_generator(shared)
  sampler = generation.make_sampler(unet, shared.schedule, s.sample, float(s.dependent_noise_beta))
  window, voxels = shared.fmri_shape
  if (encoder.encoder.window, encoder.encoder.num_voxels) != (window, voxels):
    raise ConfigError(f"the {s.split} fMRI windows are {window} x {voxels} but the encoder from {s.encoder_from} "
                      f"takes {encoder.encoder.window} x {encoder.encoder.num_voxels}; set "
                      "config.evaluate.data_overrides as the encoder's stages read the data.")
  per_subject = bool(encoder.encoder.num_subjects)
  guided = bool(s.sample.adversarial) and name == "fmri"
  seed = int(s.sample.seed)

  def encode(p, fmri, subject):
    return encoder.apply({"params": p}, fmri, deterministic=True,
                         subject=subject if per_subject else None)["condition"]

  def reconstruct(params, inputs):
    fmri = inputs["fmri"] if name == "fmri" else inputs["mean_fmri"]
    cond = encode(params["encoder"], fmri, inputs["subject"])
    negative = encode(params["encoder"], inputs["mean_fmri"], inputs["subject"]) if guided else None
    latents = sampler(params["unet"], cond, negative, base.sample_keys(seed, inputs["record"]),
                      shape=(fmri.shape[0],) + tuple(shared.latent_shape))
    return vae.to_uint8(vae.decode_video(shared.vae, params["vae"], latents))

  return base.Reconstruction(name=name, label=LABELS[name], reconstruct=reconstruct,
                             params={"encoder": encoder_params, "unet": unet_params, "vae": shared.vae_params})
