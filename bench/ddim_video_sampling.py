"""50-step DDIM video sampling with classifier-free guidance: brainjax vs a diffusers loop, same CPU, one run.

  /work/venv/bin/python bench/ddim_video_sampling.py [--runs 3] [--num_steps 50] [--guidance 7.5] ...

Both sides sample with the same UNet3DConditionModel and weights
(bench/unet3d_models.py) from the same initial noise and conditions:
  brainjax  brainjax.diffusion.sample(..., sampler='ddim', guidance_scale=7.5, negative_cond=...): every
            step in one lax.scan, the whole sampler one jitted program (compiled once, before the
            timed runs; its compile time is reported on its own line)
  pytorch   the loop of diffusers' TextToVideoSDPipeline: DDIMScheduler.set_timesteps / step around the
            UNet3DConditionModel under torch.inference_mode, float32, torch's default threads
Guidance runs the UNet once per step on the batch [negative; positive] (2 x batch clips), as both do.
The scheduler is Zeroscope's (scaled-linear betas 0.00085..0.012, steps_offset 1, set_alpha_to_one
False, clip_sample False, 'leading' spacing); brainjax reads the diffusers scheduler's config.

The final latents of the two are compared (max abs difference, and relative to their std); then
rounds of one sampling run of each side (alternating order) with a matmul-peak probe are timed
(bench/common.py). MFU counts num_steps guided UNet forwards, FLOPs from XLA's cost analysis of one
compiled guided call.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench import common  # noqa: E402

common.tune_process()

import argparse  # noqa: E402
import functools  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import unet3d_models  # noqa: E402
from brainjax.diffusion import NoiseSchedule, classifier_free_guidance, sample  # noqa: E402

# zeroscope_v2_576w/scheduler/scheduler_config.json (DDIMScheduler)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                 set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000, prediction_type="epsilon")


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  # 16 x 16 latents: 50 guided steps stay around a minute per run on two cores.
  unet3d_models.add_model_args(p, batch=1, latent=16)
  p.add_argument("--num_steps", type=int, default=50)
  p.add_argument("--guidance", type=float, default=7.5)
  p.add_argument("--runs", type=int, default=3, help="timed rounds (one sampling run of each side per round)")
  p.add_argument("--tolerance", type=float, default=1e-3, help="max abs difference of the final latents, "
                 "relative to their std, above which the run is reported as a mismatch")
  p.add_argument("--no_malloc_tuning", action="store_true", help="keep glibc's default malloc thresholds")
  return p.parse_args()


def brainjax_sampler(module, params, schedule, args, z, cond, neg):
  """(run -> final latents, compile seconds, FLOPs of one guided UNet call)."""
  def run_sampler(params, z, cond, neg):
    denoise = lambda x, t, c: module.apply({"params": params}, x, t, c)
    return sample(denoise, schedule, z, cond, sampler="ddim", num_steps=args.num_steps,
                  guidance_scale=args.guidance, negative_cond=neg)

  inputs = (params, jnp.asarray(z), jnp.asarray(cond), jnp.asarray(neg))
  t = time.perf_counter()
  compiled = jax.jit(run_sampler).lower(*inputs).compile()
  compile_s = time.perf_counter() - t

  plain = unet3d_models.without_chunks(module)

  def guided_call(params, x, cond, neg):
    denoise = functools.partial(lambda p, x, t, c: plain.apply({"params": p}, x, t, c), params)
    return classifier_free_guidance(denoise, args.guidance, neg)(x, jnp.int32(500), cond)
  call_flops = common.flops_of(jax.jit(guided_call).lower(*inputs).compile())

  def run() -> np.ndarray:
    return np.asarray(compiled(*inputs))
  return run, compile_s, call_flops


def torch_sampler(model, args, z, cond, neg):
  """diffusers TextToVideoSDPipeline's denoising loop (DDIMScheduler, CFG on [neg; pos])."""
  import torch
  from diffusers import DDIMScheduler

  model.eval()
  scheduler = DDIMScheduler(**SCHEDULER)
  z0 = unet3d_models.to_torch(z)
  context = torch.cat([torch.from_numpy(neg), torch.from_numpy(cond)])

  def run() -> np.ndarray:
    scheduler.set_timesteps(args.num_steps)
    latents = z0.clone()
    with torch.inference_mode():
      for t in scheduler.timesteps:
        both = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        out = model(both, t, encoder_hidden_states=context).sample
        uncond, text = out.chunk(2)
        latents = scheduler.step(uncond + args.guidance * (text - uncond), t, latents).prev_sample
    return unet3d_models.from_torch(latents)
  return run, scheduler


def main() -> None:
  args = parse_args()
  rng = np.random.default_rng(0)
  z = rng.standard_normal((args.batch, args.frames, args.latent, args.latent, 4)).astype(np.float32)
  cond = rng.standard_normal((args.batch, args.context_len, args.cross_dim)).astype(np.float32)
  neg = rng.standard_normal((args.batch, args.context_len, args.cross_dim)).astype(np.float32)
  model, module, params = unet3d_models.make_pair(args)
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  torch_run, scheduler = torch_sampler(model, args, z, cond, neg)
  schedule = NoiseSchedule.from_config(dict(scheduler.config), origin="diffusers DDIMScheduler config")
  jax_run, compile_s, call_flops = brainjax_sampler(module, params, schedule, args, z, cond, neg)

  out_jax, out_torch = jax_run(), torch_run()  # also the warm-up
  diff = float(np.abs(out_jax - out_torch).max())
  scale = float(out_torch.std())
  peak_fn = common.jax_matmul()
  times, peaks = common.interleaved({"brainjax": jax_run, "pytorch": torch_run}, args.runs, peak_fn, warmup=0)
  peak = float(np.median(peaks))
  sec = {name: float(np.median(t)) for name, t in times.items()}
  flops = call_flops * args.num_steps
  import torch
  head, peak_line = common.header(peaks)
  match = "match" if diff <= args.tolerance * scale else "MISMATCH"
  print("\n".join([
      head, "shapes: " + unet3d_models.describe(args, num_params)
      + f"; {args.num_steps} DDIM steps, guidance {args.guidance} (UNet batch {2 * args.batch})", peak_line,
      f"FLOPs per sampling run ({args.num_steps} x one guided UNet call, XLA cost analysis): {flops / 1e9:.1f} GFLOP",
      f"final latents: max abs difference {diff:.2e} (latents std {scale:.3f}; relative {diff / scale:.1e}, "
      f"tolerance {args.tolerance:.0e}): {match}",
      f"brainjax (one jitted lax.scan, float32): {sec['brainjax']:.2f} s per run, MFU {flops / sec['brainjax'] / peak:.1%} "
      f"(compile {compile_s:.1f} s, not included)",
      f"pytorch {torch.__version__} diffusers DDIMScheduler loop, float32 ({torch.get_num_threads()} threads, "
      f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}): {sec['pytorch']:.2f} s per run, "
      f"MFU {flops / sec['pytorch'] / peak:.1%}",
      common.ratio_line(times),
  ]))


if __name__ == "__main__":
  main()
