"""Does an eval config's run compile and fit on its TPU slice? Every distinct program of the run
(per variant: prefill and the decode loop, co-decoding the reference where the config says so)
compiled for the slice from the architecture alone, with what the compiler decided.

A program's HBM per chip is the compiler's `memory_analysis()`: arguments + outputs - aliased
(the donated state) + temporaries + code. A decode step's defects are read off the optimized HLO
(`jaxthink.compile.hlo`): a copy of a whole layer's cache buffer, or a weight all-gathered on
every step.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp

from jaxthink.compile.hlo import decode_step
from jaxthink.compile.programs import (abstract_params, abstract_state, compile_decode,
                                       compile_prefill)
from jaxthink.decode.loop import LoopSpec
from jaxthink.decode.mesh import padded_batch_size
from jaxthink.decode.sampling import Sampling
from jaxthink.models.config import ModelConfig
from jaxthink.models.decoder import Decoder
from jaxthink.quant.aqt_linear import QuantRules
from jaxthink.quant.spec import QuantSpec

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Program:
  """One compiled program of a run and what the compiler says of it (per chip)."""

  name: str  # e.g. "decode w4a16 (+reference)"
  variants: tuple[str, ...]  # the config's variants that run it
  error: str | None = None
  hbm_bytes: int = 0
  capacity: int = 0
  compile_seconds: float = 0.0
  collectives: tuple[tuple[str, int], ...] = ()  # per decode step
  weight_gathers: tuple[str, ...] = ()  # per decode step
  cache_copies: tuple[str, ...] = ()  # per decode step

  @property
  def ok(self) -> bool:
    return (self.error is None and self.hbm_bytes <= self.capacity and not self.weight_gathers
            and not self.cache_copies)


def _memory(compiled) -> int:
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes + m.generated_code_size_in_bytes)


def _decoder(config: ModelConfig, dtype, spec: QuantSpec | None, attention: str) -> Decoder:
  quant = None if spec is None else QuantRules.from_spec(spec)
  return Decoder(config, dtype=dtype, param_dtype=dtype, quant=quant, decode_attention=attention)


def check_programs(config: ModelConfig, mesh, capacity: int, *, variants: dict[str, Any],
                   reference: str | bool, slots: int, prompt_len: int, max_new_tokens: int,
                   sampling: Sampling, dtype=jnp.bfloat16, decode_attention: str = "chunked",
                   prefill_rows: int = 8, log=print) -> list[Program]:
  """Compiles the run's programs on `mesh` and reports each.

  Args:
    variants: variant name -> its `QuantSpec` or None (full precision).
    reference: the eval config's `reference` (True / "score": a score pass after decoding, so the
      decode loop runs the policy alone; "codecode": the reference runs inside the loop).
  """
  slots = padded_batch_size(slots, mesh)
  max_len = prompt_len + max_new_tokens
  float_model = _decoder(config, dtype, None, decode_attention)
  float_params = abstract_params(float_model, mesh)
  by_program: dict[tuple, list[str]] = {}
  for name, spec in variants.items():
    codecode = reference == "codecode" and spec is not None
    rules = None if spec is None else QuantRules.from_spec(spec)
    key = (rules, None if spec is None else spec.kv_bits, codecode)
    by_program.setdefault(key, []).append(name)
  reports = []
  for (rules, kv_bits, codecode), names in by_program.items():
    spec = variants[names[0]]
    label = "bf16" if spec is None else spec.scheme + ("" if spec.resolved_symmetric() else "-zp")
    label += " (+reference)" if codecode else ""
    model = float_model if spec is None else _decoder(config, dtype, spec, decode_attention)
    params = float_params if spec is None else abstract_params(model, mesh)
    loop = LoopSpec(model, float_model if codecode else None, sampling, "constant",
                    config.eos_token_ids, config.pad_token_id or 0, max_new_tokens, kv_bits,
                    dtype, mesh)
    ref_params = float_params if codecode else None
    rows = padded_batch_size(prefill_rows, mesh)
    for program, build in (
        ("prefill", lambda: compile_prefill(loop, params, ref_params, rows, prompt_len)),
        ("decode", lambda: compile_decode(loop, params, ref_params, slots, max_len))):
      log(f"compiling {program} {label} ({', '.join(names)}) ...")
      start = time.perf_counter()
      try:
        compiled = build()
      except Exception as e:  # the compiler's own words: out of memory, unpartitionable, ...
        reports.append(Program(f"{program} {label}", tuple(names), error=_first_line(e),
                               capacity=capacity, compile_seconds=time.perf_counter() - start))
        continue
      extra = {}
      if program == "decode":
        k = abstract_state(loop, slots, max_len).cache.layers[0].k
        extra = _step_findings(compiled.as_text(), params, k.sharding.shard_shape(k.shape))
      reports.append(Program(f"{program} {label}", tuple(names), hbm_bytes=_memory(compiled),
                             capacity=capacity, compile_seconds=time.perf_counter() - start,
                             **extra))
  return reports


def _first_line(e: Exception) -> str:
  text = f"{type(e).__name__}: {e}"
  return next((line for line in text.splitlines() if "RESOURCE_EXHAUSTED" in line),
              text.splitlines()[0])[:300]


def _step_findings(hlo_text: str, params: Any, cache_buffer: tuple[int, ...]) -> dict:
  """Per decode step: collectives, weights gathered whole, copies of a layer's cache buffer
  (`cache_buffer`: one layer's K on one chip)."""
  step = decode_step(hlo_text)
  weights = {tuple(p.shape) for p in jax.tree.leaves(params) if p.ndim >= 2}
  describe = lambda i: f"{i.opcode} {i.result.split('{')[0]} ({i.bytes / 2**20:.1f} MiB)"
  return dict(collectives=tuple(sorted(step.collectives.items())),
              weight_gathers=tuple(describe(g) for g in step.gathers_of(weights)),
              cache_copies=tuple(describe(c) for c in step.copies if c.dims == cache_buffer))


def table(reports: list[Program]) -> str:
  """Markdown: one row per program."""
  lines = ["| program | variants | compiled | HBM per chip | of capacity | collectives per step "
           "| weight gathers / step | cache copies / step | verdict |",
           "|---|---|---|---:|---:|---|---:|---:|---|"]
  for r in reports:
    collectives = ", ".join(f"{n} {k}" for k, n in r.collectives) or "-"
    lines.append(
        f"| {r.name} | {len(r.variants)} | {'no: ' + r.error if r.error else 'yes'} | "
        f"{r.hbm_bytes / GiB:.2f} GiB | {r.hbm_bytes / r.capacity:.0%} | {collectives} | "
        f"{len(r.weight_gathers)} | {len(r.cache_copies)} | {'ok' if r.ok else 'FAILS'} |")
  return "\n".join(lines)

