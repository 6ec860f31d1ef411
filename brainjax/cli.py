"""What the command line does around a run: one-line config errors, recipe and field checks, --help.

`brainjax.main` defines the flags and runs; this module holds the parsing it hands absl
(`parse_flags`): a misspelt field, recipe file or preset, and a ConfigError raised while
validating or running, end in one `error:` line with exit status 2; `--help` exits 0
and lists the recipes in configs/, their presets and their main fields.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import pathlib
import re
import sys

import ml_collections
from absl import app, flags

from brainjax import config as cfg

EXIT_CONFIG_ERROR = 2


def recipe_dir() -> pathlib.Path:
  """configs/ of the working directory (where the commands are run from), else the repository's."""
  here = pathlib.Path("configs")
  return here if here.is_dir() else pathlib.Path(__file__).resolve().parents[1] / "configs"


def recipe_files() -> list[pathlib.Path]:
  """The recipes of configs/: the files with a get_config() (not the helpers they share)."""
  directory = recipe_dir()
  files = sorted(directory.glob("*.py")) if directory.is_dir() else []
  return [p for p in files if not p.name.startswith("_") and re.search(r"^def get_config\(", p.read_text(), re.M)]


# ------------------------------------------------------------------------ command-line errors and --help


def fail(message: str) -> None:
  """One `error:` line (a preflight list: one line per missing input), no traceback, exit status 2."""
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  sys.exit(EXIT_CONFIG_ERROR)


def config_error(error: BaseException | None, *, implicit: bool = False) -> cfg.ConfigError | None:
  """The innermost ConfigError of `error` and its causes (`raise ... from`), if any; with `implicit` also
  of the errors it was raised while handling (absl and ml_collections re-raise a recipe's ConfigError
  that way, with the traceback in its message; the innermost has the clean one)."""
  found, seen = None, set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, cfg.ConfigError):
      found = error
    error = error.__cause__ or (error.__context__ if implicit else None)
  return found


def _args(argv: list[str]) -> list[str]:
  return argv[1:argv.index("--")] if "--" in argv else argv[1:]


def recipe_argument(argv: list[str]) -> str | None:
  """The value of --config (`--config=V` or `--config V`), as ml_collections reads it."""
  args = _args(argv)
  for i, arg in enumerate(args):
    match = re.match(r"^-{1,2}config(=|$)", arg)
    if match:
      return arg.split("=", 1)[1] if match.group(1) else (args[i + 1] if i + 1 < len(args) else None)
  return None


def _override_paths(argv: list[str]) -> list[str]:
  """The dotted fields of the --config.<field>=<value> (and --[no]config.<field>) arguments."""
  return [arg.split("=", 1)[0].split(".", 1)[1] for arg in _args(argv) if re.match(r"^-{1,2}(no)?config\.", arg)]


def _load_module(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(f"brainjax_cli_recipe_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _missing_recipe(path: str, value: str) -> str:
  names = [p.name for p in recipe_files()]
  directory = recipe_dir()
  close = difflib.get_close_matches(pathlib.Path(path).name, names, n=1)
  preset = value[len(path):]  # ':demo', or '' without a preset
  hint = f"did you mean --config={directory.as_posix()}/{close[0]}{preset}? " if close else ""
  listed = ", ".join(f"{directory.as_posix()}/{n}" for n in names) or f"none in {directory}"
  return (f"--config={value}: the recipe file {path} does not exist; {hint}the recipes are {listed} "
          "(python -m brainjax.main --help lists their presets).")


def _load_recipe(value: str) -> ml_collections.ConfigDict:
  """The recipe --config names, as ml_collections will load it; a missing file or preset exits with one line."""
  path, colon, preset = value.partition(":")
  if not pathlib.Path(path).is_file():
    fail(_missing_recipe(path, value))
  try:
    module = _load_module(pathlib.Path(path))
    return module.get_config(preset) if colon else module.get_config()
  except cfg.ConfigError as e:
    fail(f"--config={value}: {e}")


def _check_overrides(config: ml_collections.ConfigDict, paths: list[str]) -> None:
  """Every --config.<field> must name a field of the recipe; a misspelt one exits with a suggestion."""
  for path in paths:
    node, walked = config, []
    parts = path.split(".")
    for i, part in enumerate(parts):
      key = part.split("[", 1)[0]
      if not isinstance(node, (ml_collections.ConfigDict, dict)):
        break  # a dataclass or indexed value: ml_collections checks the rest
      if key not in node:
        keys = [str(k) for k in node.keys()]
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
        where = "config" + "".join(f".{w}" for w in walked)
        if close:
          fix = f"did you mean {'.'.join(['config', *walked, close[0], *parts[i + 1:]])}?"
        else:
          fix = f"{where} has {', '.join(sorted(keys))}."
        fail(f"config.{path}: no such field; {fix}")
      node = node[key]
      walked.append(key)
      if "[" in part:
        break


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with --help exiting 0 and config errors as one line with exit status 2."""
  args = _args(argv)
  if any(a in ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort", "--helpfull", "-helpfull") for a in args):
    _print_help(argv, full=any(a in ("--helpfull", "-helpfull") for a in args))
    sys.exit(0)
  value = recipe_argument(argv)
  if value:
    _check_overrides(_load_recipe(value), _override_paths(argv))
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 (flags.Error, and whatever a recipe or ml_collections raise)
    error = config_error(e, implicit=True)
    if error is not None:
      fail(str(error))
    if isinstance(e, flags.Error):
      fail(f"{' '.join(str(e).split())} (python -m brainjax.main --help lists the flags and recipes)")
    raise


def presets(recipe: str) -> list[str]:
  """The preset names of a recipe file: the names its get_config() lists when asked for an unknown one."""
  try:
    module = _load_module(pathlib.Path(recipe))
    module.get_config("\0")
  except cfg.ConfigError as e:
    if getattr(e, "presets", None):
      return list(e.presets)
  except Exception:  # noqa: BLE001 (a broken recipe: --help still lists the others)
    return []
  return []


def _preset_notes(doc: str | None, width: int = 110) -> dict[str, str]:
  """The `name  description` entries of a recipe docstring's "Presets:" section, shortened to `width`."""
  notes, inside, name = {}, False, None
  for line in (doc or "").splitlines():
    if line.strip() == "Presets:":
      inside = True
    elif inside and line.strip() and not line.startswith(" "):
      break
    elif inside:
      match = re.match(r"^  (\w+)\s{2,}(.*)$", line)
      if match:
        name = match.group(1)
        notes[name] = match.group(2).strip()
      elif name and line.startswith("    "):
        notes[name] += " " + line.strip()
  return {k: v if len(v) <= width else v[:width].rsplit(" ", 1)[0] + " ..." for k, v in notes.items()}


def _field_names(node: ml_collections.ConfigDict) -> str:
  return ", ".join(f"{k}.*" if isinstance(v, ml_collections.ConfigDict) else str(k) for k, v in node.items())


def _print_help(argv: list[str], full: bool) -> None:
  """absl's usage (this docstring and the flags), then the recipes, their presets and main fields."""
  app.usage(shorthelp=not full, writeto_stdout=True)
  out = sys.stdout
  out.write(f"\nrecipes (--config=<file>:<preset>) in {recipe_dir()}/:\n")
  for path in recipe_files():
    try:
      default = inspect.signature(_load_module(path).get_config).parameters["preset"].default
      notes = _preset_notes(_load_module(path).__doc__)
    except Exception:  # noqa: BLE001
      default, notes = None, {}
    out.write(f"  {path.as_posix()}\n")
    for name in presets(str(path)):
      mark = " (default)" if name == default else ""
      out.write(f"      :{name}{mark}  {notes.get(name, '')}".rstrip() + "\n")
  value = recipe_argument(argv)
  recipe = value or (f"{recipe_files()[0].as_posix()}:demo" if recipe_files() else None)
  if not recipe:
    return
  try:
    path, colon, preset = recipe.partition(":")
    module = _load_module(pathlib.Path(path))
    config = module.get_config(preset) if colon else module.get_config()
  except Exception as e:  # noqa: BLE001 (a bad --config: say so and still exit 0 with the overview)
    out.write(f"\n(cannot load --config={recipe}: {' '.join(str(e).split())})\n")
    return
  if value:
    out.write(f"\nevery field of --config={recipe} (override with --config.<field>=<value>):\n{config}")
    return
  out.write(f"\nmain fields, those of --config={recipe} (override with --config.<field>=<value>; "
            f"every field with its value: --config={recipe} --help):\n")
  out.write(f"  stages  {tuple(config.get('stages', ()))}\n")
  for key in ("data", "mesh"):
    if key in config:
      out.write(f"  {key}  " + ", ".join(f"{k}={v!r}" for k, v in config[key].items()) + "\n")
  out.write(f"  seed  {config.get('seed')!r}\n")
  for name in config.get("stages", ()):
    if name in config:
      out.write(f"  {name}: {_field_names(config[name])}\n")
