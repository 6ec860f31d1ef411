"""The ablation runner: overrides, shared-stage reuse, the table."""

import os

import pytest

from brainjax import ablate, runner
from tests import helpers


def test_parse_variant_keeps_tuples_whole():
  name, overrides = ablate.parse_variant("text_only:align.modalities=('text', 'image'),data.window=1")
  assert name == "text_only" and overrides == ["align.modalities=('text', 'image')", "data.window=1"]
  with pytest.raises(ValueError, match="expected name:field=value"):
    ablate.parse_variant("window1")


def test_apply_overrides_types_and_unknown_fields():
  config = helpers.load_recipe("mindvideo", "demo")
  out = ablate.apply_overrides(config, ["data.window=3", "align.modalities=('text',)", "align.sparsify_rate=0.0"])
  assert out.data.window == 3 and list(out.align.modalities) == ["text"] and out.align.sparsify_rate == 0.0
  assert config.data.window == 2  # the base is untouched
  with pytest.raises(ValueError, match="config has no field 'align.modalitiez'"):
    ablate.apply_overrides(config, ["align.modalitiez=1"])


def test_stages_are_shared_when_their_settings_and_inputs_are(tmp_path):
  base = helpers.load_recipe("mindvideo", "demo")
  for name in base.stages:
    (tmp_path / "base" / name).mkdir(parents=True)
    (tmp_path / "base" / name / "DONE.json").write_text("{}")
  window = ablate.apply_overrides(base, ["data.window=1"])
  # MBM reads single volumes whatever data.window is, the CLIP stages, the VAE, the text-to-image and -video UNets
  # and the stand-in classifiers read only stimuli; align, cotrain (its encoder) and evaluate run again.
  assert ablate.link_shared_stages(base, window, tmp_path / "base", tmp_path / "w1") == [
      "mbm_pretrain", "mbm_finetune", "clip_fit", "clip_embed", "vae_fit", "unet_fit", "video_finetune",
      "classifier_fit"]
  assert os.path.islink(tmp_path / "w1" / "video_finetune") and not (tmp_path / "w1" / "align").exists()
  # a stage whose own settings are unchanged still runs again when an input does
  clip = ablate.apply_overrides(base, ["clip_fit.num_steps=10"])
  linked = ablate.link_shared_stages(base, clip, tmp_path / "base", tmp_path / "c")
  assert linked == ["mbm_pretrain", "mbm_finetune", "vae_fit", "classifier_fit"]
  assert {"clip_embed", "align", "unet_fit", "video_finetune"}.isdisjoint(linked)
  mbm = ablate.apply_overrides(base, ["mbm_pretrain.num_steps=10"])
  assert "mbm_finetune" not in ablate.link_shared_stages(base, mbm, tmp_path / "base", tmp_path / "m")
  assert set(runner.stage_inputs(base, "align")) == {"clip_embed", "mbm_finetune"}
  assert set(runner.stage_inputs(base, "evaluate")) >= {"cotrain", "classifier_fit"}


def test_markdown_table():
  text = ablate.markdown_table({"base": {"overrides": [], "top1": 0.5}, "w1": {"overrides": ["data.window=1"],
                                                                               "top1": 0.25}})
  assert "| w1 | data.window=1 | 0.25 |" in text
  text = ablate.markdown_table({"base": {"overrides": [], "image_2way": 0.76, "image_2way_std": 0.029,
                                        "image_2way_chance": 0.75, "image_2way_shuffled": 0.81, "samples": 24}})
  assert text.splitlines()[0] == "| variant | overrides | image_2way |"
  assert "| base | - | 0.76 ± 0.029 (chance 0.75, shuffled 0.81) |" in text
