"""The demo's video stages on a tiny slice: vae_fit, unet_fit and video_finetune end to end, their outputs
(diffusers-layout VAE and UNet, MindVideo-layout video UNet, sample images and GIFs), resumption and config
errors."""

import json

import numpy as np
import pytest

from brainjax import config as cfg
from brainjax import media, runner
from brainjax.config import ConfigError
from brainjax.models import vae
from brainjax.models import video_unet as vu
from tests import helpers

pytestmark = pytest.mark.slow


@pytest.fixture
def finished(video_run):
  return video_run


def test_vae_fit_writes_a_diffusers_vae_with_a_fitted_scaling_factor(finished):
  _, workdir, summaries = finished
  summary = summaries["vae_fit"]
  assert np.isfinite(summary["test_psnr_db"]) and summary["test_psnr_db"] > 5
  module, _ = vae.load_vae(workdir / "vae_fit" / "vae")
  assert module.config.scaling_factor == pytest.approx(summary["scaling_factor"])
  assert module.config.downsampling_factor == 4
  from diffusers import AutoencoderKL
  torch_vae = AutoencoderKL.from_pretrained(str(workdir / "vae_fit" / "vae"))
  assert torch_vae.config.scaling_factor == pytest.approx(summary["scaling_factor"])
  assert (workdir / "vae_fit" / "reconstructions.png").exists()


def test_unet_fit_writes_a_diffusers_unet_that_video_finetune_inflates(finished):
  import torch
  from diffusers import UNet2DConditionModel

  from brainjax.models import unet
  config, workdir, summaries = finished
  summary = summaries["unet_fit"]
  assert (summary["steps"], summary["latent_shape"], summary["samples"]) == (config.unet_fit.num_steps, [8, 8, 4], 3)
  module, params = unet.load_unet(workdir / "unet_fit" / "unet")
  assert module.config.block_out_channels == (16, 32) and module.config.cross_attention_dim == 16
  # the stage's output is a real diffusers checkpoint: same prediction from PyTorch
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
  cond = rng.standard_normal((2, 8, 16)).astype(np.float32)
  t = np.array([10, 900])
  ours = np.asarray(module.apply({"params": params}, x, t, cond))
  torch_unet = UNet2DConditionModel.from_pretrained(str(workdir / "unet_fit" / "unet")).eval()
  with torch.no_grad():
    theirs = torch_unet(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t),
                        encoder_hidden_states=torch.from_numpy(cond)).sample.permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4 * np.abs(theirs).max())
  # samples.png: a row of real frames over a row of generated ones, 32 px + 2 px gaps, x2
  sheet = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(workdir / "unet_fit" / "samples.png"))
  assert sheet.shape == (2 * (2 * 32 + 2), 2 * (3 * 32 + 2 * 2), 3)
  # video_finetune started from it: the same 2-D architecture, with the temporal layers added
  video, _ = vu.load_video_unet(workdir / "video_finetune" / "unet")
  assert video.config == module.config


def test_frame_source_enumerates_every_frame_of_every_record():
  from brainjax.stages import unet_fit
  mean = np.arange(3 * 4, dtype=np.float32).reshape(3, 4, 1, 1, 1)
  cond = np.arange(3, dtype=np.float32)[:, None, None] * 10
  source = unet_fit._FrameSource(mean, mean + 100, cond)
  assert len(source) == 12
  for i in range(12):
    record, frame = divmod(i, 4)
    example = source[i]
    assert example["mean"].item() == mean[record, frame].item() and example["std"].item() == 100 + i
    assert example["cond"].item() == 10 * record


def test_video_finetune_saves_the_unet_and_sample_gifs(finished):
  config, workdir, summaries = finished
  stage = config.video_finetune
  summary = summaries["video_finetune"]
  assert summary["latent_shape"] == [4, 8, 8, 4] and summary["samples"] == 3
  assert summary["sample_caption_chance"] == pytest.approx(1 / 3)
  module, params = vu.load_video_unet(workdir / "video_finetune" / "unet")
  assert module.video == vu.video_spec("mindvideo") and module.config.cross_attention_dim == 16
  captions = json.loads((workdir / "video_finetune" / "samples" / "captions.json").read_text())
  assert len(captions) == 3 and all(c["caption"] for c in captions)
  gif = media.read_gif(workdir / "video_finetune" / "samples" / "0.gif")
  # real | generated, 32 px each plus a 2 px gap, upscaled x2; num_frames frames
  assert gif.shape == (stage.num_frames, 64, 2 * (2 * 32 + 2), 3)
  assert media.read_gif(workdir / "video_finetune" / "samples" / "all.gif").shape[0] == stage.num_frames


def test_cotrain_conditions_the_unet_on_fmri_and_saves_both(finished):
  config, workdir, summaries = finished
  assert summaries["cotrain"]["steps"] == config.cotrain.num_steps and summaries["cotrain"]["samples"] == 2
  from brainjax.stages import cotrain
  from brainjax.models import fmri_encoder
  encoder, _, meta = fmri_encoder.load(workdir / "cotrain")
  assert meta["trained_by"] == "cotrain" and encoder.head.out_dim == 16 and encoder.head.readout_rank == 8
  # The readout, fitted to the captions before co-training, brings the condition closer to them than align's head.
  fit = summaries["cotrain"]
  assert fit["readout_rank"] == 8 and 0 < fit["readout_test_rel_error_after"] < fit["readout_test_rel_error_before"]
  short = encoder.clone(head=encoder.head.clone(out_tokens=8))
  with pytest.raises(ConfigError, match=r"set config.align.head.out_tokens = 32"):
    cotrain.fit_caption_readout(short, {}, config.data, workdir / "clip_embed", 1.0)
  module, params = vu.load_video_unet(workdir / "cotrain" / "unet")
  _, before = vu.load_video_unet(workdir / "video_finetune" / "unet")
  from brainjax.weights import mapping as mp
  flat, flat0 = mp.flatten(params), mp.flatten(before)
  changed = {k for k in flat if not np.array_equal(flat[k], flat0[k])}
  # only the attention layers of the UNet are trained (MinD-Video supplement B)
  assert changed and all(any(p in k for p in ("attn1", "attn2", "attn_temp", "norm_temp")) for k in changed)
  gif = media.read_gif(workdir / "cotrain" / "samples" / "1.gif")
  assert gif.shape[0] == config.cotrain.num_frames


def test_video_stage_config_errors(tmp_path):
  config = helpers.tiny_video_config(str(tmp_path / "data"))
  with config.unlocked():
    config.video_finetune.unet_path = ""
  with pytest.raises(ConfigError, match="give unet_path"):
    runner.validate(config)
  config = helpers.tiny_video_config(str(tmp_path / "data"))
  with config.unlocked():
    config.stages = ("clip_fit", "clip_embed", "align", "vae_fit", "video_finetune", "unet_fit", "cotrain")
  with pytest.raises(ConfigError, match="needs stage 'unet_fit' to run before"):
    runner.validate(config)
  config = helpers.tiny_video_config(str(tmp_path / "data"))
  with config.unlocked():
    config.unet_fit.unet.norm_num_groups = 5  # does not divide the 16 / 32 channels
  with pytest.raises(ConfigError, match="config.unet_fit.unet"):
    runner.validate(config)
  config = helpers.tiny_video_config(str(tmp_path / "data"))
  with config.unlocked():
    config.unet_fit.uncond_prob = -0.1
  with pytest.raises(ConfigError, match="unet_fit.uncond_prob"):
    runner.validate(config)
  config = helpers.tiny_video_config(str(tmp_path / "data"))
  with config.unlocked():
    config.unet_fit.schedule.prediction_type = "x0"
  with pytest.raises(ConfigError, match="config.unet_fit.schedule"):
    runner.validate(config)
  config = helpers.tiny_video_config(str(tmp_path / "data"))
  with config.unlocked():
    config.stages = ("unet_fit",)
    config.data.update(name="cc2017", builder_config="mindvideo")
  with pytest.raises(ConfigError, match="unet_fit trains a stand-in"):
    runner.validate(config)
  config = helpers.tiny_video_config(str(tmp_path / "data"))
  with config.unlocked():
    config.stages = ["clip_fit", "clip_embed", "video_finetune", "vae_fit"]
  with pytest.raises(ConfigError, match="needs stage 'vae_fit' to run before"):
    runner.validate(config)
  config = helpers.tiny_video_config(str(tmp_path / "data"))
  with config.unlocked():
    config.video_finetune.variant = "animatediff"
  with pytest.raises(ConfigError, match="variant"):
    runner.validate(config)
  config = helpers.tiny_video_config(str(tmp_path / "data"))
  with config.unlocked():
    config.video_finetune.unet_path = ""
    config.video_finetune.unet = dict(config.unet_fit.unet.to_dict(), norm_num_groups=5)
  with pytest.raises(ConfigError, match="config.video_finetune.unet"):
    runner.validate(config)
  config = helpers.tiny_video_config(str(tmp_path / "data"))
  with config.unlocked():
    config.video_finetune.uncond_prob = 1.5
  with pytest.raises(ConfigError, match="uncond_prob"):
    runner.validate(config)
  config = helpers.tiny_video_config(str(tmp_path / "data"))
  with config.unlocked():
    config.stages = ("clip_fit", "clip_embed", "vae_fit", "unet_fit", "video_finetune", "cotrain", "align")
  with pytest.raises(ConfigError, match="needs stage 'align' to run before 'cotrain'"):
    runner.validate(config)
  config = helpers.tiny_video_config(str(tmp_path / "data"))
  with config.unlocked():
    config.vae_fit.resolution = -16
  with pytest.raises(ConfigError, match="config.vae_fit.resolution = -16"):
    runner.validate(config)
  config = helpers.tiny_video_config(str(tmp_path / "data"))
  with config.unlocked():
    config.cotrain.schedule.beta_end = 0.02  # not the betas video_finetune trained the UNet with
  with pytest.raises(ConfigError, match=r"config.cotrain.schedule differs .* \['beta_end'\]"):
    runner.validate(config)
  for field, value, message in (
      ("align.head.readout_rank", 0, "readout_rank = 0: the encoder has none"),
      ("align.head.readout_rank", -2, r"config.align.head.readout_rank = -2: must be a non-negative integer"),
      ("cotrain.readout_fit.alpha", -1.0, r"config.cotrain.readout_fit.alpha = -1.0: must be a non-negative"),
      ("cotrain.readout_fit.text_cache", "", "readout_fit.text_cache is empty")):
    config = helpers.tiny_video_config(str(tmp_path / "data"))
    with config.unlocked():
      parent, _, leaf = field.rpartition(".")
      cfg.get_path(config, parent)[leaf] = value
    with pytest.raises(ConfigError, match=message):
      runner.validate(config)


def test_frames_are_resized_once_the_same_way_for_every_stage():
  frames = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8)
  same = vae.to_model_input(frames, 0)
  np.testing.assert_allclose(np.asarray(same), frames.astype(np.float32) / 127.5 - 1.0, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(vae.to_model_input(frames, 32)), np.asarray(same))
  small = np.asarray(vae.to_model_input(frames, 16))
  assert small.shape == (2, 3, 16, 16, 3)
  # antialiased: a downscale keeps each frame's mean (no aliasing of the noise) and constant frames constant
  np.testing.assert_allclose(small.mean(axis=(2, 3)), np.asarray(same).mean(axis=(2, 3)), atol=0.02)
  flat = np.full((1, 1, 32, 32, 3), 200, np.uint8)
  np.testing.assert_allclose(np.asarray(vae.to_model_input(flat, 8)), 200 / 127.5 - 1.0, atol=1e-5)


def test_too_many_frames_per_clip_is_a_config_error():
  from brainjax.data import stimuli
  with pytest.raises(ConfigError, match="num_frames = 8"):
    stimuli.clip_frames(np.zeros((2, 6, 4, 4, 3), np.uint8), 8, "the stimuli")
