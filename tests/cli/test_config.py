"""Bad configs fail before anything runs, with messages that name the field."""

import pytest
from ml_collections import config_flags  # noqa: F401  (the loader main.py uses)

from brainjax import runner
from brainjax.config import ConfigError
from brainjax.config import select_preset
from brainjax.models import video_unet
from brainjax.stages import evaluate
from tests import helpers


RECIPES = ("mindvideo", "neuralflix")


def _load(preset="demo", recipe="mindvideo"):
  return helpers.load_recipe(recipe, preset)


@pytest.mark.parametrize("recipe", RECIPES)
def test_demo_preset_validates(recipe):
  runner.validate(_load("demo", recipe))


@pytest.mark.parametrize("recipe", RECIPES)
def test_object_motion_is_scored_on_the_synthetic_demo_only(recipe):
  # The tracker needs the synthetic benchmark's one saturated object; on natural movies it means nothing.
  assert _load("demo", recipe).evaluate.object_motion is True
  assert _load("paper", recipe).evaluate.object_motion is False


def test_neuralflix_is_mindvideo_with_augmentation_unet_variant_and_dependent_noise():
  mind, flix = _load("paper"), _load("paper", "neuralflix")
  assert flix.stages == mind.stages
  assert (flix.align.spatial_mask_ratio, flix.align.mu_spa, flix.align.mu_tem) == (0.2, 1.0, 1.0)
  assert flix.align.temporal_interp_ratio == pytest.approx(1 / 3) and flix.align.emb_reduction == "sum"
  assert mind.align.spatial_mask_ratio == 0.0 and mind.video_finetune.dependent_noise_beta == 0.0
  for stage in ("video_finetune", "cotrain"):
    assert flix[stage].variant == "neuralflix" and flix[stage].dependent_noise_beta == 0.75
  assert (flix.video_finetune.num_steps, flix.cotrain.batch_size, flix.cotrain.optim.lr) == (1000, 24, 2e-5)
  # SD's 2-D layers stay frozen in the paper; the demo's from-scratch UNet trains every parameter
  assert list(flix.video_finetune.optim.trainable) == [video_unet.trainable_pattern("neuralflix")]
  assert list(_load("demo", "neuralflix").video_finetune.optim.trainable) == []
  # The paper presets chunk SD's attention queries (scores of [8 heads, 1024, 2048] per frame at 32x32);
  # evaluate inherits cotrain's setting.
  for config in (mind, flix):
    assert config.video_finetune.attention_query_chunk == config.cotrain.attention_query_chunk == 256
    assert evaluate.settings(config).attention_query_chunk == 256


def test_one_beta_knob_reaches_every_stage_also_through_ablation_overrides():
  from brainjax import ablate
  config = _load("demo", "neuralflix")
  off = ablate.apply_overrides(config, ["neuralflix_beta=0.0"])
  assert off.video_finetune.dependent_noise_beta == 0.0 and off.cotrain.dependent_noise_beta == 0.0
  assert config.cotrain.dependent_noise_beta == 0.75  # the base is untouched
  for name, overrides in config.ablations.items():  # every listed ablation row applies cleanly
    ablate.apply_overrides(config, list(overrides))


def test_unknown_preset_lists_known_ones():
  with pytest.raises(ConfigError, match=r"unknown preset 'papr'.*\['demo', 'paper'\]"):
    _load("papr")


def test_select_preset_default_is_paper():
  assert select_preset(None, {"paper": lambda: __import__("ml_collections").ConfigDict()}, "x").preset == "paper"


def test_paper_preset_names_the_real_datasets_and_asks_for_weights():
  config = _load("paper")
  assert (config.data.name, config.data.builder_config) == ("cc2017", "mindvideo")
  pretrain = config.mbm_pretrain.data_overrides
  assert (pretrain.name, pretrain.builder_config, tuple(pretrain.subjects)) == ("hcp", "mindvis", ())
  assert config.mbm_finetune.data_overrides.get("builder_config") is None  # fine-tuning reads cc2017 itself
  for stage in ("mbm_pretrain", "mbm_finetune"):
    config[stage].batch_size = 512  # the paper's 500 does not split over the 8 simulated devices
  with pytest.raises(ConfigError, match=r"config.clip_embed.text_path is empty"):
    runner.validate(config)
  config.data.builder_config = "full256"  # builder configs are checked before any file exists
  with pytest.raises(ConfigError, match=r"builder_config = 'full256'.*'mindvideo'"):
    runner.validate(config)


@pytest.mark.parametrize("path,value,message", [
    ("stages", ["mbm_pretrain", "mbm_pretrian"], r"unknown stage 'mbm_pretrian'"),
    ("stages", ["mbm_pretrain", "mbm_pretrain"], r"lists 'mbm_pretrain' twice"),
    ("stages", [], r"config.stages is empty"),
    ("mbm_pretrain.batch_size", -8, r"config.mbm_pretrain.batch_size = -8: must be a positive integer"),
    ("mbm_pretrain.batch_size", 60, r"batch_size = 60 must be a multiple of the 8 devices"),
    ("mbm_pretrain.num_steps", 0, r"config.mbm_pretrain.num_steps = 0"),
    ("mbm_pretrain.optim.lr", -1.0, r"config.mbm_pretrain.optim.lr = -1.0: must be a positive number"),
    ("mbm_pretrain.optim.name", "adamax", r"config.mbm_pretrain.optim.name = 'adamax'"),
    ("mbm_pretrain.optim.warmup_steps", 10_000, r"warmup_steps = 10000 must be smaller"),
    ("mbm_pretrain.model.mask_ratio", 1.5, r"mask_ratio = 1.5: must be a number in"),
    ("mbm_pretrain.model.num_heads", 3, r"embed_dim must be divisible by num_heads"),
    ("mbm_pretrain.split", "val", r"config.mbm_pretrain.split = 'val'"),
    ("mbm_pretrain.data_overrides.window", 2, r"MBM reads single volumes"),
    ("mbm_pretrain.data_overrides.temporal_average", 500, r"does not fit in a 200-TR rest segment"),
    ("data.hrf_shift_trs", 200, r"does not fit in a 110-TR train segment"),
    ("data.window", 0, r"config.data.window = 0: must be a positive integer"),
    ("data.subjects", [0, 7], r"config.data.subjects = \[0, 7\]: the dataset has subjects 0..2"),
    ("data.voxel_padding", "zero", r"config.data.voxel_padding = 'zero'"),
    ("data.builder_config", "huge", r"config.data.builder_config = 'huge'"),
    ("mesh.data", 3, r"needs 3 devices"),
    ("seed", -1, r"config.seed = -1"),
    ("clip_embed.text_path", "", r"config.clip_embed.text_path is empty"),
    ("stages", ["mbm_pretrain", "mbm_finetune", "clip_embed", "align"],
     r"needs stage 'clip_fit' to run before 'clip_embed'"),
    ("stages", ["clip_fit", "clip_embed", "align"], r"init_from = 'stage:mbm_finetune' needs stage"),
    ("stages", ["mbm_finetune", "clip_fit", "clip_embed"], r"init_from = 'stage:mbm_pretrain' needs stage"),
    ("stages", ["mbm_pretrain", "mbm_finetune", "clip_fit", "align"], r"put 'clip_embed' before it"),
    ("mbm_finetune.split", "rest2", r"config.mbm_finetune.split = 'rest2'"),
    ("align.modalities", ("txt",), r"entries must be 'text' or 'image'"),
    ("align.modalities", (), r"config.align has no loss"),
    ("align.temperature", -1.0, r"config.align.temperature = -1.0"),
    ("align.head.dropout", 1.5, r"config.align.head.dropout = 1.5"),
    ("align.emb_reduction", "max", r"config.align.emb_reduction = 'max'"),
    ("clip_fit.vision.projection_dim", 32, r"projection_dim must be equal"),
    ("video_finetune.attention_query_chunk", -1, r"config.video_finetune.attention_query_chunk = -1: must be a non"),
    ("cotrain.attention_query_chunk", -3, r"config.cotrain.attention_query_chunk = -3: must be a non-negative"),
    ("evaluate.attention_query_chunk", -2, r"config.evaluate.attention_query_chunk = -2: must be a non-negative"),
])
def test_bad_values_name_the_field(path, value, message):
  config = _load("demo")
  with config.unlocked():
    node = config
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  with pytest.raises(ConfigError, match=message):
    runner.validate(config)


def test_missing_stage_settings_are_reported():
  config = _load("demo")
  with config.unlocked():
    del config["mbm_pretrain"]
  with pytest.raises(ConfigError, match=r"config.mbm_pretrain is missing"):
    runner.validate(config)


def test_an_empty_evaluate_vae_path_names_where_it_would_come_from():
  config = helpers.load_recipe("mindvideo", "paper")
  with pytest.raises(ConfigError, match=r"config.evaluate.vae_path is empty \(and so are config.cotrain.vae_path "
                                        r"and config.video_finetune.vae_path, which it defaults to\)"):
    evaluate.validate(config, "evaluate")
