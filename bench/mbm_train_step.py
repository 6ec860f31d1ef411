"""MBM train step (forward + backward + AdamW update): brainjax vs the PyTorch reference, same CPU, one run.

  /work/venv/bin/python bench/mbm_train_step.py [--steps 8] [--embed 384] [--depth 6] ...

Both sides train the same masked autoencoder (MinD-Vis MAEforFMRI; the torch
side is tests/torch_reference.py with torch's fused scaled_dot_product_attention,
as current timm runs it) with the same optimizer: global-norm clip 0.8, AdamW
(lr 2.5e-4, betas 0.9/0.95, wd 0.05 on matrices only). brainjax runs its jitted
step with the state donated; PyTorch runs eagerly with torch.set_num_threads(cores).

The host's speed drifts (two shared vCPUs), so each timed round runs one step of
each side (alternating which goes first) and a matmul-peak probe; figures are
medians over rounds, and the speed ratio is the median of the per-round ratios.

Model FLOPs utilisation: FLOPs per step from XLA's cost analysis of the compiled
brainjax step (all ops, dominated by the matmuls; it matches the analytic matmul
count of the model), times steps/s, over the machine's float32 matmul peak
measured in the same run (best of three 2048^3 jnp.matmul per round, median over
rounds). The same FLOP count is used for the PyTorch side (it computes the same model).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench import common  # noqa: E402

# Re-exec with glibc's malloc thresholds raised and OMP_WAIT_POLICY=PASSIVE (see bench/common.py): both
# frameworks run in this process, under the same environment.
common.tune_process()

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from brainjax.models import mbm  # noqa: E402
from brainjax.train.optim import make_optimizer, optim_config  # noqa: E402

LR, BETAS, WD, CLIP = 2.5e-4, (0.9, 0.95), 0.05, 0.8


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--voxels", type=int, default=4096)
  p.add_argument("--patch", type=int, default=16)
  p.add_argument("--embed", type=int, default=384)
  p.add_argument("--depth", type=int, default=6)
  p.add_argument("--heads", type=int, default=6)
  p.add_argument("--mlp_ratio", type=float, default=1.0)  # MinD-Vis pretrains with mlp_ratio 1.0
  p.add_argument("--decoder_embed", type=int, default=128)
  p.add_argument("--decoder_depth", type=int, default=2)
  p.add_argument("--decoder_heads", type=int, default=4)
  p.add_argument("--mask_ratio", type=float, default=0.75)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=8, help="timed rounds (one step of each side per round)")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--skip_torch", action="store_true")
  p.add_argument("--no_malloc_tuning", action="store_true", help="keep glibc's default malloc thresholds")
  return p.parse_args()


# --------------------------------------------------------------------------------------------- brainjax


def brainjax_step(args):
  model = mbm.MaskedBrainModel(
      num_voxels=args.voxels, patch_size=args.patch, embed_dim=args.embed, depth=args.depth, num_heads=args.heads,
      mlp_ratio=args.mlp_ratio, decoder_embed_dim=args.decoder_embed, decoder_depth=args.decoder_depth,
      decoder_num_heads=args.decoder_heads, decoder_mlp_ratio=args.mlp_ratio, mask_ratio=args.mask_ratio)
  rng = jax.random.PRNGKey(0)
  import flax.linen as nn
  params = nn.meta.unbox(jax.jit(model.init)({"params": rng}, jnp.zeros((1, args.voxels)), rng)["params"])
  tx = make_optimizer(optim_config(lr=LR, b1=BETAS[0], b2=BETAS[1], weight_decay=WD, grad_clip_norm=CLIP,
                                   schedule="constant"), 10 ** 6, params)
  state = (params, tx.init(params), jnp.zeros((), jnp.int32))

  def step(state, x):
    params, opt_state, count = state
    mask_rng = jax.random.fold_in(rng, count)
    loss, grads = jax.value_and_grad(lambda p: model.apply({"params": p}, x, mask_rng)["loss"])(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (jax.tree.map(jnp.add, params, updates), opt_state, count + 1), loss

  return jax.jit(step, donate_argnums=0), state


def brainjax_runner(args, x: np.ndarray):
  """(run one step and wait, FLOPs per step from XLA cost analysis, compile seconds)."""
  step, state = brainjax_step(args)
  xs = jnp.asarray(x)
  t = time.perf_counter()
  compiled = step.lower(state, xs).compile()
  compile_s = time.perf_counter() - t
  box = [state]

  def run() -> None:
    box[0], loss = compiled(box[0], xs)
    loss.block_until_ready()
  return run, common.flops_of(compiled), compile_s


# --------------------------------------------------------------------------------------------- torch


def torch_runner(args, x: np.ndarray):
  """Run one eager PyTorch step (same model, data, optimizer)."""
  import torch

  from tests.torch_reference import MaskedAutoencoderFmri
  torch.manual_seed(0)
  model = MaskedAutoencoderFmri(args.voxels, args.patch, args.embed, args.depth, args.heads, args.decoder_embed,
                                args.decoder_depth, args.decoder_heads, args.mlp_ratio, fused=True)
  trainable = [p for p in model.parameters() if p.requires_grad]
  groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": WD},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS)
  xs = torch.from_numpy(x)
  n = args.voxels // args.patch

  def run() -> None:
    opt.zero_grad(set_to_none=True)
    loss = model(xs, torch.rand(xs.shape[0], n), args.mask_ratio)[0]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, CLIP)
    opt.step()
  return run


def main() -> None:
  args = parse_args()
  cores = os.cpu_count() or 1
  x = np.random.default_rng(0).standard_normal((args.batch, args.voxels)).astype(np.float32)
  peak_fn = common.jax_matmul()
  jax_step, flops, compile_s = brainjax_runner(args, x)
  runners = {"brainjax": jax_step}
  if not args.skip_torch:
    import torch
    torch.set_num_threads(cores)
    runners["pytorch"] = torch_runner(args, x)
  # The machine's speed drifts (a shared host): rounds interleave the two sides and a peak
  # measurement, and the figures are medians over rounds.
  times, peaks = common.interleaved(runners, args.steps, peak_fn, warmup=args.warmup)
  shapes = (f"voxels {args.voxels} (patch {args.patch} -> {args.voxels // args.patch} patches), encoder "
            f"{args.depth} x {args.embed} ({args.heads} heads, mlp ratio {args.mlp_ratio}), decoder "
            f"{args.decoder_depth} x {args.decoder_embed} ({args.decoder_heads} heads), mask {args.mask_ratio}, "
            f"batch {args.batch}")
  print(common.train_step_report(times, peaks, flops=flops, compile_s=compile_s, shapes=shapes, per="steps/s"))


if __name__ == "__main__":
  main()
