"""Stage evaluate on the tiny video recipe: sharded generation from test fMRI, the papers' metrics with
their baselines, metrics.json and report.html; the numbers do not depend on the device count or batch."""

import copy
import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from etils import epath

from brainjax import runner
from brainjax.config import ConfigError
from brainjax.eval import metrics as mt
from brainjax.models import videomae, vit
from brainjax.pipelines import generation
from brainjax.stages import StageContext, evaluate
from brainjax.train import sharding as shd
from tests.helpers import tiny_video_config

pytestmark = pytest.mark.slow

IMAGE_CLASSES, VIDEO_CLASSES = 10, 7  # 50-way caps to 8-way and 5-way


def save_tiny_classifiers(directory: epath.Path, image_size: int = 32, num_frames: int = 4) -> tuple[str, str]:
  """Random tiny ViT and VideoMAE classifiers in the transformers layout, with preprocessor configs."""
  tiny = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
              image_size=image_size, patch_size=8)
  image_cfg = vit.ViTConfig(**tiny, id2label=tuple(f"c{i}" for i in range(IMAGE_CLASSES)))
  video_cfg = videomae.VideoMAEConfig(**tiny, num_frames=num_frames, id2label=tuple(f"v{i}" for i in
                                                                                   range(VIDEO_CLASSES)))
  paths = []
  for name, config, cls, processor in (
      ("image", image_cfg, vit.ViTForImageClassification,
       {"size": {"height": image_size, "width": image_size}, "resample": 2, "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3}),
      ("video", video_cfg, videomae.VideoMAEForVideoClassification,
       {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size},
        "resample": 2, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]})):
    module = cls(config)
    params = nn.meta.unbox(module.init(jax.random.key(len(name)), *module.dummy_inputs())["params"])
    # Larger head weights: random tiny towers otherwise give near-uniform probabilities.
    params["classifier"]["kernel"] = params["classifier"]["kernel"] * 30.0
    path = directory / f"{name}_classifier"
    (vit.save_vit if name == "image" else videomae.save_videomae)(path, config, params)
    (path / "preprocessor_config.json").write_text(json.dumps(processor))
    paths.append(str(path))
  return paths[0], paths[1]


def with_evaluate(config: ml_collections.ConfigDict, image_path: str = "",
                  video_path: str = "") -> ml_collections.ConfigDict:
  """The tiny video recipe plus a tiny evaluate stage."""
  config = copy.deepcopy(config)
  with config.unlocked():
    config.evaluate = evaluate.stage_config(
        max_samples=6, batch_per_device=1, image_classifier_path=image_path, video_classifier_path=video_path,
        sample=dict(sampler="ddim", num_steps=3, guidance_scale=5.0, eta=0.0, seed=0, adversarial=True),
        n_way=(2, 50), trials=20, report=dict(clips_per_subject=3))
    config.stages = tuple(config.stages) + ("evaluate",)
  return config


def eval_config(data_dir: str, image_path: str = "", video_path: str = "") -> ml_collections.ConfigDict:
  return with_evaluate(tiny_video_config(data_dir), image_path, video_path)


TRAINED = ("clip_embed", "align", "vae_fit", "unet_fit", "video_finetune", "cotrain")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, video_run):
  """Runs evaluate ALONE (config.stages = ('evaluate',)) on a workdir that links the trained stages of the
  session's tiny video run (conftest.video_run): the trained stages are read from the workdir."""
  trained_config, trained_dir, _ = video_run
  root = epath.Path(tmp_path_factory.mktemp("evaluate"))
  image_path, video_path = save_tiny_classifiers(root / "classifiers")
  config = with_evaluate(trained_config, image_path, video_path)
  (root / "run").mkdir()
  for stage in TRAINED:
    os.symlink(trained_dir / stage, root / "run" / stage)
  with config.unlocked():
    config.stages = ("evaluate",)
  summaries = runner.run(config, str(root / "run"))
  return config, root, summaries


def _shard(workdir: epath.Path) -> dict:
  with np.load(workdir / "evaluate" / "shards" / "process_00000.npz") as f:
    return {k: f[k] for k in f.files}


def _other_workdir(root: epath.Path, name: str) -> epath.Path:
  """A fresh workdir that sees the trained stages of the fixture's run (symlinks), without its evaluate/."""
  workdir = root / name
  workdir.mkdir()
  for stage in TRAINED:
    os.symlink(root / "run" / stage, workdir / stage)
  return workdir


def test_an_imported_mindvideo_encoder_feeds_cotrain_and_evaluate(tmp_path, video_run):
  """A MindVideo fmri_encoder/ folder, imported with the converter, is the same artifact kind align writes:
  cotrain starts from it and evaluate reads cotrain's, with no step in between."""
  from brainjax.convert import mbm as convert
  from brainjax.models import fmri_encoder
  from tests import torch_reference as ref
  trained_config, trained_dir, _ = video_run
  trained, _, _ = fmri_encoder.load(trained_dir / "align")
  mindvideo = dict(num_voxels=trained.encoder.num_voxels, patch_size=trained.encoder.patch_size, embed_dim=16,
                   in_chans=1, depth=1, num_heads=2, mlp_ratio=1.0, out_channel=trained.head.out_tokens,
                   out_dim=trained.head.out_dim, use_norm=False, dropout=0.0, window_size=trained.encoder.window,
                   use_temp_attn=True, logit_scale_init_value=1.0, _class_name="fMRIEncoder")
  ref.write_mindvideo_encoder_folder(tmp_path / "fmri_encoder", mindvideo,
                                     ref.randomize_(ref.FmriEncoderTorch(**mindvideo), seed=3))
  imported = convert.import_mindvideo_fmri_encoder(tmp_path / "fmri_encoder", tmp_path / "imported")
  config = with_evaluate(trained_config)
  workdir = tmp_path / "run"
  workdir.mkdir()
  linked = ("clip_embed", "vae_fit", "unet_fit", "video_finetune")
  for stage in linked:
    os.symlink(trained_dir / stage, workdir / stage)
  with config.unlocked():  # the linked stages are done: only cotrain and evaluate run
    config.stages = (*linked, "cotrain", "evaluate")
    config.cotrain.update(encoder_from=str(imported), num_steps=2, checkpoint_every_steps=2)
    config.cotrain.readout_fit.alpha = 0.0  # MindVideo's head has no caption readout
    config.cotrain.sample.count = 0
    config.evaluate.update(max_samples=2, baselines=())
  summaries = runner.run(config, str(workdir))
  assert summaries["cotrain"]["steps"] == 2 and summaries["evaluate"]["samples"] == 2
  encoder, params, meta = fmri_encoder.load(workdir / "cotrain")
  assert meta["kind"] == "fmri_encoder" and meta["trained_by"] == "cotrain"
  assert meta["converted_from"] == str(tmp_path / "fmri_encoder") and encoder.encoder.embed_dim == 16
  assert "to_clip" not in params
  # cotrain recorded the runs it started from: the encoder is a plain path, the rest are stages.
  assert json.loads((workdir / "cotrain" / "inputs.json").read_text()) == {
      s: runner.run_id(trained_dir / s) for s in ("clip_embed", "video_finetune")}


def test_a_registered_pipeline_is_scored_and_reported_with_no_code_in_evaluate(finished, monkeypatch):
  from brainjax import pipelines
  from tests import toy_pipeline
  monkeypatch.setitem(pipelines.REGISTRY, "toy", "tests.toy_pipeline")
  config, root, _ = finished
  config = copy.deepcopy(config)
  with config.unlocked():
    config.evaluate.update(baselines=("shuffled", "toy"), max_samples=2)
  workdir = _other_workdir(root, "toy")
  summary = runner.run(config, str(workdir))["evaluate"]
  assert {"ssim_toy", "psnr_toy", "image_2way_toy", "video_5way_toy", "ssim_shuffled"} <= set(summary)
  metrics = json.loads((workdir / "evaluate" / "metrics.json").read_text())
  assert metrics["pipelines"] == {"fmri": "reconstruction", "toy": toy_pipeline.LABEL}
  assert set(metrics["ssim"]["baselines"]) == {"shuffled", "toy"}
  shard = _shard(workdir)
  assert shard["toy_video"].shape == shard["video"].shape and shard["toy_video"].dtype == np.uint8
  # Zero latents decode to one clip for every window, which the scores must reflect.
  np.testing.assert_array_equal(shard["toy_video"][0], shard["toy_video"][1])
  np.testing.assert_allclose(shard["toy_ssim"], mt.frame_scores(mt.ssim, shard["toy_video"], shard["real"]),
                             atol=1e-5)
  assert toy_pipeline.LABEL in (workdir / "evaluate" / "report.html").read_text()
  with config.unlocked():
    config.evaluate.baselines = ("shuffled", "unknown")
  with pytest.raises(ConfigError, match=r"config.evaluate.baselines = .*'unknown'.*choose distinct entries of .*'toy'"):
    runner.validate(config)


def test_writes_metrics_report_and_gifs(finished):
  config, root, summaries = finished
  summary = summaries["evaluate"]
  stage_dir = root / "run" / "evaluate"
  metrics = json.loads((stage_dir / "metrics.json").read_text())
  assert summary["samples"] == metrics["samples"] == 6
  for key in ("ssim", "ssim_std", "ssim_shuffled", "ssim_mean_fmri", "psnr", "psnr_shuffled", "psnr_mean_fmri",
              "image_2way", "image_2way_chance", "image_2way_shuffled", "image_2way_mean_fmri", "image_8way",
              "video_2way", "video_5way_mean_fmri", "wall_time_s"):
    assert np.isfinite(summary[key]), key
  assert summary["image_2way_chance"] == pytest.approx(0.75)
  # 50-way capped by the class counts (n <= C - 2), the cap recorded
  image_ns = [(e["requested"], e["n"]) for e in metrics["image_nway"]["results"]]
  video_ns = [(e["requested"], e["n"]) for e in metrics["video_nway"]["results"]]
  assert image_ns == [(2, 2), (50, 8)] and video_ns == [(2, 2), (50, 5)]
  assert any("capped to 8-way" in n for n in metrics["notes"])
  assert len(metrics["ssim"]["per_frame_index"]["mean"]) == config.cotrain.num_frames
  assert metrics["config"]["num_frames"] == config.cotrain.num_frames  # inherited from cotrain
  page = (stage_dir / "report.html").read_text()
  gifs = re.findall(r"src='([^']+\.gif)'", page)
  assert len(gifs) == 3 and all((stage_dir / g).exists() for g in gifs)
  assert "mean-fMRI condition" in page and "<script" not in page and "http" not in page.split("<h2>Config")[0]
  from brainjax import media
  gif = media.read_gif(stage_dir / gifs[0])
  assert gif.shape == (config.cotrain.num_frames, 64, 2 * (3 * 32 + 2 * 2), 3)  # gt | recon | mean-fMRI, x2


def test_metrics_equal_the_metric_functions_on_the_saved_shard(finished):
  config, root, summaries = finished
  summary, shard = summaries["evaluate"], _shard(root / "run")
  assert shard["video"].dtype == np.uint8 and shard["video"].shape == shard["real"].shape == (6, 4, 32, 32, 3)
  ssim = np.asarray(mt.ssim(shard["video"], shard["real"]), np.float64)
  assert summary["ssim"] == pytest.approx(ssim.mean(1).mean(), abs=1e-6)
  np.testing.assert_allclose(shard["ssim"], ssim, atol=1e-6)
  psnr = np.asarray(mt.psnr(shard["mean_fmri_video"], shard["real"]), np.float64)
  assert summary["psnr_mean_fmri"] == pytest.approx(psnr.mean(), abs=1e-5)
  # the video N-way: metrics.n_way_top_k on the saved probabilities, with the stage's rng
  stage = evaluate.settings(config)
  res = mt.n_way_top_k(shard["video_probs"], shard["video_probs_gt"], 5, 1, stage.trials,
                       evaluate._nway_rng(0, "video", 5))
  assert summary["video_5way"] == pytest.approx(res.mean, abs=1e-12)
  # the image N-way per frame index, averaged
  accs = [mt.n_way_top_k(shard["image_probs"][:, t], shard["image_probs_gt"][:, t], 2, 1, stage.trials,
                         evaluate._nway_rng(0, "image", 2, t)).mean for t in range(4)]
  assert summary["image_2way"] == pytest.approx(np.mean(accs), abs=1e-12)
  # the ground truth is the window's first num_frames frames
  from brainjax.data import pipeline
  source = pipeline.make_source(config.data, "test")
  np.testing.assert_array_equal(shard["real"][0], source[int(shard["window"][0])]["frames"][:4])
  assert list(shard["window"]) == generation.spread_records(source, 6)


def test_same_numbers_on_one_device_and_rerun_skips(finished):
  config, root, summaries = finished
  reference = _shard(root / "run")
  # The same batch_per_device on a 1-device mesh: every device computes the same shapes, and the
  # per-sample seeds make the layout irrelevant, so the same windows get the same clips. Not always
  # bitwise: XLA's CPU kernels for a 1- and an 8-device program may round differently, and on an AMD EPYC
  # host (jax 0.10.2, 2026-12-08) 5 of 73,728 uint8 values of the videos differ by 1, before and after
  # evaluate's move to pipelines alike. So: the same windows, videos within 1 at under 0.1 % of the values,
  # and the scores and the summary to rounding (an N-way trial decided by a tie may flip: 0.02).
  workdir = _other_workdir(root, "one_device")
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  summary = evaluate.run(StageContext(name="evaluate", config=config, workdir=workdir, mesh=mesh))
  other = _shard(workdir)
  np.testing.assert_array_equal(other["window"], reference["window"])
  for key in ("video", "mean_fmri_video"):
    diff = np.abs(other[key].astype(np.int16) - reference[key].astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (key, int(diff.max()), float((diff > 0).mean()))
  for key in ("ssim", "psnr"):
    np.testing.assert_allclose(other[key], reference[key], rtol=1e-3, atol=1e-4, err_msg=key)
  for key in ("image_probs", "video_probs_gt"):  # the tiny classifiers' 30x logits amplify a pixel's change
    np.testing.assert_allclose(other[key], reference[key], rtol=1e-3, atol=1e-3, err_msg=key)
  expected = {k: v for k, v in summaries["evaluate"].items() if k not in ("s_per_sample", "wall_time_s")}
  got = {k: v for k, v in summary.items() if k != "s_per_sample"}
  assert set(got) == set(expected)
  for k, v in expected.items():
    assert got[k] == pytest.approx(v, rel=1e-3, abs=0.02 if "way" in k else 1e-3), k
  # a re-run is skipped
  again = runner.run(config, str(root / "run"))["evaluate"]
  assert again == summaries["evaluate"]


def test_caption_and_ridge_baselines_are_the_text_to_video_unet_on_captions_and_ridge_predictions(finished):
  """baselines=('caption', 'ridge'): each window's clip generated by video_finetune's UNet from its stimulus'
  caption, and from a ridge map's prediction of it from the window's fMRI, with the window's seed and
  classifier-free guidance against the empty caption."""
  from brainjax import diffusion
  from brainjax.models import vae
  from brainjax.models import video_unet as vu
  from brainjax.data import pipeline
  from brainjax import ridge
  from brainjax.features import clip_cache
  config, root, _ = finished
  config = copy.deepcopy(config)
  with config.unlocked():
    config.evaluate.update(baselines=("caption", "ridge"), max_samples=2, ridge_alpha=100.0)
  workdir = _other_workdir(root, "caption")
  summary = runner.run(config, str(workdir))["evaluate"]
  assert {"ssim_caption", "psnr_caption", "image_2way_caption", "video_5way_caption", "ssim_ridge",
          "image_2way_ridge"} <= set(summary)
  assert not any(k.endswith("_mean_fmri") or k.endswith("_shuffled") for k in summary)
  shard = _shard(workdir)
  # the reference: the text-to-video UNet sampled directly on the captions, the stage's seeds
  stage = evaluate.settings(config)
  module, params = vu.load_video_unet(workdir / "video_finetune" / "unet")
  hidden, uncond = clip_cache.load_caption_condition(workdir / "clip_embed", "test")
  vae_module, vae_params = vae.load_vae(workdir / "vae_fit" / "vae")
  schedule = diffusion.NoiseSchedule.create(**stage.schedule.to_dict())
  sampler = generation.make_sampler(module, schedule, stage.sample)
  record = shard["record"]
  keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(0), r))(jnp.asarray(record))
  # the ridge map, fitted directly: training windows -> their captions' hidden states
  train = pipeline.make_source(config.data, "train")
  train_hidden = clip_cache.load_caption_condition(workdir / "clip_embed", "train")[0]
  fitted = ridge.fit_ridge(np.stack([train[i]["fmri"] for i in range(len(train))]),
                           train_hidden[[int(train[i]["record"]) for i in range(len(train))]], 100.0)
  test = pipeline.make_source(config.data, "test")
  fmri = np.stack([test[int(w)]["fmri"] for w in shard["window"]])
  predicted = fitted.predict(fmri).reshape((2,) + hidden.shape[1:]).astype(np.float32)
  for name, cond in (("caption", hidden[record]), ("ridge", predicted)):
    latents = sampler(params, cond, np.broadcast_to(uncond, cond.shape), keys, shape=(2, 4, 8, 8, 4))
    expected = generation.decode(vae_module, vae_params, latents)
    # uint8 after decoding: allow one level of rounding difference between batch layouts
    assert np.abs(shard[f"{name}_video"].astype(int) - expected.astype(int)).max() <= 1, name
  np.testing.assert_allclose(summary["ssim_caption"], np.asarray(mt.ssim(shard["caption_video"], shard["real"]),
                                                                 np.float64).mean(), atol=1e-6)
  page = (workdir / "evaluate" / "report.html").read_text()
  assert "true caption (text-to-video)" in page and "ridge fMRI" in page
  assert "true caption | ridge from fMRI" in page.split("<h2>Test clips")[1]


def test_per_sample_keys_do_not_depend_on_the_batch():
  from brainjax import diffusion

  class Toy(nn.Module):
    @nn.compact
    def __call__(self, x, t, c):
      return nn.Dense(x.shape[-1])(x) * 0.1 + c.mean(axis=(1, 2))[:, None, None, None, None]

  toy = Toy()
  shape = (4, 3, 2, 2, 4)
  params = toy.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros(()), jnp.zeros((4, 2, 3)))["params"]
  schedule = diffusion.NoiseSchedule.create(num_train_timesteps=100)
  cfg = ml_collections.ConfigDict(dict(sampler="ddim", num_steps=4, guidance_scale=3.0, eta=0.5))
  sampler = generation.make_sampler(toy, schedule, cfg, beta=0.25)
  keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(1), r))(jnp.arange(4))
  cond = jax.random.normal(jax.random.key(2), (4, 2, 3))
  whole = sampler(params, cond, -cond, keys, shape=shape)
  # Another batch size: the same noise per sample (the results agree to float rounding: XLA's kernels
  # may round differently for another batch size, so bitwise equality holds for equal per-device batches).
  single = sampler(params, cond[1:2], -cond[1:2], keys[1:2], shape=(1,) + shape[1:])
  np.testing.assert_allclose(whole[1:2], single, atol=1e-5)
  # one key for the batch still works (the callers of video_finetune / cotrain)
  assert sampler(params, cond, None, jax.random.key(0), shape=shape).shape == shape


def test_compute_metrics_per_subject_and_shuffled_pairs():
  rng = np.random.default_rng(0)
  n, t = 6, 2
  real = rng.integers(0, 256, (n, t, 8, 8, 3), dtype=np.uint8)
  merged = {"window": np.arange(n), "record": np.array([0, 1, 2, 0, 1, 2]), "subject": np.array([0, 0, 0, 1, 1, 1]),
            "video": real.copy(), "real": real, "ssim": np.ones((n, t)), "psnr": np.full((n, t), 100.0),
            "mean_fmri_video": real, "mean_fmri_ssim": np.full((n, t), 0.5), "mean_fmri_psnr": np.full((n, t), 10.0),
            "image_probs": rng.random((n, t, 6)), "num_classes_image": np.int64(6)}
  merged["image_probs_gt"] = merged["image_probs"]
  merged["mean_fmri_image_probs"] = rng.random((n, t, 6))
  stage = evaluate.stage_config(n_way=(2, 50), trials=10)
  out = evaluate.compute_metrics(merged, stage)
  assert out["ssim"]["mean"] == 1.0 and out["ssim"]["baselines"]["mean_fmri"]["mean"] == 0.5
  assert out["ssim"]["baselines"]["shuffled"]["mean"] < 0.5  # other clips' (random) frames
  assert [(e["requested"], e["n"]) for e in out["image_nway"]["results"]] == [(2, 2), (50, 4)]
  assert out["image_nway"]["results"][0]["mean"] == 1.0  # predictions equal the ground truth's
  assert set(out["per_subject"]) == {"0", "1"} and out["per_subject"]["1"]["samples"] == 3
  assert out["per_subject"]["0"]["ssim_mean_fmri"] == 0.5
  # shuffled partners never show the same stimulus (subjects 0 and 1 watched the same clips)
  partner = evaluate.shuffled_partner(merged["record"], 0)
  assert np.all(merged["record"][partner] != merged["record"])
  summary = evaluate.flat_summary(out)
  assert summary["image_4way_chance"] == pytest.approx(mt.n_way_chance(4))


def test_capped_n_way():
  assert evaluate.capped_n_way((2, 50), 1, 1000, "image")[0] == [(2, 2), (50, 50)]
  pairs, notes = evaluate.capped_n_way((2, 50), 1, 12, "image")
  assert pairs == [(2, 2), (50, 10)] and "capped to 10-way" in notes[0]
  pairs, notes = evaluate.capped_n_way((2, 50), 1, 3, "video")
  assert pairs == [] and len(notes) == 2


@pytest.mark.parametrize("field, value, match", [
    ("n_way", (1, 50), r"config.evaluate.n_way\[0\] = 1"),
    ("n_way", (), r"config.evaluate.n_way = \(\)"),
    ("top_k", 2, r"config.evaluate.top_k = 2 must be smaller"),
    ("top_k", 0, r"config.evaluate.top_k = 0"),
    ("trials", 0, r"config.evaluate.trials = 0"),
    ("max_samples", -1, r"config.evaluate.max_samples = -1"),
    ("batch_per_device", 0, r"config.evaluate.batch_per_device = 0"),
    ("encoder_from", "", r"config.evaluate.encoder_from is empty"),
    ("unet_from", "", r"config.evaluate.unet_from is empty"),
    ("baselines", ("shuffled", "noise"), r"config.evaluate.baselines"),
    ("baselines", ("shuffled", "shuffled"), r"config.evaluate.baselines"),
    ("text_cache", "", r"config.evaluate.text_cache is empty but config.evaluate.baselines has 'ridge'"),
    ("caption_unet_from", "stage:video_finetun/unet", r"stage 'video_finetun', which does not"),
    ("ridge_alpha", 0.0, r"config.evaluate.ridge_alpha = 0.0"),
    ("split", "rest", r"config.evaluate.split = 'rest'"),
    ("image_classifier_path", "stage:classifer_fit/image_classifier", r"stage 'classifer_fit', which does not"),
    ("num_frames", -2, r"config.evaluate.num_frames = -2"),
    ("sample.sampler", "euler", r"config.evaluate.sample.sampler"),
    ("sample.num_steps", 0, r"config.evaluate.sample.num_steps"),
    ("sample.eta", 2.0, r"config.evaluate.sample.eta"),
    ("report.clips_per_subject", -1, r"config.evaluate.report.clips_per_subject"),
    ("object_motion", None, r"config.evaluate.object_motion = None: must be True"),
    ("data_overrides", {"windw": 3}, r"config.evaluate.data_overrides.windw"),
])
def test_config_errors(tmp_path, field, value, match):
  config = eval_config(str(tmp_path / "data"))
  with config.unlocked():
    node, _, leaf = field.rpartition(".")
    target = config.evaluate if not node else config.evaluate[node]
    target[leaf] = value
    if field in ("text_cache", "caption_unet_from", "ridge_alpha"):  # read only for these baselines
      config.evaluate.baselines = ("shuffled", "ridge")
  with pytest.raises(ConfigError, match=match):
    runner.validate(config)


def test_stage_order_and_missing_outputs(tmp_path):
  config = eval_config(str(tmp_path / "data"))
  with config.unlocked():
    config.stages = ("clip_fit", "clip_embed", "align", "vae_fit", "unet_fit", "video_finetune", "evaluate", "cotrain")
  with pytest.raises(ConfigError, match="needs stage 'cotrain' to run before 'evaluate'"):
    runner.validate(config)
  config = eval_config(str(tmp_path / "data"))
  with config.unlocked():
    config.stages = ("evaluate",)
  runner.validate(config)  # absent source stages are read from the workdir at run time
  with pytest.raises(FileNotFoundError, match="cotrain"):
    runner.run(config, str(tmp_path / "empty"))
  with config.unlocked():
    del config["cotrain"]
  with pytest.raises(ConfigError, match="config.evaluate.num_frames = 0 means config.cotrain's"):
    runner.validate(config)
