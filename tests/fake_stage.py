"""A stage with no training, for testing the runner's workdir handling."""

CONFIG_KEYS = ("seed",)


def validate(config, name):
  del config, name


def run(ctx):
  (ctx.stage_dir / "product.txt").write_text(f"seed={ctx.config.seed} message={ctx.config.echo.message}")
  return {"message": ctx.config.echo.message}
