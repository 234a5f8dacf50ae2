"""The report's sections on the penalty (penalised sets, markers vs controls, λ grids) and the
per-token analysis (KL ranking with the markers' ranks, markers among the top-20 candidates),
gathered variant by variant so that only one variant's buffers are in memory at a time."""

from __future__ import annotations

import json
from typing import Mapping, Sequence

from jaxthink.analysis.penalty import (PenaltyInfo, control_table, strength_grid_table,
                                       token_set_listing)
from jaxthink.analysis.report import VariantSummary
from jaxthink.analysis.stats import TokenBuffers
from jaxthink.analysis.tokens import (KLRanking, kl_ranking, marker_rank_table, plot_kl_ranking,
                                      plot_top_candidate_rates, top_candidate_rates,
                                      top_candidate_table)
from jaxthink.eval.controls import special_token_ids
from jaxthink.eval.run_dir import RunDir
from jaxthink.eval.token_sets import token_set_file, token_text

PLOTS = {"kl_rank": "kl_rank_markers.png", "top20": "markers_top20.png"}
BEST_RULE = ("Best λ of a grid: the highest accuracy; ties go to the shorter mean CoT, then to "
             "the smaller |λ|. Δ are against the variant's `compare_to`.")


class TokenAnalysis:
  """Collects each variant's per-token analysis, then writes the report sections and plots."""

  def __init__(self, tokenizer, min_count: int):
    self.tokenizer = tokenizer
    self.min_count = min_count
    self.excluded = special_token_ids(tokenizer)
    self.rankings: dict[str, KLRanking] = {}
    self.rates: dict[str, tuple[float, float]] = {}

  def add(self, variant, buffers: TokenBuffers) -> None:
    """Unpenalised variants with KL are ranked; every variant's top-20 marker rates are kept."""
    if buffers.marker_in_top is not None:
      self.rates[variant.name] = top_candidate_rates(buffers)
    if buffers.kl is not None and buffers.token_ids is not None and variant.penalty.mode == "off":
      self.rankings[variant.name] = kl_ranking(buffers, self.excluded, self.min_count)

  def sections(self, run: RunDir, variants: Sequence, summaries: Sequence[VariantSummary],
               baselines: Mapping[str, str]) -> list[str]:
    """Markdown sections for report.md; plots are written into the run directory."""
    text = lambda i: repr(token_text(self.tokenizer, i))[1:-1]
    token_sets = {v.name: json.loads(f.read_text()) for v in variants
                  if (f := token_set_file(run, v.name)).exists()}
    penalties = {v.name: PenaltyInfo(v.penalty.token_set, float(v.penalty.strength),
                                     len(token_sets[v.name]["penalised"]), baselines[v.name],
                                     v.strength_grid)
                 for v in variants if v.penalty.mode != "off" and v.name in token_sets}
    parts = ["## Penalised tokens", "",
             "A marker is a single vocabulary token: each single-word marker's spellings (with and "
             "without a leading space, capitalised or not) that the tokenizer writes as one token. "
             "Phrases and split words are not penalised. Control sets come from the unpenalised "
             "run of the same model (`token_sets/<variant>.json` holds each variant's exact ids).",
             ""]
    markers: list[int] = []
    if token_sets:
      record = next(iter(token_sets.values()))["markers"]
      markers = record["ids"]
      parts += [f"Marker lines not penalised: {', '.join(record['not_penalised']) or 'none'}.", ""]
    parts += [token_set_listing(token_sets), ""]
    if (table := control_table(summaries, penalties)) is not None:
      parts += ["## Markers vs control sets", "", table, ""]
    if (table := strength_grid_table(summaries, penalties)) is not None:
      parts += ["## λ grids", "", BEST_RULE, "", table, ""]
    if self.rankings:
      plot_kl_ranking(self.rankings, markers, text, run.path / PLOTS["kl_rank"])
      parts += ["## Tokens ranked by mean KL", "",
                "Each position's KL(ref ‖ quant) is attributed to the token sampled there; tokens "
                f"sampled at least {self.min_count} times (special tokens left out) are ranked, "
                "1 = highest mean KL.", "",
                marker_rank_table(self.rankings, markers, text), "",
                f"![Tokens ranked by mean KL]({PLOTS['kl_rank']})", ""]
    if self.rates:
      plot_top_candidate_rates(self.rates, run.path / PLOTS["top20"])
      parts += ["## Markers among the top-20 candidates", "",
                "Share of positions where a marker token is among the 20 most likely next tokens "
                "of the generating model (raw logits), in the top 10% of positions by entropy "
                "(the reference's when co-decoded) vs the rest.", "",
                top_candidate_table(self.rates), "",
                f"![Markers among the top-20 candidates]({PLOTS['top20']})", ""]
    return parts
