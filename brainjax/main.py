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
    "Call jax.distributed.initialize() first (multi-host TPU pods / multi-node GPU).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> int:
  del argv
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  try:
    runner.run(_CONFIG.value, _WORKDIR.value)
  except runner.Preempted as e:
    logging.warning("%s", e)
    return 143  # 128 + SIGTERM: the scheduler sees an unfinished job
  return 0


if __name__ == "__main__":
  app.run(main)
