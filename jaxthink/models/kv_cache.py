"""The key/value cache of the decoder: fixed-size buffers written at a moving slot index."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from jaxthink.models.config import ModelConfig


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for `max_len` slots.

  All rows write the same slot at a step (prompts are left-padded to a common length), so one
  scalar `index` serves the batch; `mask` marks which slots hold real (non-pad) tokens.
  """

  k: tuple[jax.Array, ...]  # per layer [batch, max_len, kv_heads, head_dim]
  v: tuple[jax.Array, ...]  # per layer [batch, max_len, kv_heads, head_dim]
  mask: jax.Array  # [batch, max_len] bool
  index: jax.Array  # [] int32, the next slot to write

  @property
  def max_len(self) -> int:
    return self.mask.shape[1]


def init_kv_cache(config: ModelConfig, batch: int, max_len: int, dtype=jnp.bfloat16) -> KVCache:
  """An empty cache; `max_len` = prompt length + max new tokens (the caller sizes it)."""
  shape = (batch, max_len, config.num_kv_heads, config.head_dim)
  zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
  return KVCache(k=zeros(), v=zeros(), mask=jnp.zeros((batch, max_len), jnp.bool_),
                 index=jnp.zeros((), jnp.int32))
