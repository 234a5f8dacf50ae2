"""The decoder shared by Qwen2, Llama 3.x and Qwen3: embed, N pre-norm blocks, norm, lm_head.

Parameter names mirror the HF module tree (`layers_3/self_attn/q_proj/kernel` is
`model.layers.3.self_attn.q_proj.weight` transposed), so checkpoint I/O is a name map.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxthink.models.attention import Attention
from jaxthink.models.config import ModelConfig
from jaxthink.models.kv_cache import KVCache
from jaxthink.models.layers import MLP, Linear, RMSNorm
from jaxthink.models.rope import inverse_frequencies


class Block(nn.Module):
  config: ModelConfig
  inv_freq: Any
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  quant: Any = None

  @nn.compact
  def __call__(self, x, positions, allowed, kv, index):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.rms_norm_eps, self.dtype, self.param_dtype, name=name)
    attn_out, kv = Attention(cfg, self.inv_freq, self.dtype, self.param_dtype, self.quant,
                             name="self_attn")(norm("input_layernorm")(x), positions, allowed, kv,
                                               index)
    x = x + attn_out
    x = x + MLP(cfg.intermediate_size, cfg.mlp_bias, self.dtype, self.param_dtype, self.quant,
                name="mlp")(norm("post_attention_layernorm")(x))
    return x, kv


class Decoder(nn.Module):
  """Causal language model.

  Attributes:
    config: the architecture.
    dtype: compute dtype of activations (float32 or bfloat16).
    param_dtype: dtype parameters are created in by `init`.
    quant: quantization rules (`jaxthink.quant`) with `.for_layer(name)`, or None for float.
  """

  config: ModelConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  quant: Any = None

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array, token_mask: jax.Array,
               kv_cache: KVCache | None = None,
               last_only: bool = False) -> tuple[jax.Array, KVCache | None]:
    """Runs `seq` new tokens.

    Args:
      tokens: `[batch, seq]` int32 token ids.
      positions: `[batch, seq]` int32 rotary positions (0 at each row's first real token).
      token_mask: `[batch, seq]` bool, False at padding.
      kv_cache: None for a full-sequence pass; else the cache, whose `index` is the slot where
        `tokens[:, 0]` goes.
      last_only: compute logits for the last position only (prefill needs no others; at long
        prompts the `[batch, seq, vocab]` logits would dominate memory).

    Returns:
      logits `[batch, seq, vocab]` (`[batch, 1, vocab]` with `last_only`) float32, and the cache
      advanced by `seq` slots (or None).
    """
    cfg = self.config
    t = tokens.shape[1]
    if kv_cache is None:
      key_mask, query_slot, index = token_mask, jnp.arange(t), None
    else:
      index = kv_cache.index
      key_mask = jax.lax.dynamic_update_slice(kv_cache.mask, token_mask, (0, index))
      query_slot = index + jnp.arange(t)
    key_slot = jnp.arange(key_mask.shape[1])
    allowed = key_mask[:, None, :] & (key_slot[None, None, :] <= query_slot[None, :, None])

    embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="embed_tokens")
    x = embed(tokens)
    inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    new_layers = []
    for i in range(cfg.num_layers):
      kv = None if kv_cache is None else kv_cache.layers[i]
      x, kv = Block(cfg, inv_freq, self.dtype, self.param_dtype, self.quant,
                    name=f"layers_{i}")(x, positions, allowed, kv, index)
      new_layers.append(kv)
    if last_only:
      x = x[:, -1:]
    x = RMSNorm(cfg.rms_norm_eps, self.dtype, self.param_dtype, name="norm")(x)
    # Logits leave the product in float32, unrounded, whatever the compute dtype: KL, entropy and
    # log-probs of a bf16 model are then those of its exact logits.
    if cfg.tie_word_embeddings:
      logits = jnp.dot(x, embed.embedding.astype(self.dtype).T,
                       preferred_element_type=jnp.float32)
    else:  # the output head stays in float: quantization rules never cover it
      logits = Linear(cfg.vocab_size, dtype=self.dtype, param_dtype=self.param_dtype,
                      out_dtype=jnp.float32, name="lm_head")(x)
    if kv_cache is None:
      return logits, None
    return logits, KVCache(layers=tuple(new_layers), mask=key_mask, index=index + t)


def positions_from_mask(token_mask: jax.Array) -> jax.Array:
  """Rotary positions `[batch, seq]` for a left- or right-padded batch: 0 at the first real token."""
  return jnp.maximum(jnp.cumsum(token_mask.astype(jnp.int32), axis=1) - 1, 0)
