"""Top-p sampling step over a Qwen2-sized vocabulary: sorting everything vs the nucleus search.

One `choose_tokens` call (compiled) with the R1 setting (temperature 0.6, top-p 0.95, no top-k)
on `[batch, 152064]` logits, batch 8 and 32. "before" is the algorithm before #16 (a copy below:
`jax.lax.top_k` over the whole vocabulary, i.e. a full sort per row); "after" is
`jaxthink.decode.sampling.choose_tokens` (top-256 candidates, full sort only when some row's
nucleus is larger). Two kinds of logits:
  peaked: a reasoning model's usual step, a few dozen plausible tokens over a noisy tail; the
          nucleus fits the candidates, and both algorithms draw the same tokens (checked here);
  flat:   near-uniform logits (nucleus ~140K tokens): the step falls back to the full sort and
          pays for the candidate search on top of it.
Both variants are timed in turn, best of `--repeats`. The last line is one JSON object; its
`topp_before_ms` / `topp_after_ms` / `ratio` are batch 32, peaked.

  python benchmarks/sampling_step.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxthink.decode.sampling import NUCLEUS_CANDIDATES, Sampling, choose_tokens, row_keys

VOCAB = 152_064  # Qwen2 / R1-Distill-Qwen
R1 = Sampling(temperature=0.6, top_p=0.95)


def sort_all_choose_tokens(logits, keys, step, sampling):
  """`choose_tokens` before #16: top-p sorts the whole vocabulary."""
  scaled = logits.astype(jnp.float32) / sampling.temperature
  vocab = scaled.shape[-1]
  k = min(sampling.top_k, vocab) if sampling.top_k else (vocab if sampling.top_p < 1 else 0)
  if k:
    scaled, candidates = jax.lax.top_k(scaled, k)
  if sampling.top_p < 1:
    probs = jax.nn.softmax(scaled, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    scaled = jnp.where(mass_before < sampling.top_p, scaled, -jnp.inf)
  step_keys = jax.vmap(lambda key: jax.random.fold_in(key, step))(keys)
  picked = jax.vmap(jax.random.categorical)(step_keys, scaled)
  if k:
    picked = jnp.take_along_axis(candidates, picked[:, None], axis=-1)[:, 0]
  return picked.astype(jnp.int32)


def make_logits(batch: int, kind: str, seed: int = 0) -> jax.Array:
  """`[batch, VOCAB]` float32 logits: "peaked" (40 tokens 8-14 nats above a N(0, 2) tail) or
  "flat" (N(0, 0.1))."""
  rng = np.random.default_rng(seed)
  if kind == "flat":
    return jnp.asarray(rng.normal(0, 0.1, (batch, VOCAB)), jnp.float32)
  logits = rng.normal(0, 2, (batch, VOCAB))
  for row in logits:
    row[rng.choice(VOCAB, 40, replace=False)] += rng.uniform(8, 14, 40)
  return jnp.asarray(logits, jnp.float32)


def best_ms(fns: dict, args: tuple, repeats: int) -> dict:
  """Best wall time (ms) of each compiled function, timed in turn."""
  for fn in fns.values():
    fn(*args).block_until_ready()  # compile
  best = {name: float("inf") for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t = time.perf_counter()
      fn(*args).block_until_ready()
      best[name] = min(best[name], (time.perf_counter() - t) * 1e3)
  return best


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; vocab {VOCAB}, {R1}, "
        f"{NUCLEUS_CANDIDATES} candidates; best of {args.repeats}")
  fns = {"before": jax.jit(sort_all_choose_tokens, static_argnums=3),
         "after": jax.jit(choose_tokens, static_argnums=3)}
  print(f"{'batch':>5} {'logits':>7} {'nucleus':>8} {'before ms':>10} {'after ms':>9} "
        f"{'ratio':>6} {'same tokens':>11}")
  rows = []
  for batch in (8, 32):
    for kind in ("peaked", "flat"):
      logits = make_logits(batch, kind)
      call = (logits, row_keys(0, batch), jnp.int32(5), R1)
      same = bool((fns["before"](*call) == fns["after"](*call)).all())
      ms = best_ms(fns, call, args.repeats)
      probs = np.sort(np.asarray(jax.nn.softmax(logits / R1.temperature)), axis=-1)[:, ::-1]
      nucleus = int((np.cumsum(probs, -1) - probs < R1.top_p).sum(-1).max())
      rows.append(dict(batch=batch, logits=kind, max_nucleus=nucleus, before_ms=ms["before"],
                       after_ms=ms["after"], ratio=ms["before"] / ms["after"], same_tokens=same))
      print(f"{batch:>5} {kind:>7} {nucleus:>8} {ms['before']:>10.2f} {ms['after']:>9.2f} "
            f"{ms['before'] / ms['after']:>5.1f}x {str(same):>11}")
  main_row = next(r for r in rows if r["batch"] == 32 and r["logits"] == "peaked")
  print(json.dumps({"topp_before_ms": round(main_row["before_ms"], 3),
                    "topp_after_ms": round(main_row["after_ms"], 3),
                    "ratio": round(main_row["ratio"], 2), "candidates": NUCLEUS_CANDIDATES,
                    "rows": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
                             for r in rows]}))


if __name__ == "__main__":
  main()
