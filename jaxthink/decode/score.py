"""Reference statistics by a teacher-forced pass over finished sequences (`reference: score`).

Co-decoding runs the reference model inside every decode step: a second full model and cache at
decode's low arithmetic intensity. KL(p_ref ‖ p_quant) and the reference's entropy and log-probs
only need the reference's distributions along the sequence the policy wrote, so they can be
computed afterwards in one compute-bound pass per batch of finished sequences: both models run
teacher-forced over prompt + response in chunks of `chunk` positions (the policy through its own
kv8 / kv4 cache, so its logits are those it decoded with), and the statistics come from the same
float32 functions as in the loop. Records equal co-decoding's to float rounding. The sequences are
packed into a few rows, one after another, so the pass costs what was written.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxthink.decode.generate import DecodeResult, _model_and_params, bucket_length
from jaxthink.decode.mesh import (constrain_state, kv_replicas, padded_batch_size, place_params,
                                  put_batch, to_numpy)
from jaxthink.decode.stats import entropy, kl_divergence, log_probs, token_log_prob
from jaxthink.models.decoder import Decoder
from jaxthink.models.kv_cache import init_kv_cache


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _score(policy: Decoder, reference: Decoder, kv_bits: int | None, cache_dtype: Any,
           max_len: int, mesh: Mesh | None, params: Any, ref_params: Any, tokens: jax.Array,
           targets: jax.Array, positions: jax.Array, fresh: jax.Array, steps: jax.Array):
  """Teacher-forced statistics of packed rows: `tokens`, `targets` (the next token) and
  `positions` `[rows, T * chunk]` hold sequences one after another, each starting at a chunk
  boundary (`fresh` `[rows, T]`, where a row's cache restarts) with positions from 0 (-1 at
  padding). Runs the first `steps` chunks. Returns KL, reference entropy and reference log-prob,
  each `[rows, T * chunk]` float32."""
  rows, width = tokens.shape
  chunk = width // fresh.shape[1]
  policy, reference = policy.clone(mesh=mesh), reference.clone(mesh=mesh)  # attend per shard
  as_chunks = lambda x: x.reshape(rows, -1, chunk).swapaxes(0, 1)  # [T, rows, chunk]
  tokens, targets, positions = as_chunks(tokens), as_chunks(targets), as_chunks(positions)

  def step(i, carry):
    cache, ref_cache, out = carry
    at = lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False)
    tok, target, pos = at(tokens), at(targets), at(positions)
    mask = pos >= 0
    restart = lambda c: c.replace(lengths=jnp.where(fresh[:, i], 0, c.lengths))
    logits, cache = policy.apply({"params": params}, tok, jnp.maximum(pos, 0), mask,
                                 restart(cache))
    ref_logits, ref_cache = reference.apply({"params": ref_params}, tok, jnp.maximum(pos, 0),
                                            mask, restart(ref_cache))
    logp, ref_logp = log_probs(logits), log_probs(ref_logits)
    ref_lp = jax.vmap(token_log_prob, in_axes=1, out_axes=1)(ref_logp, target)
    stats = (kl_divergence(ref_logp, logp), entropy(ref_logp), ref_lp)
    out = tuple(jax.lax.dynamic_update_index_in_dim(o, x, i, 0) for o, x in zip(out, stats))
    return cache, ref_cache, out

  caches = constrain_state(
      (init_kv_cache(policy.config, rows, max_len, cache_dtype, kv_bits,
                     kv_replicas(policy.config, mesh)),
       init_kv_cache(reference.config, rows, max_len, cache_dtype, None,
                     kv_replicas(reference.config, mesh))), mesh)
  out = tuple(jnp.zeros(tokens.shape, jnp.float32) for _ in range(3))
  *_, out = jax.lax.fori_loop(0, steps, step, (*caches, out))
  return tuple(x.swapaxes(0, 1).reshape(rows, width) for x in out)


def _pack(lengths: Sequence[int], rows: int, chunk: int) -> tuple[list[list[int]], int]:
  """Sequence indices per row, longest first onto the row with the fewest chunks (each sequence
  takes ceil(length / chunk) chunks) so the rows end at about the same chunk, and the chunks of
  the fullest row."""
  load, placed = [0] * rows, [[] for _ in range(rows)]
  for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
    row = min(range(rows), key=load.__getitem__)
    placed[row].append(i)
    load[row] += -(-lengths[i] // chunk)
  return placed, max(load)


def _layout(lengths: Sequence[int], rows: int, chunk: int, mesh: Mesh | None,
            halvings: int = 2) -> tuple[int, int, list[list[int]], int]:
  """`(rows, chunk, placement, steps)`: of `rows x chunk`, `rows/2 x 2 chunk` ... (up to
  `halvings` times; each step scores the same tokens) the one that packs in the fewest steps.
  A long sequence's chunks run one after another, so when it alone sets the steps fewer, wider
  rows finish sooner."""
  best = None
  for _ in range(halvings + 1):
    placed, steps = _pack(lengths, rows, chunk)
    if best is None or steps < best[3]:  # ties keep more rows (narrower chunks)
      best = (rows, chunk, placed, steps)
    if rows % 2 or padded_batch_size(rows // 2, mesh) != rows // 2:
      break
    rows, chunk = rows // 2, chunk * 2
  return best


def score_reference(policy, reference, prompts: Sequence[Sequence[int]],
                    results: Sequence[DecodeResult], *, kv_bits: int | None = None,
                    cache_dtype: Any = None, chunk: int = 64, rows: int = 16,
                    max_len: int | None = None, pad_id: int = 0,
                    mesh: Mesh | None = None) -> list[DecodeResult]:
  """`results` (batches of one, as `Engine` returns them) with `kl`, `ref_entropy` and
  `ref_log_prob` filled from one teacher-forced pass of both models.

  The sequences (prompt + response) are packed into `rows` rows, one after another, each from a
  chunk boundary, so long-tailed lengths cost their written tokens (rounded up to `chunk`) and
  the pass runs until the fullest row ends, not rows x the longest sequence; when the longest
  sequence alone sets that, fewer rows of wider chunks take fewer steps (`_layout`).

  Args:
    policy, reference: `(Decoder, params)` or `Pretrained`, as in `generate`.
    prompts: the prompt token ids of each result.
    kv_bits / cache_dtype: the policy's cache as it decoded (the reference's is float).
    chunk: positions per row and step of the pass (`rows x chunk` bounds the logits).
    rows: rows of the pass (a multiple of the mesh's 'data' axis; fewer when fewer sequences,
      and half or a quarter as many rows with 2x or 4x the chunk when that takes fewer steps).
    max_len: cache slots per row, at least the longest sequence (default: that, rounded up to a
      power of two); a run passes its longest possible sequence so every call shares a program.
  """
  model, params = _model_and_params(policy)
  ref_model, ref_params = _model_and_params(reference)
  params, ref_params = place_params(params, mesh), place_params(ref_params, mesh)
  cache_dtype = jnp.dtype(cache_dtype or model.dtype)
  sequences = [list(p) + r.tokens[0].tolist() for p, r in zip(prompts, results)]
  longest = max(map(len, sequences))
  max_len = max_len or bucket_length(longest, chunk)
  if longest > max_len:
    raise ValueError(f"a sequence of {longest} tokens exceeds max_len={max_len}.")
  rows = padded_batch_size(min(rows, 1 << (len(sequences) - 1).bit_length()), mesh)
  rows, chunk, placed, steps = _layout([len(s) for s in sequences], rows, chunk, mesh)
  max_len = -(-max_len // chunk) * chunk  # whole chunks: a chunk is written at its start slot
  width = bucket_length(steps, 8)  # allocated chunks per row: few distinct programs
  tokens = np.full((rows, width * chunk), pad_id, np.int32)
  targets, positions = tokens.copy(), np.full_like(tokens, -1)
  fresh = np.zeros((rows, width), bool)
  start = {}  # sequence -> (row, first column)
  for row, members in enumerate(placed):
    column = 0
    for i in members:
      seq, n = sequences[i], len(sequences[i])
      start[i] = (row, column)
      tokens[row, column:column + n] = seq
      targets[row, column:column + n - 1] = seq[1:]
      positions[row, column:column + n] = np.arange(n)
      fresh[row, column // chunk] = True
      column += -(-n // chunk) * chunk
  put = lambda x: put_batch(x, mesh)
  kl, ref_entropy, ref_log_prob = to_numpy(_score(
      model, ref_model, kv_bits, cache_dtype, max_len, mesh, params, ref_params, put(tokens),
      put(targets), put(positions), put(fresh), jnp.asarray(steps, jnp.int32)))
  out = list(results)
  for i, r in enumerate(results):
    # Token j of the response was predicted at position len(prompt) + j - 1.
    row, column = start[i]
    at = slice(column + len(prompts[i]) - 1, column + len(prompts[i]) - 1 + r.tokens.shape[1])
    out[i] = dataclasses.replace(r, kl=kl[row:row + 1, at],
                                 ref_entropy=ref_entropy[row:row + 1, at],
                                 ref_log_prob=ref_log_prob[row:row + 1, at])
  return out
