"""A reconstruction pipeline registered by a test: every window becomes the VAE's decoding of zero latents.

It shows that evaluate scores and reports any registered pipeline (brainjax.pipelines.base)
with no code of its own: its name in config.evaluate.baselines is all it takes.
"""

import jax.numpy as jnp

from brainjax.models import vae
from brainjax.pipelines import base

LABEL = "toy: zero latents"


def validate(settings, name):
  assert name == "toy" and "toy" in settings.baselines


def build(shared: base.Shared, name: str) -> base.Reconstruction:
  def reconstruct(params, inputs):
    latents = jnp.zeros((inputs["record"].shape[0],) + tuple(shared.latent_shape))
    return vae.to_uint8(vae.decode_video(shared.vae, params["vae"], latents))

  return base.Reconstruction(name=name, label=LABEL, params={"vae": shared.vae_params}, reconstruct=reconstruct,
                             host_inputs=lambda batch: {"record": batch["record"]})
