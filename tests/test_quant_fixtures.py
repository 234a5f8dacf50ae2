"""Shared pieces of the quantization tests (tiny models, a byte tokenizer, real calibration text),
and the test that calibration windows are cut from the real GSM8K solutions."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from jaxthink.data.benchmarks import PACKAGE_DATA_DIR
from jaxthink.models.config import ModelConfig
from jaxthink.models.hf_io import init_params
from jaxthink.quant import CalibrationSpec, calibration_data

DATA_DIR = PACKAGE_DATA_DIR  # the benchmark files shipped with jaxthink


def tiny_config(**overrides) -> ModelConfig:
  """Qwen2-like, GQA, every linear with 256 input channels (so g128 means two groups)."""
  base = dict(model_type="qwen2", vocab_size=256, hidden_size=256, intermediate_size=256,
              num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64, rms_norm_eps=1e-6,
              rope_theta=10000.0, qkv_bias=True, eos_token_ids=(10,), pad_token_id=0)
  return ModelConfig(**{**base, **overrides})


@functools.lru_cache(maxsize=None)
def tiny_params(seed: int = 0, **overrides):
  return init_params(tiny_config(**overrides), seed=seed, dtype=jnp.float32)


class ByteTokenizer:
  """UTF-8 bytes as token ids (vocabulary 256); documents are separated by a newline."""

  eos_token_id = 10

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))


@functools.lru_cache(maxsize=None)
def gsm8k_calibration(num_samples: int = 32, seq_len: int = 128, heldout_samples: int = 4):
  """Real calibration text: GSM8K train solutions, read through the benchmark builder."""
  spec = CalibrationSpec(source="gsm8k", data_dir=str(DATA_DIR), num_samples=num_samples,
                         seq_len=seq_len, heldout_samples=heldout_samples)
  return calibration_data(ByteTokenizer(), spec)


def test_calibration_windows_are_gsm8k_solution_text():
  data = gsm8k_calibration()
  assert data.tokens.shape == (32, 128) and data.heldout.shape == (4, 128)
  text = bytes(np.concatenate([data.tokens.ravel(), data.heldout.ravel()]).astype(np.uint8)).decode(
      "utf-8", errors="replace")
  print(f"\ncalibration: {data.description}\nfirst window: {text[:120]!r}")
  assert data.description["source"] == "gsm8k" and data.description["documents"] == 7473
  assert text.count("\n#### ") > 20  # whole solutions, each ending in '#### <answer>'
  assert len(data.description["tokens_sha256"]) == 64
  # The same spec gives the same windows (seeded shuffle), another seed other windows.
  again = calibration_data(ByteTokenizer(), CalibrationSpec(
      source="gsm8k", data_dir=str(DATA_DIR), num_samples=32, seq_len=128, heldout_samples=4))
  np.testing.assert_array_equal(again.tokens, data.tokens)
  other = calibration_data(ByteTokenizer(), CalibrationSpec(
      source="gsm8k", data_dir=str(DATA_DIR), num_samples=32, seq_len=128, heldout_samples=4,
      seed=1))
  assert not np.array_equal(other.tokens, data.tokens)
