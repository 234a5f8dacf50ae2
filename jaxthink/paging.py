"""Sizing with paging: how many rows of the study's long-tailed workload fit per chip, and what the
study grid costs in TPU chip-hours with static batches vs the request engine.

The workload. Generated lengths are long-tailed: R1-Distill-Qwen-1.5B on MATH-500 writes 5.2K tokens
on average at bf16 and 23.4K at 3-bit, under a 32,768-token cap. `LengthDistribution` models them
as a lognormal capped at `cap` (`with_mean` finds the lognormal whose *capped* mean is the measured
one; sigma 1 is an assumption, the shape `benchmarks/reasoning_workload.py` uses).

Rows per chip (`paged_fit`). Without paging every row reserves `prompt_len + max_new_tokens` slots.
With a paged pool (pages of `page_size` tokens shared by all rows) a row holds pages for what it
has written. Under continuous batching a slot is busy with a request for L steps, having written
1 .. L tokens, so at a random step a slot holds on average `(E[L^2] / E[L] + 1) / 2` written tokens
(long rows occupy slots longer: it is more than E[L] / 2), plus its prompt and half a page of
rounding; the pool holds (KV memory) / (that) rows on average. It is a mean: a pool filled to it
must preempt a row now and then (as vLLM does) or keep some pages spare.

Chip-hours (`grid_cost`). A run of n requests of mean length E[L] takes n E[L] / U slot-steps, U
being slot utilisation: static batches of B run until their longest row ends, so U = E[L] /
E[max of B lengths] (`LengthDistribution.static_utilisation`); the engine refills freed slots, U
measured (`ENGINE_UTILISATION`, a parameter). A step of B rows is priced by a roofline on each chip
of the run's mesh: max(bytes read / HBM bandwidth, flops / peak bf16 flops), bytes = its weight
shard + its rows' resident KV (the same mean resident tokens for both paths, although a finished
row of a static batch reads none: the ragged attention visits only active rows' chunks), so
chip-hours = steps x step time x chips. Decode steps only: prefilling a prompt of a few hundred
tokens is small next to 5-23K generated ones. A roofline is a lower bound for every path; between
static batches and the engine at the same batch the ratio is the utilisation ratio. With a paged
pool the engine can hold more rows (`paged_fit`), each step's weight reads shared by more of them.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.special import ndtr  # the standard normal CDF

from jaxthink.models.config import ModelConfig
from jaxthink.sizing import (GiB, STUDY_MODELS, Topology, _split, kv_bytes_per_token, parse_scheme,
                             parse_topology, weight_bytes_per_chip)

STUDY_CAP = 32768
STUDY_MEAN_TOKENS = {"bf16": 5200, "w3a16": 23400}  # R1-Distill-Qwen-1.5B, MATH-500
ENGINE_UTILISATION = 0.874  # the engine's overall slot utilisation, benchmarks/reasoning_workload.py
PROMPT_LEN = 512  # prompt slots a row holds (the bucket a study prompt pads to)
PAGE_SIZE = 64  # tokens per page (as `jaxthink.models.pallas_attention` pages a cache)

# Per chip: HBM bandwidth (bytes/s) and peak bf16 matmul flops/s (Cloud TPU system architecture).
CHIP_SPEED = {"v4": (1.2e12, 275e12), "v5litepod": (8.19e11, 197e12), "v5p": (2.765e12, 459e12),
              "v6e": (1.64e12, 918e12)}


@dataclasses.dataclass(frozen=True)
class LengthDistribution:
  """Generated tokens per request: `min(X, cap)`, `log X ~ Normal(mu, sigma)`."""

  mu: float
  sigma: float = 1.0
  cap: int = STUDY_CAP

  @classmethod
  def with_mean(cls, mean: float, sigma: float = 1.0, cap: int = STUDY_CAP) -> "LengthDistribution":
    """The distribution whose capped mean is `mean` (0 < mean < cap)."""
    if not 0 < mean < cap:
      raise ValueError(f"a capped mean of {mean} tokens must lie in (0, cap={cap}).")
    lo, hi = math.log(mean) - 10 * sigma ** 2 - 10, math.log(cap) + 10 * sigma ** 2 + 10
    for _ in range(200):  # the capped mean grows with mu: bisect
      mid = (lo + hi) / 2
      lo, hi = (mid, hi) if cls(mid, sigma, cap).moment(1) < mean else (lo, mid)
    return cls((lo + hi) / 2, sigma, cap)

  def moment(self, k: int) -> float:
    """E[min(X, cap)^k]: the lognormal's partial moment below the cap plus cap^k above it."""
    z = (math.log(self.cap) - self.mu) / self.sigma
    below = math.exp(k * self.mu + (k * self.sigma) ** 2 / 2) * float(ndtr(z - k * self.sigma))
    return below + self.cap ** k * float(1 - ndtr(z))

  @property
  def mean(self) -> float:
    return self.moment(1)

  @property
  def resident_tokens(self) -> float:
    """Written tokens a busy slot holds at a random step of continuous batching:
    sum over requests of (1 + .. + L) / sum of L = (E[L^2] / E[L] + 1) / 2."""
    return (self.moment(2) / self.moment(1) + 1) / 2

  def expected_max(self, n: int, points: int = 1 << 16) -> float:
    """E[max of n lengths] = integral over [0, cap] of 1 - F(x)^n (trapezoid rule)."""
    x = np.linspace(0, self.cap, points + 1)[1:]
    below = 1 - ndtr((np.log(x) - self.mu) / self.sigma) ** n
    step = self.cap / points
    return float(step * (below.sum() - below[-1] / 2 + 0.5))  # 1 - F(0)^n = 1 at x = 0

  def static_utilisation(self, batch: int) -> float:
    """Useful slot-steps of static batches of `batch` rows, each running to its longest row."""
    return self.mean / self.expected_max(batch)


def study_lengths(scheme: str, cap: int = STUDY_CAP, sigma: float = 1.0) -> LengthDistribution:
  """The study's length shape for a storage scheme: 3-bit weights and 4-bit activations + KV cache
  (the schemes that lengthen the chain of thought) take the 3-bit mean, the others the bf16 one."""
  s = parse_scheme(scheme)
  long = s.weight_bits == 3 or s.kv_bits == 4
  return LengthDistribution.with_mean(STUDY_MEAN_TOKENS["w3a16" if long else "bf16"], sigma, cap)


@dataclasses.dataclass(frozen=True)
class PagedFit:
  """Rows of one model replica (`model_parallel` chips) on a slice's chips, unpaged vs paged."""

  topology: Topology
  scheme: str
  model_parallel: int
  pool_bytes: float  # per chip: usable HBM - weights
  unpaged_rows: int  # per replica
  paged_rows: int  # per replica
  resident_tokens: float  # per paged row: prompt + written + half a page


def paged_fit(config: ModelConfig, topology: str | Topology, scheme: str,
              lengths: LengthDistribution | None = None, *, model_parallel: int = 1,
              prompt_len: int = PROMPT_LEN, max_new_tokens: int = STUDY_CAP,
              page_size: int = PAGE_SIZE, headroom: float = 0.10) -> PagedFit:
  """Concurrent rows per model replica of `model_parallel` chips: HBM left after the weights
  (less `headroom`) over a row's KV bytes on a chip, without paging (prompt + max_new_tokens
  slots) and with a paged pool (`lengths`' resident tokens; default `study_lengths(scheme)`)."""
  topo = topology if isinstance(topology, Topology) else parse_topology(topology)
  lengths = lengths or study_lengths(scheme, max_new_tokens)
  per_token = kv_bytes_per_token(config, parse_scheme(scheme).kv_bits) / _split(
      config.num_kv_heads, model_parallel)
  pool = (1 - headroom) * topo.hbm_bytes_per_chip - weight_bytes_per_chip(config, scheme,
                                                                          model_parallel)
  resident = prompt_len + lengths.resident_tokens + page_size / 2
  rows = lambda tokens: max(0, math.floor(pool / (tokens * per_token)))
  return PagedFit(topo, scheme, model_parallel, pool, rows(prompt_len + max_new_tokens),
                  rows(resident), resident)


def smallest_fit(config: ModelConfig, topology: str, scheme: str, **kw) -> PagedFit | None:
  """`paged_fit` with the least model parallelism (powers of two up to the slice's chips) at which
  one unpaged row fits; None when none does."""
  chips = parse_topology(topology).chips
  for m in (1 << i for i in range(chips.bit_length())):
    if m <= chips:
      fit = paged_fit(config, topology, scheme, model_parallel=m, **kw)
      if fit.unpaged_rows >= 1:
        return fit
  return None


PAGED_TABLE_MODELS = ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
                      "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                      "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
                      "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B")
PAGED_TABLE_TOPOLOGIES = ("v5litepod-8", "v6e-8", "v5p-8")


def paged_table(models: Sequence[str] = PAGED_TABLE_MODELS, schemes=("bf16", "w4a16", "w3a16"),
                topologies: Sequence[str] = PAGED_TABLE_TOPOLOGIES, **kw) -> str:
  """Markdown: per (model, scheme) and slice, `m=<model parallel>: <rows without paging> →
  <with paging>` per replica of m chips, at the least m that holds one unpaged row."""
  head = lambda t: (f"{t.replace('v5litepod', 'v5e')} "
                    f"({parse_topology(t).hbm_bytes_per_chip // GiB} GiB)")
  lines = ["| model | scheme (mean tokens) | " + " | ".join(map(head, topologies)) + " |",
           "|---|---|" + "---|" * len(topologies)]
  for model in models:
    for i, scheme in enumerate(schemes):
      cells = [model.rsplit("/", 1)[-1] if i == 0 else "",
               f"{scheme} ({study_lengths(scheme).mean / 1000:.1f}K)"]
      for t in topologies:
        fit = smallest_fit(STUDY_MODELS[model], t, scheme, **kw)
        cells.append("-" if fit is None else
                     f"m={fit.model_parallel}: {fit.unpaged_rows} → {fit.paged_rows}")
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


# --- the study grid's cost ---

@dataclasses.dataclass(frozen=True)
class GridRun:
  """One variant on one benchmark: `requests` responses on `topology` with mesh data x model."""

  model: str  # hub id
  benchmark: str
  variant: str
  scheme: str
  requests: int
  batch: int
  data: int
  model_parallel: int
  topology: str


def study_runs(study_dir: str | Path) -> list[GridRun]:
  """The grid `configs/study/<model>/<benchmark>.yaml` describes: every variant of every run file,
  with the benchmark's problems (the shipped files) x samples per problem."""
  from jaxthink.config import load_config  # noqa: PLC0415  (the eval stack is heavy)
  from jaxthink.data.benchmarks import read_problems  # noqa: PLC0415
  from jaxthink.eval.config import EvalConfig  # noqa: PLC0415

  by_dir = {hub.rsplit("/", 1)[-1]: hub for hub in STUDY_MODELS}
  problems: dict[str, int] = {}
  runs = []
  for path in sorted(Path(study_dir).glob("*/*.yaml")):
    if path.name == "model.yaml":
      continue
    cfg = load_config(EvalConfig, path)
    for benchmark in cfg.benchmarks:
      n = problems.setdefault(benchmark, len(read_problems(benchmark, cfg.data_directory)))
      n = min(n, cfg.limit or n) * cfg.sampling.samples_per_problem
      for v in cfg.variants:
        q = v.quant
        scheme = "bf16" if q is None else q.scheme + (f"kv{q.kv_bits}" if q.kv_bits else "")
        runs.append(GridRun(by_dir[cfg.model.directory.name], benchmark, v.name, scheme, n,
                            cfg.batch_size, cfg.mesh.data, cfg.mesh.model, cfg.tpu))
  return runs


def step_seconds(config: ModelConfig, topology: str, scheme: str, rows: int, resident: float,
                 model_parallel: int) -> float:
  """Roofline time of one decode step on a chip holding `rows` rows of `resident` tokens each."""
  generation = parse_topology(topology).generation
  bandwidth, flops = CHIP_SPEED[generation]
  kv = rows * resident * kv_bytes_per_token(config, parse_scheme(scheme).kv_bits) / _split(
      config.num_kv_heads, model_parallel)
  weights = weight_bytes_per_chip(config, scheme, model_parallel)
  attention = 4 * config.num_layers * config.num_heads * config.head_dim * resident
  work = rows * (2 * config.num_params + attention) / model_parallel
  return max((weights + kv) / bandwidth, work / flops)


def run_chip_hours(run: GridRun, utilisation: float | None = None, batch: int | None = None,
                   prompt_len: int = PROMPT_LEN) -> float:
  """Chip-hours of `run` at slot utilisation `utilisation` (None: static batches of its batch)
  and `batch` rows in flight (None: the config's)."""
  config, lengths = STUDY_MODELS[run.model], study_lengths(run.scheme)
  batch = batch or run.batch
  utilisation = utilisation or lengths.static_utilisation(run.batch)
  steps = run.requests * lengths.mean / (utilisation * batch)
  rows = math.ceil(batch / run.data)
  step = step_seconds(config, run.topology, run.scheme, rows, prompt_len + lengths.resident_tokens,
                      run.model_parallel)
  return steps * step * run.data * run.model_parallel / 3600


def grid_cost(runs: Sequence[GridRun], engine_utilisation: float = ENGINE_UTILISATION) -> dict:
  """Per model: requests and chip-hours of static batches, of the engine at the same batch, and of
  the engine with a paged pool filled to `paged_fit`'s rows per replica (`paged_batch`)."""
  out: dict[str, dict] = {}
  for run in runs:
    row = out.setdefault(run.model, dict(requests=0, static=0.0, engine=0.0, paged=0.0,
                                         topology=run.topology, batch=run.batch, paged_batch=0))
    fit = paged_fit(STUDY_MODELS[run.model], run.topology, run.scheme,
                    model_parallel=run.model_parallel)
    paged_batch = max(run.batch, fit.paged_rows * run.data)
    row["paged_batch"] = max(row["paged_batch"], paged_batch)
    row["requests"] += run.requests
    row["static"] += run_chip_hours(run)
    row["engine"] += run_chip_hours(run, engine_utilisation)
    row["paged"] += run_chip_hours(run, engine_utilisation, paged_batch)
  return out


def grid_table(runs: Sequence[GridRun], engine_utilisation: float = ENGINE_UTILISATION) -> str:
  """Markdown: per model, its slice, requests and chip-hours of the three ways, and the total."""
  cost = grid_cost(runs, engine_utilisation)
  total = {k: sum(c[k] for c in cost.values()) for k in ("requests", "static", "engine", "paged")}
  lines = ["| model | slice | requests | static batches: batch, chip-h | engine: chip-h (saved) | "
           "engine + paged pool: rows (up to), chip-h (saved) |", "|---|---|---:|---:|---:|---:|"]
  table = [(m.rsplit("/", 1)[-1], c["topology"], f"{c['batch']}, ", f"{c['paged_batch']}, ", c)
           for m, c in cost.items()] + [("**all**", "", "", "", total)]
  for name, topology, batch, paged_batch, c in table:
    saved = lambda k: f"{c[k]:,.0f} ({c['static'] / c[k]:.2f}x)"
    lines.append(f"| {name} | {topology} | {c['requests']:,} | {batch}{c['static']:,.0f} | "
                 f"{saved('engine')} | {paged_batch}{saved('paged')} |")
  return "\n".join(lines)
