"""`evaluate`: benchmarks -> prompts -> generation per variant -> grades -> results, report, plots."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from jaxthink.analysis.report import (VariantSummary, failure_examples, hexbin_points,
                                     summarize_variant, write_report)
from jaxthink.analysis.stats import TokenBuffers, token_stats
from jaxthink.data.benchmarks import Problem, load_benchmark
from jaxthink.data.markers import load_markers
from jaxthink.decode.engine import Engine, Request
from jaxthink.decode.generate import DecodeResult, bucket_length
from jaxthink.decode.mesh import mesh_from_config, padded_batch_size, wait_for_every_process
from jaxthink.decode.score import score_reference
from jaxthink.decode.sampling import Sampling
from jaxthink.eval.config import EvalConfig, Variant
from jaxthink.eval.penalty_report import TokenAnalysis
from jaxthink.eval.run_dir import RunDir, response_key
from jaxthink.eval.token_sets import variant_penalty
from jaxthink.eval.validate import check_mesh, prompt_tokens, validate
from jaxthink.finetune.adapters import adapted, with_adapters
from jaxthink.finetune.checkpoint import load_adapters
from jaxthink.grading import analyze_response, failure_bucket, grade
from jaxthink.grading.omission import reference_steps
from jaxthink.models import Pretrained, load_pretrained
from jaxthink.models.tokenizer import token_char_offsets
from jaxthink.quant import load_quantized
from jaxthink.quant.cache import QuantCache, default_cache_dir
from jaxthink.quant.self_traces import resolve_self_traces

# Per-token buffers saved for each response (DecodeResult field -> side-file name).
_BUFFERS = {"tokens": "token_ids", "entropy": "entropy_quant", "log_prob": "logprobs",
            "is_marker": "is_marker", "penalty_fired": "penalty_fired", "kl": "kl",
            "ref_entropy": "entropy_ref", "ref_log_prob": "ref_logprobs",
            "marker_in_top": "marker_in_top"}


@dataclasses.dataclass(frozen=True)
class WorkItem:
  benchmark: str
  index: int
  sample: int
  problem: Problem
  prompt: tuple[int, ...]

  def key(self, variant: str) -> str:
    return response_key(variant, self.benchmark, self.index, self.sample)


def evaluate(cfg: EvalConfig, repair: bool = False) -> dict[str, Path]:
  """Runs (or resumes) `cfg` holding the run directory's lock, after `validate`; returns the
  written report files. `repair`: see `RunDir`."""
  check_mesh(cfg.mesh)  # starts jax.distributed if asked, before process_index
  with RunDir(cfg.output_dir, cfg, writer=jax.process_index() == 0, repair=repair) as run:
    validate(cfg)
    return _evaluate(cfg, run)


def _evaluate(cfg: EvalConfig, run: RunDir) -> dict[str, Path]:
  mesh = mesh_from_config(cfg.mesh)
  reference = load_pretrained(cfg.model.directory, dtype=jnp.dtype(cfg.model.dtype), mesh=mesh)
  run.start()
  tok = reference.tokenizer
  problems = {name: load_benchmark(name, cfg.data_directory, limit=cfg.limit)
              for name in cfg.benchmarks}
  items = [WorkItem(name, i, s, p, prompt_tokens(tok, p.problem, cfg.prompt))
           for name, ps in problems.items() for i, p in enumerate(ps)
           for s in range(cfg.sampling.samples_per_problem)]
  done = _finished_keys(run, [it.key(v.name) for v in cfg.variants for it in items])
  markers = load_markers()  # the list the overthinking analysis counts
  quant_cache = QuantCache(default_cache_dir(cfg.output_dir))  # twins share their recipe's params

  # Control-set variants run after the unpenalised runs their token sets are chosen from.
  for variant in sorted(cfg.variants, key=lambda v: v.penalty.source is not None):
    todo = [it for it in items if it.key(variant.name) not in done]
    if not todo:
      continue
    policy, kv_bits = _policy(variant, reference, cfg, mesh, quant_cache)
    penalty = variant_penalty(run, variant, tok, reference.config.vocab_size,
                              reference.config.eos_token_ids)
    ref = (reference.model, reference.params) if cfg.reference and variant.quantized else None
    _run_variant(cfg, run, variant, policy, kv_bits, penalty, ref, tok, todo, mesh, markers)
  return _report(cfg, run, tok)


def _finished_keys(run: RunDir, keys: Sequence[str]) -> set[str]:
  """Keys already in results.jsonl; on several hosts, process 0's view (only it holds the file)."""
  done = {row["key"] for row in run.rows()}
  if jax.process_count() > 1:
    wait_for_every_process("jaxthink: evaluate")  # the run's first collective follows
    mask = multihost_utils.broadcast_one_to_all(np.asarray([k in done for k in keys]))
    done = {k for k, d in zip(keys, np.asarray(mask)) if d}
  return done


def _policy(variant: Variant, reference: Pretrained, cfg: EvalConfig, mesh, cache: QuantCache):
  """`((model, params), kv_bits)` of the model a variant generates with (adapters added)."""
  (model, params), spec = _base_policy(variant, reference, cfg, mesh, cache)
  if variant.adapter is not None:
    adapters, meta = load_adapters(variant.adapter, spec)
    model, params = adapted(model, meta.adapter), with_adapters(params, adapters)
  return (model, params), None if spec is None else spec.kv_bits


def _base_policy(variant, reference, cfg, mesh, cache):
  """`((model, params), quant spec or None)` before adapters."""
  if variant.checkpoint is not None:
    quantized, spec, _ = load_quantized(variant.checkpoint, mesh=mesh, tokenizer=False)
    return (quantized.model, quantized.params), spec
  spec = cfg.quant_spec(variant)
  if spec is None:
    return (reference.model, reference.params), None
  spec = resolve_self_traces(spec, reference, cfg.output_dir)  # one set per run directory
  # Round to nearest needs no calibration text (it would only feed the error report).
  tokenizer = None if spec.method == "rtn" else reference.tokenizer
  policy = cache.get(reference, cfg.model.directory, spec, tokenizer=tokenizer, mesh=mesh)
  return policy, spec


def _row_seed(seed: int, item: WorkItem) -> int:
  """A response's sampling seed depends on (seed, benchmark, problem, sample) only, so a resumed
  run draws the same tokens as an uninterrupted one."""
  digest = hashlib.sha256(f"{seed}/{item.benchmark}/{item.index}/{item.sample}".encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _run_variant(cfg, run, variant, policy, kv_bits, penalty, ref, tok, todo, mesh, markers):
  """Every item of `todo` through one request queue (`cfg.batch_size` decode slots); each
  response is graded and appended as soon as it finishes (with `reference: score`, as soon as a
  batch of them has been scored)."""
  s = cfg.sampling
  score = ref is not None and cfg.reference != "codecode"
  slots = padded_batch_size(cfg.batch_size, mesh)
  engine = Engine(policy, slots=slots, max_new_tokens=s.max_new_tokens,
                  sampling=Sampling(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p),
                  penalty=penalty, reference=None if score else ref, mesh=mesh, kv_bits=kv_bits)
  requests = [Request(it.prompt, s.max_new_tokens, _row_seed(s.seed, it)) for it in todo]
  bar = tqdm(total=len(todo), desc=variant.name, unit="resp", disable=jax.process_index() != 0)
  generated, pending = 0, []
  # The longest possible sequence sizes the score pass's cache: every call shares one program.
  longest = bucket_length(max(len(it.prompt) for it in todo)) + s.max_new_tokens

  def write(finished):
    if score:
      items = [todo[i] for i, _ in finished]
      results = score_reference(policy, ref, [it.prompt for it in items],
                                [r for _, r in finished], kv_bits=kv_bits, max_len=longest,
                                mesh=mesh)
      finished = [(i, r) for (i, _), r in zip(finished, results)]
    rows, buffers = zip(*(_grade_row(run, variant, todo[i], r, 0, tok, markers)
                          for i, r in finished))
    run.append(rows, buffers)
    bar.update(len(finished))

  for i, result in engine.stream(requests):
    pending.append((i, result))
    generated += int(result.lengths[0])
    if not score or len(pending) == slots:
      write(pending)
      pending = []
    bar.set_postfix(tok_s=f"{generated / max(engine.stats.seconds, 1e-9):.0f}")
  if pending:
    write(pending)
  bar.close()


def _grade_row(run: RunDir, variant: Variant, item: WorkItem, result: DecodeResult, r: int, tok,
               markers: tuple[str, ...]):
  """The results.jsonl row and the per-token buffers of row `r` of a generated batch."""
  n = int(result.lengths[r])
  hit_max = not bool(result.finished[r])
  ids = result.tokens[r, :n - (not hit_max)].tolist()  # the end token is not part of the text
  text = tok.decode(ids, skip_special_tokens=False)
  offsets = token_char_offsets(tok, ids, text)
  g = grade(text, item.problem.answer, item.benchmark, hit_max_tokens=hit_max)
  over = analyze_response(text, item.problem.answer, g.correct, token_offsets=offsets,
                          hit_max_tokens=hit_max, markers=markers)
  token_file = run.token_file(variant.name, item.benchmark, item.index, item.sample)
  row = {
      "key": item.key(variant.name), "variant": variant.name, "benchmark": item.benchmark,
      "index": item.index, "sample": item.sample, "problem_id": f"{item.benchmark}/{item.problem.id}",
      "gold": item.problem.answer, "extracted": g.extracted, "correct": g.correct,
      "truncated": g.truncated, "n_tokens": n, "failure": failure_bucket(
          g, over, text, reference_steps(item.benchmark, item.problem.problem,
                                         item.problem.solution, item.problem.answer)),
      "overthinking_error": over.overthinking_error,
      "first_correct_token": over.first_correct_token, "tokens_after_first_correct":
      over.tokens_after_first_correct, "n_markers": over.n_markers,
      "penalty_fired": int(result.penalty_fired[r, :n].sum()),
      "mean_kl": None if result.kl is None or not n else float(result.kl[r, :n].mean()),
      "response": text, "token_file": str(token_file.relative_to(run.path)),
  }
  buffers = {name: getattr(result, field)[r, :n] for field, name in _BUFFERS.items()
             if getattr(result, field) is not None}
  return row, buffers


def _report(cfg: EvalConfig, run: RunDir, tok) -> dict[str, Path]:
  """summary.json, report.md and plots from results.jsonl and the side files (process 0)."""
  if not run.writer:
    return {}
  rows = run.rows()
  summaries: list[VariantSummary] = []
  points = {}
  analysis = TokenAnalysis(tok, min_count=min(v.penalty.min_count for v in cfg.variants))
  by_variant = {v.name: [r for r in rows if r["variant"] == v.name] for v in cfg.variants}
  for variant in cfg.variants:
    vrows = by_variant[variant.name]
    if not vrows:
      continue
    buffers = TokenBuffers.from_sequences([dict(np.load(run.path / r["token_file"])) for r in vrows])
    analysis.add(variant, buffers)
    stats = token_stats(buffers)
    summaries.append(summarize_variant(variant.name, vrows, stats))
    if buffers.kl is not None:
      points[variant.name] = hexbin_points(buffers)
  baselines = {v.name: v.compare_to or cfg.variants[0].name for v in cfg.variants}
  files = write_report(summaries, run.path, baseline=baselines, token_points=points,
                       title=f"jaxthink evaluation: {', '.join(cfg.benchmarks)}",
                       sections=[*analysis.sections(run, cfg.variants, summaries, baselines),
                                 *failure_examples(by_variant)])
  summary = {"config": str(run.path / "config.json"),
             "variants": {s.name: s.to_dict() for s in summaries}}
  (run.path / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
  files["summary"] = run.path / "summary.json"
  return files
