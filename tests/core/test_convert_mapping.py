"""The declarative weight mapping (brainjax.weights.mapping) and checkpoint directory I/O."""

import json
import os

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import save_file as torch_save_file

from brainjax.weights import checkpoint_io as cio
from brainjax.weights import mapping as mp


# A toy model touching every helper: conv stem, repeated blocks, norm, embedding, free param.
TOY = mp.Table(
    rules=[
        *mp.embedding("embed", "embed"),
        *mp.param("cls_token", "cls_token"),
        *mp.conv("stem", "stem"),
        *mp.conv("temporal", "temporal", bias=False),
        *mp.prefixed([*mp.linear("fc{n:1|2}", "fc{n}"), *mp.norm("norm", "norm")],
                     r"blocks.{i:\d+}.", "blocks_{i}/"),
        *mp.linear("head", "head", bias=False),
    ],
    skip=["embed_position_ids", "blocks.{i}.num_batches_tracked"])


def _toy_state_dict(dtype=np.float32, seed=0):
  rng = np.random.default_rng(seed)
  shapes = {
      "embed.weight": (11, 4), "cls_token": (1, 1, 4), "stem.weight": (4, 3, 3, 3), "stem.bias": (4,),
      "temporal.weight": (4, 4, 3), "head.weight": (5, 4),
  }
  for i in range(2):
    shapes.update({f"blocks.{i}.fc1.weight": (8, 4), f"blocks.{i}.fc1.bias": (8,), f"blocks.{i}.fc2.weight": (4, 8),
                   f"blocks.{i}.fc2.bias": (4,), f"blocks.{i}.norm.weight": (4,), f"blocks.{i}.norm.bias": (4,)})
  return {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}


def _shapes(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


# ------------------------------------------------------------------------------ the table


def test_to_flax_names_and_layouts():
  sd = _toy_state_dict()
  params = TOY.to_flax(sd)
  assert sorted(params) == ["blocks_0", "blocks_1", "cls_token", "embed", "head", "stem", "temporal"]
  np.testing.assert_array_equal(params["blocks_1"]["fc1"]["kernel"], sd["blocks.1.fc1.weight"].T)
  np.testing.assert_array_equal(params["blocks_0"]["norm"]["scale"], sd["blocks.0.norm.weight"])
  np.testing.assert_array_equal(params["embed"]["embedding"], sd["embed.weight"])
  np.testing.assert_array_equal(params["stem"]["kernel"], sd["stem.weight"].transpose(2, 3, 1, 0))  # OIHW->HWIO
  np.testing.assert_array_equal(params["temporal"]["kernel"], sd["temporal.weight"].transpose(2, 1, 0))  # OIW->WIO
  assert params["head"]["kernel"].shape == (4, 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_round_trip_is_bitwise(dtype):
  sd = _toy_state_dict(dtype)
  back = TOY.to_torch(TOY.to_flax(sd))
  assert sorted(back) == sorted(sd)
  for k in sd:
    assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape
    assert back[k].tobytes() == sd[k].tobytes(), k
  assert all(v.flags.c_contiguous for v in back.values())


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_conv_transform_matches_torch_conv(ndim):
  torch.manual_seed(ndim)
  conv_t = getattr(torch.nn, f"Conv{ndim}d")(3, 5, kernel_size=3, stride=2, bias=True)
  x = torch.randn(2, 3, *([9] * ndim))
  with torch.no_grad():
    ref = conv_t(x).numpy()
  table = mp.Table(mp.conv("c", "c"))
  params = table.to_flax({f"c.{k}": v.numpy() for k, v in conv_t.state_dict().items()})
  conv_f = nn.Conv(5, (3,) * ndim, strides=(2,) * ndim, padding="VALID")
  out = conv_f.apply({"params": params["c"]}, np.moveaxis(x.numpy(), 1, -1))
  np.testing.assert_allclose(np.moveaxis(np.asarray(out), -1, 1), ref, atol=1e-5)


def test_linear_transform_matches_torch_linear():
  lin = torch.nn.Linear(4, 6)
  x = torch.randn(3, 4)
  with torch.no_grad():
    ref = lin(x).numpy()
  params = mp.Table(mp.linear("l", "l")).to_flax({f"l.{k}": v.numpy() for k, v in lin.state_dict().items()})
  out = nn.Dense(6).apply({"params": params["l"]}, x.numpy())
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-6)


def test_skip_patterns_drop_known_non_parameters_only():
  sd = _toy_state_dict()
  sd["embed_position_ids"] = np.arange(4)
  sd["blocks.0.num_batches_tracked"] = np.array(3)
  params = TOY.to_flax(sd, _shapes(TOY.to_flax(_toy_state_dict())))
  assert "embed_position_ids" not in mp.flatten(params)
  assert "embed_position_ids" not in TOY.to_torch(params)  # never written


def test_unexpected_source_key_is_named_with_its_origin():
  sd = _toy_state_dict()
  sd["blocks.0.fc3.weight"] = np.zeros((2, 2), np.float32)
  sd["decoder.proj.weight"] = np.zeros((2, 2), np.float32)
  with pytest.raises(mp.ConversionError, match=r"2 key\(s\) in /x/model.safetensors match no rule") as e:
    TOY.to_flax(sd, origin="/x/model.safetensors")
  assert "blocks.0.fc3.weight" in str(e.value) and "decoder.proj.weight" in str(e.value)


def test_missing_target_is_named():
  sd = _toy_state_dict()
  expected = _shapes(TOY.to_flax(sd))
  del sd["blocks.1.norm.bias"], sd["head.weight"]
  with pytest.raises(mp.ConversionError, match=r"2 Flax param\(s\) were not filled from ckpt") as e:
    TOY.to_flax(sd, expected, origin="ckpt")
  assert "blocks_1/norm/bias" in str(e.value) and "head/kernel" in str(e.value)


def test_param_the_model_lacks_is_named():
  sd = _toy_state_dict()
  expected = _shapes(TOY.to_flax(sd))
  sd["blocks.2.norm.weight"] = np.ones(4, np.float32)
  with pytest.raises(mp.ConversionError, match=r"map to params the Flax model does not have") as e:
    TOY.to_flax(sd, expected)
  assert "blocks.2.norm.weight -> blocks_2/norm/scale" in str(e.value)


def test_shape_mismatch_names_both_sides():
  sd = _toy_state_dict()
  expected = _shapes(TOY.to_flax(sd))
  sd["blocks.0.fc1.weight"] = np.zeros((9, 4), np.float32)
  with pytest.raises(mp.ConversionError, match=r"1 shape mismatch") as e:
    TOY.to_flax(sd, expected)
  assert "blocks.0.fc1.weight -> blocks_0/fc1/kernel: got (4, 9), the model expects (4, 8)" in str(e.value)


def test_to_torch_refuses_params_no_rule_covers():
  params = TOY.to_flax(_toy_state_dict())
  params["extra"] = {"kernel": np.zeros((2, 2))}
  with pytest.raises(mp.ConversionError, match=r"1 Flax param\(s\) match no rule.*\n  extra/kernel"):
    TOY.to_torch(params)


def test_table_mistakes_are_reported():
  with pytest.raises(ValueError, match=r"placeholders differ"):
    mp.Rule("layers.{i}.weight", "layers/kernel")
  ambiguous = mp.Table([mp.Rule("a.{x}", "a/{x}"), mp.Rule("a.b", "b")])
  with pytest.raises(mp.ConversionError, match=r"ambiguous: 'a.b' matches several rules"):
    ambiguous.to_flax({"a.b": np.zeros(1)})
  with pytest.raises(mp.ConversionError, match=r"LINEAR expects a 2..2-D tensor, got shape \(3,\)"):
    mp.Table(mp.linear("l", "l")).to_flax({"l.weight": np.zeros(3)})


def test_placeholders_respect_their_regex_and_repeat_consistently():
  table = mp.Table([mp.Rule(r"b.{i:\d+}.{p:q|k}.w.{i}", "b_{i}/{p}/w")])
  assert mp.flatten(table.to_flax({"b.12.q.w.12": np.ones(1)})) == {"b_12/q/w": np.ones(1)}
  for bad in ("b.x.q.w.x", "b.1.v.w.1", "b.1.q.w.2"):
    with pytest.raises(mp.ConversionError, match="match no rule"):
      table.to_flax({bad: np.ones(1)})


# ------------------------------------------------------------------------------ checkpoint I/O


def test_write_then_read_checkpoint(tmp_path):
  sd = _toy_state_dict(ml_dtypes.bfloat16)
  cio.write_checkpoint(tmp_path / "ckpt", {"hidden_size": 4}, sd)
  ckpt = cio.read_checkpoint(tmp_path / "ckpt")
  assert ckpt.config == {"hidden_size": 4}
  assert ckpt.origin.endswith("ckpt/model.safetensors")
  assert all(ckpt.state_dict[k].tobytes() == sd[k].tobytes() and ckpt.state_dict[k].dtype == sd[k].dtype
             for k in sd)


def test_reads_bf16_and_diffusers_names_written_by_torch(tmp_path):
  tensors = {"w": torch.randn(3, 2).to(torch.bfloat16), "h": torch.randn(2).half()}
  torch_save_file(tensors, str(tmp_path / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
  (tmp_path / "config.json").write_text("{}")
  ckpt = cio.read_checkpoint(tmp_path)
  assert ckpt.state_dict["w"].dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(ckpt.state_dict["w"].astype(np.float32), tensors["w"].float().numpy())
  np.testing.assert_array_equal(ckpt.state_dict["h"], tensors["h"].numpy())


def test_reads_sharded_checkpoints(tmp_path):
  sd = _toy_state_dict()
  keys = sorted(sd)
  shards = {"model-00001-of-00002.safetensors": keys[:5], "model-00002-of-00002.safetensors": keys[5:]}
  for name, names in shards.items():
    np_save_file({k: sd[k] for k in names}, str(tmp_path / name), metadata={"format": "pt"})
  index = {"metadata": {}, "weight_map": {k: name for name, names in shards.items() for k in names}}
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
  (tmp_path / "config.json").write_text("{}")
  ckpt = cio.read_checkpoint(tmp_path)
  assert ckpt.origin.endswith("model.safetensors.index.json")
  assert all(np.array_equal(ckpt.state_dict[k], sd[k]) for k in sd) and len(ckpt.state_dict) == len(sd)
  os.remove(tmp_path / "model-00002-of-00002.safetensors")
  with pytest.raises(cio.CheckpointNotFoundError, match=r"shard .*model-00002-of-00002.safetensors listed in"):
    cio.read_checkpoint(tmp_path)


def test_refuses_pickled_weights(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
  with pytest.raises(cio.CheckpointError, match=r"pytorch_model.bin holds pickled PyTorch weights.*executes "
                                                r"arbitrary code.*weights_only=True.*save_pretrained") as e:
    cio.read_checkpoint(tmp_path, "a transformers CLIP checkpoint directory")
  assert "model.safetensors" in str(e.value)
  with pytest.raises(cio.CheckpointError, match=r"holds pickled PyTorch weights"):
    cio.read_checkpoint(tmp_path / "pytorch_model.bin")


def test_missing_directory_config_or_weights_say_what_is_expected(tmp_path):
  what = "a transformers CLIP checkpoint directory with config.json and model.safetensors"
  with pytest.raises(cio.CheckpointNotFoundError, match=r"checkpoint directory .*/nowhere does not exist; expected "
                                                        r"a transformers CLIP checkpoint directory"):
    cio.read_checkpoint(tmp_path / "nowhere", what)
  (tmp_path / "text_encoder").mkdir()
  with pytest.raises(cio.CheckpointNotFoundError, match=r".*/config.json not found; expected a transformers CLIP "
                                                        r".*It contains: \['text_encoder'\]"):
    cio.read_checkpoint(tmp_path, what)
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(cio.CheckpointNotFoundError, match=r"no weights in .*: expected model.safetensors or "
                                                        r"diffusion_pytorch_model.safetensors"):
    cio.read_checkpoint(tmp_path, what)
  (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(cio.CheckpointError, match=r"model.safetensors is not a readable safetensors file"):
    cio.read_checkpoint(tmp_path, what)


def test_gcs_paths_go_through_epath(fake_gcs):
  sd = _toy_state_dict()
  cio.write_checkpoint("gs://bucket/toy", {"a": 1}, sd)
  local = os.path.join(fake_gcs, "bucket", "toy")
  assert sorted(os.listdir(local)) == ["config.json", "model.safetensors"]
  ckpt = cio.read_checkpoint("gs://bucket/toy")
  assert ckpt.origin == "gs://bucket/toy/model.safetensors"
  assert all(np.array_equal(ckpt.state_dict[k], sd[k]) for k in sd)
  with pytest.raises(cio.CheckpointNotFoundError, match=r"gs://bucket/other does not exist"):
    cio.read_checkpoint("gs://bucket/other")
