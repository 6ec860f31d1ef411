r"""brainjax entry point.

  python -m brainjax.main --config=configs/neuralflix.py:demo --workdir=/tmp/run
  python -m brainjax.main --config=configs/mindvideo.py --workdir=gs://bucket/run \
      --config.align.batch_size=512

Runs `config.stages` in order. Any config field can be overridden with
`--config.<path>=<value>`. `--help` lists the recipes, their presets and their
main fields; `--config=configs/<recipe>.py:<preset> --help` prints every field
of that recipe with its value.

A bad config (a misspelt field, a missing recipe file or preset, a missing
weight or dataset, a value out of range) prints one `error:` line naming the
field and the fix, and exits with status 2.
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from brainjax import cli, preflight, runner

_CONFIG = config_flags.DEFINE_config_file(
    "config", None,
    "Recipe file and preset, e.g. configs/mindvideo.py:demo (no preset: 'paper'). Recipes in "
    f"{cli.recipe_dir()}/: {', '.join(p.name for p in cli.recipe_files()) or 'none found'}; --help lists their "
    "presets and fields. Override any field with --config.<field>=<value>.",
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
  config = _CONFIG.value
  recipe, _, preset = (cli.recipe_argument(sys.argv) or "").partition(":")
  others = [p for p in cli.presets(recipe) if p != config.get("preset")] if recipe and not preset else []
  logging.info("recipe %s, preset %r%s", recipe, config.get("preset"),
               f" (the default; the others: {', '.join(others)}, e.g. --config={recipe}:{others[0]})"
               if others else "")
  try:
    runner.run(config, _WORKDIR.value)
  except runner.Preempted as e:
    logging.warning("%s", e)
    return 143  # 128 + SIGTERM: the scheduler sees an unfinished job
  except Exception as e:  # noqa: BLE001 (only ConfigErrors are caught: everything else is re-raised)
    error = cli.config_error(e)
    if error is None:
      raise
    cli.fail(error.for_recipe(recipe) if isinstance(error, preflight.MissingInputs) else str(error))
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
