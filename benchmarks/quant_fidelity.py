"""Quantization fidelity: zero-point vs symmetric weight grids, and W4A4 with rotations.

All on the embedded tiny model (float32) unless said, measured side by side in one run:

1. Per-layer held-out output error `||y_q - y||^2 / ||y||^2`, mean over the 21 linears, for
   w3a16 / w4a16 (g64: the model's width 192 is not a multiple of 128) RTN / GPTQ / AWQ with a
   symmetric grid and with zero points; and GPTQ w3 / w4 g128 on one random decoder block with
   Qwen2.5-0.5B's shapes, calibrated on real GSM8K text (byte tokens).
2. Teacher-forced mean token KL(float || quantized) on held-out windows of the model's own task
   text, w3a16 RTN / GPTQ / AWQ x symmetric / zero point x calibration source: the task's
   calibration text (reference solutions), GSM8K train solutions, and self traces (the float
   model's own sampled reasoning on 96 fresh task train problems, `jaxthink.quant.self_traces`,
   cached in `--traces`).
3. Cost: calibration seconds per linear (GPTQ w4 g64 / w3 g64), served bytes vs bf16, and the
   served decode step time of asymmetric vs symmetric int4 (greedy, batch 8, one compiled loop).
4. W4A4 (per-token int4 activations): plain vs Hadamard rotation vs learned FlatQuant-style
   transforms: mean per-layer error and whole-model KL.
5. W4A4KV4: the same three with an int4 KV cache, keys and values stored as they are or rotated
   per head first (`kv_rotation`): whole-model KL with every position reading the int4 cache.

The last line is one JSON object: `w3_asym_vs_sym_layer_error` (mean per-layer error ratio,
asym / sym, GPTQ w3 g128 on the 0.5B-shaped block), `w4a4_flatquant_vs_plain_kl` and the rest.

  python benchmarks/quant_fidelity.py [--only layers,block,kl,cost,w4a4,kv4] [--traces FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxthink
from jaxthink.models.config import ModelConfig
from jaxthink.models.hf_io import init_params
from jaxthink.quant import (CalibrationData, CalibrationSpec, QuantSpec, calibration_data,
                            quantize)
from jaxthink.quant.metrics import mean_token_kl
from jaxthink.quant.self_traces import write_self_traces
from jaxthink.tiny import generate_problems
from quant_serving import decode_step_seconds  # the same timer (benchmarks/ is on sys.path)

TINY = Path(jaxthink.__file__).parent / "tiny"
TASK_TEXT = TINY / "data" / "calibration.jsonl"


class ByteTokenizer:
  """UTF-8 bytes as token ids (for the random 0.5B-shaped block, vocabulary 256)."""

  eos_token_id = 10

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))


def mean_error(report) -> float:
  return float(np.mean([e["heldout_rel_error"] for e in report["layers"].values()]))


def embedded_data(model, traces: Path | None):
  """Calibration windows from the task text, GSM8K and (with `traces`) the model's own traces;
  one shared set of held-out windows (task text)."""
  task = calibration_data(model.tokenizer, CalibrationSpec(source=str(TASK_TEXT), num_samples=32,
                                                           seq_len=256, heldout_samples=8))
  out = {"task text": task}
  sources = {"gsm8k": "gsm8k"}
  if traces is not None:
    problems = [ex.problem for ex in generate_problems("train", 96, seed=7, difficulty=1)]
    t = time.perf_counter()
    sources["self traces"] = str(write_self_traces(model, problems, traces, max_new_tokens=256,
                                                   batch_size=32))
    print(f"self traces: {traces} ({time.perf_counter() - t:.1f} s)")
  for name, source in sources.items():
    data = calibration_data(model.tokenizer, CalibrationSpec(source=source, num_samples=32,
                                                             seq_len=256, heldout_samples=0))
    out[name] = CalibrationData.from_tokens(data.tokens, task.heldout, source=source)
  return out


def layer_error_table(model, data) -> dict:
  print("\n1. Mean per-layer held-out output error, embedded model, g64")
  print(f"{'scheme':>7} {'method':>6} {'symmetric':>11} {'zero point':>11} {'asym/sym':>9}")
  rows = {}
  for bits in (3, 4):
    for method in ("rtn", "gptq", "awq"):
      err = {}
      for symmetric in (True, False):
        spec = QuantSpec(f"w{bits}a16", method, group_size=64, symmetric=symmetric)
        err[symmetric] = mean_error(quantize(model.config, model.params, spec, data)[2])
      rows[f"w{bits}-{method}"] = err[False] / err[True]
      print(f"{'w%da16' % bits:>7} {method:>6} {err[True]:11.3e} {err[False]:11.3e} "
            f"{err[False] / err[True]:9.3f}")
  return rows


def qwen05b_block_ratios() -> dict:
  config = ModelConfig(model_type="qwen2", vocab_size=256, hidden_size=896,
                       intermediate_size=4864, num_layers=1, num_heads=14, num_kv_heads=2,
                       head_dim=64, rms_norm_eps=1e-6, rope_theta=1e6, qkv_bias=True,
                       eos_token_ids=(10,), pad_token_id=0)
  params = init_params(config, seed=0, dtype=jnp.float32)
  data = calibration_data(ByteTokenizer(), CalibrationSpec(source="gsm8k", num_samples=32,
                                                           seq_len=128, heldout_samples=4))
  print("\n   random block with Qwen2.5-0.5B shapes, GSM8K calibration, GPTQ g128")
  print(f"{'scheme':>7} {'symmetric':>11} {'zero point':>11} {'asym/sym':>9}")
  ratios = {}
  for bits in (3, 4):
    err = {}
    for symmetric in (True, False):
      spec = QuantSpec(f"w{bits}a16", "gptq", group_size=128, symmetric=symmetric)
      err[symmetric] = mean_error(quantize(config, params, spec, data)[2])
    ratios[bits] = err[False] / err[True]
    print(f"{'w%da16' % bits:>7} {err[True]:11.3e} {err[False]:11.3e} {ratios[bits]:9.3f}")
  return ratios


def kl_table(model, datasets) -> dict:
  print("\n2. Teacher-forced mean token KL to float on held-out task text, w3a16 g64")
  print(f"{'calibration':>12} {'method':>6} {'symmetric':>10} {'zero point':>11}")
  kls = {}
  for source, data in datasets.items():
    for method in ("rtn", "gptq", "awq"):
      if method == "rtn" and source != "task text":
        continue  # round to nearest reads no calibration
      kl = {}
      for symmetric in (True, False):
        spec = QuantSpec("w3a16", method, group_size=64, symmetric=symmetric)
        kl[symmetric] = quantize(model.config, model.params, spec, data)[2]["heldout_mean_kl"]
        kls[f"{source}/{method}/{'sym' if symmetric else 'asym'}"] = kl[symmetric]
      label = "-" if method == "rtn" else source
      print(f"{label:>12} {method:>6} {kl[True]:10.4f} {kl[False]:11.4f}")
  return kls


def cost_table(model, data) -> dict:
  print("\n3. Cost: calibration (second call, compiled), served bytes, decode step (int4 g64 "
        "GPTQ, greedy, batch 8)")
  prompts = [list(row[:32]) for row in data.heldout]
  out = {}
  for symmetric in (True, False):
    spec = QuantSpec("w4a16", "gptq", group_size=64, symmetric=symmetric)
    quantize(model.config, model.params, spec, data)  # compile
    qmodel, qparams, report = quantize(model.config, model.params, spec, data)
    step = decode_step_seconds((qmodel, qparams), prompts, long=208)
    out["asym" if not symmetric else "sym"] = {
        "calib_s_per_linear": report["seconds"] / len(report["layers"]),
        "bytes_ratio_vs_bf16": report["weight_bytes"]["ratio"], "decode_step_s": step}
  print(f"{'grid':>6} {'s/linear':>9} {'bytes/bf16':>11} {'decode step ms':>15}")
  for name, row in out.items():
    print(f"{name:>6} {row['calib_s_per_linear']:9.2f} {row['bytes_ratio_vs_bf16']:11.4f} "
          f"{1e3 * row['decode_step_s']:15.3f}")
  ratio = out["asym"]["decode_step_s"] / out["sym"]["decode_step_s"]
  print(f"decode step asym / sym: {ratio:.3f}")
  out["decode_step_asym_vs_sym"] = ratio
  return out


def w4a4_table(model, data, steps: int) -> dict:
  print(f"\n4. W4A4 (per-channel int4 weights, per-token int4 activations), FlatQuant {steps} "
        "AdamW steps per linear input")
  print(f"{'transform':>10} {'layer error':>12} {'KL to float':>12} {'seconds':>8}")
  out = {}
  for method in ("rtn", "hadamard", "flatquant"):
    t = time.perf_counter()
    report = quantize(model.config, model.params,
                      QuantSpec("w4a4", method, transform_steps=steps), data)[2]
    out[method] = {"layer_error": mean_error(report), "kl": report["heldout_mean_kl"],
                   "seconds": time.perf_counter() - t}
    name = "plain" if method == "rtn" else method
    print(f"{name:>10} {out[method]['layer_error']:12.3e} {out[method]['kl']:12.4f} "
          f"{out[method]['seconds']:8.1f}")
  return out


def kv4_table(model, data, steps: int) -> dict:
  print("\n5. W4A4KV4: whole-model KL to float, every position reading the int4 KV cache")
  print(f"{'transform':>10} {'KV as is':>10} {'KV rotated':>10} {'ratio':>7}")
  out = {}
  for method in ("rtn", "hadamard", "flatquant"):
    kls = []
    for rotation in (False, True):
      spec = QuantSpec("w4a4", method, kv_bits=4, kv_rotation=rotation, transform_steps=steps)
      quantized, params, _ = quantize(model.config, model.params, spec, data)
      kls.append(mean_token_kl(model.model, model.params, quantized, params, data.heldout,
                               kv_bits=4))
    out[method] = {"kl": kls[0], "kl_kv_rotated": kls[1]}
    name = "plain" if method == "rtn" else method
    print(f"{name:>10} {kls[0]:10.4f} {kls[1]:10.4f} {kls[1] / kls[0]:7.3f}")
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default="layers,block,kl,cost,w4a4,kv4",
                      help="comma-separated sections to run (the JSON holds null for the rest)")
  parser.add_argument("--traces", type=Path, default=Path("runs/quant_fidelity/self_traces.jsonl"),
                      help="self-trace cache (reused when it exists)")
  args = parser.parse_args()
  only = set(args.only.split(","))
  model = jaxthink.load_pretrained(TINY / "model", dtype=jnp.float32)
  datasets = embedded_data(model, args.traces if "kl" in only else None)
  task = datasets["task text"]
  print(f"embedded model; calibration {task.tokens.shape} windows, held-out {task.heldout.shape}; "
        f"devices {jax.devices()[0].platform}")
  run = lambda name, fn, *a: fn(*a) if name in only else None
  embedded_ratios = run("layers", layer_error_table, model, task)
  block_ratios = run("block", qwen05b_block_ratios) or {3: None, 4: None}
  kls = run("kl", kl_table, model, datasets)
  cost = run("cost", cost_table, model, task)
  w4a4 = run("w4a4", w4a4_table, model, task, 150)
  kv4 = run("kv4", kv4_table, model, task, 150)
  ratio = lambda m: None if w4a4 is None else w4a4[m]["kl"] / w4a4["rtn"]["kl"]
  result = {
      "w3_asym_vs_sym_layer_error": block_ratios[3],
      "w4_asym_vs_sym_layer_error": block_ratios[4],
      "embedded_g64_asym_vs_sym_layer_error": embedded_ratios,
      "w3a16_kl": kls,
      "cost": cost,
      "w4a4_flatquant_vs_plain_kl": ratio("flatquant"),
      "w4a4_hadamard_vs_plain_kl": ratio("hadamard"),
      "w4a4": w4a4,
      "w4a4kv4_flatquant_kv_rotated_vs_plain_kl": None if kv4 is None else (
          kv4["flatquant"]["kl_kv_rotated"] / kv4["rtn"]["kl"]),
      "w4a4kv4": kv4,
  }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
