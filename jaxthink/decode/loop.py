"""The compiled generation programs: prefill, insertion into decode slots, and one
`lax.while_loop` over `DecodeState`.

Each step (1) runs the quantized (policy) model on every row's last token, and the reference
model too when co-decoding (teacher-forced on the policy's token, with its own cache); (2)
measures entropy, log-probs and KL(p_ref ‖ p_quant) on the raw logits; (3) applies the marker
penalty; (4) picks the next token; (5) writes everything into each row's own next column. Rows
stop at an end token or at their own budget. The loop returns when every row is done, or, for the
request engine (`jaxthink.decode.engine`), as soon as a row is done while requests wait, or after
`max_steps`; the host then refills the free rows (`insert`) and resumes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxthink.decode.mesh import constrain_state, kv_replicas
from jaxthink.decode.penalty import PenaltyArrays, apply_penalty
from jaxthink.decode.sampling import Sampling, choose_tokens, row_keys
from jaxthink.decode.state import DecodeState, Prefilled, TokenRecords
from jaxthink.decode.stats import entropy, kl_divergence, log_probs, token_log_prob
from jaxthink.models.decoder import Decoder
from jaxthink.models.kv_cache import init_kv_cache, insert_rows

# `marker_in_top` looks at this many most likely tokens (the study's top-20 candidates).
TOP_CANDIDATES = 20


@dataclasses.dataclass(frozen=True)
class LoopSpec:
  """Everything static about one generation program; a new value compiles a new program.

  Attributes:
    policy: the model that generates (usually the quantized one).
    reference: the model co-decoded for KL / entropy / log-prob (usually full precision), or None.
    sampling: how tokens are chosen.
    penalty_mode: "constant" or "entropy_gated" (λ, τ and the markers are traced; "off" is
      λ = 0 in "constant", so a variant and its penalised twin share one program).
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
    # The models attend per shard of the mesh their programs run on.
    for name in ("policy", "reference"):
      model = getattr(self, name)
      if model is not None and model.mesh != self.mesh:
        object.__setattr__(self, name, model.clone(mesh=self.mesh))
    if self.penalty_mode == "off":
      object.__setattr__(self, "penalty_mode", "constant")


def _constrain(spec: LoopSpec, tree):
  return constrain_state(tree, spec.mesh)


def _empty_cache(spec: LoopSpec, model: Decoder, batch: int, max_len: int,
                 kv_bits: int | None = None):
  """`model`'s empty cache, its kv heads replicated as the mesh's 'model' axis needs."""
  platform = None if spec.mesh is None else spec.mesh.devices.flat[0].platform
  return init_kv_cache(model.config, batch, max_len, spec.cache_dtype, kv_bits,
                       kv_replicas(model.config, spec.mesh), platform)


def _measure(spec: LoopSpec, logits: jax.Array, ref_logits: jax.Array | None,
             penalty: PenaltyArrays, keys: jax.Array,
             generated: jax.Array) -> tuple[jax.Array, TokenRecords]:
  """Measures, penalises and picks each row's next token from `logits` `[batch, vocab]`.

  Returns the chosen tokens `[batch]` and their measurements (`TokenRecords` of `[batch]`).
  """
  logp = log_probs(logits)
  ent = entropy(logp)
  # KL / entropy / log-probs come from the raw logits above; the penalty only steers the choice.
  penalised, fired = apply_penalty(logits, ent, penalty, spec.penalty_mode)
  chosen = choose_tokens(penalised, keys, generated, spec.sampling)
  top = jax.lax.top_k(logits, min(TOP_CANDIDATES, logits.shape[-1]))[1]  # raw, unpenalised
  values = TokenRecords(entropy=ent, log_prob=token_log_prob(logp, chosen),
                        is_marker=penalty.marker_mask[chosen], penalty_fired=fired,
                        marker_in_top=jnp.any(penalty.marker_mask[top], axis=-1))
  if ref_logits is not None:
    ref_logp = log_probs(ref_logits)
    values = values.replace(kl=kl_divergence(ref_logp, logp), ref_entropy=entropy(ref_logp),
                            ref_log_prob=token_log_prob(ref_logp, chosen))
  return chosen, values


def _is_end(spec: LoopSpec, tokens: jax.Array) -> jax.Array:
  if not spec.eos_ids:
    return jnp.zeros(tokens.shape, jnp.bool_)
  return jnp.isin(tokens, jnp.asarray(spec.eos_ids, jnp.int32))


def _record(spec: LoopSpec, s: DecodeState, chosen: jax.Array, values: TokenRecords,
            active: jax.Array) -> DecodeState:
  """Writes the step's token and measurements into column `generated[b]` of each active row."""
  rows = jnp.arange(chosen.shape[0])
  column = jnp.where(active, s.generated, spec.max_new_tokens)  # out of range: dropped
  put = lambda buf, x: buf.at[rows, column].set(x.astype(buf.dtype), mode="drop")
  generated = s.generated + active.astype(jnp.int32)
  ended = s.ended | (active & _is_end(spec, chosen))
  return s.replace(
      generated=generated, ended=ended, done=ended | (generated >= s.budget),
      last_token=jnp.where(active, chosen, s.last_token), tokens=put(s.tokens, chosen),
      records=jax.tree.map(put, s.records, values))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def init_state(spec: LoopSpec, batch: int, max_len: int) -> DecodeState:
  """`batch` empty (done) decode slots with caches of `max_len` slots per row, rounded up to
  whole attention chunks (the chunked loop then gathers whole chunks, which XLA:TPU does in
  place)."""
  chunk = spec.policy.attention_chunk
  max_len = -(-max_len // chunk) * chunk if max_len > chunk else max_len
  buffer = lambda dtype: jnp.zeros((batch, spec.max_new_tokens), dtype)
  records = TokenRecords(entropy=buffer(jnp.float32), log_prob=buffer(jnp.float32),
                         is_marker=buffer(jnp.bool_), penalty_fired=buffer(jnp.bool_),
                         marker_in_top=buffer(jnp.bool_))
  if spec.reference is not None:
    records = records.replace(kl=buffer(jnp.float32), ref_entropy=buffer(jnp.float32),
                              ref_log_prob=buffer(jnp.float32))
  per_row = lambda value, dtype: jnp.full((batch,), value, dtype)
  state = DecodeState(
      generated=per_row(0, jnp.int32), budget=per_row(0, jnp.int32),
      ended=per_row(False, jnp.bool_), done=per_row(True, jnp.bool_),
      last_token=per_row(spec.pad_id, jnp.int32), keys=row_keys(0, batch),
      tokens=jnp.full((batch, spec.max_new_tokens), spec.pad_id, jnp.int32), records=records,
      cache=_empty_cache(spec, spec.policy, batch, max_len, spec.kv_bits),
      ref_cache=None if spec.reference is None else _empty_cache(spec, spec.reference, batch,
                                                                 max_len))
  return _constrain(spec, state)


@functools.partial(jax.jit, static_argnums=0)
def prefill(spec: LoopSpec, params: Any, ref_params: Any, tokens: jax.Array, lengths: jax.Array,
            seeds: jax.Array, penalty: PenaltyArrays) -> Prefilled:
  """Runs right-padded prompts and picks each one's first token.

  Args:
    tokens: `[n, prompt_bucket]` int32, each row's prompt first, then padding.
    lengths: `[n]` int32 prompt lengths (>= 1).
    seeds: `[n]` uint32, each request's sampling seed, or one seed `[]` for all (hashed with the
      row index).
  """
  n, bucket = tokens.shape
  mask = jnp.arange(bucket)[None] < lengths[:, None]
  positions = jnp.broadcast_to(jnp.arange(bucket, dtype=jnp.int32), (n, bucket))

  def run(model: Decoder, model_params, kv_bits):
    # A prompt-sized cache keeps prefill attention [prompt, prompt], not [prompt, prompt + new].
    cache = _empty_cache(spec, model, n, bucket, kv_bits)
    logits, cache = model.apply({"params": model_params}, tokens, positions, mask,
                                _constrain(spec, cache), last_only=True)
    return logits[:, 0], cache

  logits, cache = run(spec.policy, params, spec.kv_bits)
  ref_logits, ref_cache = (None, None) if spec.reference is None else run(
      spec.reference, ref_params, None)
  keys = row_keys(seeds, n)
  chosen, first = _measure(spec, logits, ref_logits, penalty, keys, jnp.zeros((n,), jnp.int32))
  return _constrain(spec, Prefilled(first_token=chosen, first=first, keys=keys, cache=cache,
                                    ref_cache=ref_cache))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def insert(spec: LoopSpec, state: DecodeState, new: Prefilled, rows: jax.Array,
           budgets: jax.Array) -> DecodeState:
  """Puts prefilled requests into slots `rows` `[n]` with their budgets `[n]`, their first token
  already recorded; `state` is donated. Rows must be in range; a padded batch repeats a request
  and its row (identical writes). Out-of-range rows would be cheap to drop in a scatter, but
  XLA:CPU turns a one-row scatter with dropping into a select over the whole cache."""
  reset = lambda buf, value: buf.at[rows].set(value, mode="promise_in_bounds")
  fresh = state.replace(
      tokens=reset(state.tokens, spec.pad_id),
      records=jax.tree.map(lambda buf: reset(buf, jnp.zeros((), buf.dtype)), state.records))
  s = fresh.replace(
      generated=reset(state.generated, 0), budget=reset(state.budget, budgets),
      ended=reset(state.ended, False), done=reset(state.done, False),
      keys=reset(state.keys, new.keys),
      cache=insert_rows(state.cache, new.cache, rows),
      ref_cache=None if new.ref_cache is None else insert_rows(state.ref_cache, new.ref_cache,
                                                               rows))
  scatter = lambda x: reset(jnp.zeros(s.done.shape, x.dtype), x)
  active = scatter(jnp.ones(rows.shape, jnp.bool_))
  return _constrain(spec, _record(spec, s, scatter(new.first_token),
                                  jax.tree.map(scatter, new.first), active))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=3)
def decode(spec: LoopSpec, params: Any, ref_params: Any, state: DecodeState,
           penalty: PenaltyArrays, return_at_done: jax.Array,
           max_steps: jax.Array) -> tuple[DecodeState, jax.Array]:
  """Generates until every row is done, or until `return_at_done` rows are (free rows count), or
  for `max_steps` steps. Returns the state (`state` is donated) and the steps taken `[]`."""

  def running(carry) -> jax.Array:
    s, steps = carry
    return (jnp.any(~s.done) & (steps < max_steps)
            & (jnp.sum(s.done, dtype=jnp.int32) < return_at_done))

  def step(carry):
    s, steps = carry
    active = ~s.done  # finished rows feed padding, which their caches never count
    tokens, positions = s.last_token[:, None], s.cache.lengths[:, None]
    logits, cache = spec.policy.apply({"params": params}, tokens, positions, active[:, None],
                                      s.cache)
    ref_logits, ref_cache = None, None
    if spec.reference is not None:
      ref_logits, ref_cache = spec.reference.apply({"params": ref_params}, tokens, positions,
                                                   active[:, None], s.ref_cache)
      ref_logits = ref_logits[:, 0]
    chosen, values = _measure(spec, logits[:, 0], ref_logits, penalty, s.keys, s.generated)
    s = _record(spec, s.replace(cache=cache, ref_cache=ref_cache), chosen, values, active)
    return _constrain(spec, s), steps + 1

  return jax.lax.while_loop(running, step, (state, jnp.zeros((), jnp.int32)))


@functools.partial(jax.jit, static_argnums=0)  # no donation: the result is smaller
def select(spec: LoopSpec, state: DecodeState, rows: jax.Array) -> DecodeState:
  """The state of rows `rows` `[n]` only (the engine's drain compacts its busy rows)."""
  return _constrain(spec, jax.tree.map(lambda x: x[rows], state))
