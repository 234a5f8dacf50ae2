"""The decoder shared by Qwen2, Llama 3.x and Qwen3: embed, N pre-norm blocks, norm, lm_head.

Parameter names mirror the HF module tree (`layers_3/self_attn/q_proj/kernel` is
`model.layers.3.self_attn.q_proj.weight` transposed), so checkpoint I/O is a name map.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxthink.models.attention import ATTENTION_CHUNK, Attention
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
  decode_attention: str = "chunked"
  attention_chunk: int = ATTENTION_CHUNK
  mesh: Any = None

  @nn.compact
  def __call__(self, x, positions, allowed, kv, starts, limit):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.rms_norm_eps, self.dtype, self.param_dtype, name=name)
    attn_out, kv = Attention(cfg, self.inv_freq, self.dtype, self.param_dtype, self.quant,
                             self.decode_attention, self.attention_chunk, self.mesh,
                             name="self_attn")(
                                 norm("input_layernorm")(x), positions, allowed, kv, starts, limit)
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
    decode_attention: "chunked" (cost follows the written length), "dense" (every allocated
      slot), or "pallas" (jax's Pallas paged-attention kernel for the TPU / GPU; "pallas_tpu" /
      "pallas_gpu" force one, interpreted on CPU) for one-token steps over a cache
      (`jaxthink.models.attention`, `jaxthink.models.pallas_attention`).
    attention_chunk: slots per step of the chunked attention loop.
    mesh: the `('data', 'model')` device mesh the program runs on, or None (one device): attention
      over a cache then runs per shard (`jaxthink.models.attention.per_shard`). The decode
      programs set it from their own mesh.
  """

  config: ModelConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  quant: Any = None
  decode_attention: str = "chunked"
  attention_chunk: int = ATTENTION_CHUNK
  mesh: Any = None

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array, token_mask: jax.Array,
               kv_cache: KVCache | None = None,
               last_only: bool = False) -> tuple[jax.Array, KVCache | None]:
    """Runs `seq` new tokens.

    Args:
      tokens: `[batch, seq]` int32 token ids.
      positions: `[batch, seq]` int32 rotary positions (0 at each row's first real token).
      token_mask: `[batch, seq]` bool, False at padding. With a cache, rows are right-padded
        (real tokens first) and only real tokens advance a row's length; a row with no real token
        (a finished row of a decode batch) changes nothing that is read later.
      kv_cache: None for a full-sequence pass; else the cache, each row's new tokens written from
        its `lengths[b]` on (their positions should equal those slots).
      last_only: compute logits at each row's last real token only (prefill needs no others; at
        long prompts the `[batch, seq, vocab]` logits would dominate memory).

    Returns:
      logits `[batch, seq, vocab]` (`[batch, 1, vocab]` with `last_only`) float32, and the cache
      with each row advanced by its real tokens (or None).
    """
    cfg = self.config
    t = tokens.shape[1]
    causal = jnp.arange(t)[None, :, None] >= jnp.arange(t)[None, None, :]
    if kv_cache is None:
      allowed, starts, limit = token_mask[:, None, :] & causal, None, None
    else:
      allowed, starts = None, kv_cache.lengths
      # The chunked attention loop visits each row up to the highest slot it writes a real token.
      limit = jnp.max(jnp.where(token_mask, starts[:, None] + jnp.arange(t), -1), axis=1)

    embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="embed_tokens")
    x = embed(tokens)
    inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    new_layers = []
    for i in range(cfg.num_layers):
      kv = None if kv_cache is None else kv_cache.layers[i]
      x, kv = Block(cfg, inv_freq, self.dtype, self.param_dtype, self.quant,
                    self.decode_attention, self.attention_chunk, self.mesh, name=f"layers_{i}")(
                        x, positions, allowed, kv, starts, limit)
      new_layers.append(kv)
    if last_only:  # each row's last real token (right- or left-padded)
      last = jnp.max(jnp.where(token_mask, jnp.arange(t), 0), axis=1)
      x = jnp.take_along_axis(x, last[:, None, None], axis=1)
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
    return logits, KVCache(layers=tuple(new_layers),
                           lengths=starts + jnp.sum(token_mask, axis=1, dtype=jnp.int32))


def positions_from_mask(token_mask: jax.Array) -> jax.Array:
  """Rotary positions `[batch, seq]` for a left- or right-padded batch: 0 at the first real token."""
  return jnp.maximum(jnp.cumsum(token_mask.astype(jnp.int32), axis=1) - 1, 0)
