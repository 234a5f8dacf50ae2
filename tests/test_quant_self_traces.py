"""Self-trace calibration: the float model's own traces on train problems, written once as a JSONL
calibration source and reused."""

from __future__ import annotations

import json

import jax.numpy as jnp

import jaxthink
from jaxthink.decode import Sampling
from jaxthink.models.tokenizer import reasoning_prompt
from jaxthink.quant import CalibrationSpec, calibration_data
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
