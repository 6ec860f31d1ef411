"""The layers hold: each brainjax module imports only its own layer and the layers below it.

core (errors, config helpers, artifacts, weight tables)
  -> data / models / diffusion (and augment, losses, ridge, media)
  -> train / eval / features
  -> pipelines
  -> stages (a stage imports no other stage; the stage framework is brainjax.stages and stages.common)
  -> command-line programs (main, cli, runner, preflight, ablate, plan, data.build, convert)
No module-level import cycles, and brainjax never imports data_builders (which imports brainjax),
except the command that builds the datasets. Checked on the source (AST), so a function-level
import counts as much as a top-level one; the planted violations below show the check can fail.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Longest prefix wins. Numbers are layers: a module may import modules of its own layer or below.
LAYERS = {
    "brainjax": 0, "brainjax.config": 0, "brainjax.artifacts": 0, "brainjax.weights": 0,
    "brainjax.data": 1, "brainjax.models": 1, "brainjax.diffusion": 1, "brainjax.augment": 1,
    "brainjax.losses": 1, "brainjax.ridge": 1, "brainjax.media": 1,
    "brainjax.train": 2, "brainjax.eval": 2, "brainjax.features": 2,
    "brainjax.pipelines": 3,
    "brainjax.stages": 4,
    "brainjax.main": 5, "brainjax.cli": 5, "brainjax.runner": 5, "brainjax.ablate": 5, "brainjax.plan": 5,
    "brainjax.preflight": 5,
    "brainjax.data.build": 5, "brainjax.convert": 5,
}
LAYER_NAMES = ["core", "data/models/diffusion", "train/eval/features", "pipelines", "stages", "command line"]
STAGE_FRAMEWORK = ("brainjax.stages", "brainjax.stages.common")
MAY_IMPORT_BUILDERS = ("brainjax.data.build",)


def module_name(root: pathlib.Path, path: pathlib.Path) -> str:
  parts = list(path.relative_to(root).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: pathlib.Path, path: pathlib.Path, modules: set[str]) -> set[str]:
  """The project modules `path` imports (`from a import b` counts as a.b when that is a module)."""
  name = module_name(root, path)
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
      subs = {f"{base}.{a.name}" for a in node.names} & modules
      out |= subs if subs and len(subs) == len(node.names) else subs | {base}
  return {m for m in out if m.split(".")[0] in ("brainjax", "data_builders")}


def layer_of(module: str) -> int:
  """The layer of the longest LAYERS prefix of `module` ("brainjax" itself only names the package)."""
  parts = module.split(".")
  if module == "brainjax":
    return LAYERS[module]
  for i in range(len(parts), 1, -1):
    prefix = ".".join(parts[:i])
    if prefix in LAYERS:
      return LAYERS[prefix]
  raise KeyError(module)


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
  files = [p for pkg in ("brainjax", "data_builders") for p in (root / pkg).rglob("*.py")]
  modules = {module_name(root, p) for p in files}
  return {module_name(root, p): imports(root, p, modules) for p in files}


def violations(graph: dict[str, set[str]]) -> list[str]:
  """One line per broken rule (see the module docstring)."""
  out = []
  for module in sorted(m for m in graph if m.startswith("brainjax")):
    try:
      own = layer_of(module)
    except KeyError:
      out.append(f"{module}: in no layer; add it to LAYERS in tests/cli/test_layers.py")
      continue
    for target in sorted(graph[module]):
      if target.startswith("data_builders"):
        if module not in MAY_IMPORT_BUILDERS:
          out.append(f"{module} imports {target}: brainjax reaches builders through brainjax.data.registry")
        continue
      try:
        above = layer_of(target) > own
      except KeyError:
        continue  # reported as a module in no layer
      if above:
        out.append(f"{module} ({LAYER_NAMES[own]}) imports {target} ({LAYER_NAMES[layer_of(target)]}), a layer above")
      if (module.startswith("brainjax.stages.") and target.startswith("brainjax.stages.")
          and module not in STAGE_FRAMEWORK and target not in STAGE_FRAMEWORK):
        out.append(f"{module} imports {target}: a stage imports no other stage (move the shared code to a library)")
  return out + [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in graph:
        continue
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_the_layers_hold():
  assert violations(import_graph(ROOT)) == []


def _plant(root: pathlib.Path, files: dict[str, str]) -> dict[str, set[str]]:
  for rel, text in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  for pkg in ("brainjax", "data_builders"):
    (root / pkg).mkdir(exist_ok=True)
    for d in [root / pkg, *(p for p in (root / pkg).rglob("*") if p.is_dir())]:
      (d / "__init__.py").touch()
  return import_graph(root)


@pytest.mark.parametrize("files, expected", [
    ({"brainjax/stages/align.py": "from brainjax.stages import cotrain\n", "brainjax/stages/cotrain.py": ""},
     "a stage imports no other stage"),
    ({"brainjax/stages/align.py": "def f():\n  from brainjax.stages.cotrain import load\n",
      "brainjax/stages/cotrain.py": ""}, "a stage imports no other stage"),
    ({"brainjax/models/vit.py": "from brainjax.stages import common\n", "brainjax/stages/common.py": ""},
     "(data/models/diffusion) imports brainjax.stages.common (stages), a layer above"),
    ({"brainjax/config.py": "from brainjax.train import sharding\n", "brainjax/train/sharding.py": ""},
     "brainjax.config (core) imports brainjax.train.sharding"),
    ({"brainjax/data/pipeline.py": "import data_builders\n"}, "brainjax reaches builders through"),
    ({"brainjax/data/a.py": "from brainjax.data import b\n", "brainjax/data/b.py": "from brainjax.data import a\n"},
     "import cycle: brainjax.data.a -> brainjax.data.b"),
    ({"brainjax/newthing.py": ""}, "brainjax.newthing: in no layer"),
])
def test_a_planted_violation_is_found(tmp_path, files, expected):
  found = violations(_plant(tmp_path, files))
  assert any(expected in line for line in found), found


def test_allowed_imports_are_not_flagged(tmp_path):
  graph = _plant(tmp_path, {
      "brainjax/stages/align.py": "from brainjax.stages import common, StageContext\nfrom brainjax.models import vit\n",
      "brainjax/stages/common.py": "from brainjax import artifacts\n",
      "brainjax/artifacts.py": "", "brainjax/models/vit.py": "from brainjax.weights import mapping\n",
      "brainjax/weights/mapping.py": "", "brainjax/data/build.py": "from data_builders import common\n",
      "data_builders/common.py": "from brainjax.data import errors\n", "brainjax/data/errors.py": ""})
  assert violations(graph) == []
