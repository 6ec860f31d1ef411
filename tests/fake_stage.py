"""A stage with no training, for testing the runner's workdir handling."""

CONFIG_KEYS = ("seed", "echo")


def validate(config):
  del config


def run(ctx):
  (ctx.stage_dir / "product.txt").write_text(f"seed={ctx.config.seed} message={ctx.config.echo.message}")
  return {"message": ctx.config.echo.message}
