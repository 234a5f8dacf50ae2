"""What a quantized variant costs to serve, next to the float model, in one run.

  python benchmarks/quant_serving.py [--model embedded] [--batch 64]

Seconds per greedy decode step (compiled loop, batch of 40-token prompts; the difference of a long
and a short run, so prefill and compilation cancel) of the float model and of each served RTN
scheme: AQT (symmetric; w4a4 int x int) and the zero-point layers (`jaxthink.quant.zero_point`).
On XLA:CPU this is what bounds an evaluation of many variants, such as the demo.
"""

from __future__ import annotations

import argparse
import json
import time

import jax.numpy as jnp
import numpy as np

import jaxthink
from jaxthink.decode import generate
from jaxthink.eval.config import COMMITTED
from jaxthink.quant import QuantSpec, quantize

SCHEMES = [("w8a16", None, True), ("w8a16", None, False), ("w4a16", 64, True),
           ("w4a16", 64, False), ("w3a16", 64, False), ("w4a4", None, True)]


def decode_step_seconds(policy, prompts, short: int = 16, long: int = 112) -> float:
  """(time(long) - time(short)) / (long - short), best of 3 compiled runs each."""
  def timed(n):
    generate(policy, prompts, max_new_tokens=n, eos_ids=())  # compile
    best = float("inf")
    for _ in range(3):
      start = time.perf_counter()
      np.asarray(generate(policy, prompts, max_new_tokens=n, eos_ids=()).tokens)
      best = min(best, time.perf_counter() - start)
    return best
  return (timed(long) - timed(short)) / (long - short)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="embedded", help="a committed model or an HF directory")
  parser.add_argument("--batch", type=int, default=64)
  args = parser.parse_args()
  model = jaxthink.load_pretrained(COMMITTED.get(args.model, (args.model,))[0], dtype=jnp.float32,
                                   tokenizer=False)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 200, 40).tolist() for _ in range(args.batch)]
  full = decode_step_seconds((model.model, model.params), prompts)
  rows = {"full": full}
  for scheme, group_size, symmetric in SCHEMES:
    spec = QuantSpec(scheme, "rtn", group_size=group_size, symmetric=symmetric)
    qmodel, qparams, _ = quantize(model.config, model.params, spec)
    name = f"{scheme}{'' if group_size is None else f' g{group_size}'} " \
           f"{'symmetric (AQT)' if symmetric else 'zero point'}"
    rows[name] = decode_step_seconds((qmodel, qparams), prompts)
  print(f"{'variant':<28} {'ms / step':>10} {'vs full':>8}")
  for name, seconds in rows.items():
    print(f"{name:<28} {1e3 * seconds:10.2f} {seconds / full:8.2f}")
  print(json.dumps({"batch": args.batch, "full_step_ms": round(1e3 * full, 3),
                    **{f"{name} / full": round(s / full, 3) for name, s in rows.items()
                       if name != "full"}}))


if __name__ == "__main__":
  main()
