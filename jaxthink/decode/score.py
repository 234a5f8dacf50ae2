"""Reference statistics by a teacher-forced pass over finished sequences (`reference: score`).

Co-decoding runs the reference model inside every decode step: a second full model and cache at
decode's low arithmetic intensity. KL(p_ref ‖ p_quant) and the reference's entropy and log-probs
only need the reference's distributions along the sequence the policy wrote, so they can be
computed afterwards in one compute-bound pass per batch of finished sequences: both models run
teacher-forced over prompt + response in chunks of `chunk` positions (the policy through its own
kv8 / kv4 cache, so its logits are those it decoded with), and the statistics come from the same
float32 functions as in the loop. Records equal co-decoding's to float rounding.
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
from jaxthink.decode.mesh import padded_batch_size, place_params, put_batch, to_numpy
from jaxthink.decode.stats import entropy, kl_divergence, log_probs, token_log_prob
from jaxthink.models.decoder import Decoder
from jaxthink.models.kv_cache import init_kv_cache


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _score(policy: Decoder, reference: Decoder, kv_bits: int | None, cache_dtype: Any, chunk: int,
           params: Any, ref_params: Any, tokens: jax.Array, totals: jax.Array):
  """Per position `p` of `tokens` `[b, S]` (right-padded, `totals` `[b]` real tokens): KL,
  reference entropy and reference log-prob of token `p + 1`, each `[b, S]` float32."""
  b, length = tokens.shape
  targets = jnp.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1)
  as_chunks = lambda x: x.reshape(b, length // chunk, chunk).swapaxes(0, 1)  # [n, b, chunk]

  def step(caches, xs):
    cache, ref_cache = caches
    tok, target, positions = xs
    mask = positions < totals[:, None]
    logits, cache = policy.apply({"params": params}, tok, positions, mask, cache)
    ref_logits, ref_cache = reference.apply({"params": ref_params}, tok, positions, mask,
                                            ref_cache)
    logp, ref_logp = log_probs(logits), log_probs(ref_logits)
    ref_lp = jax.vmap(token_log_prob, in_axes=1, out_axes=1)(ref_logp, target)
    return (cache, ref_cache), (kl_divergence(ref_logp, logp), entropy(ref_logp), ref_lp)

  caches = (init_kv_cache(policy.config, b, length, cache_dtype, kv_bits),
            init_kv_cache(reference.config, b, length, cache_dtype))
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))
  _, stats = jax.lax.scan(step, caches, (as_chunks(tokens), as_chunks(targets),
                                         as_chunks(positions)))
  return tuple(x.swapaxes(0, 1).reshape(b, length) for x in stats)


def score_reference(policy, reference, prompts: Sequence[Sequence[int]],
                    results: Sequence[DecodeResult], *, kv_bits: int | None = None,
                    cache_dtype: Any = None, chunk: int = 256, pad_id: int = 0,
                    mesh: Mesh | None = None) -> list[DecodeResult]:
  """`results` (batches of one, as `Engine` returns them) with `kl`, `ref_entropy` and
  `ref_log_prob` filled from one teacher-forced pass of both models.

  Args:
    policy, reference: `(Decoder, params)` or `Pretrained`, as in `generate`.
    prompts: the prompt token ids of each result.
    kv_bits / cache_dtype: the policy's cache as it decoded (the reference's is float).
    chunk: positions per step of the pass (bounds the `[batch, chunk, vocab]` logits).
  """
  model, params = _model_and_params(policy)
  ref_model, ref_params = _model_and_params(reference)
  params, ref_params = place_params(params, mesh), place_params(ref_params, mesh)
  cache_dtype = jnp.dtype(cache_dtype or model.dtype)
  sequences = [list(p) + r.tokens[0].tolist() for p, r in zip(prompts, results)]
  # Sequences are scored in groups of one length bucket each, so a short response is not padded
  # to the longest one's length (long-tailed lengths: most would be padding).
  groups: dict[int, list[int]] = {}
  for i, seq in enumerate(sequences):
    groups.setdefault(bucket_length(len(seq), chunk), []).append(i)
  out = list(results)
  for length, members in sorted(groups.items()):
    batch = padded_batch_size(1 << (len(members) - 1).bit_length(), mesh)  # few programs
    tokens = np.full((batch, length), pad_id, np.int32)
    totals = np.zeros(batch, np.int32)
    for row, i in enumerate(members):
      tokens[row, :len(sequences[i])], totals[row] = sequences[i], len(sequences[i])
    kl, ref_entropy, ref_log_prob = to_numpy(_score(
        model, ref_model, kv_bits, cache_dtype, min(chunk, length), params, ref_params,
        put_batch(tokens, mesh), put_batch(totals, mesh)))
    for row, i in enumerate(members):
      # Token j of the response was predicted at position len(prompt) + j - 1.
      r = results[i]
      at = slice(len(prompts[i]) - 1, len(prompts[i]) - 1 + r.tokens.shape[1])
      out[i] = dataclasses.replace(r, kl=kl[row:row + 1, at],
                                   ref_entropy=ref_entropy[row:row + 1, at],
                                   ref_log_prob=ref_log_prob[row:row + 1, at])
  return out
