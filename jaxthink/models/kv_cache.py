"""The key/value cache of the decoder: per-row buffers, each row written at its own length.

Row `b` holds its tokens at slots `0 .. lengths[b] - 1` with no holes (prompts are right-padded
and a row's slot equals its rotary position), so a row's valid keys are exactly a prefix: what
continuous batching needs (each decode slot is at its own length) and what ragged / paged
attention kernels take (per-row lengths, no mask).

Optionally quantized (`kv_bits` 8 or 4, the KV8 / KV4 of W8A8KV8 and W4A4KV4): symmetric, one
float32 scale per token and kv head kept beside the integer values. Keys and values are quantized
when written; attention reads the integers and applies the scales to the scores and
probabilities (`jaxthink.models.attention`), so no float copy of the cache is made.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from jaxthink.models.config import ModelConfig

KV_BITS = (None, 8, 4)


def _storage(bits: int, platform: str | None = None):
  """The integer type holding `bits`-bit values on `platform` (None: JAX's default backend).
  XLA:CPU handles packed int4 slowly (a one-token update rewrites the whole buffer: ~200 ms per
  layer at 8K slots), so on CPU 4-bit values live in int8; accelerators store them packed."""
  return jnp.int8 if bits == 8 or (platform or jax.default_backend()) == "cpu" else jnp.int4


def quantize_kv(x: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
  """Symmetric per-vector quantization of `x` `[..., head_dim]`.

  Returns integers in `[-(2**(bits-1) - 1), 2**(bits-1) - 1]` (`_storage(bits)`) and the
  scale `[...]` float32, with `x ≈ q * scale`.
  """
  qmax = 2 ** (bits - 1) - 1
  x32 = x.astype(jnp.float32)
  scale = jnp.max(jnp.abs(x32), axis=-1) / qmax
  safe = jnp.where(scale > 0, scale, 1.0)  # all-zero vectors stay zero
  q = jnp.clip(jnp.round(x32 / safe[..., None]), -qmax, qmax)
  return q.astype(_storage(bits)), scale


def dequantize_kv(q: jax.Array, scale: jax.Array, dtype) -> jax.Array:
  return (q.astype(jnp.float32) * scale[..., None]).astype(dtype)


@flax.struct.dataclass
class LayerKV:
  """One layer's cached keys and values.

  Heads before slots (`[batch, kv_heads, max_len, head_dim]`): attention contracts over slots per
  (batch, head), so this layout feeds the matmuls without transposing the cache each step.
  Float caches keep `k`/`v` in the cache dtype and no scales; quantized ones keep int8 / int4
  values and float32 scales `[batch, kv_heads, max_len]`.
  """

  k: jax.Array  # [batch, kv_heads, max_len, head_dim]
  v: jax.Array  # [batch, kv_heads, max_len, head_dim]
  k_scale: jax.Array | None = None  # [batch, kv_heads, max_len]
  v_scale: jax.Array | None = None
  bits: int | None = flax.struct.field(pytree_node=False, default=None)  # None: a float cache

  def write(self, k: jax.Array, v: jax.Array, starts: jax.Array) -> "LayerKV":
    """Stores `k`, `v` `[batch, seq, kv_heads, head_dim]` at slots `starts[b] .. + seq - 1` of
    each row `b` (`starts` `[batch]` int32)."""
    def put(buf, x):  # x: [batch, kv_heads, seq, ...] into buf rows at their own offsets
      row = lambda b, xb, s: jax.lax.dynamic_update_slice(b, xb, (0, s) + (0,) * (b.ndim - 2))
      return jax.vmap(row)(buf, x.astype(buf.dtype), starts)

    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # the new tokens only
    if self.bits is None:
      return LayerKV(put(self.k, k), put(self.v, v))
    qk, sk = quantize_kv(k, self.bits)
    qv, sv = quantize_kv(v, self.bits)
    return LayerKV(put(self.k, qk), put(self.v, qv), put(self.k_scale, sk), put(self.v_scale, sv),
                   self.bits)


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for `max_len` slots per row, and how many each row holds."""

  layers: tuple[LayerKV, ...]
  lengths: jax.Array  # [batch] int32, slots written per row (also the next token's position)

  @property
  def max_len(self) -> int:
    return self.layers[0].k.shape[2]

  @property
  def bits(self) -> int | None:
    return self.layers[0].bits


def init_kv_cache(config: ModelConfig, batch: int, max_len: int, dtype=jnp.bfloat16,
                  kv_bits: int | None = None, kv_replicas: int = 1,
                  platform: str | None = None) -> KVCache:
  """An empty cache; `max_len` = prompt length + max new tokens (the caller sizes it).

  Args:
    dtype: storage dtype of a float cache (ignored when quantized).
    kv_bits: None for a float cache, 8 or 4 for a symmetric integer cache.
    kv_replicas: copies of each kv head (adjacent: heads `[0, 0, 1, 1]` for 2): a tensor-parallel
      axis wider than the kv heads then splits the cache, each device holding the one copy its
      query heads read (`jaxthink.decode.mesh.kv_replicas`). Attention reads the count off the
      cache.
    platform: where the cache lives (None: JAX's default backend), which picks 4-bit storage.
  """
  if kv_bits not in KV_BITS:
    raise ValueError(f"kv_bits={kv_bits!r} is not supported; use one of {KV_BITS}.")
  heads = config.num_kv_heads * kv_replicas
  if kv_replicas < 1 or config.num_heads % heads:
    raise ValueError(f"kv_replicas={kv_replicas}: the {config.num_heads} query heads must split "
                     f"evenly over {heads} cached kv heads.")
  shape = (batch, heads, max_len, config.head_dim)

  def layer() -> LayerKV:
    if kv_bits is None:
      return LayerKV(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
    scales = lambda: jnp.zeros(shape[:3], jnp.float32)  # [batch, kv_heads, max_len]
    store = _storage(kv_bits, platform)
    return LayerKV(jnp.zeros(shape, store), jnp.zeros(shape, store), scales(), scales(), kv_bits)

  return KVCache(layers=tuple(layer() for _ in range(config.num_layers)),
                 lengths=jnp.zeros((batch,), jnp.int32))


def insert_rows(cache: KVCache, new: KVCache, rows: jax.Array) -> KVCache:
  """`cache` with rows `rows` `[n]` replaced by the `n` rows of `new` (a shorter cache, e.g. a
  prefill's): slots `0 .. new.max_len - 1` are overwritten and each row's length is `new`'s.
  Slots past that keep stale values, unread since they lie beyond the row's length. Rows must be
  in range (a repeated row must repeat its data)."""

  def put_row(i, layers):
    # One in-place dynamic_update_slice per row: a scatter of rows becomes, on XLA:CPU, a select
    # over the whole cache (a full copy per insertion).
    put = lambda buf, x: None if buf is None else jax.lax.dynamic_update_slice(
        buf, x[i][None].astype(buf.dtype), (rows[i],) + (0,) * (buf.ndim - 1))
    return tuple(LayerKV(*(put(getattr(old, f), getattr(l, f)) for f in ("k", "v", "k_scale",
                                                                            "v_scale")), old.bits)
                 for old, l in zip(layers, new.layers))

  layers = jax.lax.fori_loop(0, rows.shape[0], put_row, cache.layers)
  return KVCache(layers=layers, lengths=cache.lengths.at[rows].set(new.lengths))


def select_rows(cache: KVCache, rows: jax.Array) -> KVCache:
  """The cache of rows `rows` `[n]` only (e.g. compacting a batch whose other rows are done)."""
  return jax.tree.map(lambda x: x[rows], cache)
