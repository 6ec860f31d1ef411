r"""How late a SIGTERM stops the train loop, and what bounding the in-flight steps costs.

  python bench/train_loop_inflight.py                 # both parts, synthetic steps
  python bench/train_loop_inflight.py --mbm           # also the tiny MBM stage of tests/helpers.py

`run_train_loop(max_inflight_steps=k)` waits, after dispatching step j, for
step j-k's outputs (k=None: no bound, JAX queues as it likes).

Part 1, steps late: the signal is sent as the device starts step s (a thread
polls `is_ready()` of each step's outputs, which does not synchronise the host,
and sends SIGTERM once step s-1's are ready); printed is the checkpoint step
the loop stopped at minus s.

Part 2, throughput: steps/s of the loop over 200 steps (after a warm-up run),
in rounds that alternate the order of the k values; printed are the median
steps/s and the median (min..max) over rounds of each round's change against
k=None. The step is a device-bound jitted one (repeated 256x256 matmuls,
15-30 ms on a 2-core CPU), fed (a) by an instant iterator, (b) by one that
takes 5 ms per batch in the main thread (sleeping, as an input pipeline that
waits on I/O or other cores would), (c) like (b) with every 10th batch taking
60 ms (a stall longer than a step: what a deeper queue absorbs). With --mbm,
the tiny MBM stage of tests/helpers.py through runner.run (its own data
pipeline), timed from step 11 to the end of the loop.

On a CPU the "device" is the same two cores as the host, so this is a weak
stand-in for an accelerator; the rounds are interleaved because the shared
cores' speed drifts.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grain  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from brainjax.train import loop  # noqa: E402
from brainjax.train.checkpoint import Checkpointer  # noqa: E402
from brainjax.train.metric_writer import NullWriter  # noqa: E402
from brainjax.train.state import TrainState  # noqa: E402
from tests import helpers  # noqa: E402

KS = (None, 1, 2)


def matmul_step(n_matmuls: int = 20, size: int = 256):
  @jax.jit
  def step(state, batch):
    w = jax.lax.fori_loop(0, n_matmuls, lambda i, w: jnp.tanh(w @ w) * 0.5, state.params["w"])
    return state.replace(step=state.step + 1, params={"w": w}), {"loss": jnp.mean(w) + jnp.mean(batch["x"])}
  return step, lambda: TrainState(step=jnp.int32(0), params={"w": jnp.eye(size) * 0.1}, opt_state={},
                                  model_state={}, rng=jnp.zeros((2,), jnp.uint32))


def batches(host_ms: float = 0.0, stall_every: int = 0, stall_ms: float = 0.0):
  def load(i):
    delay = stall_ms if stall_every and i % stall_every == stall_every - 1 else host_ms
    if delay:
      time.sleep(delay / 1000)
    return {"x": np.full((4,), i, np.float32)}
  # read in the main thread when the loop asks, as a host-bound input pipeline would be
  return grain.MapDataset.range(10**6).map(load).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))


def run(step, make_state, dataset, num_steps, k, directory, *, wrap=None, log_every=50):
  shutil.rmtree(directory, ignore_errors=True)
  checkpointer = Checkpointer(directory, every_steps=10**6)
  train_step = wrap(step) if wrap else step
  start = time.perf_counter()
  try:
    with loop.StopSignal() as stop:
      loop.run_train_loop(state=make_state(), train_step=train_step, data_iterator=iter(dataset),
                          to_device=lambda b: b, num_steps=num_steps, checkpointer=checkpointer,
                          writer=NullWriter(), stop=stop, log_every_steps=log_every, max_inflight_steps=k)
    return time.perf_counter() - start, None
  except loop.Preempted as e:
    return time.perf_counter() - start, e.step
  finally:
    if wrap:
      train_step.close()
    checkpointer.close()


def steps_late(tmp, reps=5, trigger=12):
  step, make_state = matmul_step()
  print("steps late (signal as the device starts step s=12; device-bound step, log every 50):")
  for k in KS:
    late = []
    for _ in range(reps):
      _, stopped = run(step, make_state, batches(), trigger + 120, k, f"{tmp}/late",
                       wrap=lambda s: helpers.SignalAtDeviceStep(s, trigger))
      late.append(stopped - trigger)
    print(f"  max_inflight_steps={k}: {late}")


def throughput(tmp, rounds=5, num_steps=200):
  step, make_state = matmul_step()
  cases = {"(a) instant data": batches(), "(b) 5 ms/batch host": batches(5.0),
           "(c) 5 ms/batch, 60 ms every 10th": batches(5.0, 10, 60.0)}
  for name, dataset in cases.items():
    run(step, make_state, dataset, 5, None, f"{tmp}/warm")
    rates = {k: [] for k in KS}
    for r in range(rounds):
      for k in (KS if r % 2 == 0 else KS[::-1]):
        seconds, _ = run(step, make_state, dataset, num_steps, k, f"{tmp}/tp")
        rates[k].append(num_steps / seconds)
    print(f"throughput {name}: {_report(rates)}")


def mbm(tmp, rounds=3, num_steps=60):
  from brainjax import runner
  from brainjax.stages import common
  jax.config.update("jax_default_matmul_precision", "highest")
  original = common.run_train_loop
  data_dir = f"{tmp}/data"
  rates = {k: [] for k in KS}
  for r in range(rounds):
    for k in (KS if r % 2 == 0 else KS[::-1]):
      times = []

      def timed(*, _k=k, **kw):
        kw["train_step"] = _time_steps(kw["train_step"], times)
        state = original(**kw, max_inflight_steps=_k)
        times.append(time.perf_counter())  # every step has run (the last one's checkpoint is written)
        return state

      common.run_train_loop = timed
      shutil.rmtree(f"{tmp}/mbm", ignore_errors=True)
      runner.run(helpers.tiny_mbm_config(data_dir, num_steps=num_steps, checkpoint_every=10**6), f"{tmp}/mbm")
      # from the dispatch of step 11 (compiled, data pipeline warm) to the end of the loop
      rates[k].append((num_steps - 10) / (times[-1] - times[10]))
  common.run_train_loop = original
  print(f"throughput tiny MBM stage: {_report(rates)}")


def _report(rates: dict) -> str:
  """Median steps/s per k, and the median (min..max) over rounds of each round's ratio to k=None."""
  out = []
  for k, v in rates.items():
    ratios = [100 * (a / b - 1) for a, b in zip(v, rates[None])]
    spread = "" if k is None else (f" {statistics.median(ratios):+.1f}% "
                                   f"({min(ratios):+.0f}..{max(ratios):+.0f}%)")
    out.append(f"k={k}: {statistics.median(v):.1f} steps/s{spread}")
  return ", ".join(out)


def _time_steps(train_step, times):
  @functools.wraps(train_step)
  def wrapped(state, batch):
    out = train_step(state, batch)
    times.append(time.perf_counter())  # when each step was dispatched
    return out
  return wrapped


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--mbm", action="store_true")
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  tmp = tempfile.mkdtemp(prefix="bench_inflight_")
  try:
    steps_late(tmp)
    throughput(tmp, rounds=args.rounds)
    if args.mbm:
      mbm(tmp)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
