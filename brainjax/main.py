r"""brainjax entry point.

  python -m brainjax.main --config=configs/neuralflix.py:demo --workdir=/tmp/run
  python -m brainjax.main --config=configs/mindvideo.py --workdir=gs://bucket/run \
      --config.align.batch_size=512

Runs `config.stages` in order. Any config field can be overridden with
`--config.<path>=<value>`.
"""

from __future__ import annotations



import jax
from absl import app, flags, logging
from ml_collections import config_flags

from brainjax import runner

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/mindvideo.py:demo.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: a local path or gs:// URI.")
_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False,
    "Call jax.distributed.initialize() first (multi-host TPU pods / multi-node GPU). On TPU VMs and "
    "SLURM the cluster is detected; elsewhere give the three flags below.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --jax_distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --jax_distributed).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --jax_distributed).")
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed() -> None:
  if jax.config.jax_platforms in ("cpu", None) and _NUM_PROCESSES.value:
    # CPU processes exchange gradients through gloo (tests and CPU clusters).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                             process_id=_PROCESS_ID.value)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def main(argv) -> int:
  del argv
  runner.quiet_library_logs()
  if _DISTRIBUTED.value:
    _initialize_distributed()
  try:
    runner.run(_CONFIG.value, _WORKDIR.value)
  except runner.Preempted as e:
    logging.warning("%s", e)
    return 143  # 128 + SIGTERM: the scheduler sees an unfinished job
  return 0


if __name__ == "__main__":
  app.run(main)
