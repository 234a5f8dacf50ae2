"""Token-level statistics against hand-computed values and numpy; the report's table and PNGs."""

import math

import matplotlib.image
import numpy as np
import pytest

from jaxthink.analysis import (
  TokenBuffers,
  hexbin_points,
  mean_kl_by_token,
  pearson,
  spearman,
  summarize_variant,
  token_stats,
  write_report,
)
from jaxthink.analysis.stats import near_markers
from jaxthink.analysis.report import failure_examples

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def hand_buffers(with_reference=True):
  """Two responses of 5 tokens plus one padding position each (values at padding must be
  ignored: NaN / 99 / a marker / a fired penalty there)."""
  valid = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]], bool)
  kl = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, np.nan], [1, 2, 3, 4, 5, 99]], np.float32)
  entropy_ref = np.array([[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 10, 0]], np.float32)
  return TokenBuffers(
    valid=valid,
    entropy_quant=entropy_ref + 1,
    logprobs=np.array([[-1] * 5 + [np.nan], [-2] * 5 + [0]], np.float32),
    is_marker=np.array([[0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]], bool),
    penalty_fired=np.array([[1, 0, 0, 0, 0, 1], [0] * 6], bool),
    kl=kl if with_reference else None,
    entropy_ref=entropy_ref if with_reference else None,
  )


def test_token_stats_by_hand():
  stats = token_stats(hand_buffers(), window=1)
  assert stats.n_tokens == 10
  assert stats.mean_kl == pytest.approx(16.5 / 10)
  assert stats.median_kl == pytest.approx((0.5 + 1.0) / 2)
  assert stats.spearman_kl_entropy == pytest.approx(1.0)  # KL rises with entropy everywhere
  kl = [0.1, 0.2, 0.3, 0.4, 0.5, 1, 2, 3, 4, 5]
  assert stats.pearson_kl_entropy == pytest.approx(
    np.corrcoef(kl, np.arange(1, 11))[0, 1], rel=1e-6
  )
  # Top entropy decile (>= 9.1, the 0.9 quantile of 1..10) holds only the entropy-10 token,
  # a marker; the other 9 tokens hold 1 marker.
  assert stats.marker_rate_top_decile == 1.0
  assert stats.marker_rate_rest == pytest.approx(1 / 9)
  assert stats.marker_rate == pytest.approx(0.2)
  # Markers at (0,1) and (1,4); within ±1: (0,0), (0,2), (1,3).
  assert stats.kl_at_markers == pytest.approx((0.2 + 5.0) / 2)
  assert stats.kl_near_markers == pytest.approx((0.1 + 0.3 + 4.0) / 3)
  assert stats.kl_elsewhere == pytest.approx((0.4 + 0.5 + 1 + 2 + 3) / 5)
  assert stats.penalty_fire_rate == pytest.approx(0.1)
  assert stats.mean_logprob == pytest.approx(-1.5)
  assert stats.mean_entropy_ref == pytest.approx(5.5)
  assert stats.mean_entropy_quant == pytest.approx(6.5)


def test_token_stats_without_reference():
  stats = token_stats(hand_buffers(with_reference=False), window=1)
  assert math.isnan(stats.mean_kl) and math.isnan(stats.spearman_kl_entropy)
  assert math.isnan(stats.mean_entropy_ref)
  # The deciles fall back to the quantised model's entropy (same order here).
  assert stats.marker_rate_top_decile == 1.0 and stats.n_tokens == 10


def test_near_markers_stays_inside_each_response():
  marker = np.array([[0, 0, 0, 1], [0, 0, 0, 0]], bool)
  valid = np.ones((2, 4), bool)
  expected = np.array([[0, 1, 1, 0], [0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(near_markers(marker, valid, 2), expected)


def test_spearman_with_ties_by_hand():
  # Ranks of x with ties averaged: [1, 2.5, 2.5, 4]; y: [1, 2, 3, 4];
  # rho = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10).
  assert spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(3 / math.sqrt(10))
  assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_correlations_match_numpy_on_random_data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=500)
  y = x + rng.normal(size=500)
  ranks = lambda v: np.argsort(np.argsort(v)).astype(float)  # no ties in continuous data
  assert spearman(x, y) == pytest.approx(np.corrcoef(ranks(x), ranks(y))[0, 1], rel=1e-12)
  assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)


def test_mean_kl_by_token_by_hand():
  ids = np.array([[1, 2, 1, 3], [2, 1, 0, 0]])
  kl = np.array([[1, 2, 3, 4], [6, 5, 9, 9]], np.float32)
  valid = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
  token, mean, count = mean_kl_by_token(ids, kl, valid, min_count=2)
  np.testing.assert_array_equal(token, [2, 1])  # id 2: (2+6)/2 = 4; id 1: (1+3+5)/3 = 3
  np.testing.assert_allclose(mean, [4.0, 3.0])
  np.testing.assert_array_equal(count, [2, 3])


def test_from_sequences_pads_and_checks_lengths():
  seq = lambda n: {
    "entropy_quant": np.ones(n),
    "logprobs": np.zeros(n),
    "is_marker": np.zeros(n),
    "penalty_fired": np.zeros(n),
    "kl": np.full(n, 0.5),
  }
  buffers = TokenBuffers.from_sequences([seq(2), seq(4)])
  np.testing.assert_array_equal(buffers.valid, [[1, 1, 0, 0], [1, 1, 1, 1]])
  assert buffers.entropy_ref is None and buffers.kl.shape == (2, 4)
  assert token_stats(buffers).mean_kl == pytest.approx(0.5)
  broken = seq(3)
  broken["kl"] = np.zeros(2)
  with pytest.raises(ValueError, match="'kl' has 2 tokens, entropy_quant has 3"):
    TokenBuffers.from_sequences([broken])


def test_from_decode_result_masks_past_each_length():
  from jaxthink.decode.generate import DecodeResult

  kl = np.array([[0.5, 1.5, 0.0], [2.0, 0.0, 0.0]], np.float32)
  result = DecodeResult(
    tokens=np.array([[5, 6, 0], [7, 0, 0]], np.int32),
    lengths=np.array([2, 1], np.int32),
    finished=np.array([True, False]),
    entropy=np.ones((2, 3), np.float32),
    log_prob=np.zeros((2, 3), np.float32),
    is_marker=np.zeros((2, 3), bool),
    penalty_fired=np.zeros((2, 3), bool),
    marker_in_top=np.zeros((2, 3), bool),
    kl=kl,
    ref_entropy=kl + 1,
  )
  buffers = TokenBuffers.from_decode_result(result)
  np.testing.assert_array_equal(buffers.valid, [[1, 1, 0], [1, 0, 0]])
  assert token_stats(buffers).mean_kl == pytest.approx((0.5 + 1.5 + 2.0) / 3)
  assert token_stats(buffers).mean_entropy_ref == pytest.approx((1.5 + 2.5 + 3.0) / 3)


def rows(spec):
  """(problem_id, correct, n_tokens, failure, n_markers) tuples -> result rows."""
  keys = ("problem_id", "correct", "n_tokens", "failure", "n_markers")
  return [dict(zip(keys, row)) for row in spec]


BASELINE_ROWS = rows(
  [("a", True, 200, None, 0), ("b", True, 300, None, 0), ("c", False, 340, "other", 3)]
)
QUANT_ROWS = rows(
  [
    ("a", True, 100, None, 1),
    ("a", True, 200, None, 2),
    ("b", True, 300, None, 3),
    ("b", False, 400, "overthinking", 4),
    ("c", False, 500, "computation", 5),
    ("c", False, 600, "overthinking", 6),
  ]
)


def test_summarize_variant_by_hand():
  summary = summarize_variant("w3", QUANT_ROWS)
  assert summary.accuracy == pytest.approx((1 + 0.5 + 0) / 3)  # pass@1 per problem, averaged
  assert (summary.n_problems, summary.n_responses, summary.mean_cot_tokens) == (3, 6, 350)
  assert summary.failure_counts == {"overthinking": 2, "truncated": 0, "computation": 1,
                                    "step omission": 0, "logical": 0, "other": 0}
  assert summary.failure_share("overthinking") == pytest.approx(2 / 3)
  assert summary.markers_per_response == 3.5
  assert summary.markers_per_1k_tokens == pytest.approx(1000 * 21 / 2100)
  # Bootstrap intervals: problem-level accuracy means lie in [0, 1] in steps of 1/6; the CoT
  # interval lies within the lengths seen and holds the mean.
  low, high = summary.intervals["accuracy"]
  assert 0 <= low <= summary.accuracy <= high <= 1 and (6 * low) % 1 == pytest.approx(0)
  low, high = summary.intervals["mean_cot_tokens"]
  assert 100 <= low < 350 < high <= 600
  assert summary.to_dict()["failure_shares"]["computation"] == pytest.approx(1 / 3)


def test_summary_rejects_bad_rows():
  with pytest.raises(ValueError, match=r"row 0: missing keys \['n_markers'\]"):
    summarize_variant("x", [{"problem_id": "a", "correct": True, "n_tokens": 1, "failure": None}])
  with pytest.raises(ValueError, match="row 0: a correct row has failure None"):
    summarize_variant("x", rows([("a", True, 1, "other", 0)]))
  with pytest.raises(ValueError, match="unknown bucket 'logic'"):
    summarize_variant("x", rows([("a", False, 1, "logic", 0)]))


def table_row(report, name):
  line = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
  return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_table_and_pngs(tmp_path):
  buffers = hand_buffers()
  summaries = [
    summarize_variant("bf16", BASELINE_ROWS),
    summarize_variant("w3", QUANT_ROWS, token_stats(buffers, window=1)),
  ]
  written = write_report(
    summaries, tmp_path, baseline="bf16", token_points={"w3": hexbin_points(buffers)}
  )
  assert set(written) == {"report", "kl_entropy", "cot_hist", "bars", "accuracy_cot"}
  for name in ("kl_entropy", "cot_hist", "bars", "accuracy_cot"):
    assert written[name].read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(written[name])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
  report = (tmp_path / "report.md").read_text()
  assert table_row(report, "bf16") == [
    "bf16",
    "bf16",
    "3",
    "3",
    "66.7%",
    "+0.0%",
    "+0.0",
    "280",
    "+0.0%",
    "1",
    "0.0%",
    "0.0%",
    "0.0%",
    "0.0%",
    "0.0%",
    "100.0%",
    "1.00",
    "n/a",
    "n/a",
  ]
  # accuracy 0.5 vs 2/3: -25% relative, -16.7 points; CoT 350 vs 280: +25%.
  assert table_row(report, "w3") == [
    "w3",
    "bf16",
    "3",
    "6",
    "50.0%",
    "-25.0%",
    "-16.7",
    "350",
    "+25.0%",
    "3",
    "66.7%",
    "0.0%",
    "33.3%",
    "0.0%",
    "0.0%",
    "0.0%",
    "3.50",
    "1.6500",
    "1.000",
  ]
  assert "![KL vs entropy](kl_vs_entropy.png)" in report
  interval_row = next(line for line in report.split("## Intervals")[1].splitlines()
                      if line.startswith("| w3 |"))
  assert "| 10.00 [" in interval_row and interval_row.endswith("| 2 of 6 |")
  # Per-variant baselines: w3 against itself has no change.
  write_report(summaries, tmp_path, baseline={"w3": "w3"})
  row = table_row((tmp_path / "report.md").read_text(), "w3")
  assert row[1] == "w3" and row[5:7] == ["+0.0%", "+0.0"]


def test_report_without_token_data_and_bad_baseline(tmp_path):
  summaries = [summarize_variant("bf16", BASELINE_ROWS)]
  written = write_report(summaries, tmp_path)
  assert "kl_entropy" not in written and not (tmp_path / "kl_vs_entropy.png").exists()
  assert "No KL vs entropy plot" in written["report"].read_text()
  with pytest.raises(ValueError, match=r"baseline 'fp32' is not a variant; variants: \['bf16'\]"):
    write_report(summaries, tmp_path, baseline="fp32")


def test_hexbin_points_subsample_is_seeded():
  buffers = hand_buffers()
  x, y = hexbin_points(buffers)
  np.testing.assert_allclose(x, np.arange(1, 11))  # valid tokens only, in order
  a, b = hexbin_points(buffers, max_points=4, seed=3), hexbin_points(buffers, max_points=4, seed=3)
  np.testing.assert_array_equal(a[0], b[0])
  assert len(a[0]) == 4


def test_failure_examples_quote_each_bucket():
  rows = {"w3": [{"problem_id": "tiny/1", "failure": "computation",
                  "response": "<think>\n12 + 3 = 14.\n</think>\n\\boxed{14}"},
                 {"problem_id": "tiny/2", "failure": None, "response": "right"},
                 {"problem_id": "tiny/3", "failure": "step omission", "response": "x" * 500}]}
  lines = failure_examples(rows, per_bucket=1, chars=40)
  assert lines[0] == "## Failure examples"
  assert "- **w3**, computation, `tiny/1`: …<think> ⏎ 12 + 3 = 14. ⏎ </think> ⏎ \\boxed{14}" in lines
  assert f"- **w3**, step omission, `tiny/3`: …{'x' * 40}" in lines
  assert len(lines) == 4
  assert failure_examples({"full": rows["w3"][1:2]}) == []
