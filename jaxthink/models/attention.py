"""Grouped-query self-attention with rotary embeddings, optional q/k RMSNorm and a KV cache."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxthink.models.config import ModelConfig
from jaxthink.models.kv_cache import LayerKV
from jaxthink.models.layers import Linear, RMSNorm, _rule
from jaxthink.models.rope import apply_rope


class Attention(nn.Module):
  config: ModelConfig
  inv_freq: np.ndarray  # [head_dim // 2], static
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  quant: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, allowed: jax.Array,
               kv: LayerKV | None, index: jax.Array | None):
    """One attention layer.

    Args:
      x: `[batch, seq, hidden]`.
      positions: `[batch, seq]` rotary positions.
      allowed: `[batch, seq, keys]` bool, which keys each query may attend to.
      kv: this layer's cache (`LayerKV`, `[batch, kv_heads, max_len, head_dim]`), or None.
      index: `[]` slot where this call's keys are written (with `kv`).

    Returns:
      `[batch, seq, hidden]` and the updated `LayerKV` (None without a cache).
    """
    cfg = self.config
    b, t, _ = x.shape
    linear = lambda name, n, bias: Linear(n, bias, self.dtype, self.param_dtype,
                                          _rule(self.quant, name), name=name)
    q = linear("q_proj", cfg.num_heads * cfg.head_dim, cfg.qkv_bias)(x)
    k = linear("k_proj", cfg.num_kv_heads * cfg.head_dim, cfg.qkv_bias)(x)
    v = linear("v_proj", cfg.num_kv_heads * cfg.head_dim, cfg.qkv_bias)(x)
    q = q.reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = k.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = v.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:  # Qwen3: per-head RMSNorm before rotation
      q = RMSNorm(cfg.rms_norm_eps, self.dtype, self.param_dtype, name="q_norm")(q)
      k = RMSNorm(cfg.rms_norm_eps, self.dtype, self.param_dtype, name="k_norm")(k)
    q = apply_rope(q, positions, self.inv_freq)
    k = apply_rope(k, positions, self.inv_freq)

    if kv is not None:  # attend over every cached slot (quantized on write, dequantized here)
      kv = kv.write(k, v, index)
      k, v = kv.read(self.dtype)  # [batch, kv_heads, max_len, head_dim]
    else:
      k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

    groups = cfg.num_heads // cfg.num_kv_heads
    q = q.reshape(b, t, cfg.num_kv_heads, groups, cfg.head_dim)
    scores = jnp.einsum("btkgd,bksd->bkgts", q, k.astype(self.dtype),
                        preferred_element_type=jnp.float32) / np.sqrt(cfg.head_dim).astype(np.float32)
    # A finite minimum keeps fully-masked rows (left padding) finite instead of NaN.
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    # Heads-major output keeps this a plain batched matmul (a `btkgd` output makes XLA:CPU fall
    # back from its fast dot library); moving `t` forward afterwards is a small transpose.
    out = jnp.einsum("bkgts,bksd->bkgtd", probs, v.astype(self.dtype))
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, cfg.num_heads * cfg.head_dim)
    return linear("o_proj", cfg.hidden_size, cfg.o_bias)(out), kv
