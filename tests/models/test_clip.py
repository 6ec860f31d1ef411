"""CLIP towers: parity with transformers' PyTorch CLIP on tiny random configs, weight round trips, errors."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.numpy import load_file, save_file

from brainjax.weights import CheckpointError, ConversionError
from brainjax.models import clip
from brainjax.train import sharding as shd
from tests import parity
from tests import torch_reference as torch_ref

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

# (name, config kwargs, batch, padded lengths or None)
TEXT_CASES = [
    ("1layer-2heads-quick_gelu-legacy_eos", dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                                 num_attention_heads=2, projection_dim=8, hidden_act="quick_gelu",
                                                 bos_token_id=0, eos_token_id=2, pad_token_id=1), 3, [5, 9, 7]),
    ("3layers-4heads-gelu", dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                                 projection_dim=24, hidden_act="gelu", bos_token_id=97, eos_token_id=98,
                                 pad_token_id=0), 2, [9, 4]),
    ("2layers-8heads-gelu-full", dict(hidden_size=64, intermediate_size=40, num_hidden_layers=2,
                                      num_attention_heads=8, projection_dim=16, hidden_act="gelu",
                                      bos_token_id=97, eos_token_id=98, pad_token_id=98), 4, None),
]
VISION_CASES = [
    ("30px-patch6-quick_gelu", dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                    image_size=30, patch_size=6, projection_dim=8, hidden_act="quick_gelu"), 2),
    ("32px-patch8-gelu-3layers", dict(hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=3, image_size=32, patch_size=8, projection_dim=20,
                                      hidden_act="gelu"), 3),
    # 28 is not a multiple of 5: the conv drops the last 3 pixel rows/columns, as torch's does.
    ("28px-patch5-1layer", dict(hidden_size=24, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=5, projection_dim=12, hidden_act="quick_gelu"), 1),
]
SEQ_LEN = 9
VOCAB = 99
# Parity bound: max |ref - got| <= 1e-5 * max(1, max |ref|).
TOL = dict(atol=1e-5, rtol=1e-5)


def _text_inputs(cfg: dict, batch: int, lengths, seed: int = 0):
  """bos, random tokens, eos, then padding; 0/1 attention mask (None without padding)."""
  rng = np.random.default_rng(seed)
  lengths = lengths or [SEQ_LEN] * batch
  # The legacy (eos_token_id == 2) configs come from vocabularies whose real EOS has the largest id.
  eos = VOCAB - 1 if cfg["eos_token_id"] == 2 else cfg["eos_token_id"]
  ids = np.full((batch, SEQ_LEN), cfg["pad_token_id"], np.int64)
  for b, n in enumerate(lengths):
    ids[b, 0], ids[b, n - 1] = cfg["bos_token_id"], eos
    ids[b, 1:n - 1] = rng.integers(3, 90, n - 2)
  mask = (np.arange(SEQ_LEN)[None] < np.asarray(lengths)[:, None]).astype(np.int64)
  return ids, (mask if lengths != [SEQ_LEN] * batch else None)


def _torch_text(cfg: dict, seed: int = 0, cls=transformers.CLIPTextModelWithProjection):
  torch.manual_seed(seed)
  config = transformers.CLIPTextConfig(vocab_size=VOCAB, max_position_embeddings=16, **cfg)
  return cls(config).eval()


def _torch_vision(cfg: dict, seed: int = 0, cls=transformers.CLIPVisionModelWithProjection):
  torch.manual_seed(seed)
  return cls(transformers.CLIPVisionConfig(**cfg)).eval()


def _run_torch_text(model, ids, mask):
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids), attention_mask=None if mask is None else torch.from_numpy(mask))


def _run_torch_vision(model, pixels_nhwc):
  with torch.no_grad():
    return model(pixel_values=torch.from_numpy(np.ascontiguousarray(pixels_nhwc.transpose(0, 3, 1, 2))))


def _pixels(cfg: dict, batch: int, seed: int = 0):
  return np.random.default_rng(seed).standard_normal((batch, cfg["image_size"], cfg["image_size"], 3)).astype(
      np.float32)


# ------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("name,cfg,batch,lengths", TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_text_parity(tmp_path, name, cfg, batch, lengths):
  model = _torch_text(cfg)
  model.save_pretrained(tmp_path, safe_serialization=True)
  module, params = clip.load_clip_text(tmp_path)
  assert isinstance(module, clip.CLIPTextModel) and module.with_projection
  ids, mask = _text_inputs(cfg, batch, lengths)
  ref, out = _run_torch_text(model, ids, mask), clip.encode_text(module, params, ids, mask)
  print(f"\ntext {name}:")
  parity.assert_abs_close("last_hidden_state", ref.last_hidden_state, out.last_hidden_state, **TOL)
  parity.assert_abs_close("pooled", _run_torch_text(model.text_model, ids, mask).pooler_output, out.pooler_output,
                          **TOL)
  parity.assert_abs_close("text_embeds", ref.text_embeds, out.text_embeds, **TOL)


def test_text_left_padding_matches_on_real_tokens(tmp_path):
  cfg = TEXT_CASES[1][1]
  model = _torch_text(cfg, seed=1)
  model.save_pretrained(tmp_path)
  module, params = clip.load_clip_text(tmp_path)
  ids, mask = _text_inputs(cfg, 2, [9, 5], seed=1)
  ids[1], mask[1] = np.roll(ids[1], 4), np.roll(mask[1], 4)  # [pad x4, bos, ..., eos]
  ref, out = _run_torch_text(model, ids, mask), clip.encode_text(module, params, ids, mask)
  # Padded query rows attend to nothing; transformers' sdpa and eager paths disagree there, so
  # only real tokens are compared (the pooled EOS state is one of them).
  real = mask.astype(bool)
  parity.assert_abs_close("left-padded last_hidden_state", ref.last_hidden_state[real],
                          np.asarray(out.last_hidden_state)[real], **TOL)
  parity.assert_abs_close("left-padded text_embeds", ref.text_embeds, out.text_embeds, **TOL)


@pytest.mark.parametrize("name,cfg,batch", VISION_CASES, ids=[c[0] for c in VISION_CASES])
def test_vision_parity(tmp_path, name, cfg, batch):
  model = _torch_vision(cfg)
  model.save_pretrained(tmp_path, safe_serialization=True)
  module, params = clip.load_clip_vision(tmp_path)
  pixels = _pixels(cfg, batch)
  ref, out = _run_torch_vision(model, pixels), clip.encode_images(module, params, pixels)
  print(f"\nvision {name}:")
  parity.assert_abs_close("last_hidden_state", ref.last_hidden_state, out.last_hidden_state, **TOL)
  parity.assert_abs_close("image_embeds", ref.image_embeds, out.image_embeds, **TOL)
  with torch.no_grad():
    pooled = model.vision_model.post_layernorm(ref.last_hidden_state[:, 0])
  parity.assert_abs_close("pooled", pooled, out.pooler_output, **TOL)


def test_pooling_rules_legacy_argmax_and_first_eos(tmp_path):
  # Row 0: the largest id (90) sits at 2, the first EOS (5) at 4, a second EOS at 6.
  ids = np.array([[1, 3, 90, 4, 5, 7, 5, 0, 0], [1, 5, 3, 4, 80, 5, 0, 0, 0]])
  np.testing.assert_array_equal(clip.pooled_positions(jnp.asarray(ids), 2), [2, 4])
  np.testing.assert_array_equal(clip.pooled_positions(jnp.asarray(ids), 5), [4, 1])
  np.testing.assert_array_equal(clip.pooled_positions(jnp.asarray(ids), 77), [0, 0])  # absent: 0, as torch
  for eos, expected in ((2, [2, 4]), (5, [4, 1])):
    cfg = dict(TEXT_CASES[0][1], eos_token_id=eos)
    model = _torch_text(cfg, seed=eos)
    model.save_pretrained(tmp_path / str(eos))
    module, params = clip.load_clip_text(tmp_path / str(eos))
    ref, out = _run_torch_text(model, ids, None), clip.encode_text(module, params, ids)
    parity.assert_abs_close(f"eos={eos} pooled", ref.last_hidden_state[torch.arange(2), expected], out.pooler_output,
                            **TOL)
    parity.assert_abs_close(f"eos={eos} text_embeds", ref.text_embeds, out.text_embeds, **TOL)


def test_combined_clip_model_checkpoint(tmp_path):
  """An openai/clip-vit-* style directory: CLIPConfig with text_config/vision_config, both towers in one file."""
  torch.manual_seed(3)
  text_cfg, vision_cfg = TEXT_CASES[1][1], VISION_CASES[0][1]
  config = transformers.CLIPConfig(text_config=dict(text_cfg, vocab_size=VOCAB, max_position_embeddings=16),
                                   vision_config=vision_cfg, projection_dim=12)
  model = transformers.CLIPModel(config).eval()
  model.save_pretrained(tmp_path)
  text, text_params = clip.load_clip_text(tmp_path)
  vision, vision_params = clip.load_clip_vision(tmp_path)
  assert text.config.projection_dim == vision.config.projection_dim == 12
  ids, mask = _text_inputs(text_cfg, 2, [9, 6])
  pixels = _pixels(vision_cfg, 2)
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
  text_out = clip.encode_text(text, text_params, ids, mask)
  image_out = clip.encode_images(vision, vision_params, pixels)
  unit = lambda x: np.asarray(x) / np.linalg.norm(np.asarray(x), axis=-1, keepdims=True)
  # CLIPModel returns L2-normalized projections.
  parity.assert_abs_close("CLIPModel text_embeds", out.text_embeds, unit(text_out.text_embeds), **TOL)
  parity.assert_abs_close("CLIPModel image_embeds", out.image_embeds, unit(image_out.image_embeds), **TOL)
  parity.assert_abs_close("CLIPModel text last_hidden_state", out.text_model_output.last_hidden_state,
                          text_out.last_hidden_state, **TOL)
  parity.assert_abs_close("CLIPModel vision last_hidden_state", out.vision_model_output.last_hidden_state,
                          image_out.last_hidden_state, **TOL)


def test_sd15_style_text_encoder_without_projection(tmp_path):
  """stable-diffusion-v1-5/text_encoder is a bare CLIPTextModel (transformers 5 saves it without `text_model.`)."""
  cfg = TEXT_CASES[0][1]
  model = _torch_text(cfg, cls=transformers.CLIPTextModel)
  model.save_pretrained(tmp_path)
  assert "embeddings.token_embedding.weight" in load_file(tmp_path / "model.safetensors")
  module, params = clip.load_clip_text(tmp_path)
  assert not module.with_projection and "text_projection" not in params
  ids, mask = _text_inputs(cfg, 3, [5, 9, 7])
  ref, out = _run_torch_text(model, ids, mask), clip.encode_text(module, params, ids, mask)
  parity.assert_abs_close("bare CLIPTextModel last_hidden_state", ref.last_hidden_state, out.last_hidden_state, **TOL)
  parity.assert_abs_close("bare CLIPTextModel pooled", ref.pooler_output, out.pooler_output, **TOL)
  assert out.text_embeds is None
  with pytest.raises(ConversionError, match=r"not filled from .*model.safetensors.*\n  text_projection/kernel"):
    clip.load_clip_text(tmp_path, with_projection=True)


# ------------------------------------------------------------------------------ round trips


def test_state_dict_round_trip_is_bitwise(tmp_path):
  for table, model in ((clip.TEXT_TABLE, _torch_text(TEXT_CASES[1][1])),
                       (clip.VISION_TABLE, _torch_vision(VISION_CASES[1][1]))):
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    back = table.to_torch(table.to_flax(sd))
    assert sorted(back) == sorted(sd)
    for k in sd:
      assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape and back[k].tobytes() == sd[k].tobytes()


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_save_then_transformers_from_pretrained_reproduces_the_model(tmp_path, tower):
  if tower == "text":
    cfg = TEXT_CASES[2][1]
    model, load, save = _torch_text(cfg), clip.load_clip_text, clip.save_clip_text
    cls, run = transformers.CLIPTextModelWithProjection, lambda m: _run_torch_text(m, *_text_inputs(cfg, 2, [9, 3]))
  else:
    cfg = VISION_CASES[2][1]
    model, load, save = _torch_vision(cfg), clip.load_clip_vision, clip.save_clip_vision
    cls, run = transformers.CLIPVisionModelWithProjection, lambda m: _run_torch_vision(m, _pixels(cfg, 2))
  model.save_pretrained(tmp_path / "orig")
  module, params = load(tmp_path / "orig")
  save(tmp_path / "brainjax", module.config, params)
  reloaded, info = cls.from_pretrained(tmp_path / "brainjax", output_loading_info=True)
  assert not any(info.values()), info  # no missing / unexpected / mismatched keys
  assert reloaded.config.to_dict()["eos_token_id" if tower == "text" else "image_size"] == \
      model.config.to_dict()["eos_token_id" if tower == "text" else "image_size"]
  for k, v in model.state_dict().items():
    assert torch.equal(v, reloaded.state_dict()[k]), k
  for a, b in zip(run(model).to_tuple(), run(reloaded.eval()).to_tuple()):
    assert torch.equal(a, b)


def test_save_without_projection_loads_as_clip_text_model(tmp_path):
  module, params = clip.load_clip_text(torch_ref.save_pretrained(tmp_path / "orig", _torch_text(TEXT_CASES[0][1])),
                                       with_projection=False)
  clip.save_clip_text(tmp_path / "bj", module, {"params": params})
  assert json.loads((tmp_path / "bj" / "config.json").read_text())["architectures"] == ["CLIPTextModel"]
  _, info = transformers.CLIPTextModel.from_pretrained(tmp_path / "bj", output_loading_info=True)
  assert not any(info.values()), info



def test_load_from_gcs(fake_gcs):
  cfg = VISION_CASES[0][1]
  model = _torch_vision(cfg)
  torch_ref.save_pretrained(os.path.join(fake_gcs, "bucket", "clip"), model)
  module, params = clip.load_clip_vision("gs://bucket/clip", remat=True)  # remat: same numbers
  pixels = _pixels(cfg, 1)
  parity.assert_abs_close("gs:// image_embeds", _run_torch_vision(model, pixels).image_embeds,
                          clip.encode_images(module, params, pixels).image_embeds, **TOL)
  clip.save_clip_vision("gs://bucket/copy", module.config, params)
  assert sorted(os.listdir(os.path.join(fake_gcs, "bucket", "copy"))) == ["config.json", "model.safetensors"]


# ------------------------------------------------------------------------------ errors


def test_checkpoint_mismatches_name_the_file_and_the_keys(tmp_path):
  cfg = TEXT_CASES[1][1]
  path = torch_ref.save_pretrained(tmp_path, _torch_text(cfg))
  weights = str(path / "model.safetensors")
  sd = load_file(weights)
  save_file({**sd, "text_model.encoder.layers.0.adapter.weight": np.zeros((2, 2), np.float32)}, weights,
            metadata={"format": "pt"})
  with pytest.raises(ConversionError, match=rf"1 key\(s\) in {weights} match no rule.*\n  "
                                            r"text_model.encoder.layers.0.adapter.weight"):
    clip.load_clip_text(path)
  save_file(sd, weights, metadata={"format": "pt"})
  config = json.loads((path / "config.json").read_text())
  (path / "config.json").write_text(json.dumps({**config, "intermediate_size": 50}))
  with pytest.raises(ConversionError, match=r"9 shape mismatch.*\n  text_model.encoder.layers.0.mlp.fc1.bias -> "
                                            r"text_model/encoder/layers_0/mlp/fc1/bias: got \(48,\), the model "
                                            r"expects \(50,\)"):
    clip.load_clip_text(path)
  (path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 4}))
  with pytest.raises(ConversionError,
                     match=r"(?s)16 Flax param\(s\) were not filled.*\n  text_model/encoder/layers_3/"):
    clip.load_clip_text(path)


def test_bad_inputs_and_configs_are_explained(tmp_path):
  with pytest.raises(CheckpointError, match=r"config.json not found; expected a transformers CLIP text checkpoint "
                                            r"directory with config.json and model.safetensors"):
    (tmp_path / "empty").mkdir()
    clip.load_clip_text(tmp_path / "empty")
  with pytest.raises(ValueError, match=r"hidden_act = 'swish' is not supported"):
    clip.CLIPTextConfig.from_dict({"hidden_act": "swish"})
  with pytest.raises(ValueError, match=r"hidden_size 30 is not divisible by num_attention_heads 4"):
    clip.CLIPVisionConfig(hidden_size=30, num_attention_heads=4)
  module = clip.CLIPVisionModel(clip.CLIPVisionConfig(**{**VISION_CASES[0][1], "hidden_act": "gelu"}))
  with pytest.raises(ValueError, match=r"looks channels-first \(NCHW"):
    module.init(jax.random.key(0), jnp.zeros((1, 3, 30, 30)))
  text = clip.CLIPTextModel(clip.CLIPTextConfig(vocab_size=VOCAB, max_position_embeddings=8, hidden_size=8,
                                                num_attention_heads=2, intermediate_size=8, num_hidden_layers=1))
  with pytest.raises(ValueError, match=r"sequence length 9 exceeds max_position_embeddings 8"):
    text.init(jax.random.key(0), jnp.zeros((1, 9), jnp.int32))


def test_config_from_dict_standalone_and_combined():
  combined = {"model_type": "clip", "projection_dim": 768,
              "text_config": {"hidden_size": 768, "num_attention_heads": 12, "eos_token_id": 2, "projection_dim": 512,
                              "some_unknown_field": 1},
              "vision_config": {"hidden_size": 1024, "num_attention_heads": 16, "patch_size": 14,
                                "intermediate_size": 4096, "num_hidden_layers": 24}}
  text, vision = clip.CLIPTextConfig.from_dict(combined), clip.CLIPVisionConfig.from_dict(combined)
  assert (text.hidden_size, text.projection_dim, text.eos_token_id, text.max_position_embeddings) == (768, 768, 2, 77)
  assert (vision.patch_size, vision.num_patches, vision.projection_dim) == (14, 256, 768)
  legacy = {"text_config": {"hidden_size": 32}, "text_config_dict": {"hidden_size": 64, "num_attention_heads": 4}}
  assert clip.CLIPTextConfig.from_dict(legacy).hidden_size == \
      transformers.CLIPConfig(**legacy).text_config.hidden_size == 64
  standalone = clip.CLIPTextConfig.from_dict({"model_type": "clip_text_model", "hidden_act": "gelu"})
  assert standalone == clip.CLIPTextConfig(hidden_act="gelu")
  assert clip.CLIPTextConfig.from_dict(standalone.to_dict("CLIPTextModel")) == standalone


# ------------------------------------------------------------------------------ sharding, dtypes


def test_logical_axes_and_sharded_forward_match(tmp_path):
  cfg = TEXT_CASES[1][1]
  module, params = clip.load_clip_text(torch_ref.save_pretrained(tmp_path, _torch_text(cfg)))
  specs = nn.get_partition_spec(clip.abstract_params(module, boxed=True))
  layer = specs["text_model"]["encoder"]["layers_0"]
  assert tuple(layer["self_attn"]["q_proj"]["kernel"]) == ("embed", "heads")
  assert tuple(layer["mlp"]["fc2"]["kernel"]) == ("mlp", "embed")
  assert tuple(specs["text_model"]["embeddings"]["token_embedding"]["embedding"]) == ("vocab", "embed")
  rules = shd.DEFAULT_LOGICAL_AXIS_RULES
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  sharded = jax.device_put(params, shardings)
  assert sharded["text_model"]["encoder"]["layers_0"]["mlp"]["fc1"]["kernel"].sharding.spec == \
      jax.sharding.PartitionSpec("fsdp", "tensor")
  ids, mask = _text_inputs(cfg, 4, [9, 4, 6, 9])
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    out = clip.encode_text(module, sharded, ids, mask)
  ref = clip.encode_text(module, params, ids, mask)
  parity.assert_abs_close("sharded text_embeds", ref.text_embeds, out.text_embeds, **TOL)


def test_bf16_compute_stays_close(tmp_path):
  cfg = VISION_CASES[1][1]
  model = _torch_vision(cfg)
  module, params = clip.load_clip_vision(torch_ref.save_pretrained(tmp_path, model), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  pixels = _pixels(cfg, 2)
  out = clip.encode_images(module, params, pixels).image_embeds
  ref = _run_torch_vision(model, pixels).image_embeds.numpy()
  assert out.dtype == jnp.bfloat16
  assert np.abs(np.asarray(out, np.float32) - ref).max() < 0.05 * np.abs(ref).max()


# ------------------------------------------------------------------------------ preprocessing


def _smooth_image(h, w, seed=0):
  """A photo-like image: a few smooth colour blobs (what frames of a movie look like at this scale)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  img = np.zeros((h, w, 3))
  for _ in range(6):
    cy, cx, s = rng.uniform(0, 1, 3)
    img += rng.uniform(0, 255, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.05 + 0.2 * s))[..., None]
  return np.clip(img / img.max() * 255, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind,shape,size", [("smooth", (240, 320), 224), ("smooth", (300, 250), 32),
                                             ("noise", (300, 400), 224), ("noise", (120, 160), 224),
                                             ("noise", (700, 672), 32)])
def test_preprocess_close_to_pil_processor(kind, shape, size):
  image = (_smooth_image(*shape) if kind == "smooth"
           else np.random.default_rng(1).integers(0, 256, (*shape, 3)).astype(np.uint8))
  processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": size},
                                                 crop_size={"height": size, "width": size})
  ref = processor(images=Image.fromarray(image), return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
  got = np.asarray(clip.preprocess_images(image, size))[0]
  assert got.shape == ref.shape == (size, size, 3)
  diff = np.abs(got - ref)
  step = 1 / 255 / min(clip.CLIP_STD)  # one uint8 step in normalized units
  identical = np.mean(diff < 1e-5)
  print(f"\npreprocess {kind}{shape}->{size}: max {diff.max():.4f} ({diff.max() / step:.1f} uint8 steps), "
        f"identical {identical:.2%}")
  assert diff.max() <= 2.01 * step
  assert identical >= 0.998


def test_preprocess_sizes_follow_transformers():
  assert clip.resized_shape(240, 320, 224) == (224, 298)
  assert clip.resized_shape(321, 240, 224) == (299, 224)
  batch = np.zeros((2, 50, 70, 3), np.uint8)
  assert clip.preprocess_images(batch, 24).shape == (2, 24, 24, 3)
  with pytest.raises(ValueError, match=r"expected \[H, W, 3\] or \[N, H, W, 3\]"):
    clip.preprocess_images(np.zeros((3, 50, 70), np.uint8))
