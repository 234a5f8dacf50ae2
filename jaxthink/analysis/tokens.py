"""Per-token analysis as in the overthinking study's figures.

- Tokens ranked by mean KL(p_ref ‖ p_quant), each position's KL attributed to the sampled token,
  over tokens sampled >= `min_count` times (special tokens left out), with the markers' ranks.
- How often a marker is among the 20 most likely next tokens (raw logits of the generating model,
  recorded per step as `marker_in_top`) at high- vs low-entropy positions: the top entropy decile
  vs the rest (the study reports 2-4x).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Collection, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from jaxthink.analysis.stats import TokenBuffers, _rows, mean_kl_by_token, top_quantile_mask


@dataclasses.dataclass(frozen=True)
class KLRanking:
  """Every sampled token by decreasing mean KL (`[n]` each); the tokens sampled >= `min_count`
  times are the ranked ones."""

  ids: np.ndarray
  mean_kl: np.ndarray
  counts: np.ndarray
  min_count: int

  @property
  def ranked(self) -> np.ndarray:
    """`[n]` bool, sampled often enough to be ranked."""
    return self.counts >= self.min_count

  @property
  def ranked_ids(self) -> np.ndarray:
    return self.ids[self.ranked]

  def rank(self, token_id: int) -> int | None:
    """1-based rank of `token_id` among the ranked tokens (1 = highest mean KL), else None."""
    where = np.flatnonzero(self.ranked_ids == token_id)
    return int(where[0]) + 1 if where.size else None


def kl_ranking(buffers: TokenBuffers, excluded: Collection[int] = (),
               min_count: int = 50) -> KLRanking:
  """The ranking of `buffers` (needs `token_ids` and `kl`), leaving out `excluded` ids."""
  if buffers.kl is None or buffers.token_ids is None:
    raise ValueError("a KL ranking needs the sampled token ids and the per-token KL.")
  ids, means, counts = mean_kl_by_token(buffers.token_ids, buffers.kl, buffers.valid, 1)
  keep = ~np.isin(ids, np.fromiter(excluded, np.int64, len(excluded)))
  return KLRanking(ids[keep], means[keep], counts[keep], min_count)


def top_candidate_rates(buffers: TokenBuffers, quantile: float = 0.9) -> tuple[float, float]:
  """(share of positions with a marker among the top-20 candidates in the top entropy decile,
  share at the other positions); entropy of the reference model when recorded (the study's)."""
  if buffers.marker_in_top is None:
    raise ValueError("these buffers have no `marker_in_top` record (written by older runs).")
  entropy = buffers.entropy_ref if buffers.entropy_ref is not None else buffers.entropy_quant
  entropy = _rows(entropy).astype(np.float64)
  keep = _rows(buffers.valid).astype(bool) & np.isfinite(entropy)
  flags = _rows(buffers.marker_in_top).astype(bool)[keep]
  high = top_quantile_mask(entropy[keep], quantile)
  mean = lambda x: float(np.mean(x)) if x.size else float("nan")
  return mean(flags[high]), mean(flags[~high])


def marker_rank_table(rankings: Mapping[str, KLRanking], marker_ids: Sequence[int],
                      token_text: Callable[[int], str]) -> str:
  """Markdown: per variant, how many tokens are ranked, each ranked marker token's rank, and the
  marker tokens sampled too rarely to be ranked."""
  lines = ["| Variant | Ranked tokens (min count) | Marker ranks (mean KL, count) | "
           "Markers sampled too rarely (mean KL, count) |", "|---|---|---|---|"]
  for name, ranking in rankings.items():
    where = {int(i): k for k, i in enumerate(ranking.ids)}
    stats = lambda i: f"{ranking.mean_kl[where[i]]:.4f}, {ranking.counts[where[i]]}"
    sampled = [int(i) for i in marker_ids if int(i) in where]
    ranked = sorted((ranking.rank(i), i) for i in sampled if ranking.rank(i) is not None)
    rare = [i for i in sampled if ranking.rank(i) is None]
    lines.append(" | ".join([
        f"| {name}", f"{int(ranking.ranked.sum())} (≥ {ranking.min_count})",
        ", ".join(f"`{token_text(i)}` #{r} ({stats(i)})" for r, i in ranked) or "none",
        (", ".join(f"`{token_text(i)}` ({stats(i)})" for i in rare) or "none") + " |"]))
  return "\n".join(lines)


def top_candidate_table(rates: Mapping[str, tuple[float, float]]) -> str:
  lines = ["| Variant | Marker in top-20, top-10% entropy | Rest | Ratio |", "|---|---|---|---|"]
  for name, (high, low) in rates.items():
    ratio = high / low if low > 0 else float("nan")
    lines.append(f"| {name} | {100 * high:.1f}% | {100 * low:.1f}% | {ratio:.2f}× |")
  return "\n".join(lines)


def plot_kl_ranking(rankings: Mapping[str, KLRanking], marker_ids: Sequence[int],
                    token_text: Callable[[int], str], path: Path) -> None:
  """Mean KL against rank, one panel per variant, marker tokens in red and labelled."""
  cols = min(3, len(rankings))
  rows = -(-len(rankings) // cols)
  fig = Figure(figsize=(5 * cols, 3.6 * rows), layout="constrained")
  markers = np.asarray(marker_ids, np.int64)
  for index, (name, ranking) in enumerate(rankings.items()):
    ax = fig.add_subplot(rows, cols, index + 1)
    ids, mean_kl = ranking.ranked_ids, ranking.mean_kl[ranking.ranked]
    rank = np.arange(1, len(ids) + 1)
    is_marker = np.isin(ids, markers)
    ax.bar(rank[~is_marker], mean_kl[~is_marker], width=1.0, color="tab:gray")
    if is_marker.any():
      ax.bar(rank[is_marker], mean_kl[is_marker], width=1.0, color="tab:red", label="marker")
      ax.legend()
    else:
      ax.text(0.5, 0.9, f"no marker sampled ≥ {ranking.min_count}×", transform=ax.transAxes,
              ha="center", color="tab:red")
    for r in rank[is_marker]:
      ax.annotate(token_text(int(ids[r - 1])), (r, mean_kl[r - 1]), fontsize=7, rotation=60,
                  color="tab:red")
    ax.set(title=name, xlabel=f"token rank (sampled ≥ {ranking.min_count}×)",
           ylabel="mean KL (nats)")
  fig.savefig(path, dpi=100)


def plot_top_candidate_rates(rates: Mapping[str, tuple[float, float]], path: Path) -> None:
  names = list(rates)
  x = np.arange(len(names))
  fig = Figure(figsize=(max(6, 1.2 * len(names)), 4), layout="constrained")
  ax = fig.add_subplot()
  ax.bar(x - 0.2, [100 * rates[n][0] for n in names], 0.4, label="top-10% entropy",
         color="tab:red")
  ax.bar(x + 0.2, [100 * rates[n][1] for n in names], 0.4, label="rest", color="tab:blue")
  ax.set(xticks=x, ylabel="positions with a marker in the top 20 (%)",
         title="Markers among the top-20 candidates")
  ax.set_xticklabels(names, rotation=20, ha="right")
  ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
  fig.savefig(path, dpi=100)
