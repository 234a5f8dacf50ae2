"""Decode throughput: jaxthink's compiled loop vs HF transformers `generate` (PyTorch), same CPU.

Same random weights, prompts, batch sizes, float32, greedy, same number of new tokens (no early
stop). For each model and batch size: generated tokens/s of both (prefill included, after
compilation), their ratio, jaxthink's compile time (first call minus a compiled call), the
co-decoding cost (time with a reference model in the step / without) and the marker-penalty
overhead (constant λ on 50 marker ids vs mode off). Variants are timed in turn, best of
`--repeats`, so background load on a shared machine spreads evenly; HF gets the better of 1 and 2
PyTorch threads.

Models: "small" (~5M parameters: per-token overhead dominates) and "100m" (a ~100M-parameter
Qwen2 shape: matmuls dominate).
Targets on a 2-core CPU: ratio >= 3x at batch 8 (small), >= 1x (100m); co-decoding <= 2.2x;
penalty overhead <= 5%. The last line printed is one JSON object with every number.

  python benchmarks/decode_throughput.py [--quick] [--models small,100m] [--new-tokens 64]
                                         [--repeats 8]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

import jaxthink
from jaxthink.decode import MarkerPenalty, generate
from jaxthink.models import ModelConfig

BASE = dict(model_type="qwen2", qkv_bias=True, rms_norm_eps=1e-6, rope_theta=1e6,
            tie_word_embeddings=True, max_position_embeddings=4096, eos_token_ids=(), pad_token_id=0)
MODELS = {
    "small": ModelConfig(vocab_size=8192, hidden_size=256, intermediate_size=704, num_layers=4,
                         num_heads=4, num_kv_heads=2, head_dim=64, **BASE),
    "100m": ModelConfig(vocab_size=32768, hidden_size=768, intermediate_size=2048, num_layers=12,
                        num_heads=12, num_kv_heads=2, head_dim=64, **BASE),
}


def make_models(config: ModelConfig, out_dir: Path):
  """Random HF model (PyTorch, float32) and the same weights loaded by jaxthink."""
  torch.manual_seed(0)
  hf_config = transformers.AutoConfig.for_model(**{**config.to_hf_dict(), "eos_token_id": None})
  hf = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32).eval()
  hf.save_pretrained(out_dir)
  ours = jaxthink.load_pretrained(out_dir, dtype=jnp.float32, tokenizer=False)
  return hf, ours


def prompts_for(batch: int, vocab: int, seed: int = 0) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [rng.integers(3, vocab, int(n)).tolist() for n in rng.integers(16, 33, batch)]


def interleaved_best(fns: dict, repeats: int) -> dict:
  """Best wall time of each function, timing them in turn `repeats` times (on a shared machine,
  interleaving spreads background load evenly and the minimum is the least disturbed run)."""
  best = {name: float("inf") for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t = time.perf_counter()
      fn()
      best[name] = min(best[name], time.perf_counter() - t)
  return best


def hf_generate(model, prompts, new_tokens: int, threads: int | None = None):
  """HF greedy generate on the left-padded batch. PyTorch runs with `threads` intra-op threads:
  on a loaded 2-core machine its 2-thread OpenMP runs now and then slow down 20x (threads wait
  at barriers for a descheduled peer), so HF is timed with 1 and 2 threads and gets the best."""
  if threads is not None:
    torch.set_num_threads(threads)
  seq = max(map(len, prompts))
  ids = torch.zeros((len(prompts), seq), dtype=torch.long)
  mask = torch.zeros((len(prompts), seq), dtype=torch.long)
  for i, p in enumerate(prompts):
    ids[i, seq - len(p):] = torch.tensor(p)
    mask[i, seq - len(p):] = 1
  with torch.no_grad():
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
  assert out.shape[1] == seq + new_tokens
  return out


def bench_model(name: str, config: ModelConfig, batches, new_tokens: int, repeats: int,
                tmp: Path) -> list[dict]:
  hf, ours = make_models(config, tmp / name)
  policy = (ours.model, ours.params)
  # A second tree for co-decoding (the values don't matter for speed).
  reference = (ours.model, jax.tree.map(lambda x: x * 1.001, ours.params))
  markers = MarkerPenalty("constant", 1.0, token_ids=tuple(
      np.random.default_rng(1).choice(config.vocab_size, 50, replace=False).tolist()))
  rows = []
  for batch in batches:
    prompts = prompts_for(batch, config.vocab_size)
    run = lambda **kw: generate(policy, prompts, max_new_tokens=new_tokens, eos_ids=(), **kw)
    t = time.perf_counter()
    first = run()
    first_s = time.perf_counter() - t
    assert first.lengths.min() == new_tokens
    variants = {"jax": run, "codecode": lambda: run(reference=reference),
                "penalty": lambda: run(penalty=markers),
                "hf1": lambda: hf_generate(hf, prompts, new_tokens, threads=1),
                "hf2": lambda: hf_generate(hf, prompts, new_tokens, threads=2)}
    for variant, fn in variants.items():  # compile / warm up
      fn() if not variant.startswith("hf") else hf_generate(hf, prompts, 2)
    s = interleaved_best(variants, repeats)
    s["hf"] = min(s["hf1"], s["hf2"])
    tokens = batch * new_tokens
    rows.append(dict(model=name, params_m=round(config.num_params / 1e6, 1), batch=batch,
                     hf_tok_s=tokens / s["hf"], jax_tok_s=tokens / s["jax"],
                     ratio=s["hf"] / s["jax"], compile_s=first_s - s["jax"],
                     codecode_cost=s["codecode"] / s["jax"],
                     penalty_overhead=s["penalty"] / s["jax"] - 1,
                     jax_ms_per_step=1e3 * s["jax"] / new_tokens,
                     hf_ms_per_step=1e3 * s["hf"] / new_tokens))
    print_row(rows[-1])
  return rows


HEADER = (f"{'model':>6} {'params':>7} {'batch':>5} {'HF tok/s':>9} {'jax tok/s':>9} {'ratio':>6} "
          f"{'compile s':>9} {'co-dec x':>8} {'penalty %':>9} {'jax ms/step':>11}")


def print_row(r: dict) -> None:
  print(f"{r['model']:>6} {r['params_m']:>6.1f}M {r['batch']:>5} {r['hf_tok_s']:>9.1f} "
        f"{r['jax_tok_s']:>9.1f} {r['ratio']:>5.2f}x {r['compile_s']:>9.1f} "
        f"{r['codecode_cost']:>7.2f}x {100 * r['penalty_overhead']:>8.1f}% "
        f"{r['jax_ms_per_step']:>11.2f}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="small model, batches 1 and 8, 32 tokens")
  parser.add_argument("--models", default="small,100m", help="comma-separated subset of "
                      + ",".join(MODELS))
  parser.add_argument("--new-tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=8,
                      help="timings per variant (best counts: background load comes in bursts)")
  args = parser.parse_args()
  new_tokens = 32 if args.quick else args.new_tokens
  names = ["small"] if args.quick else args.models.split(",")
  if not set(names) <= set(MODELS):
    parser.error(f"--models takes names from {sorted(MODELS)}, got {args.models!r}.")
  plan = {name: (1, 8) if args.quick else (1, 8, 32) for name in names}
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}; "
        f"{new_tokens} new tokens, greedy, float32, best of {args.repeats}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
  print(HEADER)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, batches in plan.items():
      rows += bench_model(name, MODELS[name], batches, new_tokens, args.repeats, Path(tmp))
  at8 = {r["model"]: r for r in rows if r["batch"] == 8}
  summary = {f"{key}{suffix}": at8.get(name, {}).get(key)
             for key in ("ratio", "codecode_cost", "penalty_overhead")
             for name, suffix in (("small", ""), ("100m", "_100m"))}
  summary.update(compile_s=at8.get("small", {}).get("compile_s"), new_tokens=new_tokens,
                 load_average=os.getloadavg()[0], rows=rows)
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
