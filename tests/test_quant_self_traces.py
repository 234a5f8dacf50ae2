"""Self-trace calibration: the float model's own traces on train problems, written once as a JSONL
calibration source and reused."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import pytest
import yaml

import jaxthink
from jaxthink.config import load_config
from jaxthink.data.benchmarks import read_problems
from jaxthink.decode import Sampling
from jaxthink.eval import evaluate
from jaxthink.eval.config import EvalConfig
from jaxthink.models.tokenizer import reasoning_prompt
from jaxthink.quant import CalibrationSpec, QuantConfigError, calibration_data
from jaxthink.quant.self_traces import write_self_traces
from jaxthink.tiny import generate_problems
from test_quant_zero_point import TINY


def test_self_traces_are_the_models_greedy_reasoning_and_are_cached(tmp_path):
  model = jaxthink.load_pretrained(TINY / "model", dtype=jnp.float32)
  examples = generate_problems("train", 6, seed=7, difficulty=1)
  path = write_self_traces(model, [e.problem for e in examples], tmp_path / "traces.jsonl",
                           max_new_tokens=200, batch_size=4, sampling=Sampling())
  rows = [json.loads(line)["text"] for line in path.read_text().splitlines()]
  assert len(rows) == 6
  right = 0
  for text, example in zip(rows, examples):
    prompt = reasoning_prompt(model.tokenizer, example.problem)
    assert text.startswith(prompt) and "</think>" in text[len(prompt):]
    right += f"\\boxed{{{example.answer}}}" in text
  print(f"\n{right} of 6 greedy self traces end in the right boxed answer; first:\n{rows[0]}")
  assert right >= 5  # the model's own (mostly right) reasoning, not the reference solutions
  before = path.read_text()
  write_self_traces(model, ["something else"], path)  # reused, not regenerated
  assert path.read_text() == before
  data = calibration_data(model.tokenizer, CalibrationSpec(source=str(path), num_samples=2,
                                                           seq_len=64, heldout_samples=0))
  assert data.tokens.shape == (2, 64)


def test_eval_run_calibrates_on_self_traces_written_once(tmp_path):
  """`calibration: {source: self_traces}`: the run writes the float model's traces of the first
  train problems into its directory once (two variants share them) and GPTQ calibrates on them:
  the quantization cache's key holds the sha of the windows cut from that file."""
  shipped = Path(jaxthink.__file__).parent / "data" / "benchmark_files"  # the run reads tiny's
  calibration = {"source": "self_traces", "traces_from": "gsm8k", "data_dir": str(shipped),
                 "num_traces": 3,
                 "trace_tokens": 24, "num_samples": 2, "seq_len": 32, "heldout_samples": 0}
  recipe = {"scheme": "w4a16", "method": "gptq", "group_size": 64, "calibration": calibration}
  cfg = {"model": {"path": "embedded", "dtype": "float32"}, "benchmarks": ["tiny"],
         "data_dir": "embedded", "limit": 2, "batch_size": 2,
         "sampling": {"temperature": 0.0, "max_new_tokens": 16},
         "output_dir": str(tmp_path / "runs" / "demo"),
         "variants": [{"name": "w4", "quant": recipe},
                      {"name": "w4-kv8", "quant": {**recipe, "kv_bits": 8}}]}
  path = tmp_path / "run.yaml"
  path.write_text(yaml.safe_dump(cfg))
  evaluate(load_config(EvalConfig, path))
  traces = tmp_path / "runs" / "demo" / "self_traces-gsm8k-3x24-seed0.jsonl"
  rows = [json.loads(line)["text"] for line in traces.read_text().splitlines()]
  model = jaxthink.load_pretrained(TINY / "model", dtype=jnp.float32)
  gsm8k = read_problems("gsm8k", split="train")[:3]
  assert [r[:len(reasoning_prompt(model.tokenizer, p.problem))] for r, p in zip(rows, gsm8k)] == [
      reasoning_prompt(model.tokenizer, p.problem) for p in gsm8k]
  windows = calibration_data(model.tokenizer, CalibrationSpec(**{
      **calibration, "source": str(traces)}))
  keys = [json.loads(k.read_text()) for k in (tmp_path / "runs" / ".quant_cache").glob("*/key.json")]
  assert [k["calibration"] for k in keys] == [windows.description["tokens_sha256"]]


def test_unresolved_self_traces_source_is_named():
  model = jaxthink.load_pretrained(TINY / "model", dtype=jnp.float32)
  with pytest.raises(QuantConfigError, match="resolve_self_traces"):
    calibration_data(model.tokenizer, CalibrationSpec(source="self_traces"))
