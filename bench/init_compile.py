"""Compile time of the train state's random init: XLA's default level vs brainjax's INIT_COMPILER_OPTIONS.

Every training stage that starts from a random init compiles it once and runs it once, and the compile is
almost all of the cost (one threefry stream and initializer per parameter). brainjax.train.state compiles
it with INIT_COMPILER_OPTIONS (XLA backend optimisation level 0). For each of the demo's models this
plans the train state exactly as the stages do (plan_train_state on a 1-device mesh) and, in interleaved
rounds, times `build()` (the init's compile and run) with XLA's default options and with
INIT_COMPILER_OPTIONS, each from scratch (`jax.clear_caches()` first), and compares the parameters.

  /work/venv/bin/python bench/init_compile.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402

common.tune_process()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from brainjax.models import unet  # noqa: E402
from brainjax.stages import vae_fit  # noqa: E402
from brainjax.train import sharding as shd  # noqa: E402
from brainjax.train import state as state_lib  # noqa: E402
from brainjax.train.optim import make_optimizer, optim_config  # noqa: E402


def demo_models() -> dict:
  """name -> init_variables(rng), as the demo's unet_fit and vae_fit stages build them."""
  from configs import mindvideo  # the repository root is on sys.path (above)
  config = mindvideo.get_config("demo")
  module = unet.UNet2DConditionModel(unet.UNetConfig.from_dict(
      {**config.unet_fit.unet.to_dict(), "in_channels": 4, "out_channels": 4, "sample_size": 8}))
  vae_model = vae_fit.build(config.vae_fit)
  return {
      "unet_fit's UNet (8 x 8 x 4 latents)": lambda rng: module.init(
          rng, jnp.zeros((1, 8, 8, 4)), jnp.zeros((), jnp.int32), jnp.zeros((1, 32, 64))),
      "vae_fit's VAE (32 px)": lambda rng: vae_model.init(rng, jnp.zeros((1, 32, 32, 3))),
  }


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--no_malloc_tuning", action="store_true")
  args = p.parse_args()
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  rng = jax.random.PRNGKey(0)
  options = {"default": None, "INIT_COMPILER_OPTIONS": state_lib.INIT_COMPILER_OPTIONS}
  lines = [common.header([common.jax_matmul()()])[0]]
  for name, init_variables in demo_models().items():
    build, _, _, _ = state_lib.plan_train_state(
        init_variables, lambda params: make_optimizer(optim_config(), 10, params), rng, mesh,
        shd.DEFAULT_LOGICAL_AXIS_RULES)
    seconds = {k: [] for k in options}
    params = {}
    for r in range(args.rounds):
      for key in (list(options) if r % 2 == 0 else list(options)[::-1]):
        state_lib.INIT_COMPILER_OPTIONS = options[key]  # read by build() at call time
        jax.clear_caches()  # compile from scratch every time
        t = time.perf_counter()
        state = jax.block_until_ready(build())
        seconds[key].append(time.perf_counter() - t)
        params[key] = jax.tree.leaves(jax.device_get(state.params))
    state_lib.INIT_COMPILER_OPTIONS = options["INIT_COMPILER_OPTIONS"]
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(params["default"], params["INIT_COMPILER_OPTIONS"])]
    med = {k: float(np.median(v)) for k, v in seconds.items()}
    lines += [
        f"{name}: {len(diffs)} parameter arrays",
        f"  build() (compile + run of the init), XLA's default options: {med['default']:.2f} s; "
        f"INIT_COMPILER_OPTIONS {options['INIT_COMPILER_OPTIONS']}: {med['INIT_COMPILER_OPTIONS']:.2f} s "
        f"(median of {args.rounds} interleaved rounds)",
        f"  speed ratio: {med['default'] / med['INIT_COMPILER_OPTIONS']:.2f}x; parameters: "
        f"{sum(d > 0 for d in diffs)} of {len(diffs)} arrays differ, by at most {max(diffs):.1e}",
    ]
  print("\n".join(lines))


if __name__ == "__main__":
  main()
