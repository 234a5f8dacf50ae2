"""Quantize once per recipe: what a variant paid before (quantizing) vs a cache hit.

configs/demo.yaml's calibrated recipes on its model, the organism (float32): for each, the seconds of
`quantize` (every variant paid this before #16, penalised twins included), of a cache miss
(quantize + the orbax save), of a later run's hit (a new `QuantCache` on the same folder: orbax
restore) and of an in-memory hit (the same run's twin). Each is the best of `--repeats`. Also
counts the demo's quantizations per run before and after (round-to-nearest recipes are reused in
memory but not stored, so later runs redo them). Run from the repository root (the demo's
calibration path is relative to it). The last line is one JSON object; its `quantize_s` /
`cache_load_s` / `ratio` are the w4a16 GPTQ recipe's.

  python benchmarks/quant_cache.py [--repeats 3] [--variants w4a16-gptq,w3a16-gptq]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxthink.config import load_config
from jaxthink.eval.config import EvalConfig
from jaxthink.models import load_pretrained
from jaxthink.quant import quantize
from jaxthink.quant.cache import QuantCache

DEMO = Path("configs/demo.yaml")


def timed(fn) -> tuple[float, object]:
  t = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - t, out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--variants", default="w4a16-gptq,w3a16-gptq")
  args = parser.parse_args()
  cfg = load_config(EvalConfig, DEMO)
  reference = load_pretrained(cfg.model.directory, dtype=jnp.dtype(cfg.model.dtype))
  quantized = [v for v in cfg.variants if v.quant is not None]
  recipes = {v.quant for v in quantized}
  print(f"{DEMO}: {len(quantized)} quantized variants, {len(recipes)} recipes "
        f"({sum(q.needs_calibration for q in recipes)} calibrated); best of {args.repeats}")
  print(f"{'variant':>12} {'quantize s':>11} {'miss+save s':>12} {'disk hit s':>11} "
        f"{'memory hit s':>13} {'ratio':>7}")
  rows = {}
  for name in args.variants.split(","):
    spec = next(v.quant for v in cfg.variants if v.name == name)
    if not spec.needs_calibration:
      print(f"{name:>12} round to nearest: not stored, skipped")
      continue
    tokenizer = reference.tokenizer
    best = dict.fromkeys(("quantize_s", "cache_store_s", "cache_load_s", "memory_hit_s"),
                         float("inf"))
    for _ in range(args.repeats):
      folder = Path(tempfile.mkdtemp())
      get = lambda cache: cache.get(reference, cfg.model.directory, spec, tokenizer=tokenizer)
      seconds = {
          "quantize_s": timed(lambda: quantize(reference.config, reference.params, spec,
                                               tokenizer=tokenizer)[1])[0],
          "cache_store_s": timed(lambda: get(QuantCache(folder)))[0],
      }
      later_run = QuantCache(folder)
      seconds["cache_load_s"] = timed(lambda: get(later_run))[0]
      seconds["memory_hit_s"] = timed(lambda: get(later_run))[0]
      assert later_run.quantize_calls == 0
      best = {k: min(best[k], seconds[k]) for k in best}
      shutil.rmtree(folder)
    rows[name] = {k: round(v, 4) for k, v in best.items()}
    rows[name]["ratio"] = round(best["quantize_s"] / best["cache_load_s"], 1)
    print(f"{name:>12} {best['quantize_s']:>11.3f} {best['cache_store_s']:>12.3f} "
          f"{best['cache_load_s']:>11.3f} {best['memory_hit_s']:>13.4f} "
          f"{rows[name]['ratio']:>6.1f}x")
  gptq = rows.get("w4a16-gptq", next(iter(rows.values())))
  print(json.dumps({"quantize_s": gptq["quantize_s"], "cache_load_s": gptq["cache_load_s"],
                    "ratio": gptq["ratio"], "quantizations_per_run_before": len(quantized),
                    "quantizations_first_run_after": len(recipes),
                    "quantizations_later_runs_after": sum(not q.needs_calibration
                                                          for q in recipes),
                    "variants": rows}))


if __name__ == "__main__":
  main()
