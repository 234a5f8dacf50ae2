"""`load_pretrained`: a HF model directory -> config, parameters, tokenizer and a logits function."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxthink.models.config import ModelConfig
from jaxthink.models.decoder import Decoder, positions_from_mask
from jaxthink.models.hf_io import load_params
from jaxthink.models.tokenizer import load_tokenizer


@dataclasses.dataclass(frozen=True)
class Pretrained:
  config: ModelConfig
  model: Decoder
  params: Any
  tokenizer: Any

  def logits(self, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Full-sequence logits `[batch, seq, vocab]` float32 for padded `tokens` `[batch, seq]`."""
    return sequence_logits(self.model, self.params, jnp.asarray(tokens, jnp.int32),
                           jnp.asarray(attention_mask, jnp.bool_))


@functools.partial(jax.jit, static_argnums=0)
def sequence_logits(model: Decoder, params: Any, tokens: jax.Array,
                    attention_mask: jax.Array) -> jax.Array:
  """Logits `[batch, seq, vocab]` float32 of a (left- or right-)padded batch, no cache."""
  logits, _ = model.apply({"params": params}, tokens, positions_from_mask(attention_mask),
                          attention_mask)
  return logits


def load_pretrained(path: str | Path, dtype=jnp.bfloat16, mesh: jax.sharding.Mesh | None = None,
                    tokenizer: bool = True) -> Pretrained:
  """Loads a Qwen2 / Llama 3.x / Qwen3 HF checkpoint directory.

  Args:
    path: local directory with config.json, safetensors weights and tokenizer files.
    dtype: parameter and compute dtype (float32 for exact parity, bfloat16 for speed).
    mesh: optional `('data', 'model')` mesh; parameters are placed sharded on it.
    tokenizer: also load the tokenizer (False for weight-only directories).
  """
  config = ModelConfig.from_pretrained(path)
  params = load_params(path, config, dtype=dtype, mesh=mesh)
  model = Decoder(config, dtype=dtype, param_dtype=dtype)
  return Pretrained(config, model, params, load_tokenizer(path) if tokenizer else None)
