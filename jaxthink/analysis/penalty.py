"""Report tables about the penalty: the penalised token sets, markers vs control sets, and λ grids
with the best λ of each.

Best λ of a grid (one configuration: same model, token set and mode, several λ): the highest
accuracy; ties go to the shorter mean CoT, then to the smaller |λ|. Every λ is reported.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from jaxthink.analysis.report import VariantSummary, _fmt, _relative


@dataclasses.dataclass(frozen=True)
class PenaltyInfo:
  """What a variant penalises: `token_set` ("markers" or a control set), λ, the number of
  penalised tokens, the run it is compared to, and its λ grid (None outside one)."""

  token_set: str
  strength: float
  n_tokens: int
  compare_to: str
  grid: str | None = None


def best_strength(summaries: Sequence[VariantSummary],
                  strengths: Mapping[str, float]) -> VariantSummary:
  """The summary with the best λ (see the module docstring) among `summaries`."""
  return max(summaries, key=lambda s: (s.accuracy, -s.mean_cot_tokens, -abs(strengths[s.name])))


def strength_grid_table(summaries: Sequence[VariantSummary],
                        penalties: Mapping[str, PenaltyInfo]) -> str | None:
  """Markdown: every λ of every grid, the best one marked; None without grids."""
  grids: dict[str, list[VariantSummary]] = {}
  for s in summaries:
    if s.name in penalties and penalties[s.name].grid is not None:
      grids.setdefault(penalties[s.name].grid, []).append(s)
  if not grids:
    return None
  by_name = {s.name: s for s in summaries}
  lines = ["| Configuration | λ | Accuracy | Δ acc (points) | Mean CoT tokens | Δ CoT (rel.) | "
           "Markers / response | Best |", "|---|---|---|---|---|---|---|---|"]
  for grid, members in grids.items():
    strengths = {s.name: penalties[s.name].strength for s in members}
    best = best_strength(members, strengths)
    for s in sorted(members, key=lambda m: strengths[m.name]):
      base = by_name.get(penalties[s.name].compare_to, s)
      lines.append(" | ".join([
          f"| {grid}", f"{strengths[s.name]:g}", _fmt(100 * s.accuracy, ".1f", "%"),
          _fmt(100 * (s.accuracy - base.accuracy), "+.1f"), _fmt(s.mean_cot_tokens, ".0f"),
          _fmt(100 * _relative(s.mean_cot_tokens, base.mean_cot_tokens), "+.1f", "%"),
          _fmt(s.markers_per_response, ".2f"), "**best** |" if s is best else " |"]))
  return "\n".join(lines)


def control_table(summaries: Sequence[VariantSummary],
                  penalties: Mapping[str, PenaltyInfo]) -> str | None:
  """Markdown: each penalised variant (markers, controls, boosts) against its comparison run."""
  rows = [s for s in summaries if s.name in penalties]
  if not rows:
    return None
  by_name = {s.name: s for s in summaries}
  lines = ["| Variant | Token set | λ | Tokens | Compared to | Accuracy | Δ acc (points) | "
           "Mean CoT tokens | Δ CoT (rel.) | Markers / response |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for s in rows:
    p = penalties[s.name]
    base = by_name.get(p.compare_to, s)
    lines.append(" | ".join([
        f"| {s.name}", p.token_set, f"{p.strength:g}", str(p.n_tokens), base.name,
        _fmt(100 * s.accuracy, ".1f", "%"), _fmt(100 * (s.accuracy - base.accuracy), "+.1f"),
        _fmt(s.mean_cot_tokens, ".0f"),
        _fmt(100 * _relative(s.mean_cot_tokens, base.mean_cot_tokens), "+.1f", "%"),
        _fmt(s.markers_per_response, ".2f") + " |"]))
  return "\n".join(lines)


def token_set_listing(token_sets: Mapping[str, Mapping]) -> str:
  """Markdown: each distinct penalised set once (ids and texts, from token_sets/<variant>.json),
  with the variants that use it."""
  groups: dict[tuple, list[str]] = {}
  for name, record in token_sets.items():
    if record["penalised"]:
      key = (record["token_set"], tuple((t["id"], t["text"]) for t in record["penalised"]))
      groups.setdefault(key, []).append(name)
  parts = []
  for (token_set, tokens), names in groups.items():
    listing = ", ".join(f"{i} `{text!r}`" for i, text in tokens)
    parts.append(f"- **{token_set}** ({len(tokens)} tokens; {', '.join(names)}): {listing}")
  return "\n".join(parts) or "No variant penalises any token."
