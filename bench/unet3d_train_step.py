"""Zeroscope UNet3D train step (diffusion loss, backward, AdamW): brainjax vs diffusers PyTorch, same CPU, one run.

  /work/venv/bin/python bench/unet3d_train_step.py [--steps 6] [--batch 1] [--channels 64,128,256,256] ...

Both sides train the same UNet3DConditionModel (bench/unet3d_models.py: Zeroscope's
blocks at a smaller width, identical weights through brainjax's diffusers
converter) on the same step: epsilon-prediction diffusion loss (SD / Zeroscope's
scaled-linear betas, one random timestep per clip, Gaussian noise), backward,
global-norm clip 1.0 and AdamW (lr 2e-5, betas 0.9/0.999, weight decay 1e-2 on
matrices: brainjax.plan.unet_optim). brainjax: one jitted step with the state
donated, float32. PyTorch: diffusers' model eagerly in float32 with torch's default
thread count and scaled_dot_product_attention, in eval mode (the temporal convs'
dropout off, as brainjax's UNet has none), no gradient checkpointing on either side.

Timing and MFU as bench/mbm_train_step.py (bench/common.py): warm-up, then rounds
of one step of each side (alternating order) plus a matmul-peak probe; medians.
FLOPs per step come from XLA's cost analysis of the compiled brainjax step and are
used for both sides (they compute the same model).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench import common  # noqa: E402

common.tune_process()

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from bench import unet3d_models  # noqa: E402
from brainjax.diffusion import NoiseSchedule, diffusion_loss  # noqa: E402
from brainjax.plan import unet_optim  # noqa: E402
from brainjax.train.optim import make_optimizer  # noqa: E402


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  unet3d_models.add_model_args(p, batch=1)
  p.add_argument("--steps", type=int, default=6, help="timed rounds (one step of each side per round)")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--skip_torch", action="store_true")
  p.add_argument("--no_malloc_tuning", action="store_true", help="keep glibc's default malloc thresholds")
  return p.parse_args()


def brainjax_runner(module, params, x0: np.ndarray, cond: np.ndarray):
  """(run one step and wait, FLOPs per step from XLA's cost analysis, compile seconds)."""
  optim = unet_optim()
  tx = make_optimizer(optim, 10 ** 6, params)
  schedule = NoiseSchedule.create()
  key = jax.random.PRNGKey(0)

  def make_step(module):
    def step(state, x0, cond):
      params, opt_state, count = state
      rng = jax.random.fold_in(key, count)
      predict = lambda p: lambda x, t, c: module.apply({"params": p}, x, t, c)
      loss, grads = jax.value_and_grad(lambda p: diffusion_loss(schedule, predict(p), x0, cond, rng))(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state, count + 1), loss
    return step

  state = (params, tx.init(params), jnp.zeros((), jnp.int32))
  xs, cs = jnp.asarray(x0), jnp.asarray(cond)
  t = time.perf_counter()
  compiled = jax.jit(make_step(module), donate_argnums=0).lower(state, xs, cs).compile()
  compile_s = time.perf_counter() - t
  flops = common.flops_of(compiled)
  if module.parts.attention_query_chunk:  # the chunks' recomputed attention forward is not counted
    flops = common.flops_of(jax.jit(make_step(unet3d_models.without_chunks(module))).lower(state, xs, cs).compile())
  box = [state]

  def run() -> None:
    box[0], loss = compiled(box[0], xs, cs)
    loss.block_until_ready()
  return run, flops, compile_s


def torch_runner(model, x0: np.ndarray, cond: np.ndarray):
  """One eager diffusers step: the same loss, backward, clip and AdamW."""
  import torch
  from diffusers import DDPMScheduler

  optim = unet_optim()
  model.eval()  # no dropout: the same computation as brainjax's deterministic UNet
  params = [p for p in model.parameters() if p.requires_grad]
  groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": optim.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.b1, optim.b2), eps=optim.eps)
  scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
  xs, cs = unet3d_models.to_torch(x0), torch.from_numpy(cond)

  def run() -> None:
    opt.zero_grad(set_to_none=True)
    noise = torch.randn_like(xs)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (xs.shape[0],))
    pred = model(scheduler.add_noise(xs, noise, t), t, encoder_hidden_states=cs).sample
    loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, optim.grad_clip_norm)
    opt.step()
  return run


def main() -> None:
  args = parse_args()
  rng = np.random.default_rng(0)
  x0 = rng.standard_normal((args.batch, args.frames, args.latent, args.latent, 4)).astype(np.float32)
  cond = rng.standard_normal((args.batch, args.context_len, args.cross_dim)).astype(np.float32)
  model, module, params = unet3d_models.make_pair(args)
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  peak_fn = common.jax_matmul()
  jax_step, flops, compile_s = brainjax_runner(module, params, x0, cond)
  del params  # donated into the step's state
  runners = {"brainjax": jax_step}
  if not args.skip_torch:
    runners["pytorch"] = torch_runner(model, x0, cond)
  times, peaks = common.interleaved(runners, args.steps, peak_fn, warmup=args.warmup)
  print(common.train_step_report(times, peaks, flops=flops, compile_s=compile_s,
                                 shapes=unet3d_models.describe(args, num_params), precision="float32"))


if __name__ == "__main__":
  main()
