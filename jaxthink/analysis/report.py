"""Per-variant summaries, ``report.md`` and PNG plots comparing variants.

A *variant* is one configuration of a run (e.g. ``bf16``, ``w3-awq``, ``w3-awq+penalty``).
``summarize_variant`` builds its ``VariantSummary`` from result rows (one dict per response, as
written to ``results.jsonl``) with these keys:

- ``problem_id`` (str): the problem; several rows share it when there are several samples;
- ``correct`` (bool): the graded verdict;
- ``n_tokens`` (int): generated tokens of the response (thinking + answer: the CoT length);
- ``failure`` (str or None): the taxonomy bucket of a wrong response (``jaxthink.grading.BUCKETS``),
  None for a correct one;
- ``n_markers`` (int): marker occurrences in the thinking.

Plots use matplotlib's ``Figure`` directly (Agg canvas, no pyplot), so no global backend is set.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import matplotlib
from matplotlib.figure import Figure

from jaxthink.analysis.stats import TokenBuffers, TokenStats, bootstrap_interval
from jaxthink.grading.taxonomy import BUCKETS

ROW_KEYS = ("problem_id", "correct", "n_tokens", "failure", "n_markers")
PLOT_FILES = {
  "kl_entropy": "kl_vs_entropy.png",
  "cot_hist": "cot_length_hist.png",
  "bars": "accuracy_overthinking.png",
  "accuracy_cot": "accuracy_vs_cot.png",
}


@dataclasses.dataclass(frozen=True)
class VariantSummary:
  """One variant's results.

  accuracy: pass@1, each problem's share of correct samples, averaged over problems.
  mean_cot_tokens: mean generated tokens per response; cot_tokens: each response's count.
  failure_counts: wrong responses per bucket (every bucket of BUCKETS present, summing to
      n_failures).
  markers_per_response: mean marker occurrences in a response's thinking;
      markers_per_1k_tokens: all of them per 1,000 generated tokens.
  intervals: {"accuracy" | "mean_cot_tokens" | "markers_per_1k_tokens": (low, high)}, percentile
      bootstrap 95% intervals (problems resampled for accuracy, responses for the others).
  token_stats: the variant's token-level statistics (None when not recorded).
  """

  name: str
  n_problems: int
  n_responses: int
  accuracy: float
  mean_cot_tokens: float
  cot_tokens: tuple[int, ...]
  n_failures: int
  failure_counts: dict[str, int]
  markers_per_response: float
  markers_per_1k_tokens: float = float("nan")
  intervals: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
  token_stats: TokenStats | None = None

  def __post_init__(self):
    if set(self.failure_counts) != set(BUCKETS):
      raise ValueError(
        f"failure_counts must have exactly the buckets {BUCKETS}, got {sorted(self.failure_counts)}"
      )
    if sum(self.failure_counts.values()) != self.n_failures:
      raise ValueError(
        f"failure_counts sum to {sum(self.failure_counts.values())}, "
        f"n_failures is {self.n_failures}"
      )

  def failure_share(self, bucket: str) -> float:
    """Share of the failures in ``bucket`` (NaN without failures)."""
    return self.failure_counts[bucket] / self.n_failures if self.n_failures else float("nan")

  def to_dict(self) -> dict:
    """JSON-ready (NaN -> None), without the per-response lengths."""
    out = dataclasses.asdict(self)
    out.pop("cot_tokens")
    out["failure_shares"] = {bucket: self.failure_share(bucket) for bucket in BUCKETS}
    return _json_safe(out)


def _json_safe(value):
  if isinstance(value, dict):
    return {key: _json_safe(item) for key, item in value.items()}
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def summarize_variant(
  name: str, rows: Iterable[Mapping], token_stats: TokenStats | None = None
) -> VariantSummary:
  """``VariantSummary`` of result rows (keys: see the module docstring)."""
  rows = list(rows)
  if not rows:
    raise ValueError(f"variant {name!r} has no result rows")
  for index, row in enumerate(rows):
    missing = [key for key in ROW_KEYS if key not in row]
    if missing:
      raise ValueError(
        f"variant {name!r}, row {index}: missing keys {missing}; each row needs {list(ROW_KEYS)}"
      )
    if row["correct"] == (row["failure"] is not None):
      raise ValueError(
        f"variant {name!r}, row {index}: a correct row has failure None, a "
        f"wrong one a bucket; got correct={row['correct']}, "
        f"failure={row['failure']!r}"
      )
    if row["failure"] is not None and row["failure"] not in BUCKETS:
      raise ValueError(
        f"variant {name!r}, row {index}: unknown bucket {row['failure']!r}; valid: {BUCKETS}"
      )
  by_problem: dict[str, list[bool]] = {}
  for row in rows:
    by_problem.setdefault(str(row["problem_id"]), []).append(bool(row["correct"]))
  counts = {bucket: sum(row["failure"] == bucket for row in rows) for bucket in BUCKETS}
  cot = tuple(int(row["n_tokens"]) for row in rows)
  markers = np.array([row["n_markers"] for row in rows], np.float64)
  per_1k = lambda m, t, axis=None: 1000 * np.sum(m, axis) / np.sum(t, axis)
  mean = lambda x, axis: np.mean(x, axis)
  problem_accuracy = [np.mean(samples) for samples in by_problem.values()]
  intervals = {"accuracy": bootstrap_interval(mean, problem_accuracy),
               "mean_cot_tokens": bootstrap_interval(mean, cot),
               "markers_per_1k_tokens": bootstrap_interval(per_1k, markers, cot)}
  return VariantSummary(
    name=name,
    n_problems=len(by_problem),
    n_responses=len(rows),
    accuracy=float(np.mean(problem_accuracy)),
    mean_cot_tokens=float(np.mean(cot)),
    cot_tokens=cot,
    n_failures=sum(counts.values()),
    failure_counts=counts,
    markers_per_response=float(np.mean(markers)),
    markers_per_1k_tokens=float(per_1k(markers, cot)) if sum(cot) else float("nan"),
    intervals=intervals,
    token_stats=token_stats,
  )


def hexbin_points(
  buffers: TokenBuffers, *, max_points: int = 200_000, seed: int = 0, entropy: str = "ref"
) -> tuple[np.ndarray, np.ndarray]:
  """(entropy, KL) of valid tokens for the hexbin plot, a seeded subsample of at most
  ``max_points``; empty without a reference model."""
  if buffers.kl is None:
    return np.zeros(0), np.zeros(0)
  source = (
    buffers.entropy_ref
    if entropy == "ref" and buffers.entropy_ref is not None
    else buffers.entropy_quant
  )
  x, y = np.asarray(source, np.float64), np.asarray(buffers.kl, np.float64)
  keep = np.asarray(buffers.valid, bool) & np.isfinite(x) & np.isfinite(y)
  x, y = x[keep], y[keep]
  if x.size > max_points:
    chosen = np.sort(np.random.default_rng(seed).choice(x.size, max_points, replace=False))
    x, y = x[chosen], y[chosen]
  return x, y


# --- markdown ----------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
  if value is None or not math.isfinite(value):
    return "n/a"
  return f"{value:{spec}}{suffix}"


def _relative(value: float, base: float) -> float:
  return (value - base) / base if base else float("nan")


def comparison_table(summaries: Sequence[VariantSummary], baselines: Mapping[str, str]) -> str:
  """The markdown table comparing variants; each variant's relative changes are against
  ``baselines[variant]``."""
  by_name = {s.name: s for s in summaries}
  header = [
    "Variant",
    "Compared to",
    "Problems",
    "Responses",
    "Accuracy (pass@1)",
    "Δ acc (rel.)",
    "Δ acc (points)",
    "Mean CoT tokens",
    "Δ CoT (rel.)",
    "Failures",
    *(bucket.capitalize() for bucket in BUCKETS),
    "Markers / response",
    "Mean KL",
    "KL–entropy ρ (Spearman)",
  ]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for s in summaries:
    stats, base = s.token_stats, by_name[baselines[s.name]]
    cells = [
      s.name,
      base.name,
      str(s.n_problems),
      str(s.n_responses),
      _fmt(100 * s.accuracy, ".1f", "%"),
      _fmt(100 * _relative(s.accuracy, base.accuracy), "+.1f", "%"),
      _fmt(100 * (s.accuracy - base.accuracy), "+.1f"),
      _fmt(s.mean_cot_tokens, ".0f"),
      _fmt(100 * _relative(s.mean_cot_tokens, base.mean_cot_tokens), "+.1f", "%"),
      str(s.n_failures),
      *(_fmt(100 * s.failure_share(bucket), ".1f", "%") for bucket in BUCKETS),
      _fmt(s.markers_per_response, ".2f"),
      _fmt(stats.mean_kl if stats else None, ".4f"),
      _fmt(stats.spearman_kl_entropy if stats else None, ".3f"),
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def interval_table(summaries: Sequence[VariantSummary]) -> str:
  """Markdown table: accuracy, mean CoT tokens and marker rate with their 95% intervals."""
  def cell(s: VariantSummary, key: str, spec: str, scale: float = 1.0) -> str:
    low, high = s.intervals.get(key, (float("nan"), float("nan")))
    value = {"accuracy": s.accuracy, "mean_cot_tokens": s.mean_cot_tokens,
             "markers_per_1k_tokens": s.markers_per_1k_tokens}[key]
    return (f"{_fmt(scale * value, spec)} [{_fmt(scale * low, spec)}, "
            f"{_fmt(scale * high, spec)}]")
  lines = ["| Variant | Accuracy (%) | Mean CoT tokens | Markers / 1K tokens | "
           "Overthinking errors |", "|---|---|---|---|---|"]
  for s in summaries:
    lines.append(f"| {s.name} | {cell(s, 'accuracy', '.1f', 100)} | "
                 f"{cell(s, 'mean_cot_tokens', '.1f')} | "
                 f"{cell(s, 'markers_per_1k_tokens', '.2f')} | "
                 f"{s.failure_counts['overthinking']} of {s.n_responses} |")
  return "\n".join(lines)


def token_table(summaries: Sequence[VariantSummary]) -> str | None:
  """Markdown table of the token-level statistics (None when no variant has them)."""
  with_stats = [s for s in summaries if s.token_stats is not None]
  if not with_stats:
    return None
  header = [
    "Variant",
    "Tokens",
    "Mean KL",
    "Median KL",
    "Pearson(KL, H)",
    "Spearman(KL, H)",
    "Marker rate, top-10% entropy",
    "Marker rate, rest",
    "KL at markers",
    "KL near markers",
    "KL elsewhere",
    "Penalty fire rate",
  ]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for s in with_stats:
    t = s.token_stats
    cells = [
      s.name,
      str(t.n_tokens),
      _fmt(t.mean_kl, ".4f"),
      _fmt(t.median_kl, ".4f"),
      _fmt(t.pearson_kl_entropy, ".3f"),
      _fmt(t.spearman_kl_entropy, ".3f"),
      _fmt(100 * t.marker_rate_top_decile, ".2f", "%"),
      _fmt(100 * t.marker_rate_rest, ".2f", "%"),
      _fmt(t.kl_at_markers, ".4f"),
      _fmt(t.kl_near_markers, ".4f"),
      _fmt(t.kl_elsewhere, ".4f"),
      _fmt(100 * t.penalty_fire_rate, ".2f", "%"),
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + f"\n\nNear markers: within ±{with_stats[0].token_stats.window} tokens."


# --- plots -------------------------------------------------------------------------------------


def plot_kl_vs_entropy(points: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> bool:
  """Hexbin of KL vs entropy, one panel per variant with points; False (no file) if none has."""
  panels = [(name, x, y) for name, (x, y) in points.items() if len(x)]
  if not panels:
    return False
  cols = min(4, len(panels))
  rows = -(-len(panels) // cols)
  fig = Figure(figsize=(4.5 * cols, 4 * rows), layout="constrained")
  for index, (name, x, y) in enumerate(panels):
    ax = fig.add_subplot(rows, cols, index + 1)
    image = ax.hexbin(x, y, gridsize=40, bins="log", mincnt=1, cmap="viridis")
    ax.set(title=name, xlabel="entropy (nats)", ylabel="KL(ref ‖ quant) (nats)")
    fig.colorbar(image, ax=ax, label="tokens")
  fig.savefig(path, dpi=100)
  return True


def plot_cot_lengths(summaries: Sequence[VariantSummary], path: Path) -> None:
  fig = Figure(figsize=(7, 4), layout="constrained")
  ax = fig.add_subplot()
  all_lengths = np.concatenate([np.asarray(s.cot_tokens, np.float64) for s in summaries])
  bins = np.histogram_bin_edges(all_lengths, bins=30)
  for s in summaries:
    ax.hist(s.cot_tokens, bins=bins, histtype="step", linewidth=1.5, label=s.name)
  ax.set(xlabel="generated tokens per response", ylabel="responses", title="CoT length")
  ax.legend()
  fig.savefig(path, dpi=100)


def plot_accuracy_and_failures(summaries: Sequence[VariantSummary], path: Path) -> None:
  names = [s.name for s in summaries]
  positions = np.arange(len(summaries))
  fig = Figure(figsize=(max(7, 1.6 * len(summaries) * 2), 4), layout="constrained")
  ax = fig.add_subplot(1, 2, 1)
  ax.bar(positions, [100 * s.accuracy for s in summaries], color="tab:blue")
  ax.set(xticks=positions, ylabel="accuracy (pass@1, %)", title="Accuracy", ylim=(0, 100))
  ax.set_xticklabels(names, rotation=20, ha="right")
  ax = fig.add_subplot(1, 2, 2)
  bottom = np.zeros(len(summaries))
  for bucket, color in zip(BUCKETS, ("tab:red", "tab:orange", "tab:purple", "tab:gray",
                                        "tab:olive", "tab:cyan")):
    heights = np.array([s.failure_counts[bucket] for s in summaries], np.float64)
    ax.bar(positions, heights, bottom=bottom, color=color, label=bucket)
    bottom += heights
  ax.set(xticks=positions, ylabel="wrong responses", title="Failures by bucket")
  ax.set_xticklabels(names, rotation=20, ha="right")
  ax.legend()
  fig.savefig(path, dpi=100)


def plot_accuracy_vs_cot(summaries: Sequence[VariantSummary], baselines: Mapping[str, str],
                         path: Path) -> None:
  """Accuracy against mean CoT tokens, one point per variant with its 95% intervals (named in
  the legend: many variants sit close together); an arrow joins each variant compared to another
  than the first (a penalised twin, drawn as a triangle) to that one."""
  fig = Figure(figsize=(10, 5.5), layout="constrained")
  ax = fig.add_subplot()
  by_name = {s.name: s for s in summaries}
  first = summaries[0].name
  colors = matplotlib.colormaps["tab20"].colors
  for i, s in enumerate(summaries):
    (a_low, a_high), (c_low, c_high) = (s.intervals.get(k, (np.nan, np.nan))
                                        for k in ("accuracy", "mean_cot_tokens"))
    x, y = s.mean_cot_tokens, 100 * s.accuracy
    base = by_name.get(baselines.get(s.name, first))
    twin = base is not None and base.name not in (first, s.name)
    ax.errorbar(x, y, xerr=[[x - c_low], [c_high - x]],
                yerr=[[y - 100 * a_low], [100 * a_high - y]], fmt="<" if twin else "o",
                markersize=7, capsize=3, alpha=0.85, color=colors[i % len(colors)], label=s.name)
    if twin:
      ax.annotate("", xy=(x, y), xytext=(base.mean_cot_tokens, 100 * base.accuracy),
                  arrowprops=dict(arrowstyle="->", color="tab:red", lw=1.2, alpha=0.7))
  ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
  ax.set(xlabel="mean CoT tokens per response", ylabel="accuracy (pass@1, %)",
         title="Accuracy vs CoT length, 95% intervals (arrows: variant → its penalised / "
               "control twin)")
  fig.savefig(path, dpi=100)


def failure_examples(rows_by_variant: Mapping[str, Sequence[Mapping]], per_bucket: int = 2,
                     chars: int = 300) -> list[str]:
  """Markdown lines: for each variant and failure bucket, up to `per_bucket` wrong responses
  (`problem_id`, the last `chars` characters of `response`, where the answer is)."""
  lines = ["## Failure examples", ""]
  for name, rows in rows_by_variant.items():
    for bucket in BUCKETS:
      picked = [r for r in rows if r.get("failure") == bucket][:per_bucket]
      for row in picked:
        tail = row["response"][-chars:].replace("\n", " ⏎ ").replace("|", "\\|")
        lines.append(f"- **{name}**, {bucket}, `{row['problem_id']}`: …{tail}")
  return lines if len(lines) > 2 else []


def write_report(
  summaries: Sequence[VariantSummary],
  out_dir: str | Path,
  *,
  baseline: str | Mapping[str, str] | None = None,
  token_points: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
  title: str = "jaxthink evaluation",
  sections: Sequence[str] = (),
) -> dict[str, Path]:
  """Write ``report.md`` and the PNG plots into ``out_dir``; returns {name: path} of the files.

  baseline: the variant relative changes are measured against (default: the first one), or
      {variant: its baseline} (variants left out compare to the first one; e.g. a penalised
      variant against the same model without the penalty). token_points: {variant: (entropy, KL)} for the hexbin
      (see ``hexbin_points``); without any, the hexbin is left out. sections: further markdown
      lines, placed before the plots.
  """
  if not summaries:
    raise ValueError("no variant summaries to report")
  names = [s.name for s in summaries]
  if len(set(names)) != len(names):
    raise ValueError(f"variant names must be unique, got {names}")
  if baseline is None or isinstance(baseline, str):
    baselines = {name: baseline or names[0] for name in names}
  else:
    baselines = {name: baseline.get(name, names[0]) for name in names}
  for base in baselines.values():
    if base not in names:
      raise ValueError(f"baseline {base!r} is not a variant; variants: {names}")
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)

  written: dict[str, Path] = {}
  if plot_kl_vs_entropy(token_points or {}, out_dir / PLOT_FILES["kl_entropy"]):
    written["kl_entropy"] = out_dir / PLOT_FILES["kl_entropy"]
  plot_cot_lengths(summaries, out_dir / PLOT_FILES["cot_hist"])
  written["cot_hist"] = out_dir / PLOT_FILES["cot_hist"]
  plot_accuracy_and_failures(summaries, out_dir / PLOT_FILES["bars"])
  written["bars"] = out_dir / PLOT_FILES["bars"]
  plot_accuracy_vs_cot(summaries, baselines, out_dir / PLOT_FILES["accuracy_cot"])
  written["accuracy_cot"] = out_dir / PLOT_FILES["accuracy_cot"]

  parts = [
    f"# {title}",
    "",
    'Relative changes (Δ) are against the variant in "Compared to". Failure columns are shares of the wrong '
    "responses: overthinking (right answer reached in the thinking, then abandoned), "
    "truncated (no final answer within the token budget), computation (a false "
    '"a op b = c"), step omission (a step the reference needs is missing), logical (every step '
    "right, the answer wrong), other (no final answer).",
    "",
    comparison_table(summaries, baselines),
    "",
    "## Intervals",
    "",
    "Percentile bootstrap 95% intervals (2,000 resamples; problems resampled for accuracy, "
    "responses for CoT length and marker rate).",
    "",
    interval_table(summaries),
    "",
  ]
  if (tokens := token_table(summaries)) is not None:
    parts += ["## Token-level statistics", "", tokens, ""]
  parts += [*sections, "## Plots", ""]
  if "kl_entropy" in written:
    parts.append(f"![KL vs entropy]({PLOT_FILES['kl_entropy']})")
  else:
    parts.append("No KL vs entropy plot: no variant has token-level KL (reference off).")
  parts += [
    "",
    f"![Accuracy vs CoT length]({PLOT_FILES['accuracy_cot']})",
    "",
    f"![CoT length]({PLOT_FILES['cot_hist']})",
    "",
    f"![Accuracy and failures]({PLOT_FILES['bars']})",
    "",
  ]
  (out_dir / "report.md").write_text("\n".join(parts), encoding="utf-8")
  written["report"] = out_dir / "report.md"
  return written
