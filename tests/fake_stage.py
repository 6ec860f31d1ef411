"""A stage with no training, for testing the runner's workdir handling.

Settings (`config.<name>`): `message` (written to product.txt), optionally `source`
(a `stage:` path whose product.txt is copied into this one's), `fail` (raise after
doing nothing, or after writing a checkpoint directory with fail='after_checkpoint').
"""

from brainjax.stages import resolve_path

CONFIG_KEYS = ("seed", "data")


def validate(config, name):
  del config, name


def run(ctx):
  settings = ctx.config[ctx.name]
  fail = settings.get("fail", "")
  if fail == "after_checkpoint":
    (ctx.stage_dir / "checkpoints" / "1").mkdir(parents=True)
  if fail:
    raise RuntimeError(f"stage {ctx.name} failed on purpose")
  text = f"seed={ctx.config.seed} message={settings.message}"
  if settings.get("source"):
    text += " from=[" + (resolve_path(ctx, settings.source) / "product.txt").read_text() + "]"
  (ctx.stage_dir / "product.txt").write_text(text)
  return {"message": settings.message}
