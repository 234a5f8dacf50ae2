"""Does a low-rank fine-tune on step-annotated solutions recover what 3-bit weights cost?

The embedded tiny model (float32) in full precision, quantized (default: w3a16 round-to-nearest,
group 64: its most damaged weight-only variant), and quantized with adapters trained on
the synthetic step-annotated train split (`jaxthink.finetune`; integers frozen). All three answer
the same held-out problems (greedy): the test split of the task generator (its first 200 are the
shipped `tiny` benchmark), or with `--split validation` problems of the train split that neither
the model nor the fine-tune saw (for choosing settings without looking at the test split).
Accuracies with paired bootstrap 95% intervals, `gap_recovered` = (tuned - quant) / (full - quant),
failure buckets side by side. The last line is one JSON object.

  nice -n 19 python benchmarks/recovery.py [--problems 500] [--steps 300] [--split test]
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import jax.numpy as jnp
import numpy as np

from jaxthink.decode.engine import Engine, Request
from jaxthink.eval.config import EMBEDDED_MODEL_DIR
from jaxthink.finetune import (AdapterSpec, StepFormat, TrainSpec, adapted, finetune,
                               synthetic_step_solutions, with_adapters)
from jaxthink.finetune.steps import encode
from jaxthink.grading import analyze_response, failure_bucket, grade
from jaxthink.grading.omission import synthetic_steps
from jaxthink.grading.taxonomy import BUCKETS
from jaxthink.models import load_pretrained, reasoning_prompt
from jaxthink.quant import QuantSpec, quantize
from jaxthink.tiny.task import generate_problems
from jaxthink.tiny.train import PRESETS

MAX_NEW_TOKENS = 320  # the embedded model's longest solutions fit
TINY = PRESETS["embedded"]  # how the embedded model was trained (its train problems come first)


def held_out(split: str, n: int):
  if split == "test":
    return generate_problems("test", n, TINY.seed, TINY.difficulty)
  # Train-split problems after those the model was trained and calibrated on.
  skip = TINY.train_problems + TINY.calibration_problems
  return generate_problems("train", skip + n, TINY.seed, TINY.difficulty)[skip:]


def evaluate(policy, tokenizer, problems, slots: int) -> list[dict]:
  """Greedy answers to `problems`: correctness, failure bucket, response text."""
  prompts = [tokenizer.encode(reasoning_prompt(tokenizer, p.problem), add_special_tokens=False)
             for p in problems]
  engine = Engine(policy, slots=slots, max_new_tokens=MAX_NEW_TOKENS)
  results = engine.run([Request(p, MAX_NEW_TOKENS) for p in prompts])
  rows = []
  for problem, result in zip(problems, results):
    n, hit_max = int(result.lengths[0]), not bool(result.finished[0])
    text = tokenizer.decode(result.tokens[0, :n - (not hit_max)].tolist())
    g = grade(text, problem.answer, "tiny", hit_max_tokens=hit_max)
    over = analyze_response(text, problem.answer, g.correct, hit_max_tokens=hit_max)
    # Step omission from the generator's own step graph of the problem.
    bucket = failure_bucket(g, over, text, synthetic_steps(problem.ops))
    rows.append({"correct": g.correct, "failure": bucket, "text": text})
  return rows


def bootstrap(correct: dict[str, np.ndarray], resamples: int, seed: int = 0) -> dict:
  """95% intervals of each accuracy and of gap_recovered, resampling problems (paired)."""
  rng = np.random.default_rng(seed)
  n = len(next(iter(correct.values())))
  idx = rng.integers(0, n, (resamples, n))
  acc = {k: v[idx].mean(1) for k, v in correct.items()}
  gap = acc["full"] - acc["quant"]
  with np.errstate(divide="ignore", invalid="ignore"):
    recovered = np.where(gap > 0, (acc["tuned"] - acc["quant"]) / gap, np.nan)
  def interval(x):  # None where no resample defines it (no gap at all)
    x = x[~np.isnan(x)]
    return [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))] if x.size else None
  return {**{f"{k}_acc_ci": interval(v) for k, v in acc.items()},
          "gap_recovered_ci": interval(recovered),
          "resamples_without_gap": int(np.sum(~(gap > 0)))}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--problems", type=int, default=500)
  parser.add_argument("--split", choices=("test", "validation"), default="test")
  parser.add_argument("--scheme", default="w3a16")
  parser.add_argument("--group-size", type=int, default=64)
  parser.add_argument("--train-problems", type=int, default=4800)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--rank", type=int, default=8)
  parser.add_argument("--alpha", type=float, default=16.0)
  parser.add_argument("--lr", type=float, default=2e-3)
  parser.add_argument("--max-train-seconds", type=float, default=600.0)
  parser.add_argument("--slots", type=int, default=64)
  parser.add_argument("--resamples", type=int, default=2000)
  parser.add_argument("--float-baseline", action="store_true",
                      help="also train the same adapters on the float model (how much of the gain "
                           "is the extra training rather than repairing quantization)")
  args = parser.parse_args()

  full = load_pretrained(EMBEDDED_MODEL_DIR, dtype=jnp.float32)
  tok = full.tokenizer
  spec = QuantSpec(args.scheme, "rtn", group_size=args.group_size)
  qmodel, qparams, _ = quantize(full.config, full.params, spec)
  adapter = AdapterSpec(rank=args.rank, alpha=args.alpha)
  train = TrainSpec(steps=args.steps, batch_size=args.batch_size, peak_lr=args.lr,
                    warmup_steps=max(1, args.steps // 10), max_seconds=args.max_train_seconds)
  data = synthetic_step_solutions("train", args.train_problems, seed=1, difficulty=TINY.difficulty)
  tokens, token_mask, loss_mask = encode(tok, data, StepFormat(), TINY.max_len)
  kept = sum(d.complete for d in data)
  print(f"fine-tune data: {len(data)} synthetic step solutions (train split, seed 1), {kept} "
        f"complete, {len(data) - kept} cut at a step rated -1; "
        f"{sum(s.rating == -1 for d in data for s in d.steps)} steps rated -1")
  adapters, record = finetune(qmodel, qparams, adapter, tokens, token_mask, loss_mask, train)
  print(f"trained {record['steps_run']} steps in {record['seconds']} s, loss "
        f"{record['losses'][0][1]:.4f} -> {record['losses'][-1][1]:.4f}")
  if args.float_baseline:
    float_adapters, float_record = finetune(full.model, full.params, adapter, tokens, token_mask,
                                            loss_mask, train)
    print(f"float baseline: trained {float_record['steps_run']} steps in "
          f"{float_record['seconds']} s, loss {float_record['losses'][0][1]:.4f} -> "
          f"{float_record['losses'][-1][1]:.4f}")

  problems = held_out(args.split, args.problems)
  policies = {"full": (full.model, full.params), "quant": (qmodel, qparams),
              "tuned": (adapted(qmodel, adapter), with_adapters(qparams, adapters))}
  if args.float_baseline:
    policies["full_tuned"] = (adapted(full.model, adapter),
                              with_adapters(full.params, float_adapters))
  rows, seconds = {}, {}
  for name, policy in policies.items():
    started = time.perf_counter()
    rows[name] = evaluate(policy, tok, problems, args.slots)
    seconds[name] = round(time.perf_counter() - started, 1)
  correct = {k: np.array([r["correct"] for r in v], float) for k, v in rows.items()}
  acc = {k: float(v.mean()) for k, v in correct.items()}
  ci = bootstrap(correct, args.resamples)
  gap = acc["full"] - acc["quant"]
  recovered = (acc["tuned"] - acc["quant"]) / gap if gap > 0 else None
  label = {"full": "full precision", "quant": f"{args.scheme}-rtn g{args.group_size}",
           "tuned": f"{args.scheme}-rtn g{args.group_size} + LoRA r{args.rank}",
           "full_tuned": f"full precision + LoRA r{args.rank}"}
  print(f"\n{len(problems)} held-out problems ({args.split} split), greedy, "
        f"{MAX_NEW_TOKENS} new tokens at most")
  print("| variant | accuracy | 95% CI | eval s | " + " | ".join(BUCKETS) + " |")
  print("|---|---:|---|---:|" + "---:|" * len(BUCKETS))
  for name in policies:
    counts = collections.Counter(r["failure"] for r in rows[name])
    lo, hi = ci[f"{name}_acc_ci"]
    print(f"| {label[name]} | {100 * acc[name]:.1f}% | [{100 * lo:.1f}, {100 * hi:.1f}] | "
          f"{seconds[name]} | " + " | ".join(str(counts.get(b, 0)) for b in BUCKETS) + " |")
  if recovered is None:
    print("no accuracy gap between full precision and the quantized model: nothing to recover")
  else:
    lo, hi = ci["gap_recovered_ci"]
    print(f"gap recovered: {recovered:.2f} (95% CI [{lo:.2f}, {hi:.2f}]), training "
          f"{record['seconds']} s")
  print(json.dumps({"full_acc": acc["full"], "quant_acc": acc["quant"], "tuned_acc": acc["tuned"],
                    "gap_recovered": recovered, "full_tuned_acc": acc.get("full_tuned"), **ci,
                    "problems": len(problems),
                    "split": args.split, "train_seconds": record["seconds"],
                    "train_steps": record["steps_run"], "scheme": args.scheme,
                    "group_size": args.group_size, "rank": args.rank, "lr": args.lr,
                    "train_problems": args.train_problems}))


if __name__ == "__main__":
  main()
