"""Sizing with paging: the capped-lognormal moments against closed forms and numpy sampling, rows
per chip and chip-hours against hand-computed values, the study grid's size, and the README tables
as the renderers print them."""

import math
import re
from pathlib import Path

import numpy as np
import pytest

from jaxthink import paging, sizing
from test_sizing import PARAMS_1_5B  # the hand count

REPO = Path(__file__).resolve().parents[1]
R1_1_5B = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"



def test_uncapped_limit_has_the_lognormal_closed_forms():
  """Cap far above the mass: mean e^(mu + s^2/2) = 1000, E[L^2] / E[L] = mean * e^(s^2)."""
  d = paging.LengthDistribution(math.log(1000) - 0.5, 1.0, 10 ** 12)
  assert d.mean == pytest.approx(1000, rel=1e-9)
  assert d.resident_tokens == pytest.approx((1000 * math.e + 1) / 2, rel=1e-9)  # 1359.64


def test_degenerate_shapes_by_hand():
  narrow = paging.LengthDistribution.with_mean(1000, sigma=1e-4)  # every request 1000 tokens
  assert narrow.mean == pytest.approx(1000, rel=1e-9)
  assert narrow.resident_tokens == pytest.approx(500.5, rel=1e-4)  # (1 + ... + 1000) / 1000
  assert narrow.static_utilisation(32) == pytest.approx(1, rel=1e-3)
  at_cap = paging.LengthDistribution(math.log(2048) + 50, 1.0, 2048)  # every request hits the cap
  assert at_cap.mean == pytest.approx(2048) and at_cap.resident_tokens == pytest.approx(1024.5)
  assert at_cap.expected_max(32) == pytest.approx(2048, rel=1e-4)
  with pytest.raises(ValueError, match="must lie in"):
    paging.LengthDistribution.with_mean(40000)


@pytest.mark.parametrize("mean", [5200, 23400])
def test_study_shapes_match_sampling(mean):
  """The study's capped means, E[L^2] and static batches of 32, against 400,000 numpy draws."""
  d = paging.LengthDistribution.with_mean(mean)
  x = np.minimum(np.random.default_rng(0).lognormal(d.mu, 1.0, (12_500, 32)), 32768)
  assert d.mean == pytest.approx(mean, rel=1e-9)
  assert x.mean() == pytest.approx(mean, rel=0.01)
  assert d.moment(2) == pytest.approx((x ** 2).mean(), rel=0.02)
  assert d.static_utilisation(32) == pytest.approx(x.mean() / x.max(1).mean(), rel=0.01)


def test_benchmark_shape_static_utilisation():
  """`benchmarks/reasoning_workload.py`'s shape (sigma 1, uncapped mean cap / 6, cap 2048):
  batches of 32 keep ~21% of slot-steps useful in expectation (its 256 draws gave 24.3%)."""
  d = paging.LengthDistribution(math.log(2048 / 6) - 0.5, 1.0, 2048)
  x = np.minimum(np.random.default_rng(1).lognormal(d.mu, 1.0, (20_000, 32)), 2048)
  assert d.static_utilisation(32) == pytest.approx(x.mean() / x.max(1).mean(), rel=0.01)
  assert 0.20 < d.static_utilisation(32) < 0.23


def test_study_lengths_follow_the_scheme():
  assert paging.study_lengths("bf16").mean == pytest.approx(5200)
  assert paging.study_lengths("w4a16").mean == pytest.approx(5200)
  assert paging.study_lengths("w8a8kv8").mean == pytest.approx(5200)
  assert paging.study_lengths("w3a16").mean == pytest.approx(23400)
  assert paging.study_lengths("w4a4kv4").mean == pytest.approx(23400)


def test_rows_per_replica_by_hand():
  """R1-Distill-Qwen-1.5B bf16 on one v5p chip (95 GiB): 28 KiB of KV per token."""
  config = sizing.STUDY_MODELS[R1_1_5B]
  narrow = paging.LengthDistribution.with_mean(1000, sigma=1e-4)
  fit = paging.paged_fit(config, "v5p-8", "bf16", narrow, page_size=64)
  pool = 0.9 * 95 * 2 ** 30 - 2 * PARAMS_1_5B
  assert fit.pool_bytes == pytest.approx(pool)
  assert fit.unpaged_rows == math.floor(pool / ((512 + 32768) * 28 * 1024)) == 92
  assert fit.resident_tokens == pytest.approx(512 + 500.5 + 32, rel=1e-6)
  assert fit.paged_rows == math.floor(pool / (1044.5 * 28 * 1024))
  # Two chips of 'model' split the 2 kv heads (and the weights): twice the rows per replica, about.
  two = paging.paged_fit(config, "v5p-8", "bf16", narrow, model_parallel=2)
  assert two.paged_rows == math.floor(
      (0.9 * 95 * 2 ** 30 - sizing.weight_bytes_per_chip(config, "bf16", 2)) / (1044.5 * 14 * 1024))


def test_smallest_fit_adds_model_parallelism_only_when_needed():
  config = sizing.STUDY_MODELS["deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"]  # 65.6 GB of bf16
  assert paging.smallest_fit(config, "v5p-8", "bf16").model_parallel == 1
  v5e = paging.smallest_fit(config, "v5litepod-8", "bf16")  # 16 GiB chips
  assert v5e.model_parallel == 8 and v5e.unpaged_rows >= 1
  assert paging.paged_fit(config, "v5litepod-8", "bf16", model_parallel=4).unpaged_rows == 0


def test_step_and_run_cost_by_hand():
  config = sizing.STUDY_MODELS[R1_1_5B]
  # 8 rows of 1000 tokens on a v4 chip: memory-bound (1.2 TB/s); flops 8 * 2 * 1.78e9 << 275e12 * t.
  step = paging.step_seconds(config, "v4-8", "bf16", rows=8, resident=1000, model_parallel=1)
  assert step == pytest.approx((2 * PARAMS_1_5B + 8 * 1000 * 28 * 1024) / 1.2e12)
  run = paging.GridRun(R1_1_5B, "math500", "bf16", "bf16", requests=500, batch=32, data=4,
                       model_parallel=1, topology="v4-8")
  lengths = paging.study_lengths("bf16")
  step = paging.step_seconds(config, "v4-8", "bf16", 8, 512 + lengths.resident_tokens, 1)
  want = 500 * 5200 / (0.5 * 32) * step * 4 / 3600
  assert paging.run_chip_hours(run, 0.5) == pytest.approx(want)
  # Same batch: static vs engine is the utilisation ratio.
  cost = paging.grid_cost([run], engine_utilisation=0.95)[R1_1_5B]
  assert cost["static"] / cost["engine"] == pytest.approx(0.95 / lengths.static_utilisation(32))


def test_study_grid_size():
  """9 models x 20 variants x (GSM8K 1319 + MATH-500 500 + 4 samples of AIME 30 + 30, AMC 40)."""
  runs = paging.study_runs(REPO / "configs" / "study")
  assert len(runs) == 9 * 5 * 20
  assert sum(r.requests for r in runs) == 9 * 20 * (1319 + 500 + 4 * (30 + 30 + 40)) == 399_420
  qwq = {(r.benchmark, r.batch, r.data, r.model_parallel, r.topology)
         for r in runs if r.model == "Qwen/QwQ-32B" and r.variant == "w3a16-awq"}
  assert ("aime24", 12, 2, 8, "v4-32") in qwq
  assert {r.scheme for r in runs} == {"bf16", "w8a16", "w4a16", "w3a16", "w8a8kv8", "w4a4kv4"}


def _readme_table(title: str) -> str:
  text = (REPO / "README.md").read_text()
  section = text[text.index(title):]
  return re.search(r"(\|.*\|\n)+", section).group(0).strip()


def test_readme_tables_are_what_the_renderers_print():
  assert _readme_table("rows of the study's workload") == paging.paged_table()
  assert _readme_table("expected TPU cost of the study grid") == paging.grid_table(
      paging.study_runs(REPO / "configs" / "study"))
