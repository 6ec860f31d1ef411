"""MinD-Vis MBM checkpoints and MindVideo fMRI-encoder folders <-> brainjax: parity, round trips, safety, errors.

The PyTorch side is tests/torch_reference.py (MAEforFMRI, fMRIEncoder with
BlockTemp and ProjectionHead, rewritten from the published definitions).
"""

from __future__ import annotations

import io
import json
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.torch
import torch
from etils import epath

from brainjax.weights import checkpoint_io
from brainjax.convert import mbm as convert
from brainjax.models import fmri_encoder, layers, mbm
from brainjax import artifacts
from tests import torch_reference as ref

# (num_voxels, patch, embed, depth, heads, decoder embed, decoder depth, decoder heads, mlp ratio, mask ratio, batch)
MBM_CONFIGS = {
    "mindvis-like": (320, 16, 32, 2, 4, 16, 2, 2, 1.0, 0.75, 3),
    "wide-mlp": (192, 8, 48, 3, 6, 24, 1, 3, 2.0, 0.52, 4),  # 24*0.48 = 11.52: MAE truncates to 11 kept
    "one-head": (128, 16, 16, 1, 1, 8, 1, 1, 4.0, 0.5, 2),
}
# (num_voxels, patch, embed, depth, heads, mlp ratio, out tokens, out dim, use_norm, window, batch)
ENCODER_CONFIGS = {
    "window1": (160, 16, 24, 2, 3, 1.0, 5, 12, False, 1, 3),
    "window2": (160, 16, 24, 2, 3, 2.0, 7, 16, True, 2, 2),
    "window3": (96, 8, 16, 3, 2, 1.0, 4, 8, False, 3, 4),
}


def _numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _torch_mbm(name: str, seed: int = 0) -> ref.MaskedAutoencoderFmri:
  v, p, d, depth, heads, dd, ddepth, dheads, ratio, _, _ = MBM_CONFIGS[name]
  return ref.randomize_(ref.MaskedAutoencoderFmri(v, p, d, depth, heads, dd, ddepth, dheads, ratio), seed)


def _heads(name: str) -> dict[str, int]:
  return {"num_heads": MBM_CONFIGS[name][4], "decoder_num_heads": MBM_CONFIGS[name][7]}


def _save_pth(path, obj) -> None:
  buffer = io.BytesIO()
  torch.save(obj, buffer)
  epath.Path(path).write_bytes(buffer.getvalue())


def _encoder_config(name: str) -> dict:
  v, p, d, depth, heads, ratio, out_channel, out_dim, use_norm, window, _ = ENCODER_CONFIGS[name]
  return dict(num_voxels=v, patch_size=p, embed_dim=d, in_chans=1, depth=depth, num_heads=heads, mlp_ratio=ratio,
              out_channel=out_channel, out_dim=out_dim, use_norm=use_norm, dropout=0.0, window_size=window,
              use_temp_attn=window > 1, logit_scale_init_value=1.0, _class_name="fMRIEncoder")




# ------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", sorted(MBM_CONFIGS))
def test_mbm_masked_reconstruction_matches_mindvis(name, tmp_path):
  v, p, *_, mask_ratio, batch = MBM_CONFIGS[name]
  torch_model = _torch_mbm(name)
  _save_pth(tmp_path / "checkpoint.pth", {"model": torch_model.state_dict(), "config": _heads(name)})
  model, params, _ = convert.load_mindvis_mbm(tmp_path / "checkpoint.pth", mask_ratio=mask_ratio)
  x = np.random.default_rng(1).standard_normal((batch, v)).astype(np.float32)
  rng = jax.random.PRNGKey(2)
  # The same noise on both sides, so both keep the same patches.
  noise = np.array(layers.mask_noise(rng, batch, v // p))
  ours = jax.device_get(jax.jit(model.apply)({"params": params}, jnp.asarray(x), rng))
  latent, _ = jax.jit(lambda p, x, r: model.apply({"params": p}, x, mask_rng=r, method=model.encode))(params, x, rng)
  with torch.no_grad():
    loss, pred, mask, their_latent = torch_model(torch.from_numpy(x), torch.from_numpy(noise), mask_ratio)
  np.testing.assert_array_equal(ours["mask"], mask.numpy())
  assert ours["mask"].sum(1)[0] == v // p - int(v // p * (1 - mask_ratio))
  np.testing.assert_allclose(latent, their_latent.numpy(), rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(ours["pred"], pred.numpy(), rtol=1e-5, atol=2e-5)
  np.testing.assert_allclose(ours["loss"], loss.item(), rtol=1e-5)

  # Unmasked encoding (what feature extraction uses): increasing noise = identity permutation.
  ordered = torch.arange(v // p, dtype=torch.float32).expand(batch, -1)
  tokens, _ = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))(params, x)
  with torch.no_grad():
    their_tokens, _, _ = torch_model.forward_encoder(torch.from_numpy(x)[:, None], 0.0, ordered)
  np.testing.assert_allclose(tokens, their_tokens.numpy(), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("name", sorted(ENCODER_CONFIGS))
def test_fmri_encoder_matches_mindvideo(name, tmp_path):
  config = _encoder_config(name)
  batch = ENCODER_CONFIGS[name][-1]
  torch_model = ref.randomize_(ref.FmriEncoderTorch(**config), seed=3).eval()
  ref.write_mindvideo_encoder_folder(tmp_path / "fmri_encoder", config, torch_model)
  model, params = convert.load_mindvideo_fmri_encoder(tmp_path / "fmri_encoder")
  assert model.encoder.window == config["window_size"]
  assert ("attn_temp" in params["encoder"]["encoder"]["block_0"]) == (config["window_size"] > 1)
  x = np.random.default_rng(4).standard_normal((batch, config["window_size"], config["num_voxels"]))
  x = x.astype(np.float32)
  ours = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(x))["condition"])
  with torch.no_grad():
    theirs = torch_model(torch.from_numpy(x)).numpy()
  assert ours.shape == (batch, config["out_channel"], config["out_dim"])
  # MindVideo's own pos_embed is computed in float32 (brainjax: float64, as MinD-Vis), ~1e-6 apart.
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=3e-5)


def test_layer_norm_eps_is_torchs():
  """Low-variance tokens make eps visible: the converted model's blocks must match torch's nn.LayerNorm (1e-5)."""
  model, _, _ = convert.mbm_from_state_dict(_numpy_state(_torch_mbm("mindvis-like")), _heads("mindvis-like"))
  block = ref.randomize_(ref.Block(32, 4, 1.0), seed=12)
  tree = mbm.MBM_TABLE.to_flax({f"blocks.0.{k}": v for k, v in _numpy_state(block).items()})
  x = (1e-3 * np.random.default_rng(13).standard_normal((2, 5, 32))).astype(np.float32)
  ours = layers.Block(4, 1.0, norm_eps=model.norm_eps).apply({"params": tree["encoder"]["block_0"]}, jnp.asarray(x))
  with torch.no_grad():
    np.testing.assert_allclose(ours, block(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------- round trips


def _init_mbm(name: str):
  v, p, d, depth, heads, dd, ddepth, dheads, ratio, mask_ratio, _ = MBM_CONFIGS[name]
  model = mbm.MaskedBrainModel(num_voxels=v, patch_size=p, embed_dim=d, depth=depth, num_heads=heads,
                               mlp_ratio=ratio, decoder_embed_dim=dd, decoder_depth=ddepth, decoder_num_heads=dheads,
                               decoder_mlp_ratio=ratio, mask_ratio=mask_ratio)
  r = jax.random.PRNGKey(5)
  params = nn.meta.unbox(jax.jit(model.init)({"params": r}, jnp.zeros((1, v)), r)["params"])
  return model, _perturbed(params)


def _perturbed(params, seed: int = 6):
  """Random norms and tokens too (init has ones/zeros, which would hide a swapped mapping). NumPy: no compiles."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: np.asarray(x) + rng.normal(0.0, 0.1, x.shape).astype(np.float32), params)


def _assert_trees_equal(a, b) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_mbm_round_trips_are_bitwise(tmp_path):
  model, params = _init_mbm("wide-mlp")
  state_dict = convert.mbm_state_dict(model, params)
  back_model, back, _ = convert.mbm_from_state_dict(state_dict, convert.mindvis_config(model))
  assert back_model == model
  _assert_trees_equal(params, back)
  # brainjax -> .pth -> a strict load into the PyTorch module -> brainjax again.
  convert.save_mindvis_mbm(tmp_path / "mbm.pth", model, params)
  torch_model = _torch_mbm("wide-mlp", seed=9)
  torch_model.load_state_dict(torch.load(tmp_path / "mbm.pth", weights_only=True)["model"], strict=True)
  _, again, _ = convert.mbm_from_state_dict(_numpy_state(torch_model), convert.mindvis_config(model))
  _assert_trees_equal(params, again)
  # PyTorch -> brainjax -> PyTorch.
  original = _numpy_state(_torch_mbm("mindvis-like"))
  m, p, _ = convert.mbm_from_state_dict(original, _heads("mindvis-like"))
  exported = convert.mbm_state_dict(m, p)
  assert set(exported) == set(original)
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_exported_fmri_encoder_loads_strict_in_pytorch_and_back(tmp_path):
  config = _encoder_config("window2")
  model = convert.fmri_model_from_config(config)
  x = np.random.default_rng(7).standard_normal((2, 2, config["num_voxels"])).astype(np.float32)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(8), jnp.asarray(x))["params"])
  params = _perturbed(params)
  folder = convert.save_mindvideo_fmri_encoder(tmp_path / "fmri_encoder", model, params, logit_scale=2.5,
                                               torch_pickle=True)
  written = json.loads((folder / "config.json").read_text())
  assert {k: written[k] for k in config} == {**config, "logit_scale_init_value": 2.5}
  ours = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(x))["condition"])
  for state_dict in (safetensors.torch.load_file(str(folder / convert.MINDVIDEO_WEIGHTS)),
                     torch.load(folder / "model.pth", weights_only=True)["model"]):
    torch_model = ref.FmriEncoderTorch(**config).eval()
    torch_model.load_state_dict(state_dict, strict=True)
    assert torch_model.logit_scale.item() == 2.5
    with torch.no_grad():
      np.testing.assert_allclose(torch_model(torch.from_numpy(x)).numpy(), ours, rtol=1e-5, atol=2e-5)
  _, back = convert.load_mindvideo_fmri_encoder(folder)
  _assert_trees_equal(params, back)
  # PyTorch -> brainjax -> PyTorch, every tensor bitwise (pos_embed: brainjax writes its own table).
  torch_model = ref.randomize_(ref.FmriEncoderTorch(**config), seed=10)
  original = _numpy_state(torch_model)
  m, p = convert.fmri_model_from_state_dict(original, config)
  exported = convert.fmri_encoder_state_dict(m, p)
  assert set(exported) == set(original)
  for key in set(original) - {"pos_embed", "cls_token", "mask_token", "logit_scale"}:
    np.testing.assert_array_equal(exported[key], original[key], err_msg=key)


def test_orbax_import_and_export_through_params_dirs(tmp_path):
  torch_model = _torch_mbm("mindvis-like")
  _save_pth(tmp_path / "mbm.pth", {"model": torch_model.state_dict(), "config": _heads("mindvis-like")})
  out = convert.import_mindvis_mbm(tmp_path / "mbm.pth", tmp_path / "mbm_pretrain")
  params, meta = artifacts.load_params(out)
  assert meta["kind"] == "mbm" and meta["num_voxels"] == 320
  model = mbm.build(ml_collections.ConfigDict(meta["model"]), meta["num_voxels"])
  _, direct, _ = convert.load_mindvis_mbm(tmp_path / "mbm.pth")
  _assert_trees_equal(direct, params)
  assert model.norm_eps == 1e-5 and model.num_heads == 4
  # An MBM encoder initialises a window-2 encoder (temporal attention keeps its init).
  config = _encoder_config("window2") | {"embed_dim": 32, "num_heads": 4, "depth": 2, "num_voxels": 320,
                                         "mlp_ratio": 1.0}
  ref.write_mindvideo_encoder_folder(tmp_path / "fmri_encoder", config,
                                     ref.randomize_(ref.FmriEncoderTorch(**config), 11))
  enc_dir = convert.import_mindvideo_fmri_encoder(tmp_path / "fmri_encoder", tmp_path / "align")
  enc_params, enc_meta = artifacts.load_params(enc_dir)
  merged = {**enc_params, "encoder": fmri_encoder.init_from_mbm(enc_params["encoder"], params)}
  np.testing.assert_array_equal(merged["encoder"]["encoder"]["block_1"]["mlp"]["fc2"]["kernel"],
                                params["encoder"]["block_1"]["mlp"]["fc2"]["kernel"])
  # The command line exports a params dir back to MindVideo's layout.
  convert.main(["encoder-export", str(enc_dir), str(tmp_path / "exported")])
  model2, back = convert.load_mindvideo_fmri_encoder(tmp_path / "exported")
  assert convert.fmri_model_meta(model2) == {k: v for k, v in enc_meta.items() if k != "converted_from"}
  _assert_trees_equal(enc_params, back)


def test_export_of_the_align_stage_product(tmp_path):
  from brainjax.stages import align
  stage = align.stage_config(encoder=dict(patch_size=16, embed_dim=24, depth=1, num_heads=3, mlp_ratio=1.0,
                                          remat=False),
                             head=dict(out_tokens=6, out_dim=8, dropout=0.6, use_norm=False))
  aligner = align.build(stage, num_voxels=160, window=2, clip_dim=12)
  x = np.random.default_rng(14).standard_normal((2, 2, 160)).astype(np.float32)
  params = _perturbed(nn.meta.unbox(jax.jit(aligner.init)(jax.random.PRNGKey(0), x)["params"]))
  artifacts.save_params(tmp_path / "align", params, {"kind": "fmri_aligner", "num_voxels": 160, "window": 2,
                                                  "clip_dim": 12, "align": stage.to_dict()})
  convert.export_mindvideo_fmri_encoder(tmp_path / "align", tmp_path / "fmri_encoder", torch_pickle=True)
  torch_model = ref.FmriEncoderTorch(**json.loads((tmp_path / "fmri_encoder/config.json").read_text())).eval()
  torch_model.load_state_dict(torch.load(tmp_path / "fmri_encoder/model.pth", weights_only=True)["model"])
  ours = jax.jit(aligner.apply)({"params": params}, x)["condition"]
  with torch.no_grad():
    np.testing.assert_allclose(torch_model(torch.from_numpy(x)).numpy(), ours, rtol=1e-5, atol=2e-5)


# ------------------------------------------------------------------------------------------------- safety


def test_mindvis_checkpoint_with_its_config_object_loads(tmp_path, monkeypatch):
  """A real MinD-Vis .pth pickles `config.Config_MBM_fMRI`, optimizer state, scaler and epoch."""
  config_module = types.ModuleType("config")

  class Config_MBM_fMRI:  # noqa: N801 -- the original's name
    pass

  Config_MBM_fMRI.__module__, Config_MBM_fMRI.__qualname__ = "config", "Config_MBM_fMRI"
  config_module.Config_MBM_fMRI = Config_MBM_fMRI
  monkeypatch.setitem(sys.modules, "config", config_module)
  cfg = Config_MBM_fMRI()
  cfg.__dict__.update(patch_size=16, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=16, decoder_num_heads=2,
                      mlp_ratio=1.0, mask_ratio=0.75, lr=2.5e-4, roi="VC", focus_range=None)
  torch_model = _torch_mbm("mindvis-like")
  optimizer = torch.optim.AdamW([p for p in torch_model.parameters() if p.requires_grad], lr=1e-3)
  torch_model(torch.randn(2, 320), torch.rand(2, 20))[0].backward()
  optimizer.step()
  _save_pth(tmp_path / "checkpoint.pth", {"model": torch_model.state_dict(), "optimizer": optimizer.state_dict(),
                                          "epoch": 19, "scaler": {"scale": 65536.0}, "config": cfg})
  monkeypatch.delitem(sys.modules, "config")  # brainjax never imports the original's code
  model, params, model_cfg = convert.load_mindvis_mbm(tmp_path / "checkpoint.pth")
  assert (model.num_heads, model.decoder_num_heads, model.depth, model.decoder_depth) == (4, 2, 2, 2)
  expected = torch_model.state_dict()["blocks.1.attn.qkv.weight"].numpy().T
  np.testing.assert_array_equal(params["encoder"]["block_1"]["attn"]["qkv"]["kernel"], expected)


def _leave_mark(path):
  with open(path, "w") as f:
    f.write("code from the checkpoint ran")


class _Payload:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return _leave_mark, (self.path,)


def test_pickle_with_code_is_refused_without_running_it(tmp_path):
  marker = tmp_path / "ran.txt"
  _save_pth(tmp_path / "evil.pth", {"model": {"cls_token": torch.zeros(1, 1, 4)}, "config": _Payload(str(marker))})
  with pytest.raises(checkpoint_io.CheckpointError, match=r"weights_only=True.*Re-save it once"):
    convert.load_mindvis_mbm(tmp_path / "evil.pth", num_heads=1, decoder_num_heads=1)
  assert not marker.exists()
  # The same refusal through a MindVideo folder holding a pickled model.pth.
  folder = tmp_path / "fmri_encoder"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(_encoder_config("window1")))
  _save_pth(folder / "model.pth", {"model": {"x": torch.zeros(1)}, "extra": _Payload(str(marker))})
  with pytest.raises(checkpoint_io.CheckpointError, match="_leave_mark"):
    convert.load_mindvideo_fmri_encoder(folder)
  assert not marker.exists()


def test_not_a_checkpoint(tmp_path):
  (tmp_path / "junk.pth").write_bytes(b"not a zip, not a pickle")
  with pytest.raises(checkpoint_io.CheckpointError, match="not a PyTorch checkpoint"):
    convert.read_torch_checkpoint(tmp_path / "junk.pth")
  with pytest.raises(checkpoint_io.CheckpointNotFoundError, match="does not exist"):
    convert.read_torch_checkpoint(tmp_path / "absent.pth")


# ------------------------------------------------------------------------------------------------- errors


def test_wrong_keys_and_shapes_are_named():
  base = _numpy_state(_torch_mbm("mindvis-like"))
  heads = _heads("mindvis-like")
  renamed = dict(base)
  renamed["blocks.0.attn.qkvx.weight"] = renamed.pop("blocks.0.attn.qkv.weight")
  unmatched_and_missing = r"(?s)blocks\.0\.attn\.qkvx\.weight.*encoder/block_0/attn/qkv/kernel"
  with pytest.raises(convert.ConversionError, match=unmatched_and_missing):
    convert.mbm_from_state_dict(renamed, heads)
  wrong = dict(base, **{"decoder_pred.bias": np.zeros(15, np.float32)})
  with pytest.raises(convert.ConversionError, match=r"decoder_pred\.bias -> decoder_pred/bias: got \(15,\)"):
    convert.mbm_from_state_dict(wrong, heads)
  with pytest.raises(convert.ConversionError, match="num_heads is not in the checkpoint's config"):
    convert.mbm_from_state_dict(base, {})
  with pytest.raises(convert.ConversionError, match="num_heads=3 does not divide the width 32"):
    convert.mbm_from_state_dict(base, {**heads, "num_heads": 3})
  with pytest.raises(convert.ConversionError, match="embed_dim: config 64, weights 32"):
    convert.mbm_from_state_dict(base, {**heads, "embed_dim": 64})
  moved = dict(base, pos_embed=base["pos_embed"] + 0.01)
  with pytest.raises(convert.ConversionError, match="pos_embed differs from the fixed 1-D sin-cos table"):
    convert.mbm_from_state_dict(moved, heads)
  with pytest.raises(convert.ConversionError, match="no 'patch_embed.proj.weight'"):
    convert.mbm_from_state_dict({"cls_token": base["cls_token"]}, heads)


def test_encoder_config_errors_are_named(tmp_path):
  with pytest.raises(convert.ConversionError, match="window_size=1 with use_temp_attn=True"):
    convert.fmri_model_from_config(_encoder_config("window1") | {"use_temp_attn": True})
  with pytest.raises(convert.ConversionError, match="window_size=2 with use_temp_attn=False"):
    convert.fmri_model_from_config(_encoder_config("window2") | {"use_temp_attn": False})
  model = fmri_encoder.WindowedFmriModel(
      fmri_encoder.FmriEncoder(num_voxels=64, window=1, embed_dim=16, depth=1, num_heads=2, norm_eps=1e-6),
      fmri_encoder.ProjectionHead(out_tokens=3, out_dim=8))
  with pytest.raises(convert.ConversionError, match="norm_eps=1e-06"):
    convert.mindvideo_config(model)
  with pytest.raises(convert.ConversionError, match="caption readout"):
    convert.mindvideo_config(model.clone(encoder=model.encoder.clone(norm_eps=1e-5),
                                         head=model.head.clone(readout_rank=4)))
  # A MindVideo folder whose weights are for another window size.
  config = _encoder_config("window2")
  ref.write_mindvideo_encoder_folder(tmp_path / "enc", config | {"window_size": 3}, ref.FmriEncoderTorch(**config))
  with pytest.raises(convert.ConversionError, match=r"proj_head\.channel_mapper\.weight -> head/channel_mapper/kernel"):
    convert.load_mindvideo_fmri_encoder(tmp_path / "enc")
  with pytest.raises(checkpoint_io.CheckpointNotFoundError, match="config.json"):
    convert.load_mindvideo_fmri_encoder(tmp_path)


# ------------------------------------------------------------------------------------------------- gs://


def test_gcs_paths(fake_gcs):
  torch_model = _torch_mbm("one-head")
  buffer = io.BytesIO()
  torch.save({"model": torch_model.state_dict(), "config": _heads("one-head")}, buffer)
  epath.Path("gs://bucket/mindvis").mkdir(parents=True)
  epath.Path("gs://bucket/mindvis/checkpoint.pth").write_bytes(buffer.getvalue())
  model, params, _ = convert.load_mindvis_mbm("gs://bucket/mindvis/checkpoint.pth")
  np.testing.assert_array_equal(params["decoder_pred"]["bias"], torch_model.decoder_pred.bias.detach().numpy())
  config = _encoder_config("window3")
  enc = convert.fmri_model_from_config(config)
  enc_params = nn.meta.unbox(jax.jit(enc.init)(jax.random.PRNGKey(0), jnp.zeros((1, 3, config["num_voxels"]))))
  enc_params = enc_params["params"]
  convert.save_mindvideo_fmri_encoder("gs://bucket/run/fmri_encoder", enc, enc_params)
  assert (epath.Path(fake_gcs) / "bucket/run/fmri_encoder" / convert.MINDVIDEO_WEIGHTS).exists()
  _, back = convert.load_mindvideo_fmri_encoder("gs://bucket/run/fmri_encoder")
  _assert_trees_equal(enc_params, back)

