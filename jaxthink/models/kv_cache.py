"""The key/value cache of the decoder: fixed-size buffers written at a moving slot index.

Optionally quantized (`kv_bits` 8 or 4, the KV8 / KV4 of W8A8KV8 and W4A4KV4): symmetric, one
float32 scale per token and kv head kept beside the integer values; keys and values are quantized
when written and dequantized when read, so attention sees exactly what a quantized cache holds.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from jaxthink.models.config import ModelConfig

KV_BITS = (None, 8, 4)
_STORAGE = {8: jnp.int8, 4: jnp.int4}


def quantize_kv(x: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
  """Symmetric per-vector quantization of `x` `[..., head_dim]`.

  Returns integers in `[-(2**(bits-1) - 1), 2**(bits-1) - 1]` (int8 or int4 storage) and the
  scale `[...]` float32, with `x ≈ q * scale`.
  """
  qmax = 2 ** (bits - 1) - 1
  x32 = x.astype(jnp.float32)
  scale = jnp.max(jnp.abs(x32), axis=-1) / qmax
  safe = jnp.where(scale > 0, scale, 1.0)  # all-zero vectors stay zero
  q = jnp.clip(jnp.round(x32 / safe[..., None]), -qmax, qmax)
  return q.astype(_STORAGE[bits]), scale


def dequantize_kv(q: jax.Array, scale: jax.Array, dtype) -> jax.Array:
  return (q.astype(jnp.float32) * scale[..., None]).astype(dtype)


@flax.struct.dataclass
class LayerKV:
  """One layer's cached keys and values.

  Heads before slots (`[batch, kv_heads, max_len, head_dim]`): attention contracts over slots per
  (batch, head), so this layout feeds the matmuls without transposing the whole cache each step.
  Float caches keep `k`/`v` in the cache dtype and no scales; quantized ones keep int8 / int4
  values and float32 scales `[batch, kv_heads, max_len]`.
  """

  k: jax.Array  # [batch, kv_heads, max_len, head_dim]
  v: jax.Array  # [batch, kv_heads, max_len, head_dim]
  k_scale: jax.Array | None = None  # [batch, kv_heads, max_len]
  v_scale: jax.Array | None = None

  @property
  def bits(self) -> int | None:
    return {jnp.dtype(jnp.int8): 8, jnp.dtype(jnp.int4): 4}.get(jnp.dtype(self.k.dtype))

  def write(self, k: jax.Array, v: jax.Array, index: jax.Array) -> "LayerKV":
    """Stores `k`, `v` `[batch, seq, kv_heads, head_dim]` at slots `index .. index + seq - 1`."""
    put = lambda buf, x: jax.lax.dynamic_update_slice(buf, x, (0, 0, index) + (0,) * (buf.ndim - 3))
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # the new tokens only
    if self.bits is None:
      return LayerKV(put(self.k, k.astype(self.k.dtype)), put(self.v, v.astype(self.v.dtype)))
    qk, sk = quantize_kv(k, self.bits)
    qv, sv = quantize_kv(v, self.bits)
    return LayerKV(put(self.k, qk), put(self.v, qv), put(self.k_scale, sk), put(self.v_scale, sv))

  def read(self, dtype) -> tuple[jax.Array, jax.Array]:
    """All `max_len` keys and values `[batch, kv_heads, max_len, head_dim]` in `dtype`
    (dequantized for a quantized cache)."""
    if self.bits is None:
      return self.k.astype(dtype), self.v.astype(dtype)
    return dequantize_kv(self.k, self.k_scale, dtype), dequantize_kv(self.v, self.v_scale, dtype)


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for `max_len` slots.

  All rows write the same slot at a step (prompts are left-padded to a common length), so one
  scalar `index` serves the batch; `mask` marks which slots hold real (non-pad) tokens.
  """

  layers: tuple[LayerKV, ...]
  mask: jax.Array  # [batch, max_len] bool
  index: jax.Array  # [] int32, the next slot to write

  @property
  def max_len(self) -> int:
    return self.mask.shape[1]

  @property
  def bits(self) -> int | None:
    return self.layers[0].bits


def init_kv_cache(config: ModelConfig, batch: int, max_len: int, dtype=jnp.bfloat16,
                  kv_bits: int | None = None) -> KVCache:
  """An empty cache; `max_len` = prompt length + max new tokens (the caller sizes it).

  Args:
    dtype: storage dtype of a float cache (ignored when quantized).
    kv_bits: None for a float cache, 8 or 4 for a symmetric integer cache.
  """
  if kv_bits not in KV_BITS:
    raise ValueError(f"kv_bits={kv_bits!r} is not supported; use one of {KV_BITS}.")
  shape = (batch, config.num_kv_heads, max_len, config.head_dim)

  def layer() -> LayerKV:
    if kv_bits is None:
      return LayerKV(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
    scales = lambda: jnp.zeros(shape[:3], jnp.float32)  # [batch, kv_heads, max_len]
    store = _STORAGE[kv_bits]
    return LayerKV(jnp.zeros(shape, store), jnp.zeros(shape, store), scales(), scales())

  return KVCache(layers=tuple(layer() for _ in range(config.num_layers)),
                 mask=jnp.zeros((batch, max_len), jnp.bool_), index=jnp.zeros((), jnp.int32))


def extend_kv_cache(cache: KVCache, extra: int) -> KVCache:
  """The cache with `extra` empty slots appended (prefill runs on a prompt-sized cache so its
  attention spans only the prompt; decoding then needs room for the new tokens)."""
  def pad(x, axis):  # appends `extra` zeros along the slot axis
    return None if x is None else jnp.pad(
        x, [(0, extra if a == axis else 0) for a in range(x.ndim)])

  layers = tuple(LayerKV(pad(l.k, 2), pad(l.v, 2), pad(l.k_scale, 2), pad(l.v_scale, 2))
                 for l in cache.layers)
  return KVCache(layers=layers, mask=pad(cache.mask, 1), index=cache.index)
