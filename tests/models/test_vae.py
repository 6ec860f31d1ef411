"""Stable Diffusion VAE: parity with diffusers' PyTorch AutoencoderKL on tiny random configs, weights in/out,
latent scaling, per-frame video helpers, errors."""

import copy
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils import logging as diffusers_logging
from safetensors.numpy import load_file, save_file

from brainjax.weights import CheckpointError, ConversionError
from brainjax.models import vae
from brainjax.train import sharding as shd
from tests import parity
from tests import torch_reference as torch_ref

diffusers_logging.set_verbosity_error()

D, U = "DownEncoderBlock2D", "UpDecoderBlock2D"
# (name, diffusers AutoencoderKL kwargs, input shape [N, H, W, 3])
CASES = [
    ("1block-8ch-g4", dict(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4), (2, 16, 16, 3)),
    ("2blocks-8-16-g8-2layers", dict(block_out_channels=(8, 16), layers_per_block=2, norm_num_groups=8),
     (3, 24, 24, 3)),
    ("3blocks-8-16-16-noattn-noquant", dict(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
                                            mid_block_add_attention=False, use_quant_conv=False), (2, 32, 32, 3)),
    # act_fn is the resnets' only: the encoder's/decoder's final activation stays SiLU, as in diffusers.
    ("2blocks-gelu-nopostquant-16x24", dict(block_out_channels=(16, 16), layers_per_block=2, norm_num_groups=8,
                                            act_fn="gelu", use_post_quant_conv=False), (2, 16, 24, 3)),
]
MAX_REL_ERR = 1e-4


def _torch_vae(cfg: dict, seed: int = 0) -> TorchAutoencoderKL:
  n = len(cfg["block_out_channels"])
  torch.manual_seed(seed)
  model = TorchAutoencoderKL(down_block_types=(D,) * n, up_block_types=(U,) * n, latent_channels=4,
                             sample_size=32, **cfg).eval()
  # torch's default init leaves the GroupNorms at identity; random affine params make the test see them.
  return torch_ref.randomize_norms_(model)





def _images(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _apply_all(module, params, x, z):
  """encoder (mean, logvar), decoder(z), forward(x): one compiled call per config."""
  posterior = module.apply({"params": params}, x, method=vae.AutoencoderKL.encode)
  return (*posterior, module.apply({"params": params}, z, method=vae.AutoencoderKL.decode),
          module.apply({"params": params}, x))


def _torch_all(model, x, z):
  with torch.no_grad():
    posterior = model.encode(torch_ref.nchw(x)).latent_dist
    return (torch_ref.nhwc(posterior.mean), torch_ref.nhwc(posterior.logvar), torch_ref.nhwc(model.decode(torch_ref.nchw(z)).sample),
            torch_ref.nhwc(model(torch_ref.nchw(x), sample_posterior=False).sample))


# ------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("name,cfg,shape", CASES, ids=[c[0] for c in CASES])
def test_parity_with_diffusers(tmp_path, name, cfg, shape):
  model = _torch_vae(cfg)
  module, params = vae.load_vae(torch_ref.save_pretrained(tmp_path, model))
  assert module.config.block_out_channels == cfg["block_out_channels"]
  assert ("quant_conv" in params) == cfg.get("use_quant_conv", True)
  assert ("attentions_0" in params["encoder"]["mid_block"]) == cfg.get("mid_block_add_attention", True)
  x = _images(shape)
  f = module.config.downsampling_factor
  z = np.random.default_rng(1).standard_normal((shape[0], shape[1] // f, shape[2] // f, 4)).astype(np.float32)
  refs, outs = _torch_all(model, x, z), _apply_all(module, params, x, z)
  print(f"\nvae {name}:")
  for what, ref, out in zip(("encoder mean", "encoder logvar", "decoder", "forward"), refs, outs):
    parity.assert_rel_close(what, ref, out, MAX_REL_ERR)


def test_posterior_matches_diagonal_gaussian_distribution():
  moments = np.random.default_rng(0).standard_normal((2, 3, 3, 8)).astype(np.float32) * 30  # past the clamp
  posterior = vae.DiagonalGaussian.from_moments(jnp.asarray(moments))
  mean, logvar = posterior  # unpacks as (mean, logvar)
  ref = DiagonalGaussianDistribution(torch_ref.nchw(moments))
  np.testing.assert_array_equal(mean, torch_ref.nhwc(ref.mean))
  np.testing.assert_array_equal(logvar, torch_ref.nhwc(ref.logvar))
  assert float(logvar.min()) == -30.0 and float(logvar.max()) == 20.0
  np.testing.assert_allclose(posterior.std, torch_ref.nhwc(ref.std), rtol=1e-6)
  np.testing.assert_allclose(posterior.var, torch_ref.nhwc(ref.var), rtol=1e-6)
  assert posterior.mode() is posterior.mean
  eps = jax.random.normal(jax.random.key(3), mean.shape)
  np.testing.assert_allclose(posterior.sample(jax.random.key(3)), mean + posterior.std * eps, rtol=1e-6)


# ------------------------------------------------------------------------------ weights in and out


def test_state_dict_round_trip_is_bitwise(tmp_path):
  for i, (_, cfg, _) in enumerate(CASES):
    sd = load_file(os.path.join(torch_ref.save_pretrained(tmp_path / str(i), _torch_vae(cfg)), "diffusion_pytorch_model.safetensors"))
    back = vae.VAE_TABLE.to_torch(vae.VAE_TABLE.to_flax(sd))
    assert sorted(back) == sorted(sd)
    for k in sd:
      assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape and back[k].tobytes() == sd[k].tobytes()


@pytest.mark.parametrize("case", [1, 2])
def test_save_then_diffusers_from_pretrained_reproduces_the_model(tmp_path, case):
  _, cfg, shape = CASES[case]
  model = _torch_vae(cfg, seed=case)
  module, params = vae.load_vae(torch_ref.save_pretrained(tmp_path / "orig", model))
  vae.save_vae(tmp_path / "brainjax", module, {"params": params})
  assert sorted(os.listdir(tmp_path / "brainjax")) == ["config.json", "diffusion_pytorch_model.safetensors"]
  reloaded, info = TorchAutoencoderKL.from_pretrained(tmp_path / "brainjax", output_loading_info=True)
  assert not any(info.values()), info  # no missing / unexpected / mismatched keys
  public = lambda c: {k: list(v) if isinstance(v, tuple) else v for k, v in dict(c).items() if not k.startswith("_")}
  assert public(reloaded.config) == public(model.config)
  for k, v in model.state_dict().items():
    assert torch.equal(v, reloaded.state_dict()[k]), k
  x = _images(shape)
  with torch.no_grad():
    assert torch.equal(model(torch_ref.nchw(x)).sample, reloaded.eval()(torch_ref.nchw(x)).sample)


def test_export_of_flax_initialised_params_matches_in_diffusers(tmp_path):
  """The export direction on its own: params born in Flax, run by diffusers."""
  _, cfg, shape = CASES[1]
  config = vae.VAEConfig(**cfg, down_block_types=(D, D), up_block_types=(U, U))
  module = vae.AutoencoderKL(config)
  # Random values in the Flax layout (numpy: drawing with jax.random per shape compiles slowly on CPU);
  # norms and biases random too, so that a transposed or misplaced tensor cannot hide.
  params = parity.random_flax_params(vae.abstract_params(module))
  vae.save_vae(tmp_path, config, params)
  model, info = TorchAutoencoderKL.from_pretrained(tmp_path, output_loading_info=True)
  assert not any(info.values()), info
  x = _images(shape, seed=2)
  z = np.random.default_rng(3).standard_normal((shape[0], 12, 12, 4)).astype(np.float32)
  print("\nexport from flax init:")
  for what, ref, out in zip(("mean", "logvar", "decoder", "forward"), _torch_all(model.eval(), x, z),
                            _apply_all(module, params, x, z)):
    parity.assert_rel_close(what, ref, out, MAX_REL_ERR)


def test_deprecated_attention_names_are_read(tmp_path):
  """Checkpoints from before diffusers 0.14 call the mid-block attention query/key/value/proj_attn."""
  path = torch_ref.save_pretrained(tmp_path, _torch_vae(CASES[0][1]))
  weights = os.path.join(path, "diffusion_pytorch_model.safetensors")
  _, params = vae.load_vae(path)
  old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  sd = load_file(weights)
  renamed = {}
  for k, v in sd.items():
    for new, legacy in old.items():
      k = k.replace(f".attentions.0.{new}.", f".attentions.0.{legacy}.")
    renamed[k] = v
  assert "encoder.mid_block.attentions.0.proj_attn.weight" in renamed
  save_file(renamed, weights, metadata={"format": "pt"})
  _, legacy_params = vae.load_vae(path)
  jax.tree.map(np.testing.assert_array_equal, params, legacy_params)


def test_load_from_gcs_pipeline_directory_and_save_there(fake_gcs):
  """A copy of a whole pipeline on GCS (model_index.json + vae/): load_vae finds the vae/ folder."""
  _, cfg, shape = CASES[1]
  model = _torch_vae(cfg, seed=4)
  root = os.path.join(fake_gcs, "bucket", "sd15")
  torch_ref.save_pretrained(os.path.join(root, "vae"), model)
  with open(os.path.join(root, "model_index.json"), "w") as f:
    json.dump({"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"]}, f)
  module, params = vae.load_vae("gs://bucket/sd15", remat=True)  # remat: same numbers
  assert module.remat
  x = _images(shape, seed=5)
  with torch.no_grad():
    ref = torch_ref.nhwc(model(torch_ref.nchw(x)).sample)
  parity.assert_rel_close("gs:// remat forward", ref, jax.jit(module.apply)({"params": params}, x), MAX_REL_ERR)
  vae.save_vae("gs://bucket/copy", module.config, params)
  assert sorted(os.listdir(os.path.join(fake_gcs, "bucket", "copy"))) == [
      "config.json", "diffusion_pytorch_model.safetensors"]
  _, copied = vae.load_vae("gs://bucket/copy")
  jax.tree.map(np.testing.assert_array_equal, params, copied)


# ------------------------------------------------------------------------------ latents and videos


@pytest.fixture(scope="module")
def shifted_vae(tmp_path_factory):
  """A 2-level VAE with scaling_factor 0.5 and shift_factor 0.25 (a missed or doubled scaling shows)."""
  _, cfg, _ = CASES[1]
  model = _torch_vae(cfg, seed=6)
  model.register_to_config(scaling_factor=0.5, shift_factor=0.25)
  module, params = vae.load_vae(torch_ref.save_pretrained(tmp_path_factory.mktemp("shifted"), model))
  assert (module.config.scaling_factor, module.config.shift_factor) == (0.5, 0.25)
  return model, module, params


def test_scaling_applied_once_each_way(shifted_vae):
  model, module, params = shifted_vae
  images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
  x = images.astype(np.float32) / 127.5 - 1
  with torch.no_grad():
    posterior = model.encode(torch_ref.nchw(x)).latent_dist
    mean, logvar = torch_ref.nhwc(posterior.mean), torch_ref.nhwc(posterior.logvar)
  latents = vae.encode_latents(module, params, images)  # uint8 in: mapped to [-1, 1]
  parity.assert_rel_close("uint8 latents = (mean - shift) * scale", (mean - 0.25) * 0.5, latents, MAX_REL_ERR)
  np.testing.assert_allclose(vae.encode_latents(module, params, x), latents, rtol=1e-5, atol=1e-6)
  with torch.no_grad():
    ref = torch_ref.nhwc(model.decode(torch_ref.nchw(np.asarray(latents) / 0.5 + 0.25)).sample)
  parity.assert_rel_close("decode_latents = decode(latents / scale + shift)", ref,
                          vae.decode_latents(module, params, latents), MAX_REL_ERR)
  # Sampling: mean + std * eps, then the same scaling.
  sampled = vae.encode_latents(module, params, x, jax.random.key(1), sample=True)
  eps = np.asarray(jax.random.normal(jax.random.key(1), mean.shape))
  parity.assert_rel_close("sampled = (mean + std * eps - shift) * scale",
                          (mean + np.exp(0.5 * logvar) * eps - 0.25) * 0.5, sampled, MAX_REL_ERR)
  with pytest.raises(ValueError, match=r"sample=True .* needs an rng"):
    vae.encode_latents(module, params, x, sample=True)
  assert vae.to_uint8(jnp.asarray([-1.5, -1.0, 0.0, 0.999, 2.0])).tolist() == [0, 0, 128, 255, 255]


def test_video_helpers_equal_per_frame_application_and_chunking(shifted_vae):
  _, module, params = shifted_vae
  b, t = 2, 5
  video = np.random.default_rng(2).uniform(-1, 1, (b, t, 16, 16, 3)).astype(np.float32)
  per_frame = np.stack([np.asarray(vae.encode_latents(module, params, video[:, i])) for i in range(t)], axis=1)
  latents = vae.encode_video(module, params, video)
  assert latents.shape == (b, t, 8, 8, 4)
  # Equal up to float rounding: XLA's CPU convolution sums in a different order for other batch sizes.
  parity.assert_rel_close("encode_video vs per frame", per_frame, latents, 1e-5)
  # chunk_size=2: two chunks of 2 frames through lax.map, then the last frame in its own call.
  parity.assert_rel_close("encode_video chunk_size=2", latents, vae.encode_video(module, params, video, chunk_size=2),
                          1e-5)
  decoded = vae.decode_video(module, params, latents)
  assert decoded.shape == video.shape
  per_frame = np.stack([np.asarray(vae.decode_latents(module, params, latents[:, i])) for i in range(t)], axis=1)
  parity.assert_rel_close("decode_video vs per frame", per_frame, decoded, 1e-5)
  parity.assert_rel_close("decode_video chunk_size=2", decoded,
                          vae.decode_video(module, params, latents, chunk_size=2), 1e-5)
  # Sampling draws the noise once for the whole video: chunking leaves it unchanged.
  rng = jax.random.key(9)
  sampled = vae.encode_video(module, params, video, rng, sample=True)
  assert not np.allclose(sampled, latents)
  parity.assert_rel_close("sampled chunk_size=2", sampled, vae.encode_video(module, params, video, rng, sample=True,
                                                                            chunk_size=2), 1e-5)


# ------------------------------------------------------------------------------ errors


def test_missing_files_are_named(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match=r"config.json not found; expected a diffusers AutoencoderKL directory"):
    vae.load_vae(tmp_path / "empty")
  (tmp_path / "empty" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
  with pytest.raises(CheckpointError, match=r"no weights in .*: expected diffusion_pytorch_model.safetensors"):
    vae.load_vae(tmp_path / "empty")
  with pytest.raises(CheckpointError, match=r"does not exist"):
    vae.load_vae(tmp_path / "nowhere")


def test_unsupported_configs_are_explained(tmp_path):
  with pytest.raises(ValueError, match=r"block type\(s\) \['AttnDownEncoderBlock2D'\] are not supported"):
    vae.VAEConfig(down_block_types=("AttnDownEncoderBlock2D",))
  with pytest.raises(ValueError, match=r"up_block_types has 1 entries but block_out_channels has 2"):
    vae.VAEConfig(block_out_channels=(32, 64), down_block_types=(D, D))
  with pytest.raises(ValueError, match=r"block_out_channels\[1\] = 12 is not divisible by norm_num_groups 8"):
    vae.VAEConfig.from_dict({"block_out_channels": [8, 12], "down_block_types": [D, D], "up_block_types": [U, U],
                             "norm_num_groups": 8})
  with pytest.raises(ValueError, match=r"act_fn = 'tanh' is not supported"):
    vae.VAEConfig(act_fn="tanh")
  with pytest.raises(ValueError, match=r"diffusers' AutoencoderTiny, not AutoencoderKL"):
    vae.VAEConfig.from_dict({"_class_name": "AutoencoderTiny"})
  path = torch_ref.save_pretrained(tmp_path, _torch_vae(CASES[0][1]))
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "up_block_types": ["AttnUpDecoderBlock2D"]}))
  with pytest.raises(ValueError, match=r"'AttnUpDecoderBlock2D'\] are not supported.*'UpDecoderBlock2D' only"):
    vae.load_vae(path)
  # Round trip of the config itself, with diffusers' private entries ignored.
  assert vae.VAEConfig.from_dict({**config, "_name_or_path": "x"}).to_dict() == {
      k: v for k, v in config.items() if k != "_diffusers_version"}


def test_weight_mismatches_name_the_file_and_the_keys(tmp_path):
  path = torch_ref.save_pretrained(tmp_path, _torch_vae(CASES[1][1]))
  weights = os.path.join(path, "diffusion_pytorch_model.safetensors")
  sd = load_file(weights)
  save_file({**sd, "encoder.conv_in.weight": np.zeros((8, 3, 5, 5), np.float32)}, weights, metadata={"format": "pt"})
  with pytest.raises(ConversionError, match=r"1 shape mismatch.*\n  encoder.conv_in.weight -> encoder/conv_in/kernel: "
                                            r"got \(5, 5, 3, 8\), the model expects \(3, 3, 3, 8\)"):
    vae.load_vae(path)
  save_file({**sd, "encoder.mid_block.attentions.0.lora.weight": np.zeros(2, np.float32)}, weights,
            metadata={"format": "pt"})
  with pytest.raises(ConversionError, match=rf"1 key\(s\) in {weights} match no rule.*\n  "
                                            r"encoder.mid_block.attentions.0.lora.weight"):
    vae.load_vae(path)
  save_file(sd, weights, metadata={"format": "pt"})
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "use_quant_conv": False}))
  with pytest.raises(ConversionError, match=r"2 key\(s\) of .* map to params the Flax model does not have.*\n  "
                                            r"quant_conv.bias -> quant_conv/bias"):
    vae.load_vae(path)


def test_bad_inputs_are_explained(shifted_vae):
  _, module, params = shifted_vae
  with pytest.raises(ValueError, match=r"looks channels-first \(NCHW"):
    vae.encode_latents(module, params, np.zeros((1, 3, 16, 16), np.float32))
  with pytest.raises(ValueError, match=r"For videos \[B, T, H, W, C\] use encode_video"):
    vae.encode_latents(module, params, np.zeros((1, 2, 16, 16, 3), np.float32))
  with pytest.raises(ValueError, match=r"latent videos have shape \(1, 2, 4, 4, 3\); expected \[B, T, H, W, 4\]"):
    vae.decode_video(module, params, np.zeros((1, 2, 4, 4, 3), np.float32))
  with pytest.raises(ValueError, match=r"chunk_size = 0: must be a positive number of frames"):
    vae.encode_video(module, params, np.zeros((1, 2, 16, 16, 3), np.float32), chunk_size=0)
  with pytest.raises(ValueError, match=r"dtype int32; pass uint8 in \[0, 255\] or floats"):
    vae.encode_latents(module, params, np.zeros((1, 16, 16, 3), np.int32))
  with pytest.raises(ValueError, match=r"sample_posterior=True needs an rng"):
    module.apply({"params": params}, np.zeros((1, 16, 16, 3), np.float32), sample_posterior=True)


# ------------------------------------------------------------------------------ sharding, dtypes


def test_logical_axes_and_sharded_encode_match(shifted_vae):
  _, module, params = shifted_vae
  specs = nn.get_partition_spec(vae.abstract_params(module, boxed=True))
  assert tuple(specs["encoder"]["down_blocks_0"]["resnets_0"]["conv1"]["kernel"]) == (None, None, None, "embed")
  assert tuple(specs["decoder"]["up_blocks_0"]["upsamplers_0"]["conv"]["bias"]) == ("embed",)
  assert tuple(specs["encoder"]["mid_block"]["attentions_0"]["to_q"]["kernel"]) == ("embed", "heads")
  assert tuple(specs["decoder"]["mid_block"]["attentions_0"]["to_out_0"]["kernel"]) == ("heads", "embed")
  assert tuple(specs["decoder"]["conv_norm_out"]["scale"]) == ("embed",)
  assert tuple(specs["decoder"]["conv_out"]["kernel"]) == (None, None, None, None)  # 3 output channels
  rules = shd.DEFAULT_LOGICAL_AXIS_RULES
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded = jax.device_put(params, nn.logical_to_mesh_sharding(specs, mesh, rules))
  assert sharded["encoder"]["conv_in"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")
  video = np.random.default_rng(3).uniform(-1, 1, (4, 2, 16, 16, 3)).astype(np.float32)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    out = vae.encode_video(module, sharded, video, chunk_size=1)
  parity.assert_rel_close("sharded encode_video", vae.encode_video(module, params, video), out, 1e-5)


def test_bf16_compute_stays_close(shifted_vae):
  """bf16 params and compute: about as far from float32 as diffusers' own bf16 run is."""
  model, module, params = shifted_vae
  x = _images((2, 16, 16, 3), seed=4)
  module16 = vae.AutoencoderKL(module.config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  params16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  out = jax.jit(module16.apply)({"params": params16}, x)
  assert out.dtype == jnp.bfloat16
  with torch.no_grad():
    ref = torch_ref.nhwc(model(torch_ref.nchw(x)).sample)
    torch16 = torch_ref.nhwc(copy.deepcopy(model).to(torch.bfloat16)(torch_ref.nchw(x).to(torch.bfloat16)).sample.float())
  err, torch_err = parity.rel_err(ref, np.asarray(out, np.float32)), parity.rel_err(ref, torch16)
  print(f"\n  bf16 forward: max rel err {err:.2e} (diffusers in bf16: {torch_err:.2e})")
  assert err < 2 * torch_err
