"""The train step gives the same result on 1 device and on sharded 8-device meshes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from brainjax.config import ConfigError
from brainjax.models import mbm
from brainjax.train import sharding as shd
from brainjax.train.optim import make_optimizer, optim_config, trainable_mask
from brainjax.train.state import create_train_state, make_train_step, plan_train_state

RULES = shd.DEFAULT_LOGICAL_AXIS_RULES


def _model():
  return mbm.MaskedBrainModel(num_voxels=256, patch_size=16, embed_dim=64, depth=2, num_heads=4,
                              mlp_ratio=2.0, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)


def _model_fns():
  """(init_variables, loss_fn) of the small MBM model, as the train state and step take them."""
  model = _model()

  def init_variables(rng):
    return model.init({"params": rng}, jnp.zeros((1, 256)), rng)

  def loss_fn(params, model_state, batch, rng):
    return model.apply({"params": params}, batch["fmri"], rng)["loss"], ({}, model_state)

  return init_variables, loss_fn


def _run(mesh_config, devices, steps=3):
  mesh = shd.make_mesh(mesh_config, devices)
  init_variables, loss_fn = _model_fns()

  # eps 1e-4: Adam turns gradients at float32 noise level (~1e-9) into full +-lr
  # steps whose sign depends on reduction order; a larger eps keeps the
  # comparison about the sharding, not about that amplification.
  state, shardings, tx = create_train_state(
      init_variables, lambda p: make_optimizer(optim_config(lr=1e-3, warmup_steps=1, eps=1e-4), 10, p),
      jax.random.PRNGKey(0), mesh, RULES)
  batch_sharding = shd.batch_sharding(mesh, RULES)
  step = make_train_step(loss_fn, tx, shardings, {"fmri": batch_sharding}, mesh, RULES)
  data = np.random.default_rng(0).standard_normal((steps, 16, 256)).astype(np.float32)
  losses = []
  for i in range(steps):
    state, metrics = step(state, shd.global_batch({"fmri": data[i]}, batch_sharding))
    losses.append(float(metrics["loss"]))
  return state, shardings, losses


@pytest.mark.parametrize("mesh_config", [
    {"data": 8, "fsdp": 1, "tensor": 1},
    {"data": 2, "fsdp": 2, "tensor": 2},
    {"data": 1, "fsdp": 8, "tensor": 1},
])
def test_sharded_step_matches_single_device(mesh_config):
  assert jax.device_count() == 8
  ref_state, _, ref_losses = _run({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  state, shardings, losses = _run(mesh_config, jax.devices())
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(jax.device_get(ref_state.params))):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  assert int(state.step) == 3


def test_parameters_are_actually_sharded():
  _, shardings, _ = _run({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices(), steps=1)
  qkv = shardings.params["encoder"]["block_0"]["attn"]["qkv"]["kernel"]
  assert tuple(qkv.spec) == ("fsdp", "tensor")
  fc2 = shardings.params["encoder"]["block_0"]["mlp"]["fc2"]["kernel"]
  assert tuple(fc2.spec) == ("tensor", "fsdp")
  # Adam moments follow their parameters; the step count is replicated.
  flat = jax.tree.leaves(shardings.opt_state, is_leaf=lambda x: hasattr(x, "spec"))
  assert any(tuple(s.spec) == ("fsdp", "tensor") for s in flat)


@pytest.mark.parametrize("mesh_config,message", [
    ({"data": 3, "fsdp": 1, "tensor": 1}, "needs 3 devices"),
    ({"data": -1, "fsdp": -1, "tensor": 1}, "only one axis may be -1"),
    ({"data": -1, "fsdp": 3, "tensor": 1}, "not divisible by 3"),
    ({"data": 0, "fsdp": 1, "tensor": 1}, "config.mesh.data = 0"),
    ({"data": -1, "pipeline": 2}, "unknown axes"),
])
def test_bad_mesh_configs_name_the_field(mesh_config, message):
  with pytest.raises(ConfigError, match=message):
    shd.mesh_shape(mesh_config, 8)


def test_mesh_fill_axis():
  assert shd.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)


def test_trainable_subset_trains_only_the_matching_params_sharded():
  """A `trainable` regex mask: frozen params have no optimizer state and do not move, on an 8-device mesh."""
  mesh = shd.make_mesh({"data": 2, "fsdp": 4, "tensor": 1}, jax.devices())
  init_variables, loss_fn = _model_fns()

  optim = optim_config(lr=1e-2, warmup_steps=1, trainable=(r"^decoder", r"block_0/attn/"))
  state, shardings, tx = create_train_state(init_variables, lambda p: make_optimizer(optim, 10, p),
                                            jax.random.PRNGKey(0), mesh, RULES)
  batch_sharding = shd.batch_sharding(mesh, RULES)
  step = make_train_step(loss_fn, tx, shardings, {"fmri": batch_sharding}, mesh, RULES)
  before = jax.device_get(state.params)
  data = np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)
  for _ in range(2):  # the warm-up's first step has lr 0
    state, _ = step(state, shd.global_batch({"fmri": data}, batch_sharding))
  after = jax.device_get(state.params)
  from brainjax.weights.mapping import flatten
  moved = {k for k, v in flatten(after).items() if not np.array_equal(v, flatten(before)[k])}
  assert moved and all(k.startswith("decoder") or "block_0/attn/" in k for k in moved)
  assert any(k.startswith("decoder") for k in moved) and any("block_0/attn/" in k for k in moved)
  # Adam moments exist for the trained params only: far fewer optimizer leaves than params.
  n_params = len(jax.tree.leaves(state.params))
  n_moments = len(jax.tree.leaves(state.opt_state)) - 2  # minus step counters
  assert n_moments < 2 * n_params


def test_frozen_params_get_no_weight_gradients_and_the_trained_ones_step_as_before():
  """With `trainable` given, the step skips the frozen weights' gradients (fewer FLOPs); same update otherwise."""
  mesh = shd.make_mesh({"data": 2, "fsdp": 4, "tensor": 1}, jax.devices())
  init_variables, loss_fn = _model_fns()

  patterns = [r"^decoder_pred", r"block_0/attn/"]  # the encoder's block 1 and the decoder's body are frozen
  optim = optim_config(lr=1e-2, warmup_steps=1, trainable=tuple(patterns))
  init, abstract, shardings, tx = plan_train_state(init_variables, lambda p: make_optimizer(optim, 10, p),
                                                   jax.random.PRNGKey(0), mesh, RULES)
  batch_sharding = shd.batch_sharding(mesh, RULES)
  batch = shd.global_batch({"fmri": np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)},
                           batch_sharding)
  steps = {name: make_train_step(loss_fn, tx, shardings, {"fmri": batch_sharding}, mesh, RULES, trainable=mask)
           for name, mask in (("all", None), ("subset", trainable_mask(abstract.params, patterns)))}
  flops = {name: step.lower(abstract, batch).compile().cost_analysis()["flops"] for name, step in steps.items()}
  # The frozen encoder block's and decoder blocks' weight gradients (matmuls) are gone.
  assert flops["subset"] < 0.9 * flops["all"], flops
  out = {}
  for name, step in steps.items():
    state = init()
    for _ in range(2):  # the warm-up's first step has lr 0
      state, metrics = step(state, batch)
    out[name] = (jax.device_get(state.params), float(metrics["grad_norm"]))
  from brainjax.weights.mapping import flatten
  all_params, subset_params = flatten(out["all"][0]), flatten(out["subset"][0])
  for key, value in all_params.items():
    np.testing.assert_allclose(subset_params[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
  # grad_norm is the trained params' norm now, smaller than the norm over every gradient.
  assert 0 < out["subset"][1] < out["all"][1]


def test_random_init_is_the_models_init_sharded_and_compiled_at_the_cheap_level(monkeypatch):
  """init() compiles the random init with INIT_COMPILER_OPTIONS (its compile dominates its cost) and still
  gives the model's own init, to float32 rounding, laid out as the plan says."""
  from brainjax.train import state as state_lib
  model = _model()
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices())
  init_variables, _ = _model_fns()
  options = []
  compile_lowered = jax.stages.Lowered.compile

  def recording_compile(self, compiler_options=None, **kw):
    options.append(compiler_options)
    return compile_lowered(self, compiler_options=compiler_options, **kw)

  monkeypatch.setattr(jax.stages.Lowered, "compile", recording_compile)
  init_rng = jax.random.split(jax.random.PRNGKey(0))[0]  # plan_train_state's split: (init, state) keys
  init, _, shardings, _ = plan_train_state(init_variables, lambda p: make_optimizer(optim_config(), 10, p),
                                           jax.random.PRNGKey(0), mesh, RULES)
  state = init()
  assert options == [state_lib.INIT_COMPILER_OPTIONS]
  expected = jax.jit(lambda r: nn.meta.unbox(model.init({"params": r}, jnp.zeros((1, 256)), r)))(init_rng)["params"]
  for leaf, sharding in zip(jax.tree.leaves(state.params), jax.tree.leaves(shardings.params)):
    assert leaf.sharding == sharding
  from brainjax.weights.mapping import flatten
  got, want = flatten(jax.device_get(state.params)), flatten(jax.device_get(expected))
  assert got.keys() == want.keys()
  for key, value in want.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-7, err_msg=key)
  assert any(np.std(v) > 0 for v in got.values())  # a real random draw, not zeros


def test_state_around_given_params_equals_init_then_overlay_and_never_runs_the_init():
  """init(params): the same sharded state as the random init with every parameter replaced, built without
  calling the model's init (what video_finetune and cotrain do with their loaded UNet), the dtypes cast to the
  model's; params that do not fit the model are refused by name."""
  model = _model()
  mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices())
  calls = []

  def init_variables(rng):
    calls.append(1)  # traced: once by eval_shape per plan, once more if the random init is built
    return model.init({"params": rng}, jnp.zeros((1, 256)), rng)

  optim = optim_config(lr=1e-3, warmup_steps=1, trainable=(r"^decoder",))
  plan = lambda: plan_train_state(init_variables, lambda p: make_optimizer(optim, 10, p),  # noqa: E731
                                  jax.random.PRNGKey(0), mesh, RULES)
  init, _, shardings, _ = plan()
  reference = init()
  given = jax.tree.map(lambda x: np.asarray(x, np.float64) + 1.0, jax.device_get(reference.params))
  init, abstract, _, _ = plan()
  traced = len(calls)
  state = init(given)
  assert len(calls) == traced  # the model's init was not traced (so not compiled or run) again
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(given)):
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-7)
  expect = reference.replace(params=jax.device_put(jax.tree.map(lambda x: x.astype(np.float32), given),
                                                   shardings.params))
  assert int(state.step) == 0 and np.array_equal(state.rng, expect.rng)
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(reference.opt_state)
  for leaf, sharding in zip(jax.tree.leaves(state.params), jax.tree.leaves(shardings.params)):
    assert leaf.sharding == sharding
  # The same training step from either state gives the same parameters.
  def loss_fn(params, model_state, batch, rng):
    return model.apply({"params": params}, batch["fmri"], rng)["loss"], ({}, model_state)
  tx = make_optimizer(optim, 10, abstract.params)
  batch_sharding = shd.batch_sharding(mesh, RULES)
  step = make_train_step(loss_fn, tx, shardings, {"fmri": batch_sharding}, mesh, RULES)
  data = shd.global_batch({"fmri": np.ones((16, 256), np.float32)}, batch_sharding)
  for a, b in zip(jax.tree.leaves(jax.device_get(step(state, data)[0].params)),
                  jax.tree.leaves(jax.device_get(step(expect, data)[0].params))):
    np.testing.assert_array_equal(a, b)

  from brainjax.weights.mapping import flatten, unflatten
  flat = flatten(given)
  key = "encoder/block_0/attn/qkv/kernel"
  with pytest.raises(ValueError, match=r"1 missing \(e\.g\. \['encoder/block_0/attn/qkv/kernel'\]\)"):
    init(unflatten({k: v for k, v in flat.items() if k != key}))
  with pytest.raises(ValueError, match=r"wrong shape, e\.g\. encoder/block_0/attn/qkv/kernel \(64, 191\) "
                                       r"\(the model's: \(64, 192\)\)"):
    init(unflatten({**flat, key: flat[key][:, :191]}))
  with pytest.raises(ValueError, match=r"1 unexpected \(e\.g\. \['extra/kernel'\]\)"):
    init(unflatten({**flat, "extra/kernel": np.zeros(2)}))


def test_given_params_are_refused_for_a_model_with_other_collections():
  """A model with BatchNorm-style statistics cannot start from parameters alone: the error says what to do."""
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])

  def init_variables(rng):
    return {"params": {"w": jax.random.normal(rng, (3,))}, "batch_stats": {"mean": jnp.zeros(3)}}

  init, _, _, _ = plan_train_state(init_variables, lambda p: make_optimizer(optim_config(), 10, p),
                                   jax.random.PRNGKey(0), mesh, RULES)
  assert init().model_state["batch_stats"]["mean"].shape == (3,)
  with pytest.raises(ValueError, match="non-parameter collections .* give them too"):
    init({"w": np.ones(3, np.float32)})
