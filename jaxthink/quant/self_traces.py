"""Calibration on the model's own reasoning traces (as "Quantization Hurts Reasoning?" calibrates
GPTQ: self-generated reasoning on training problems), instead of reference solutions.

`write_self_traces` generates one trace per problem with the float model and writes
`{"text": prompt + trace}` lines to a JSONL file, which is then an ordinary calibration source
(`CalibrationSpec(source=<file>)`). An existing file is reused, so every variant calibrated in one
run directory shares one set of traces. `resolve_self_traces` does this for a recipe whose
calibration source is the keyword "self_traces" (eval runs and `jaxthink.quantize` call it).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence

from jaxthink.decode import Sampling, generate
from jaxthink.models.tokenizer import reasoning_prompt
from jaxthink.quant.spec import CalibrationSpec, QuantConfigError, QuantSpec


def write_self_traces(model, problems: Sequence[str], path: str | Path, *,
                      max_new_tokens: int = 2048, batch_size: int = 16,
                      sampling: Sampling = Sampling(temperature=0.6, top_p=0.95),
                      seed: int = 0) -> Path:
  """Traces of `model` (a float `Pretrained`) on `problems`, written to `path` (JSONL).

  Each prompt is the chat-templated reasoning prompt; the line's text is the prompt followed by
  the generated tokens up to the end token or `max_new_tokens`. Returns `path`; if it exists
  already, nothing is generated.
  """
  path = Path(path)
  if path.is_file():
    return path
  prompts = [reasoning_prompt(model.tokenizer, p) for p in problems]
  lines = []
  for start in range(0, len(prompts), batch_size):
    batch = prompts[start:start + batch_size]
    ids = [model.tokenizer.encode(p, add_special_tokens=False) for p in batch]
    result = generate(model, ids, max_new_tokens=max_new_tokens, sampling=sampling,
                      seed=[seed + start + i for i in range(len(batch))])
    for prompt, trace in zip(batch, result.sequences()):
      lines.append(json.dumps({"text": prompt + model.tokenizer.decode(trace)}))
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_suffix(".partial")
  partial.write_text("\n".join(lines) + "\n")
  os.replace(partial, path)  # a cut run leaves no half-written set behind
  return path


def trace_problems(calibration: CalibrationSpec) -> list[str]:
  """The problems a "self_traces" source traces: the first `num_traces` of `traces_from`'s train
  split (read from `data_dir`)."""
  from jaxthink.data.benchmarks import read_problems  # noqa: PLC0415
  try:
    problems = read_problems(calibration.traces_from, calibration.data_dir, split="train")
  except (ValueError, OSError) as e:  # BenchmarkDataError is a ValueError
    raise QuantConfigError(f"calibration.traces_from: {e}") from e
  return [p.problem for p in problems[:calibration.num_traces]]


def resolve_self_traces(spec: QuantSpec, model, directory: str | Path) -> QuantSpec:
  """`spec` with calibration source "self_traces" replaced by the traces file in `directory`,
  which `model` writes on first use (one trace of up to `trace_tokens` tokens per
  `trace_problems`); any other recipe unchanged."""
  cal = spec.calibration
  if cal.source != "self_traces":
    return spec
  problems = trace_problems(cal)
  path = Path(directory) / (f"self_traces-{cal.traces_from}-{len(problems)}x{cal.trace_tokens}"
                            f"-seed{cal.seed}.jsonl")
  write_self_traces(model, problems, path, max_new_tokens=cal.trace_tokens, seed=cal.seed)
  return dataclasses.replace(spec, calibration=dataclasses.replace(cal, source=str(path)))
