"""The reconstruction protocol: one object per way of turning test windows into videos.

A pipeline module (registered by name in `REGISTRY`, like the stages) has

  build(shared: Shared, name: str) -> Reconstruction
  validate(settings, name: str) -> None      (optional: raise ConfigError early)

and `Reconstruction` is data plus two functions, so an evaluation can shard it:

  host_inputs(batch) -> dict of arrays   on the host, per batch: what `reconstruct` reads
                                         (default: the batch itself)
  reconstruct(params, inputs) -> videos  pure and jittable: uint8 [B, T, H, W, 3]

`batch` holds numpy arrays of the evaluated windows: `fmri` [B, w, V], `mean_fmri`
(the mean window of each one's subject, MindVideo's `uncon_fmri`), `subject` [B] and
`record` [B] (the stimulus TR: per-sample seeds fold it in). `params` maps names to
parameter trees; pipelines that read the same artifact name it the same way
(`Shared.load`), so it is loaded and placed on the devices once.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from brainjax.config import ConfigError

# name -> module path. "fmri" is the methods' reconstruction (MinD-Video / NeuralFlix: encoder -> inflated
# UNet with adversarial guidance and dependent noise); the others are evaluate's generated baselines.
REGISTRY: dict[str, str] = {
    "fmri": "brainjax.pipelines.fmri_to_video",
    "mean_fmri": "brainjax.pipelines.fmri_to_video",
    "caption": "brainjax.pipelines.caption_to_video",
    "ridge": "brainjax.pipelines.caption_to_video",
}


def get_pipeline(name: str) -> types.ModuleType:
  if name not in REGISTRY:
    raise ConfigError(f"unknown reconstruction pipeline {name!r}; known: {sorted(REGISTRY)} (register a module "
                      "in brainjax.pipelines.base.REGISTRY to add one).")
  return importlib.import_module(REGISTRY[name])


@dataclasses.dataclass(frozen=True)
class Reconstruction:
  name: str                                   # metrics.json / shard prefix
  label: str                                  # its panel in the report
  params: dict[str, Any]                      # name -> parameter tree (shared names are loaded once)
  reconstruct: Callable[[dict[str, Any], dict[str, jax.Array]], jax.Array]
  host_inputs: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] = lambda batch: batch


@dataclasses.dataclass
class Shared:
  """What every reconstruction of one evaluation shares: its settings, data, VAE, latent shape and schedule."""
  settings: ml_collections.ConfigDict        # evaluate's resolved settings
  config: ml_collections.ConfigDict          # the whole recipe
  data: ml_collections.ConfigDict            # the evaluated data settings
  resolve: Callable[[str], epath.Path]        # a config path ('stage:...' or a directory) -> its directory
  vae: Any                                    # the VAE module (its params: params["vae"])
  vae_params: Any
  latent_shape: tuple[int, ...]               # [T, h, w, c] of one clip
  schedule: Any                               # the diffusion.NoiseSchedule the UNets were trained with
  fmri_shape: tuple[int, int]                 # (window, voxels) of the evaluated fMRI windows
  cache: dict[Any, Any] = dataclasses.field(default_factory=dict)

  def load(self, key: Any, loader: Callable[[], Any]) -> Any:
    """`loader()` once per `key` (e.g. ('video_unet', path)): pipelines reading one artifact share it."""
    if key not in self.cache:
      self.cache[key] = loader()
    return self.cache[key]


def sample_keys(seed: int, record: jax.Array) -> jax.Array:
  """Per-sample keys: the stimulus TR's, so every window starts from the same noise in any batch layout."""
  return jax.vmap(lambda r: jax.random.fold_in(jax.random.key(seed), r))(record)
