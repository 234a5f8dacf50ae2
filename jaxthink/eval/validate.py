"""Every check of an evaluation run that needs no model weights, run before any model loads.

`validate(cfg)` reads config.json (model_type and the rest), the safetensors headers (not the
tensors), every benchmark and calibration file, the tokenizer (to measure the longest prompt against
`max_position_embeddings`), and the visible devices against the mesh. A problem raises
`ConfigError` naming the config key (and the file and line where there is one), so a bad run stops
in seconds instead of after the earlier variants have generated.
"""

from __future__ import annotations

from typing import Sequence

import jax

from jaxthink.config import ConfigError
from jaxthink.data.benchmarks import (BENCHMARKS, BenchmarkDataError, Problem, jsonl_path,
                                     read_problems)
from jaxthink.decode.generate import bucket_length
from jaxthink.decode.mesh import MeshConfig, initialize_distributed
from jaxthink.eval.config import EvalConfig, PromptSpec
from jaxthink.models.config import CheckpointError, ModelConfig, UnsupportedModelError
from jaxthink.models.hf_io import check_checkpoint
from jaxthink.models.tokenizer import load_tokenizer, reasoning_prompt
from jaxthink.quant.calibrate import calibration_data
from jaxthink.quant.self_traces import trace_problems
from jaxthink.quant.checkpoint import read_quantized_meta
from jaxthink.quant.spec import QuantConfigError


def prompt_tokens(tokenizer, problem: str, prompt: PromptSpec) -> tuple[int, ...]:
  """The token ids of `problem`'s chat-templated reasoning prompt."""
  text = reasoning_prompt(tokenizer, problem, prompt.instruction, prompt.think)
  return tuple(tokenizer.encode(text, add_special_tokens=False))


def validate(cfg: EvalConfig) -> None:
  """Raises `ConfigError` (key path first) for what would fail, or silently mislead, later."""
  check_mesh(cfg.mesh)  # first: it may start jax.distributed, which precedes any other JAX use
  cfg.check_files()
  model_dir = cfg.model.directory
  try:
    model_config = ModelConfig.from_pretrained(model_dir)
    check_checkpoint(model_dir, model_config)
    tokenizer = load_tokenizer(model_dir)
  except (CheckpointError, UnsupportedModelError) as e:
    raise ConfigError(f"model.path: {e}") from e
  problems = _benchmark_problems(cfg)
  _check_context_length(cfg, tokenizer, model_config, problems)
  _check_quantization(cfg, tokenizer, model_config)
  _check_quantized_checkpoints(cfg, model_config)


def check_mesh(mesh: MeshConfig) -> None:
  """The mesh fits the visible devices (after `jax.distributed` starts, if asked)."""
  initialize_distributed(mesh)
  n = jax.device_count()
  if mesh.model < 1 or n % mesh.model:
    raise ConfigError(f"mesh.model: {mesh.model} must be a positive divisor of the {n} visible "
                      "devices.")
  if mesh.data != -1 and (mesh.data < 1 or mesh.data * mesh.model > n):
    raise ConfigError(f"mesh.data: a ({mesh.data}, {mesh.model}) mesh needs "
                      f"{mesh.data * mesh.model} devices, but {n} are visible; shrink it "
                      "(mesh.data: -1 uses every device) or run on more devices.")


def _benchmark_problems(cfg: EvalConfig) -> list[tuple[str, Problem]]:
  """`(benchmark, problem)` for the problems the run evaluates, after parsing every split's file
  (the tfds builder reads them all)."""
  out = []
  for i, name in enumerate(cfg.benchmarks):
    try:
      splits = {split: read_problems(name, cfg.data_directory, split)
                for split in BENCHMARKS[name].splits}
    except (BenchmarkDataError, OSError, UnicodeDecodeError) as e:
      raise ConfigError(f"benchmarks[{i}] ({name}): {e}") from e
    if not splits["test"]:
      raise ConfigError(f"benchmarks[{i}] ({name}): {jsonl_path(name, cfg.data_directory)} holds "
                        "no problems.")
    out += [(name, p) for p in splits["test"][:cfg.limit]]
  return out


def _check_context_length(cfg: EvalConfig, tokenizer, model_config: ModelConfig,
                          problems: Sequence[tuple[str, Problem]]) -> None:
  """The longest prompt, padded to its bucket, plus max_new_tokens fits the model's positions."""
  try:
    longest, name, problem = max(
        ((len(prompt_tokens(tokenizer, p.problem, cfg.prompt)), name, p) for name, p in problems),
        key=lambda t: t[0])
  except CheckpointError as e:
    raise ConfigError(f"model.path: {e}") from e
  bucket = bucket_length(longest)
  limit = model_config.max_position_embeddings
  if bucket + cfg.sampling.max_new_tokens > limit:
    fix = (f"set sampling.max_new_tokens <= {limit - bucket}" if bucket < limit else
           "the prompt alone does not fit: use a model with a longer context")
    raise ConfigError(
        f"sampling.max_new_tokens: {cfg.sampling.max_new_tokens} new tokens after the longest "
        f"prompt ({name} problem {problem.id!r}: {longest} tokens, padded to {bucket}) need "
        f"{bucket + cfg.sampling.max_new_tokens} positions, beyond the model's "
        f"max_position_embeddings ({limit}); {fix}, or leave out the longest problems.")


def _check_quantization(cfg: EvalConfig, tokenizer, model_config: ModelConfig) -> None:
  """Every on-the-fly recipe fits the model, and its calibration text exists and is long enough."""
  checked = set()
  for v in cfg.variants:
    spec = cfg.quant_spec(v)
    if spec is None:
      continue
    try:
      spec.check_fits(model_config)
    except QuantConfigError as e:
      raise ConfigError(f"variants.{v.name}.quant: {e}") from e
    if spec.needs_calibration and spec.calibration not in checked:
      try:  # self traces are written when the run starts: here, only their problems are read
        if spec.calibration.source == "self_traces":
          trace_problems(spec.calibration)
        else:
          calibration_data(tokenizer, spec.calibration)
      except QuantConfigError as e:
        raise ConfigError(f"variants.{v.name}.quant.calibration: {e}") from e
      checked.add(spec.calibration)


def _check_quantized_checkpoints(cfg: EvalConfig, model_config: ModelConfig) -> None:
  """Every `checkpoint:` variant names a readable quantized checkpoint of a model with the same
  vocabulary (its KL is taken against the full-precision model)."""
  for v in cfg.variants:
    if v.checkpoint is None:
      continue
    try:
      _, config, _ = read_quantized_meta(v.checkpoint)
    except (ValueError, KeyError) as e:
      raise ConfigError(f"variants.{v.name}.checkpoint: {e}") from e
    if config.vocab_size != model_config.vocab_size:
      raise ConfigError(f"variants.{v.name}.checkpoint: its vocabulary ({config.vocab_size}) is "
                        f"not model.path's ({model_config.vocab_size}); quantize the same model.")
