"""The compiled generation program: prefill, then one `lax.while_loop` over `DecodeState`.

Each step (1) runs the quantized (policy) model on the last token, and the reference model too when
co-decoding (teacher-forced on the policy's token, with its own cache); (2) measures entropy,
log-probs and KL(p_ref ‖ p_quant) on the raw logits; (3) applies the marker penalty; (4) picks
the next token; (5) writes everything into column `step` of fixed-size buffers. Rows stop at an
end token; the loop stops when every row has, or after `max_new_tokens`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxthink.decode.mesh import constrain_state
from jaxthink.decode.penalty import PenaltyArrays, apply_penalty
from jaxthink.decode.sampling import Sampling, choose_tokens, row_keys
from jaxthink.decode.state import DecodeState, TokenRecords
from jaxthink.decode.stats import entropy, kl_divergence, log_probs, token_log_prob
from jaxthink.models.decoder import Decoder, positions_from_mask
from jaxthink.models.kv_cache import extend_kv_cache, init_kv_cache

# `marker_in_top` looks at this many most likely tokens (the study's top-20 candidates).
TOP_CANDIDATES = 20


@dataclasses.dataclass(frozen=True)
class LoopSpec:
  """Everything static about one generation program; a new value compiles a new program.

  Attributes:
    policy: the model that generates (usually the quantized one).
    reference: the model co-decoded for KL / entropy / log-prob (usually full precision), or None.
    sampling: how tokens are chosen.
    penalty_mode: "off", "constant" or "entropy_gated" (λ, τ and the markers are traced).
    eos_ids: tokens that end a row (EOS and stop ids).
    pad_id: written into the token buffer after a row's end.
    max_new_tokens: buffer length, and the most tokens a row generates.
    kv_bits: None, 8 or 4: the policy's KV cache quantization (the reference keeps a float cache).
    cache_dtype: storage dtype of float caches.
    mesh: the device mesh, or None for one device.
  """

  policy: Decoder
  reference: Decoder | None
  sampling: Sampling
  penalty_mode: str
  eos_ids: tuple[int, ...]
  pad_id: int
  max_new_tokens: int
  kv_bits: int | None = None
  cache_dtype: Any = jnp.float32
  mesh: Mesh | None = None

  def __post_init__(self):
    # jnp.float32 and jnp.dtype("float32") compare equal but hash differently: normalise, so
    # equal specs share one compiled program.
    object.__setattr__(self, "cache_dtype", jnp.dtype(self.cache_dtype))


def _constrain(spec: LoopSpec, tree):
  return constrain_state(tree, spec.mesh, spec.policy.config.num_kv_heads)


def _put_column(buffer: jax.Array, column: jax.Array, values: jax.Array) -> jax.Array:
  return jax.lax.dynamic_update_slice(buffer, values[:, None].astype(buffer.dtype), (0, column))


def _emit(spec: LoopSpec, state: DecodeState, logits: jax.Array, ref_logits: jax.Array | None,
          penalty: PenaltyArrays) -> DecodeState:
  """Measures, penalises, picks the next token from `logits` `[batch, vocab]` and records it."""
  logp = log_probs(logits)
  ent = entropy(logp)
  # KL / entropy / log-probs come from the raw logits above; the penalty only steers the choice.
  penalised, fired = apply_penalty(logits, ent, penalty, spec.penalty_mode)
  chosen = choose_tokens(penalised, state.keys, state.step, spec.sampling)
  top = jax.lax.top_k(logits, min(TOP_CANDIDATES, logits.shape[-1]))[1]  # raw, unpenalised
  marker_in_top = jnp.any(penalty.marker_mask[top], axis=-1)
  active = ~state.done
  col = state.step
  keep = lambda x: jnp.where(active, x, jnp.zeros_like(x))
  r = state.records
  records = TokenRecords(
      entropy=_put_column(r.entropy, col, keep(ent)),
      log_prob=_put_column(r.log_prob, col, keep(token_log_prob(logp, chosen))),
      is_marker=_put_column(r.is_marker, col, keep(penalty.marker_mask[chosen])),
      penalty_fired=_put_column(r.penalty_fired, col, keep(fired)),
      marker_in_top=_put_column(r.marker_in_top, col, keep(marker_in_top)))
  if ref_logits is not None:
    ref_logp = log_probs(ref_logits)
    records = records.replace(
        kl=_put_column(r.kl, col, keep(kl_divergence(ref_logp, logp))),
        ref_entropy=_put_column(r.ref_entropy, col, keep(entropy(ref_logp))),
        ref_log_prob=_put_column(r.ref_log_prob, col, keep(token_log_prob(ref_logp, chosen))))
  token = jnp.where(active, chosen, spec.pad_id)
  ended = jnp.isin(chosen, jnp.asarray(spec.eos_ids, jnp.int32)) if spec.eos_ids else False
  return state.replace(
      step=state.step + 1,
      done=state.done | (active & ended),
      last_token=token,
      lengths=state.lengths + active.astype(jnp.int32),
      tokens=_put_column(state.tokens, col, token),
      records=records)


@functools.partial(jax.jit, static_argnums=0)
def prefill(spec: LoopSpec, params: Any, ref_params: Any, tokens: jax.Array, mask: jax.Array,
            seed: jax.Array, penalty: PenaltyArrays) -> DecodeState:
  """Runs the prompts and picks the first token.

  Args:
    tokens: `[batch, prompt_len]` int32, left-padded (every row's last column is a real token).
    mask: `[batch, prompt_len]` bool, False at padding.
    seed: `[]` int, the sampling seed, or `[batch]` per-row seeds.

  Returns:
    the state after one generated token, with caches of `prompt_len + max_new_tokens` slots.
  """
  batch, prompt_len = tokens.shape
  positions = positions_from_mask(mask)

  def run(model: Decoder, model_params, kv_bits):
    # A prompt-sized cache keeps prefill attention [prompt, prompt], not [prompt, prompt + new].
    cache = init_kv_cache(model.config, batch, prompt_len, spec.cache_dtype, kv_bits)
    logits, cache = model.apply({"params": model_params}, tokens, positions, mask,
                                _constrain(spec, cache), last_only=True)
    return logits[:, -1], extend_kv_cache(cache, spec.max_new_tokens)

  logits, cache = run(spec.policy, params, spec.kv_bits)
  ref_logits, ref_cache = (None, None) if spec.reference is None else run(
      spec.reference, ref_params, None)
  buffer = lambda dtype: jnp.zeros((batch, spec.max_new_tokens), dtype)
  records = TokenRecords(entropy=buffer(jnp.float32), log_prob=buffer(jnp.float32),
                         is_marker=buffer(jnp.bool_), penalty_fired=buffer(jnp.bool_),
                         marker_in_top=buffer(jnp.bool_))
  if spec.reference is not None:
    records = records.replace(kl=buffer(jnp.float32), ref_entropy=buffer(jnp.float32),
                              ref_log_prob=buffer(jnp.float32))
  state = DecodeState(
      step=jnp.zeros((), jnp.int32), done=jnp.zeros((batch,), jnp.bool_),
      last_token=tokens[:, -1], position=positions[:, -1],
      lengths=jnp.zeros((batch,), jnp.int32), keys=row_keys(seed, batch),
      tokens=jnp.full((batch, spec.max_new_tokens), spec.pad_id, jnp.int32),
      records=records, cache=cache, ref_cache=ref_cache)
  return _constrain(spec, _emit(spec, _constrain(spec, state), logits, ref_logits, penalty))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=3)
def decode(spec: LoopSpec, params: Any, ref_params: Any, state: DecodeState,
           penalty: PenaltyArrays) -> DecodeState:
  """Generates until every row has ended or `max_new_tokens` are out; `state` is donated."""

  def running(s: DecodeState) -> jax.Array:
    return (s.step < spec.max_new_tokens) & ~jnp.all(s.done)

  def step(s: DecodeState) -> DecodeState:
    tokens, positions = s.last_token[:, None], (s.position + 1)[:, None]
    real = ~s.done[:, None]  # ended rows feed padding, masked out of the cache
    logits, cache = spec.policy.apply({"params": params}, tokens, positions, real, s.cache)
    ref_logits, ref_cache = None, None
    if spec.reference is not None:
      ref_logits, ref_cache = spec.reference.apply({"params": ref_params}, tokens, positions,
                                                   real, s.ref_cache)
      ref_logits = ref_logits[:, 0]
    s = s.replace(cache=cache, ref_cache=ref_cache, position=s.position + 1)
    return _constrain(spec, _emit(spec, s, logits[:, 0], ref_logits, penalty))

  return jax.lax.while_loop(running, step, state)
