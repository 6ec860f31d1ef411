r"""Declarative weight mapping between PyTorch state dicts and Flax param trees.

Each model has ONE table (a `Table`) of rules; the same table converts a
PyTorch state dict to a Flax param tree (`Table.to_flax`) and back
(`Table.to_torch`). Every transform is a pure re-layout (transpose), so round
trips are bitwise exact.

Rule syntax
-----------
A `Rule(source, target, transform)` pairs two templates:

  source  a state-dict key, '.'-separated:   "encoder.layers.{i}.fc1.weight"
  target  a Flax param path, '/'-separated:   "encoder/layers_{i}/fc1/kernel"

Templates match whole names. A placeholder `{name}` matches one or more
characters other than '.' and '/'; `{name:regex}` restricts it, e.g. `{i:\d+}`
or `{p:q|k|v|out}` (the regex may not contain braces). The same placeholders
must appear on both sides, so a rule can be read in either direction. Several
rules must not match one name (an error, since the table would be ambiguous).

`transform` says how the tensor changes on the way to Flax (and back):
  IDENTITY   as is (biases, norm weights, embeddings, free parameters)
  LINEAR     nn.Linear weight (out, in) -> Dense kernel (in, out)
  CONV       nn.ConvNd weight (O, I, *spatial) -> Conv kernel (*spatial, I, O):
             OIW->WIO, OIHW->HWIO, OIDHW->DHWIO

Helpers expand the usual layers into rules (src/dst are the module names):
  linear(src, dst, bias=True)   src.weight -> dst/kernel (LINEAR), src.bias -> dst/bias
  conv(src, dst, bias=True)     src.weight -> dst/kernel (CONV),   src.bias -> dst/bias
  norm(src, dst)                src.weight -> dst/scale, src.bias -> dst/bias (LayerNorm, GroupNorm)
  embedding(src, dst)           src.weight -> dst/embedding
  param(src, dst)               one tensor as is (e.g. a class token)
  prefixed(rules, src_prefix, dst_prefix)   the same rules under a parent module

Skip patterns (`Table(rules, skip=...)`) are source templates for keys a
checkpoint may hold that are NOT parameters of the Flax model: buffers such as
transformers' `position_ids`, the other tower of a dual-encoder checkpoint,
`logit_scale`. They are dropped on load and never written. Every other key must
match a rule: nothing is ignored silently.

Example (the table of a two-layer MLP):

  TABLE = Table(
      rules=[*linear("layers.{i}", "layers_{i}"), *norm("norm", "norm")],
      skip=["num_batches_tracked"])
  params = TABLE.to_flax(state_dict, expected=abstract_params, origin="model.safetensors")
  state_dict = TABLE.to_torch(params)

Errors (`ConversionError`) list every offending name at once: source keys no
rule matches, target params left unfilled, params the model does not have,
shape mismatches, names claimed twice.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from brainjax.weights import params as params_lib

Array = np.ndarray

_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^{}]+))?\}")
_MAX_LISTED = 25  # names listed per error category; long lists end with "... and N more"


class ConversionError(ValueError):
  """A state dict and a Flax param tree do not correspond under a mapping table."""


# ----------------------------------------------------------------------------- transforms


@dataclasses.dataclass(frozen=True)
class Transform:
  """A pair of inverse re-layouts: PyTorch tensor -> Flax array and back."""
  name: str
  to_flax: Callable[[Array], Array]
  to_torch: Callable[[Array], Array]


def _transpose(perm: Callable[[int], tuple[int, ...]], min_ndim: int, max_ndim: int, what: str):
  def apply(x: Array) -> Array:
    if not min_ndim <= x.ndim <= max_ndim:
      raise ConversionError(f"{what} expects a {min_ndim}..{max_ndim}-D tensor, got shape {tuple(x.shape)}")
    # Contiguous copies: safetensors writes raw buffers, and a transposed view
    # would otherwise be re-laid-out later anyway.
    return np.ascontiguousarray(np.transpose(x, perm(x.ndim)))
  return apply


IDENTITY = Transform("identity", lambda x: x, lambda x: x)
LINEAR = Transform("linear (out,in)->(in,out)",
                   _transpose(lambda n: (1, 0), 2, 2, "LINEAR"),
                   _transpose(lambda n: (1, 0), 2, 2, "LINEAR"))
CONV = Transform("conv (O,I,*k)->(*k,I,O)",
                 _transpose(lambda n: (*range(2, n), 1, 0), 3, 5, "CONV"),
                 _transpose(lambda n: (n - 1, n - 2, *range(n - 2)), 3, 5, "CONV"))


# ----------------------------------------------------------------------------- templates


class _Template:
  """A name template compiled to a full-match regex, and its formatter."""

  def __init__(self, text: str):
    self.text = text
    parts, names, pos = [], [], 0
    for m in _PLACEHOLDER.finditer(text):
      parts.append(re.escape(text[pos:m.start()]))
      name, pattern = m.group(1), m.group(2) or r"[^./]+"
      # A placeholder used twice must take the same value twice.
      parts.append(f"(?P={name})" if name in names else f"(?P<{name}>{pattern})")
      names.append(name)
      pos = m.end()
    parts.append(re.escape(text[pos:]))
    self.regex = re.compile("".join(parts))
    self.names = frozenset(names)

  def match(self, name: str) -> dict[str, str] | None:
    m = self.regex.fullmatch(name)
    return None if m is None else m.groupdict()

  def format(self, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.text)


@dataclasses.dataclass(frozen=True)
class Rule:
  """source template (state-dict key) <-> target template (Flax path) + transform."""
  source: str
  target: str
  transform: Transform = IDENTITY

  def __post_init__(self):
    src, dst = _Template(self.source), _Template(self.target)
    if src.names != dst.names:
      raise ValueError(f"rule {self.source!r} -> {self.target!r}: placeholders differ "
                       f"({sorted(src.names)} vs {sorted(dst.names)}); both sides need the same ones")
    object.__setattr__(self, "_src", src)
    object.__setattr__(self, "_dst", dst)


def linear(src: str, dst: str, *, bias: bool = True) -> list[Rule]:
  rules = [Rule(f"{src}.weight", f"{dst}/kernel", LINEAR)]
  return rules + [Rule(f"{src}.bias", f"{dst}/bias")] if bias else rules


def conv(src: str, dst: str, *, bias: bool = True) -> list[Rule]:
  rules = [Rule(f"{src}.weight", f"{dst}/kernel", CONV)]
  return rules + [Rule(f"{src}.bias", f"{dst}/bias")] if bias else rules


def norm(src: str, dst: str) -> list[Rule]:
  return [Rule(f"{src}.weight", f"{dst}/scale"), Rule(f"{src}.bias", f"{dst}/bias")]


def embedding(src: str, dst: str) -> list[Rule]:
  return [Rule(f"{src}.weight", f"{dst}/embedding")]


def param(src: str, dst: str) -> list[Rule]:
  return [Rule(src, dst)]


def prefixed(rules: Iterable[Rule], src_prefix: str, dst_prefix: str) -> list[Rule]:
  """The same rules under a parent module: prefixed(r, "down.{b}.", "down_{b}/")."""
  return [Rule(src_prefix + r.source, dst_prefix + r.target, r.transform) for r in rules]


# ----------------------------------------------------------------------------- trees


def flatten(tree: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
  """Nested dicts -> {'a/b/c': leaf}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update({f"{key}{sep}{k}": v for k, v in flatten(value, sep).items()})
    else:
      flat[str(key)] = value
  return flat


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split(sep)
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _listing(names: Iterable[str]) -> str:
  names = sorted(names)
  shown = "\n  ".join(names[:_MAX_LISTED])
  more = f"\n  ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
  return f"\n  {shown}{more}"


# ----------------------------------------------------------------------------- table


@dataclasses.dataclass(frozen=True)
class Table:
  """One model's mapping: rules plus source keys to skip (see the module docstring)."""
  rules: Sequence[Rule]
  skip: Sequence[str] = ()

  def __post_init__(self):
    object.__setattr__(self, "rules", tuple(self.rules))
    object.__setattr__(self, "skip", tuple(self.skip))
    object.__setattr__(self, "_skip", tuple(_Template(s) for s in self.skip))

  def _find(self, name: str, side: str) -> tuple[Rule, dict[str, str]] | None:
    hits = [(r, v) for r in self.rules if (v := getattr(r, side).match(name)) is not None]
    if len(hits) > 1:
      raise ConversionError(f"the mapping table is ambiguous: {name!r} matches several rules: "
                            f"{[h[0].source for h in hits]}; make the templates more specific")
    return hits[0] if hits else None

  def _skipped(self, key: str) -> bool:
    return any(s.match(key) is not None for s in self._skip)

  def to_flax(self, state_dict: Mapping[str, Any], expected: Mapping[str, Any] | None = None, *,
              origin: str = "the state dict") -> dict[str, Any]:
    """PyTorch state dict -> nested Flax param dict (numpy arrays).

    Args:
      state_dict: name -> array (numpy or anything np.asarray accepts).
      expected: the model's params (nested; arrays or jax.ShapeDtypeStruct, e.g.
        from jax.eval_shape of init). If given, every expected param must be
        filled with the expected shape and no other param may be produced.
      origin: where the state dict came from, for error messages (a file name).
    """
    out: dict[str, Array] = {}
    claimed_by: dict[str, str] = {}
    unmatched, twice = [], []
    for key, value in state_dict.items():
      hit = self._find(key, "_src")
      if hit is None:
        if not self._skipped(key):
          unmatched.append(key)
        continue
      rule, values = hit
      path = rule._dst.format(values)
      if path in claimed_by:
        twice.append(f"{path} <- {claimed_by[path]!r} and {key!r}")
        continue
      claimed_by[path] = key
      out[path] = rule.transform.to_flax(np.asarray(value))
    problems = []
    if unmatched:
      problems.append(f"{len(unmatched)} key(s) in {origin} match no rule of the mapping table (a different "
                      f"model or config? if they are known non-parameters, add them to the table's skip list):"
                      + _listing(unmatched))
    if twice:
      problems.append("Flax params filled twice:" + _listing(twice))
    if expected is not None:
      problems += self._check_against(out, flatten(expected), claimed_by, origin)
    if problems:
      raise ConversionError("\n".join(problems))
    return unflatten(out)

  @staticmethod
  def _check_against(out: Mapping[str, Array], expected: Mapping[str, Any], claimed_by: Mapping[str, str],
                     origin: str) -> list[str]:
    problems = []
    missing, extra, mismatched = params_lib.mismatches(out, expected)
    if missing:
      problems.append(f"{len(missing)} Flax param(s) were not filled from {origin} (missing from the checkpoint, "
                      f"or the config does not match the weights):" + _listing(missing))
    if extra:
      problems.append(f"{len(extra)} key(s) of {origin} map to params the Flax model does not have "
                      f"(config mismatch?):" + _listing(f"{claimed_by[p]} -> {p}" for p in extra))
    wrong = [f"{claimed_by[p]} -> {p}: got {tuple(out[p].shape)}, the model expects {tuple(expected[p].shape)}"
             for p in mismatched]
    if wrong:
      problems.append(f"{len(wrong)} shape mismatch(es) between {origin} and the Flax model (after the "
                      f"layout transform):" + _listing(wrong))
    return problems

  def to_torch(self, params: Mapping[str, Any]) -> dict[str, Array]:
    """Nested Flax param dict -> PyTorch state dict (numpy arrays). Every param must match a rule."""
    out: dict[str, Array] = {}
    unmatched, twice = [], []
    for path, value in flatten(params).items():
      hit = self._find(path, "_dst")
      if hit is None:
        unmatched.append(path)
        continue
      rule, values = hit
      key = rule._src.format(values)
      if key in out:
        twice.append(key)
        continue
      out[key] = rule.transform.to_torch(np.asarray(value))
    problems = []
    if unmatched:
      problems.append(f"{len(unmatched)} Flax param(s) match no rule of the mapping table:" + _listing(unmatched))
    if twice:
      problems.append("state-dict keys produced twice:" + _listing(twice))
    if problems:
      raise ConversionError("\n".join(problems))
    return out
