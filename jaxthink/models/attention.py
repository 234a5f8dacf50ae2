"""Grouped-query self-attention with rotary embeddings, optional q/k RMSNorm and a KV cache.

Ways to attend over a cache (`Decoder.decode_attention`, static):
  chunked  (default) an online-softmax loop over chunks of `attention_chunk` slots in which each
           row visits only the chunks it has written, so a decode step's cost follows the
           rows' written lengths, not the allocated one (a 32K-token budget costs nothing until
           it is used) nor the longest row's, and a chunked teacher-forced pass never holds
           `[queries, all slots]` scores.
  dense    every allocated slot, masked: the simple reference.
  pallas, pallas_tpu, pallas_gpu
           one-token decode steps through the paged-attention kernels shipped inside jax
           (`jaxthink.models.pallas_attention`); other calls with a cache use `chunked`.
Quantized caches are read as integers: key scales multiply the scores and value scales the
probabilities, so no float copy of the cache is made.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxthink.models.config import ModelConfig
from jaxthink.models.kv_cache import LayerKV
from jaxthink.models.layers import Linear, RMSNorm, _rule
from jaxthink.models.pallas_attention import PALLAS_OPTIONS, paged_decode_attention, select_kernel
from jaxthink.models.rope import apply_rope

ATTENTION_CHUNK = 256  # slots per piece of the chunked loop (fits decode steps and 32K rows alike)
DECODE_ATTENTION = ("chunked", "dense") + PALLAS_OPTIONS
_MASKED = float(np.finfo(np.float32).min)  # finite: fully-masked rows stay finite, not NaN


def _scores(q: jax.Array, k: jax.Array, k_scale: jax.Array | None, dtype) -> jax.Array:
  """`q` `[b, t, kv, g, d]` · `k` `[b, kv, s, d]` -> `[b, kv, g, t, s]` float32, scaled."""
  scores = jnp.einsum("btkgd,bksd->bkgts", q, k.astype(dtype), preferred_element_type=jnp.float32)
  if k_scale is not None:
    scores = scores * k_scale[:, :, None, None, :]
  return scores / np.sqrt(q.shape[-1]).astype(np.float32)


def _mix(probs: jax.Array, v: jax.Array, v_scale: jax.Array | None, dtype) -> jax.Array:
  """`probs` `[b, kv, g, t, s]` · `v` `[b, kv, s, d]` -> `[b, kv, g, t, d]` float32."""
  if v_scale is not None:
    probs = probs * v_scale[:, :, None, None, :]
  # Heads-major output keeps this a plain batched matmul (a `btkgd` output makes XLA:CPU fall
  # back from its fast dot library).
  return jnp.einsum("bkgts,bksd->bkgtd", probs.astype(dtype), v.astype(dtype),
                    preferred_element_type=jnp.float32)


def dense_attention(q: jax.Array, kv: LayerKV, allowed: jax.Array, dtype) -> jax.Array:
  """Softmax attention of `q` `[b, t, kv, g, d]` over every slot of `kv`, where `allowed`
  `[b, t, s]`; returns `[b, kv, g, t, d]` float32."""
  scores = jnp.where(allowed[:, None, None], _scores(q, kv.k, kv.k_scale, dtype), _MASKED)
  return _mix(jax.nn.softmax(scores, axis=-1), kv.v, kv.v_scale, dtype)


def _softmax_piece(q, k, k_scale, v, v_scale, allowed, dtype):
  """One chunk's share of softmax attention over the slots `allowed` `[w, t, chunk]`: its max
  score `[w, kv, g, t]`, the sum of exp(score - max) and the values weighted by them
  `[w, kv, g, t, d]` (zeros where nothing is allowed)."""
  scores = jnp.where(allowed[:, None, None], _scores(q, k, k_scale, dtype), _MASKED)
  best = scores.max(-1)
  probs = jnp.where(allowed[:, None, None], jnp.exp(scores - best[..., None]), 0.0)
  return best, probs.sum(-1), _mix(probs, v, v_scale, dtype)


def chunked_attention(q: jax.Array, kv: LayerKV, query_slot: jax.Array, row_limit: jax.Array,
                      dtype, chunk: int = ATTENTION_CHUNK) -> jax.Array:
  """Attention of each query over slots `0 .. its query_slot`, ragged: row `r` visits only the
  chunks at or below `row_limit[r]`, so a step costs what the rows have written in total, not
  rows x the longest row (flash-decoding style: per-chunk softmax pieces merged per row).

  The (row, chunk) pairs to visit are numbered row by row; each loop iteration takes the next
  `batch` of them (gathered from the cache), so a batch of rows at lengths 100 .. 30,000 takes
  about mean / chunk iterations instead of max / chunk. When the rows are about equally long
  (ragged would skip less than half the pairs) a plain loop over chunk indices does the same
  work without the gathers.

  Args:
    q: `[b, t, kv, g, d]`.
    kv: the layer's cache, `max_len` slots (any length; the last chunk may overlap the one before,
      its repeated slots are masked).
    query_slot: `[b, t]` int32.
    row_limit: `[b]` int32, the highest `query_slot` of each row that matters, -1 for a row that
      doesn't (a finished decode row: it visits nothing and gets zeros).

  Returns:
    `[b, kv, g, t, d]` float32.
  """
  b, t, heads, groups, d = q.shape
  max_len = kv.k.shape[2]
  chunk = min(chunk, max_len)
  chunks = jnp.where(row_limit >= 0, row_limit // chunk + 1, 0)  # [b] chunks each row visits
  ends = jnp.cumsum(chunks)  # pair i belongs to the row whose [end - chunks, end) holds it
  init = (jnp.full((b, heads, groups, t), _MASKED), jnp.zeros((b, heads, groups, t)),
          jnp.zeros((b, heads, groups, t, d)))

  def merge(carry, piece, row=None):
    """Folds softmax pieces into the running (max, denominator, numerator) of their rows: piece
    `i` belongs to row `row[i]` (None: piece `i` is row `i`'s)."""
    best, total, acc = carry  # running max [b, kv, g, t], softmax denominator, numerator
    piece_best, piece_total, piece_acc = piece
    if row is None:
      new_best = jnp.maximum(best, piece_best)
      weight = jnp.exp(piece_best - new_best)
      add = lambda x: x
    else:
      new_best = jnp.maximum(best, jax.ops.segment_max(piece_best, row, num_segments=b))
      weight = jnp.exp(piece_best - new_best[row])  # each piece rescaled to its row's new max
      add = lambda x: jax.ops.segment_sum(x, row, num_segments=b)
    rescale = jnp.exp(best - new_best)
    return (new_best, total * rescale + add(piece_total * weight),
            acc * rescale[..., None] + add(piece_acc * weight[..., None]))

  def visit_all(c, carry):
    """Chunk `c` of every row (sliced, no gathers or segment sums): cheaper per chunk, so it is
    used when the rows are about equally long."""
    start = jnp.minimum(c * chunk, max_len - chunk)
    cut = lambda x: None if x is None else jax.lax.dynamic_slice_in_dim(x, start, chunk, axis=2)
    slot = start + jnp.arange(chunk)
    ok = ((slot >= c * chunk) & (slot <= query_slot[..., None])
          & (c < chunks)[:, None, None])  # [b, t, chunk]
    return merge(carry, _softmax_piece(q, cut(kv.k), cut(kv.k_scale), cut(kv.v), cut(kv.v_scale),
                                       ok, dtype))

  def visit(i, carry):
    pair = i * b + jnp.arange(b)  # [w] with w = b pairs per iteration
    row = jnp.minimum(jnp.searchsorted(ends, pair, side="right"), b - 1)
    c = pair - (ends[row] - chunks[row])  # the chunk within its row
    start = jnp.minimum(c * chunk, max_len - chunk)
    sequence = row[:, None] * heads + jnp.arange(heads)  # [w, kv]: (row, head) of the flat view

    def take(x):
      """[w, kv, chunk, ...] from `x` `[b, kv, slots, ...]`. When chunks tile the slots, one
      gather of whole chunks from the `[b * kv * chunks, chunk, ...]` view (a reshape): XLA:TPU
      relayouts the whole cache on every step for a gather of (row, slot) offsets instead."""
      if x is None:
        return None
      if max_len % chunk == 0:
        per_row = max_len // chunk
        pieces = x.reshape((b * heads * per_row, chunk) + x.shape[3:])
        return pieces[sequence * per_row + jnp.minimum(c, per_row - 1)[:, None]]
      piece = lambda r, s: jax.lax.dynamic_slice(x, (r, 0, s) + (0,) * (x.ndim - 3),
                                                 (1, heads, chunk) + x.shape[3:])[0]
      return jax.vmap(piece)(row, start)
    slot = start[:, None] + jnp.arange(chunk)  # [w, chunk]
    ok = ((pair < ends[-1])[:, None, None] & (slot >= (c * chunk)[:, None])[:, None]
          & (slot[:, None] <= query_slot[row][..., None]))  # [w, t, chunk]
    return merge(carry, _softmax_piece(q[row], take(kv.k), take(kv.k_scale), take(kv.v),
                                       take(kv.v_scale), ok, dtype), row)

  most = jnp.max(chunks)
  _, total, acc = jax.lax.cond(
      2 * ends[-1] > b * most,  # ragged would save less than half the pairs
      lambda: jax.lax.fori_loop(0, most, visit_all, init),
      lambda: jax.lax.fori_loop(0, (ends[-1] + b - 1) // b, visit, init))
  return acc / jnp.where(total > 0, total, 1.0)[..., None]


def attend_over_cache(q: jax.Array, kv: LayerKV, starts: jax.Array, limit: jax.Array, *,
                      how: str, dtype, chunk: int, platform: str | None) -> jax.Array:
  """Attention of `q` `[b, t, kv, g, d]` (queries at slots `starts[b] .. + t - 1`) over a cache
  that already holds them, the way `how` names (`DECODE_ATTENTION`); `[b, kv, g, t, d]` float32.
  `platform`: where it runs (None: JAX's default backend), which picks a Pallas kernel."""
  t = q.shape[1]
  query_slot = starts[:, None] + jnp.arange(t)  # [b, t]
  if how in PALLAS_OPTIONS and t == 1:
    return paged_decode_attention(q, kv, starts + 1, *select_kernel(how, platform))
  if how != "dense":
    return chunked_attention(q, kv, query_slot, limit, dtype, chunk)
  key_slot = jnp.arange(kv.k.shape[2])
  return dense_attention(q, kv, key_slot[None, None] <= query_slot[..., None], dtype)


def per_shard(attend, mesh: Any, kv_heads: int):
  """`attend` (`attend_over_cache`'s signature) run on each device of `mesh` over its own rows
  ('data') and kv heads ('model', where it divides them; else every device takes all heads):
  inside `shard_map` a Pallas kernel needs no partitioning (GSPMD cannot partition one) and the
  chunked loop walks only the device's own rows, gathering from its own shard."""
  heads = "model" if kv_heads % mesh.shape["model"] == 0 else None
  rows = P("data", heads)  # [batch, kv_heads, ...] cache arrays, [batch, kv, g, t, d] out
  cache = lambda kv: LayerKV(rows, rows, None if kv.k_scale is None else rows,
                             None if kv.v_scale is None else rows, kv.bits)
  return lambda q, kv, starts, limit: jax.shard_map(
      attend, mesh=mesh, in_specs=(P("data", None, heads), cache(kv), P("data"), P("data")),
      out_specs=rows, check_vma=False)(q, kv, starts, limit)


class Attention(nn.Module):
  config: ModelConfig
  inv_freq: np.ndarray  # [head_dim // 2], static
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  quant: Any = None
  decode_attention: str = "chunked"
  attention_chunk: int = ATTENTION_CHUNK
  mesh: Any = None  # a ('data', 'model') Mesh: attention over the cache runs per shard

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, allowed: jax.Array | None,
               kv: LayerKV | None, starts: jax.Array | None, limit: jax.Array | None):
    """One attention layer.

    Args:
      x: `[batch, seq, hidden]`.
      positions: `[batch, seq]` rotary positions.
      allowed: without a cache, `[batch, seq, seq]` bool: which keys each query may attend to.
      kv: this layer's cache (`LayerKV`, `[batch, kv_heads, max_len, head_dim]`, or a multiple of
        kv_heads: each head's copies side by side, see `init_kv_cache`), or None.
      starts: with `kv`, `[batch]` the slot where each row's first new token goes; the row's
        queries attend to every slot up to their own.
      limit: with `kv`, `[batch]` each row's highest query slot that matters, -1 for a row
        that doesn't (the chunked loop visits only these).

    Returns:
      `[batch, seq, hidden]` and the updated `LayerKV` (None without a cache).
    """
    cfg = self.config
    if self.decode_attention not in DECODE_ATTENTION:
      raise ValueError(f"decode_attention={self.decode_attention!r} is not one of "
                       f"{DECODE_ATTENTION}.")
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
    if getattr(self.quant, "kv_rotation", False):
      # An orthogonal rotation of queries and keys keeps q k^T and spreads the keys' outlier
      # channels before the quantized cache (the values' rotation is folded into the weights).
      rotation = jnp.asarray(self.quant.kv_rotation_matrix(cfg.head_dim), self.dtype)
      q = jnp.matmul(q, rotation, precision=jax.lax.Precision.HIGHEST)
      k = jnp.matmul(k, rotation, precision=jax.lax.Precision.HIGHEST)
    if kv is not None and kv.k.shape[1] != cfg.num_kv_heads:  # a cache of replicated kv heads
      copies = kv.k.shape[1] // cfg.num_kv_heads
      k, v = jnp.repeat(k, copies, axis=2), jnp.repeat(v, copies, axis=2)
    heads = k.shape[2]  # query head h reads kv head h // (num_heads / heads)
    q = q.reshape(b, t, heads, cfg.num_heads // heads, cfg.head_dim)

    if kv is None:
      out = dense_attention(q, LayerKV(k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)), allowed,
                            self.dtype)
    else:  # written first (quantized on write), so attention sees what the cache holds
      kv = kv.write(k, v, starts)
      attend = functools.partial(
          attend_over_cache, how=self.decode_attention, dtype=self.dtype,
          chunk=self.attention_chunk,
          platform=None if self.mesh is None else self.mesh.devices.flat[0].platform)
      if self.mesh is not None:
        attend = per_shard(attend, self.mesh, heads)
      out = attend(q, kv, starts, limit)
    out = out.astype(self.dtype).transpose(0, 3, 1, 2, 4).reshape(b, t, cfg.num_heads * cfg.head_dim)
    return linear("o_proj", cfg.hidden_size, cfg.o_bias)(out), kv
