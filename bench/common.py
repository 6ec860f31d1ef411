"""Helpers every benchmark shares: process tuning, the machine's matmul peak, interleaved timing, the header line.

A benchmark script starts with

  sys.path.insert(0, REPO_ROOT)
  from bench import common
  common.tune_process()            # before jax / torch are imported
  import jax ...

and measures brainjax and the PyTorch reference in one process, in interleaved
rounds with a matmul-peak probe per round (the host's speed drifts), reporting
medians. Nothing here imports jax or torch at module level.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping

import numpy as np

# glibc returns freed blocks above the mmap threshold to the OS, so every new buffer of tens of MB
# (attention scores, activations) is page-faulted in again: a 34 MB elementwise op takes ~21 ms
# instead of ~7 ms on this VM, for both frameworks. Keeping freed memory in the heap removes that.
# glibc reads these only at process start, hence the re-exec; both sides run in the same process.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "8000000000"}


def tune_process() -> None:
  """Re-executes with MALLOC_ENV (unless --no_malloc_tuning) and sets OMP_WAIT_POLICY=PASSIVE.

  libgomp's default spin-wait costs ~8 ms per parallel region on this kind of VM (two vCPUs that are
  not scheduled together): a 0.03 ms torch elementwise op takes 8 ms with 2 threads. Passive waiting
  removes that, so the PyTorch side is measured at its best. Must run before torch loads its OpenMP
  runtime; an explicit OMP_WAIT_POLICY in the environment wins.
  """
  if "--no_malloc_tuning" not in sys.argv and any(k not in os.environ for k in MALLOC_ENV):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**MALLOC_ENV, **os.environ})
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def load_average() -> str:
  """The 1/5/15-minute load averages (the host is shared: other processes compete for the cores)."""
  try:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    return "unknown"


def jax_matmul(n: int = 2048) -> Callable[[], float]:
  """A probe returning the best float32 FLOP/s of three n x n x n jnp.matmul (the machine's matmul peak)."""
  import jax
  import jax.numpy as jnp
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
  b = jnp.asarray(np.random.default_rng(1).standard_normal((n, n)), jnp.float32)
  mm = jax.jit(jnp.matmul)
  mm(a, b).block_until_ready()

  def run() -> float:
    best = np.inf
    for _ in range(3):
      t = time.perf_counter()
      mm(a, b).block_until_ready()
      best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best
  return run


def timed(fn: Callable[[], object]) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def flops_of(compiled) -> float:
  """FLOPs of a compiled jax executable (XLA's cost analysis)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def interleaved(runners: Mapping[str, Callable[[], object]], rounds: int, peak_fn: Callable[[], float],
                warmup: int = 1) -> tuple[dict[str, list[float]], list[float]]:
  """Warm-up, then `rounds` rounds of one run of each runner (alternating the order) and a peak probe.

  Returns (seconds per run by runner, peak FLOP/s per round).
  """
  for run in runners.values():
    for _ in range(warmup):
      run()
  times: dict[str, list[float]] = {name: [] for name in runners}
  peaks = []
  for r in range(rounds):
    peaks.append(peak_fn())
    for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
      times[name].append(timed(runners[name]))
  return times, peaks


def header(peaks: list[float]) -> list[str]:
  """The machine / software / load line and the measured peak line every result starts with."""
  import jax
  cores = os.cpu_count() or 1
  malloc = {k: os.environ.get(k) for k in MALLOC_ENV}
  peak = float(np.median(peaks))
  return [
      f"date: {datetime.date.today().isoformat()}; machine: {cores} cores, {cpu_model()}; load average "
      f"{load_average()} (1/5/15 min, at the end); jax {jax.__version__} ({jax.default_backend()}); "
      f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; {malloc}",
      f"float32 matmul peak (2048^3 jnp.matmul, best of 3, median of {len(peaks)} rounds): {peak / 1e9:.1f} GFLOP/s "
      f"(range {min(peaks) / 1e9:.0f}-{max(peaks) / 1e9:.0f})",
  ]


def ratio_line(times: Mapping[str, list[float]], slow: str = "pytorch", fast: str = "brainjax") -> str:
  """The median over rounds of (slow's time / fast's time): above 1 means `fast` is faster."""
  ratios = np.asarray(times[slow]) / np.asarray(times[fast])
  return (f"speed ratio {fast} / {slow}: {np.median(ratios):.2f}x (median of {len(ratios)} interleaved rounds; "
          f"range {ratios.min():.2f}-{ratios.max():.2f})")


def train_step_report(times: Mapping[str, list[float]], peaks: list[float], *, flops: float, compile_s: float,
                      shapes: str, precision: str = "", per: str = "s/step") -> str:
  """The report of a train-step benchmark: header, shapes, FLOPs, each side's speed and MFU, the ratio.

  per: 's/step' or 'steps/s' (how each side's median time is shown).
  """
  peak = float(np.median(peaks))
  sec = {name: float(np.median(t)) for name, t in times.items()}
  speed = {name: f"{1.0 / s:.3f} steps/s" if per == "steps/s" else f"{s:.3f} s/step" for name, s in sec.items()}
  note = f", {precision}" if precision else ""
  head, peak_line = header(peaks)
  lines = [
      head, "shapes: " + shapes, peak_line,
      f"FLOPs per step (XLA cost analysis of the compiled brainjax step): {flops / 1e9:.2f} GFLOP",
      f"brainjax (jit, donated state{note}): {speed['brainjax']}, MFU {flops / sec['brainjax'] / peak:.1%} "
      f"(compile {compile_s:.1f} s)",
  ]
  if "pytorch" in times:
    import torch
    lines += [
        f"pytorch {torch.__version__} eager{note} ({torch.get_num_threads()} threads, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY')}): {speed['pytorch']}, MFU {flops / sec['pytorch'] / peak:.1%}",
        ratio_line(times),
    ]
  return "\n".join(lines)
