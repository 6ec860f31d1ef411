"""Train state and the one jitted, sharded train step every stage uses.

The state is a plain pytree (no functions inside), so it checkpoints as is and
its sharding is derived from the models' logical axis names:

  abstract init (eval_shape) -> logical partition specs -> mesh shardings
  -> jit(init, out_shardings=...)

so full-size parameters are never materialised on one device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding

from brainjax.weights import params as params_lib
from brainjax.train import sharding as shd
from brainjax.train.optim import param_path

# loss_fn(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))
LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, tuple[dict, Any]]]

# The random init runs once, and compiling it costs far more than running it: every parameter has its own
# threefry stream and initializer, hundreds of them for a UNet. XLA's backend optimisation level 0 compiles
# it faster (bench/init_compile.py, 2-core CPU: the demo UNet's state 22.2 -> 14.1 s, its VAE's 14.4 -> 6.4 s). The random
# bits are integer arithmetic and identical at any level; the float transforms (uniform -> normal) may
# differ in the last bit, which is as random as before.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


class TrainState(struct.PyTreeNode):
  step: jax.Array          # int32 scalar: optimizer steps taken
  params: Any              # trainable and frozen parameters (unboxed)
  opt_state: Any
  model_state: Any         # non-gradient collections, e.g. BatchNorm statistics; {} if none
  rng: jax.Array           # uint32[2]; the step's key is fold_in(rng, step), so resumes replay exactly


def _split_variables(variables: Any) -> tuple[Any, Any]:
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def plan_train_state(
    init_variables: Callable[[jax.Array], Any],
    make_tx: Callable[[Any], optax.GradientTransformation],
    rng: jax.Array,
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]],
) -> tuple[Callable[[jax.Array], TrainState], TrainState, TrainState, optax.GradientTransformation]:
  """Everything about the state without allocating it.

  Args:
    init_variables: rng -> flax variables ({'params': ..., other collections}),
      possibly boxed with logical partitioning metadata.
    make_tx: abstract params -> optimizer (needs paths for trainable masks).
  Returns:
    (init, abstract_state, state_shardings, tx): `init()` builds the real
    state from the model's random init, `init(params)` around given
    parameters (step 0, a fresh optimizer state); `abstract_state` holds
    ShapeDtypeStructs with their shardings (what ahead-of-time compilation
    and checkpoint restores need).
  """
  init_rng, state_rng = jax.random.split(rng)
  with nn.logical_axis_rules(rules):
    abstract_boxed = jax.eval_shape(init_variables, init_rng)
  logical_specs = nn.get_partition_spec(abstract_boxed)
  var_shardings = nn.logical_to_mesh_sharding(logical_specs, mesh, rules)
  abstract_vars = nn.meta.unbox(abstract_boxed)
  abstract_params, _ = _split_variables(abstract_vars)
  param_shardings, model_state_shardings = _split_variables(var_shardings)
  tx = make_tx(abstract_params)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = shd.replicated(mesh)
  # Frozen params (a `trainable` mask) have an empty MaskedNode in the optimizer state: keep it.
  opt_shardings = optax.tree_map_params(
      tx, lambda leaf, s: leaf if isinstance(leaf, optax.MaskedNode) else s, abstract_opt, param_shardings,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, (NamedSharding, optax.MaskedNode)))
  state_shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                               model_state=model_state_shardings, rng=replicated)

  def from_params(params, model_state):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      model_state=model_state, rng=state_rng)

  def init(rng_init):
    with nn.logical_axis_rules(rules):
      variables = nn.meta.unbox(init_variables(rng_init))
    return from_params(*_split_variables(variables))

  abstract = abstract_state(state_shardings, jax.eval_shape(init, init_rng))

  def build(params: Any = None) -> TrainState:
    if params is None:
      compiled = jax.jit(init, out_shardings=state_shardings).lower(init_rng).compile(
          compiler_options=INIT_COMPILER_OPTIONS)
      return compiled(init_rng)
    # Given parameters (an earlier stage's, a checkpoint's): the model's random init is never compiled or
    # run, which on a CPU saves its compile (10-15 s for a UNet) and on a pod a full-size random copy.
    if jax.tree.leaves(abstract.model_state):
      raise ValueError("this model has non-parameter collections (e.g. BatchNorm statistics); give them too, or "
                       "start from its init and overlay the parameters.")
    params = jax.device_put(conform_params(params, abstract.params), state_shardings.params)
    return jax.jit(lambda p: from_params(p, {}), out_shardings=state_shardings)(params)

  return build, abstract, state_shardings, tx


def conform_params(params: Any, abstract_params: Any) -> Any:
  """`params` checked against the model's parameter tree (same paths and shapes) and cast to its dtypes."""
  want = {param_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(abstract_params)}
  have = {param_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
  missing, extra, mismatched = params_lib.mismatches(have, want)
  if missing or extra:
    raise ValueError(f"the given parameters do not fit the model: {len(missing)} missing (e.g. {missing[:3]}), "
                     f"{len(extra)} unexpected (e.g. {extra[:3]}); were they saved for another model config?")
  wrong = [f"{k} {tuple(have[k].shape)} (the model's: {tuple(want[k].shape)})" for k in mismatched]
  if wrong:
    raise ValueError(f"{len(wrong)} given parameter(s) have the wrong shape, e.g. {'; '.join(wrong[:3])}; "
                     "were they saved for another model config?")

  def cast(path, like):  # astype keeps a device array where it is (no gather onto one device)
    x = have[param_path(path)]
    return x if x.dtype == like.dtype else x.astype(like.dtype)

  return jax.tree_util.tree_map_with_path(cast, abstract_params)


def create_train_state(
    init_variables: Callable[[jax.Array], Any],
    make_tx: Callable[[Any], optax.GradientTransformation],
    rng: jax.Array,
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]],
) -> tuple[TrainState, TrainState, optax.GradientTransformation]:
  """Builds the state directly in its sharded layout: (state, state_shardings, tx)."""
  init, _, state_shardings, tx = plan_train_state(init_variables, make_tx, rng, mesh, rules)
  return init(), state_shardings, tx


def abstract_state(state_shardings: TrainState, state: TrainState) -> TrainState:
  """ShapeDtypeStructs carrying the target shardings: what a restore fills in."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_shardings)


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    state_shardings: TrainState,
    batch_shardings: Any,
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]],
    trainable: Any = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """One jitted step: grads, update, metrics. The input state is donated.

  `trainable` (a tree of bools like the params, e.g. `optim.trainable_mask`;
  None: all) marks what the optimizer trains. The others are differentiated
  as constants: their weight gradients are never computed (MinD-Video's
  fine-tuning freezes 84 % of SD's UNet, whose weight-gradient matmuls would
  otherwise be a third of the backward), and `grad_norm` is the trained ones'.
  """

  def differentiable(params):
    if trainable is None:
      return params
    return jax.tree.map(lambda p, train: p if train else jax.lax.stop_gradient(p), params, trainable)

  def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    with nn.logical_axis_rules(rules):
      (loss, (metrics, model_state)), grads = jax.value_and_grad(
          lambda params, *args: loss_fn(differentiable(params), *args), has_aux=True)(
              state.params, state.model_state, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state)
    return new_state, metrics

  return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, shd.replicated(mesh)), donate_argnums=0)
