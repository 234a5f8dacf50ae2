"""Config-time rewriting of the variant list: λ grids become one variant per strength, and each
control-set variant names the unpenalised run its token set is chosen from.

    - {name: w3+penalty, quant: *w3, penalty: {mode: constant, strength: [0.5, 1.0, 2.0]}}
  becomes w3+penalty@0.5, w3+penalty@1, w3+penalty@2 (each with `strength_grid: w3+penalty`, so
  the report compares them and marks the best λ).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from jaxthink.config import ConfigError

# Control sets chosen from a token-level run: by mean KL (needs the reference's KL) or frequency.
KL_SETS = ("high_kl", "low_kl", "random_neither")
CONTROL_SETS = KL_SETS + ("random_matched",)


def twin_name(name: str, strength: float) -> str:
  """`w3+penalty@0.5`, `w3+boost@-2`, `w3+ban@inf`."""
  return f"{name}@{strength:g}"


def expand_strength_grids(variants: Sequence) -> tuple:
  """Each variant whose `penalty.strength` is a list becomes one variant per value, in order."""
  out = []
  for v in variants:
    grid = v.penalty.strength
    if not isinstance(grid, tuple):
      out.append(v)
      continue
    if not grid or len(set(grid)) != len(grid):
      raise ConfigError(f"variants.{v.name}.penalty.strength: a λ grid needs distinct values, "
                        f"got {list(grid)}.")
    for value in grid:
      out.append(dataclasses.replace(
          v, name=twin_name(v.name, value), strength_grid=v.name,
          penalty=dataclasses.replace(v.penalty, strength=float(value))))
  return tuple(out)


def resolve_control_sources(variants: Sequence, reference: bool) -> tuple:
  """Sets `penalty.source` of every control-set variant (default: the variant with the same model
  and no penalty) and checks the source can supply the set."""
  by_name = {v.name: v for v in variants}
  out = []
  for v in variants:
    spec = v.penalty
    where = f"variants.{v.name}.penalty"
    if spec.token_set not in CONTROL_SETS:
      if spec.source is not None:
        raise ConfigError(f"{where}.source applies to control sets; token_set is "
                          f"{spec.token_set!r}.")
      out.append(v)
      continue
    if spec.min_count < 1 or (spec.set_size is not None and spec.set_size < 1):
      raise ConfigError(f"{where}: min_count and set_size must be >= 1.")
    if spec.source is None:
      same = [u.name for u in variants if u.penalty.mode == "off" and u.quant == v.quant
              and u.checkpoint == v.checkpoint]
      if len(same) != 1:
        raise ConfigError(f"{where}.token_set {spec.token_set!r} is chosen from a run of the same "
                          f"model without penalty; found {same or 'none'}: add one such variant "
                          "or name it in penalty.source.")
      v = dataclasses.replace(v, penalty=dataclasses.replace(spec, source=same[0]))
    source = by_name.get(v.penalty.source)
    if source is None or source.penalty.mode != "off":
      raise ConfigError(f"{where}.source: {v.penalty.source!r} must be a variant of this config "
                        "with penalty mode 'off' (the token-level run the set is chosen from).")
    if spec.token_set in KL_SETS and not (reference and source.quantized):
      raise ConfigError(f"{where}.token_set {spec.token_set!r} ranks tokens by KL to the "
                        f"reference: the source {source.name!r} must be quantized and "
                        "`reference: true`.")
    out.append(v)
  return tuple(out)
