"""The carry of the decode loop: fixed-size, per-row buffers, so one compiled program serves every
step, and a row (a decode slot) can be refilled with a new request while the others run on."""

from __future__ import annotations

import flax.struct
import jax

from jaxthink.models.kv_cache import KVCache


@flax.struct.dataclass
class TokenRecords:
  """What is measured for every generated token: `[batch, max_new_tokens]` buffers in the state,
  `[batch]` for one step.

  Measured on the unpenalised, temperature-1 logits (the models' own distributions). Slots after
  a row's end hold 0 / False. The reference fields are None without a reference model.
  """

  entropy: jax.Array  # float32, entropy of p_quant (nats)
  log_prob: jax.Array  # float32, log p_quant(chosen token)
  is_marker: jax.Array  # bool, the chosen token is a marker token
  penalty_fired: jax.Array  # bool, the penalty was applied at this step
  kl: jax.Array | None = None  # float32, KL(p_ref ‖ p_quant) (nats)
  ref_entropy: jax.Array | None = None  # float32, entropy of p_ref
  ref_log_prob: jax.Array | None = None  # float32, log p_ref(chosen token)


@flax.struct.dataclass
class DecodeState:
  """Everything one decode step reads and writes; every field is per row (decode slot).

  A row's rotary position and cache slot for its next token are both `cache.lengths[b]`.
  """

  generated: jax.Array  # [batch] int32, tokens generated (the row's next buffer column)
  budget: jax.Array  # [batch] int32, the most tokens this row may generate
  ended: jax.Array  # [batch] bool, the row emitted an end token
  done: jax.Array  # [batch] bool, ended or out of budget: the row's slot is free
  last_token: jax.Array  # [batch] int32, the token the next step feeds to the models
  keys: jax.Array  # [batch] PRNG keys, one per row (its request's seed)
  tokens: jax.Array  # [batch, max_new_tokens] int32, pad after each row's end
  records: TokenRecords
  cache: KVCache  # the quantized (policy) model's cache
  ref_cache: KVCache | None  # the reference model's cache (co-decoding), or None


@flax.struct.dataclass
class Prefilled:
  """Prompts run through both models and their first token chosen, ready to enter decode slots.

  `[n]` per field except the caches (`[n, kv_heads, prompt_bucket, head_dim]` per layer).
  """

  first_token: jax.Array  # int32
  first: TokenRecords  # the first token's measurements
  keys: jax.Array  # PRNG keys from the requests' seeds
  cache: KVCache
  ref_cache: KVCache | None
