"""The synthetic fMRI–video benchmark as a TFDS dataset (ArrayRecord files).

Records are *stimulus TRs*, in generation order (shuffling is left to the
Grain pipeline, which needs the order to find a TR's neighbours):

  train / test   one record per (segment, TR): the frames shown during the TR,
                 its caption, clip id, semantic labels, and for every subject
                 the volume acquired at that TR in every repeat (R x V_k).
  rest           one record per (run, TR) of resting-state runs (no frames).

The hemodynamic shift, the window of TRs, repeat averaging and multi-subject
voxel padding are applied by `brainjax.data.pipeline`, not baked in here, so
the window-size ablations reuse one dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import tensorflow_datasets as tfds

from brainjax.data import synthetic
from data_builders import common

_LABELS = ("category", "colour", "direction", "speed", "scene")


class SyntheticConfig(tfds.core.BuilderConfig):
  """A builder config carrying the simulator spec."""

  def __init__(self, *, spec: synthetic.SyntheticSpec, name: str, description: str = ""):
    super().__init__(name=name, description=description or f"SyntheticSpec({spec})")
    self.spec = spec


def builder_config_for(spec: synthetic.SyntheticSpec, name: str | None = None) -> SyntheticConfig:
  """A config named by the spec's content, so different specs never share files."""
  spec.validate()
  if name is None:
    digest = hashlib.sha1(json.dumps(dataclasses.asdict(spec), sort_keys=True).encode()).hexdigest()[:10]
    name = f"spec_{digest}"
  return SyntheticConfig(spec=spec, name=name)


class Builder(tfds.core.GeneratorBasedBuilder):
  """brainjax_synthetic: a seeded simulated cc2017-like fMRI–video dataset."""

  name = "brainjax_synthetic"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      SyntheticConfig(spec=synthetic.SyntheticSpec(), name="demo",
                      description="64x64 at 3 FPS, 3 subjects: the demo preset's data."),
      SyntheticConfig(spec=synthetic.SyntheticSpec(resolution=32, object_radius=0.26), name="demo32",
                      description="32x32 at 3 FPS with larger objects: the CPU demo presets' data (every "
                                  "stage is ~4x cheaper than at 64 px and shapes stay legible)."),
      SyntheticConfig(spec=synthetic.SyntheticSpec(resolution=256), name="full256",
                      description="As demo, rendered at 256x256 like MinD-Video's frames."),
  ]
  @property
  def spec(self) -> synthetic.SyntheticSpec:
    return self.builder_config.spec

  def _info(self) -> tfds.core.DatasetInfo:
    spec = self.spec
    res = spec.resolution
    fmri = {f"subject_{k}": tfds.features.Tensor(shape=(None, v), dtype=np.float32,
                                                 encoding=tfds.features.Encoding.BYTES)
            for k, v in enumerate(spec.voxels_per_subject)}
    features = tfds.features.FeaturesDict({
        # None frames: rest records have none.
        "frames": tfds.features.Tensor(shape=(None, res, res, 3), dtype=np.uint8,
                                       encoding=tfds.features.Encoding.ZLIB),
        "caption": tfds.features.Text(),
        "clip_id": np.int64,
        "segment": np.int32,
        "tr": np.int32,
        "scene_cut": np.bool_,
        "labels": tfds.features.FeaturesDict({k: np.int32 for k in _LABELS}),
        "fmri": tfds.features.FeaturesDict(fmri),
    })
    return common.DatasetInfo(
        builder=self,
        description=__doc__,
        features=features,
        metadata=tfds.core.MetadataDict(synthetic.dataset_metadata(spec)),
        # Record order carries meaning (segment, TR): the pipeline finds a TR's
        # neighbours by index, so records stay in generation order.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the data are simulated
    return {split: self._generate_examples(split) for split in ("train", "test", "rest")}

  def _generate_examples(self, split: str):
    yield from synthetic.iter_records(self.spec, split)
