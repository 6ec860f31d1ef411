"""Stage `classifier_fit` (demo only): stand-in classifiers for the N-way top-K metrics.

The papers' semantic metrics classify frames with an ImageNet ViT-B/16
(google/vit-base-patch16-224) and clips with a Kinetics-400 VideoMAE
(MCG-NJU/videomae-base-finetuned-kinetics). Neither knows the synthetic world,
so this stage trains two small ones on its ground truth and saves them in the
transformers layout, each with the preprocessor_config.json of the checkpoint
it stands in for. `evaluate` then reads them exactly as it reads the real
checkpoints (load_vit / load_videomae + vit.processor_kwargs): one code path for
the demo and the paper.

  image_classifier/  ViTForImageClassification on single frames; classes: the object
                     category (synthetic.CLASSES)
  video_classifier/  VideoMAEForVideoClassification on clips of `num_frames` frames;
                     classes: the motion, direction x speed ("left slowly", ...)

Training data: `train_clips` FRESH clips rendered by the simulator
(synthetic.render_segment with the dataset's spec: resolution, fps, TR), one
TR each, with uniformly drawn object, colour, motion, scene and position. Like
the papers' classifiers, which learned on ImageNet / Kinetics and not on the
fMRI stimuli, they are trained on data disjoint from both splits. This is a
measured choice. The demo's train split holds 221 distinct clips (an object,
colour and scene each); the image ViT memorises them (train accuracy 1.0, test
0.24; 0.4-0.5 with random shifts and colour permutations). On fresh clips it
generalises: test accuracy 0.86 / 0.91 after 1000 steps on 3000 / 6000 clips,
0.94-0.96 after 1500 steps on 6000 (the defaults; rendering them takes ~6 s).
The held-out measure is the dataset's own test split (see below).

Blur (`blur_max_sigma`). Frames decoded by a VAE are softer than the renders.
Trained on sharp renders only, the ViT read blur itself as a class: it named
the object in only 0.35 of the demo VAE's reconstructions of the TRUE test
latents (96 test frames, 450-step VAE). Trained with a random Gaussian blur per
example (sigma up to 0.05 frame widths), it names it in 0.85 of them, and its
test accuracy on the sharp frames rose from about 0.95 to 0.98. The metric then
asks whether the right object was drawn, not whether it was drawn sharply.

Both classifiers are trained jointly (one params tree {"image", "video"}, the
sum of the two cross-entropies). An example is one frame (image classifier) and
the clip it belongs to (video classifier). Inputs are resized once, up front,
with the Pillow filter the saved processors name (bit-exact with vit.pil_resize,
which `evaluate` applies), and normalised in the step as the processors
normalise, so training and evaluation see identical pixels.

The image ViT's patch embedding starts from the whitened principal components
of training patches (`patch_pca_init`), a data-dependent init worth many steps
to a small ViT: at the defaults, test accuracy 0.94 with it, 0.87 without. The
video classifier learns motion quickly and trains on the first
`video_batch_size` clips of each batch only (test accuracy 0.95 with 8, 0.99
with 12 or 16).

Test accuracy and scene cuts. The summary reports the top-1 accuracy of the
SAVED classifiers, read back and preprocessed as `evaluate` reads them, on the
test split. A test TR that spans a cut (captioned "A. Then B.") shows two clips;
its labels are those of the clip at its middle frame (synthetic.tr_labels),
which shows for at least half of the TR. Such a TR counts for the image
classifier with its middle frame only (the one frame whose label is certain)
and not at all for the video classifier (no single motion is right for the
clip); every other TR counts with all its frames and its first `num_frames`
frames as a clip. Objects wrap around the frame edges (the world is a torus),
so every frame shows the whole object.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from PIL import Image

from brainjax import augment
from brainjax import config as cfg
from brainjax.data import pipeline, synthetic
from brainjax.models import videomae, vit
from brainjax.stages import StageContext, common
from brainjax.train.optim import optim_config

CONFIG_KEYS = ("seed", "data")
# Artifact kinds: what its path fields read and what it writes (checked before anything runs).
INPUTS = {}
OUTPUTS = {"image_classifier": "image_classifier", "video_classifier": "video_classifier"}

IMAGE_DIR, VIDEO_DIR = "image_classifier", "video_classifier"
# The real checkpoints' normalisations, so the stand-ins' processor files read like theirs.
IMAGE_MEAN, IMAGE_STD = vit.VIT_MEAN, vit.VIT_STD
VIDEO_MEAN, VIDEO_STD = videomae.IMAGENET_MEAN, videomae.IMAGENET_STD
PIL_BILINEAR = 2
DEFAULT_NUM_FRAMES = 6  # MinD-Video's clips: 3 FPS x 2 s
RENDER_CHUNK = 250      # clips rendered (and resized) at a time: bounds the memory of full-size frames


def stage_config(**overrides) -> ml_collections.ConfigDict:
  stage = ml_collections.ConfigDict(dict(
      # 0: the clip length of the video stages (config.cotrain.num_frames, else video_finetune's, else 6).
      num_frames=0,
      # Sizes measured on the demo: 32 px frames (patch 8) still show the shapes; motion needs only 16 px.
      image=dict(image_size=32, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4),
      video=dict(image_size=16, patch_size=4, tubelet_size=2, hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4),
      train_clips=6000,
      patch_pca_init=True,
      # Gaussian blur of sigma ~ U(0, blur_max_sigma) frame widths on each training example (image and
      # clip). The renders are sharp and generated frames are not: trained on sharp frames only, the ViT
      # names a blurred object by its blur (see the module docstring); 0 turns it off.
      blur_max_sigma=0.05,
      optim=optim_config(lr=3e-3, weight_decay=0.05, warmup_steps=50, grad_clip_norm=1.0),
      batch_size=64, video_batch_size=12, num_steps=1500, log_every_steps=100, checkpoint_every_steps=500,
      keep_checkpoints=2,
  ))
  stage.update(overrides)
  return stage


def motion_classes() -> tuple[str, ...]:
  """'left slowly', 'left quickly', 'right slowly', ...: index direction * len(SPEEDS) + speed."""
  return tuple(f"{d} {s}" for d in synthetic.DIRECTIONS for s in synthetic.SPEEDS)


def motion_label(direction: int, speed: int) -> int:
  return int(direction) * len(synthetic.SPEEDS) + int(speed)


def clip_length(config: ml_collections.ConfigDict, name: str = "classifier_fit") -> int:
  """The video classifier's clip length: the stage's num_frames, or (0) the video stages'."""
  num_frames = config[name].num_frames
  if num_frames:
    return num_frames
  for stage in ("cotrain", "video_finetune"):
    if stage in config and "num_frames" in config[stage]:
      return config[stage].num_frames
  return DEFAULT_NUM_FRAMES


def fingerprint(config: ml_collections.ConfigDict, name: str) -> dict:
  """The stimuli, the stage's settings, and the clip length it resolved (it may come from cotrain)."""
  return dict(common.dataset_fingerprint(config, name), num_frames=clip_length(config, name))


def build(stage: ml_collections.ConfigDict, num_frames: int) -> tuple[vit.ViTForImageClassification,
                                                                      videomae.VideoMAEForVideoClassification]:
  image = vit.ViTConfig(**stage.image.to_dict(), id2label=synthetic.CLASSES)
  video = videomae.VideoMAEConfig(**stage.video.to_dict(), num_frames=num_frames, id2label=motion_classes())
  return vit.ViTForImageClassification(image), videomae.VideoMAEForVideoClassification(video)


def validate(config: ml_collections.ConfigDict, name: str) -> None:
  del name
  if config.data.name != "synthetic":
    raise cfg.ConfigError(
        "stage classifier_fit trains stand-in classifiers for the synthetic benchmark only (config.data.name = "
        f"{config.data.name!r}); with real data remove it from config.stages and point evaluate's classifier "
        "paths at the papers' checkpoints (google/vit-base-patch16-224, MCG-NJU/videomae-base-finetuned-kinetics).")
  common.validate_train(config, "classifier_fit")
  stage = config.classifier_fit
  cfg.require_positive_int(config, "classifier_fit.num_frames", allow_zero=True)
  cfg.require_positive_int(config, "classifier_fit.train_clips")
  cfg.require_in_range(config, "classifier_fit.blur_max_sigma", 0.0, 0.25)
  cfg.require_positive_int(config, "classifier_fit.video_batch_size")
  if stage.video_batch_size > stage.batch_size:
    raise cfg.ConfigError(f"config.classifier_fit.video_batch_size = {stage.video_batch_size} must be at most "
                          f"config.classifier_fit.batch_size = {stage.batch_size} (the video classifier trains on "
                          "the first video_batch_size clips of each batch).")
  for tower, extra in (("image", ()), ("video", ("tubelet_size",))):
    for field in ("image_size", "patch_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", *extra):
      cfg.require_positive_int(config, f"classifier_fit.{tower}.{field}")
    size, patch = stage[tower].image_size, stage[tower].patch_size
    if size % patch:
      raise cfg.ConfigError(f"config.classifier_fit.{tower}.image_size = {size} is not a multiple of "
                            f"patch_size = {patch}; pick sizes whose patches tile the image.")
    hidden, heads = stage[tower].hidden_size, stage[tower].num_attention_heads
    if hidden % heads:
      raise cfg.ConfigError(f"config.classifier_fit.{tower}.hidden_size = {hidden} is not divisible by "
                            f"num_attention_heads = {heads}.")
  spec = pipeline.synthetic_builder_config(config.data).spec
  for tower in ("image", "video"):
    if stage[tower].image_size > spec.resolution:
      raise cfg.ConfigError(f"config.classifier_fit.{tower}.image_size = {stage[tower].image_size} is larger than "
                            f"the {spec.resolution} px frames; upscaling adds nothing, use at most {spec.resolution}.")
  num_frames = clip_length(config)
  if num_frames > spec.frames_per_tr:
    raise cfg.ConfigError(f"config.classifier_fit.num_frames: clips of {num_frames} frames are longer than the "
                          f"{spec.frames_per_tr} frames of a stimulus TR; lower it (0 = the video stages' length).")
  tubelet = stage.video.tubelet_size
  if num_frames % tubelet:
    raise cfg.ConfigError(f"config.classifier_fit.video.tubelet_size = {tubelet} does not divide the clip length "
                          f"{num_frames} (config.classifier_fit.num_frames; 0 = the video stages'): frames past "
                          "the last whole tubelet would be ignored. Pick a divisor.")
  try:
    build(stage, num_frames)
  except ValueError as e:
    raise cfg.ConfigError(f"config.classifier_fit: {e}") from e


# --------------------------------------------------------------------------------------- processors


def image_processor_config(image_size: int) -> dict[str, Any]:
  """google/vit-base-patch16-224's ViTImageProcessor settings, at `image_size`."""
  return {"image_processor_type": "ViTImageProcessor", "do_resize": True,
          "size": {"height": image_size, "width": image_size}, "resample": PIL_BILINEAR,
          "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
          "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD)}


def video_processor_config(image_size: int) -> dict[str, Any]:
  """MCG-NJU/videomae-base-finetuned-kinetics' VideoMAEImageProcessor settings, at `image_size`."""
  return {"image_processor_type": "VideoMAEImageProcessor", "do_resize": True,
          "size": {"shortest_edge": image_size}, "resample": PIL_BILINEAR,
          "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
          "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
          "image_mean": list(VIDEO_MEAN), "image_std": list(VIDEO_STD)}


# --------------------------------------------------------------------------------------- training data


def random_clips(count: int, seed: int) -> list[synthetic.Clip]:
  """`count` clips with uniformly drawn content and the object anywhere on the torus (times unset)."""
  rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC1A55]))
  clips = []
  for i in range(count):
    category, colour = int(rng.integers(len(synthetic.CLASSES))), int(rng.integers(len(synthetic.COLOURS)))
    direction, speed = int(rng.integers(len(synthetic.DIRECTIONS))), int(rng.integers(len(synthetic.SPEEDS)))
    scene = int(rng.integers(len(synthetic.SCENES)))
    clips.append(synthetic.Clip(
        clip_id=i, start_s=0.0, duration_s=0.0, category=category, colour=colour, direction=direction,
        speed=speed, scene=scene, caption=synthetic.clip_caption(category, colour, direction, speed, scene),
        start_xy=tuple(float(v) for v in rng.uniform(0.0, 1.0, 2)),
        texture_shift=tuple(float(v) for v in rng.uniform(0.0, 1.0, 2))))
  return clips


def render_clips(spec: synthetic.SyntheticSpec, clips: list[synthetic.Clip]) -> np.ndarray:
  """uint8 [len(clips), frames_per_tr, H, W, 3]: each clip over one TR, from its start."""
  # Laid out back to back, one TR each, in a segment the renderer draws in one go (padded with
  # repeats of the last clip to the simulator's minimum segment length, then dropped). Start times are
  # computed as the renderer computes frame times (frame / fps), so each clip's first frame is exact.
  trs = max(len(clips), 10)
  laid_out = [dataclasses.replace(clips[min(i, len(clips) - 1)], start_s=(i * spec.frames_per_tr) / spec.fps,
                                  duration_s=spec.tr_s) for i in range(trs)]
  frames = synthetic.render_segment(dataclasses.replace(spec, segment_trs=trs), laid_out)
  return frames.reshape(trs, spec.frames_per_tr, *frames.shape[1:])[:len(clips)]


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
  """uint8 [..., H, W, 3] -> [..., size, size, 3] with Pillow's bilinear filter, frame by frame.

  What the saved processors do (resample 2 = BILINEAR; `evaluate` runs vit.pil_resize, which is
  bit-exact with Pillow on square frames: tests/stages/test_classifier_fit.py checks it on rendered
  frames). Pillow itself here because it is ~5x faster than the JAX port on tens of thousands of
  small frames, a third of this stage's time otherwise.
  """
  if frames.shape[-3:-1] == (size, size):
    return frames
  flat = frames.reshape(-1, *frames.shape[-3:])
  out = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BILINEAR)) for f in flat])
  return out.reshape(*frames.shape[:-3], size, size, frames.shape[-1])


class RenderedSource:
  """Frames of freshly rendered clips, one example per frame: {"image": the frame at the image
  classifier's size, "video": its clip's first num_frames frames at the video classifier's size,
  "category", "motion"}."""

  def __init__(self, images: np.ndarray, videos: np.ndarray, category: np.ndarray, motion: np.ndarray):
    self.images, self.videos, self.category, self.motion = images, videos, category, motion
    self.frames_per_clip = images.shape[1]

  def __len__(self) -> int:
    return self.images.shape[0] * self.frames_per_clip

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    clip, frame = divmod(int(i), self.frames_per_clip)
    return {"image": self.images[clip, frame], "video": self.videos[clip], "category": self.category[clip],
            "motion": self.motion[clip]}


def make_training_source(spec: synthetic.SyntheticSpec, count: int, seed: int, image_size: int, video_size: int,
                         num_frames: int) -> RenderedSource:
  clips = random_clips(count, seed)
  images, videos = [], []
  for start in range(0, count, RENDER_CHUNK):
    frames = render_clips(spec, clips[start:start + RENDER_CHUNK])
    images.append(resize_frames(frames, image_size))
    videos.append(resize_frames(frames[:, :num_frames], video_size))
  category = np.asarray([c.category for c in clips], np.int32)
  motion = np.asarray([motion_label(c.direction, c.speed) for c in clips], np.int32)
  return RenderedSource(np.concatenate(images), np.concatenate(videos), category, motion)


def patch_pca_kernel(images: np.ndarray, patch: int, hidden: int, mean, std, eps: float = 1e-2) -> tuple[np.ndarray,
                                                                                                         np.ndarray]:
  """(kernel [patch, patch, 3, k], bias [k]), k = min(hidden, patch^2 * 3): the whitened principal
  components of the normalised patches of uint8 `images` [N, S, S, 3], centred. Each output has unit
  variance over the patches; `eps` (in normalised-pixel variance) keeps weak components from blowing up."""
  x = (images.astype(np.float64) / 255.0 - np.asarray(mean)) / np.asarray(std)
  n, s = x.shape[0], x.shape[1] // patch * patch
  patches = x[:, :s, :s].reshape(n, s // patch, patch, s // patch, patch, 3).transpose(0, 1, 3, 2, 4, 5)
  patches = patches.reshape(-1, patch * patch * 3)
  centre = patches.mean(0)
  values, vectors = np.linalg.eigh(np.cov(patches - centre, rowvar=False))
  k = min(hidden, patches.shape[1])
  order = np.argsort(values)[::-1][:k]
  whiten = vectors[:, order] / np.sqrt(np.maximum(values[order], 0.0) + eps)
  return whiten.reshape(patch, patch, 3, k).astype(np.float32), (-centre @ whiten).astype(np.float32)


def _with_pca_patch_embedding(params: Any, images: np.ndarray, config: vit.ViTConfig) -> Any:
  """`params` with the image ViT's patch embedding set by `patch_pca_kernel` (outputs beyond the patch
  dimension, if hidden_size exceeds it, keep their random init)."""
  kernel, bias = patch_pca_kernel(images, config.patch_size, config.hidden_size, IMAGE_MEAN, IMAGE_STD)
  k = kernel.shape[-1]
  old = params["image"]["vit"]["embeddings"]["patch_embeddings"]["projection"]
  projection = {"kernel": np.concatenate([kernel, np.asarray(old["kernel"])[..., k:]], axis=-1),
                "bias": np.concatenate([bias, np.asarray(old["bias"])[k:]])}
  embeddings = dict(params["image"]["vit"]["embeddings"], patch_embeddings={"projection": projection})
  image = dict(params["image"], vit=dict(params["image"]["vit"], embeddings=embeddings))
  return dict(params, image=image)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean cross-entropy and top-1 accuracy."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, (jnp.argmax(logits, -1) == labels).mean()


def run(ctx: StageContext) -> dict:
  stage = ctx.config.classifier_fit
  num_frames = clip_length(ctx.config)
  image_model, video_model = build(stage, num_frames)
  image_size, video_size = image_model.config.image_size, video_model.config.image_size
  spec = pipeline.synthetic_builder_config(ctx.config.data).spec
  logging.info("classifier_fit: rendering %d training clips", stage.train_clips)
  source = make_training_source(spec, stage.train_clips, ctx.config.seed, image_size, video_size, num_frames)

  def init_variables(rng):
    image_rng, video_rng = jax.random.split(rng)
    return {"params": {"image": image_model.init(image_rng, *image_model.dummy_inputs())["params"],
                       "video": video_model.init(video_rng, *video_model.dummy_inputs())["params"]}}

  initial_params = None
  if stage.patch_pca_init:
    sample = np.random.default_rng(ctx.config.seed).choice(len(source), min(len(source), 2048), replace=False)
    images = source.images.reshape(-1, *source.images.shape[2:])[np.sort(sample)]
    initial_params = lambda params: _with_pca_patch_embedding(params, images, image_model.config)  # noqa: E731

  def loss_fn(params, model_state, batch, rng):
    image_rng, video_rng = jax.random.split(rng)
    images = vit.crop_normalize(batch["image"], None, IMAGE_MEAN, IMAGE_STD)
    videos = vit.crop_normalize(batch["video"][:stage.video_batch_size], None, VIDEO_MEAN, VIDEO_STD)
    images = augment.random_blur(image_rng, images, stage.blur_max_sigma * image_size)
    videos = augment.random_blur(video_rng, videos, stage.blur_max_sigma * video_size)
    image_loss, image_acc = _cross_entropy(image_model.apply({"params": params["image"]}, images).logits,
                                           batch["category"])
    video_loss, video_acc = _cross_entropy(video_model.apply({"params": params["video"]}, videos).logits,
                                           batch["motion"][:stage.video_batch_size])
    metrics = {"image_loss": image_loss, "video_loss": video_loss, "image_accuracy": image_acc,
               "video_accuracy": video_acc}
    return image_loss + video_loss, (metrics, model_state)

  iterator = pipeline.make_iterator(source, batch_size=stage.batch_size, seed=ctx.config.seed)
  state = common.train(ctx, init_variables=init_variables, loss_fn=loss_fn, iterator=iterator,
                       batch_keys=("image", "video", "category", "motion"), initial_params=initial_params)
  params = jax.device_get(state.params)
  image_dir, video_dir = ctx.stage_dir / IMAGE_DIR, ctx.stage_dir / VIDEO_DIR
  if jax.process_index() == 0:
    save_classifiers(image_dir, video_dir, image_model, video_model, params)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("classifier_fit_saved")
  test = pipeline.make_stimulus_source(ctx.config.data, "test")
  image_acc, image_count, video_acc, video_count = test_accuracy(image_dir, video_dir, test, num_frames)
  return {"steps": int(jax.device_get(state.step)), "num_frames": num_frames,
          "image_test_accuracy": image_acc, "image_test_frames": image_count,
          "video_test_accuracy": video_acc, "video_test_clips": video_count,
          "image_classes": list(synthetic.CLASSES), "video_classes": list(motion_classes())}


def save_classifiers(image_dir: epath.Path, video_dir: epath.Path, image_model, video_model, params) -> None:
  """Both classifiers in the transformers layout, each with its image processor's preprocessor_config.json."""
  vit.save_vit(image_dir, image_model.config, params["image"])
  (image_dir / "preprocessor_config.json").write_text(
      json.dumps(image_processor_config(image_model.config.image_size), indent=2))
  videomae.save_videomae(video_dir, video_model.config, params["video"])
  (video_dir / "preprocessor_config.json").write_text(
      json.dumps(video_processor_config(video_model.config.image_size), indent=2))


# --------------------------------------------------------------------------------------- test accuracy


def spans_cut(caption: str) -> bool:
  """A TR showing several clips is captioned "A. Then B." (the pipeline's schema); one clip has no period."""
  return ". Then " in caption


def test_accuracy(image_dir: epath.Path, video_dir: epath.Path, source, num_frames: int,
                  batch: int = 256) -> tuple[float, int, float, int]:
  """Top-1 accuracy of the SAVED classifiers, loaded and preprocessed as `evaluate` does, on the stimulus
  TRs of `source`: (image accuracy, frames, video accuracy, clips). See the module docstring for which
  frames and clips count."""
  frames, categories, clips, motions = [], [], [], []
  for i in range(len(source)):
    ex = source[i]
    f, labels = ex["frames"], ex["labels"]
    if spans_cut(ex["caption"]):
      frames.append(f[len(f) // 2:len(f) // 2 + 1])
    else:
      frames.append(f)
      clips.append(f[:num_frames])
      motions.append(motion_label(labels["direction"], labels["speed"]))
    categories += [int(labels["category"])] * len(frames[-1])
  image_model, image_params = vit.load_vit(image_dir)
  video_model, video_params = videomae.load_videomae(video_dir, num_frames=num_frames)
  image_kw, video_kw = vit.processor_kwargs(image_dir), vit.processor_kwargs(video_dir)
  image_pred = _predict(lambda x: vit.classify_images(image_model, image_params,
                                                      vit.preprocess_images(x, **image_kw)).logits,
                        np.concatenate(frames), batch)
  image_hits = image_pred == np.asarray(categories)
  if not clips:
    return float(image_hits.mean()), int(image_hits.size), float("nan"), 0
  video_pred = _predict(lambda x: videomae.classify_videos(video_model, video_params,
                                                           videomae.preprocess_videos(x, **video_kw)).logits,
                        np.stack(clips), batch // 4)
  video_hits = video_pred == np.asarray(motions)
  return float(image_hits.mean()), int(image_hits.size), float(video_hits.mean()), int(video_hits.size)


def _predict(logits_fn, inputs: np.ndarray, batch: int) -> np.ndarray:
  """argmax of logits_fn over `inputs` in batches of one shape (the last padded), so it compiles once."""
  preds = []
  for start in range(0, len(inputs), batch):
    chunk = inputs[start:start + batch]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
    preds.append(np.argmax(np.asarray(logits_fn(padded)), -1)[:len(chunk)])
  return np.concatenate(preds)
