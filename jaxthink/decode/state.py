"""The carry of the decode loop: fixed-size buffers, so one compiled program serves every step."""

from __future__ import annotations

import flax.struct
import jax

from jaxthink.models.kv_cache import KVCache


@flax.struct.dataclass
class TokenRecords:
  """What is measured for every generated token, `[batch, max_new_tokens]` each.

  Measured on the unpenalised, temperature-1 logits (the models' own distributions). Slots after
  a row's end hold 0 / False. The reference fields are None without a reference model.
  """

  entropy: jax.Array  # float32, entropy of p_quant (nats)
  log_prob: jax.Array  # float32, log p_quant(chosen token)
  is_marker: jax.Array  # bool, the chosen token is a marker token
  penalty_fired: jax.Array  # bool, the penalty was applied at this step
  marker_in_top: jax.Array  # bool, a marker token is among the TOP_CANDIDATES most likely
  kl: jax.Array | None = None  # float32, KL(p_ref ‖ p_quant) (nats)
  ref_entropy: jax.Array | None = None  # float32, entropy of p_ref
  ref_log_prob: jax.Array | None = None  # float32, log p_ref(chosen token)


@flax.struct.dataclass
class DecodeState:
  """Everything one decode step reads and writes."""

  step: jax.Array  # [] int32, tokens generated so far (the next buffer column)
  done: jax.Array  # [batch] bool, the row has emitted an end token
  last_token: jax.Array  # [batch] int32, the token the next step feeds to the models
  position: jax.Array  # [batch] int32, rotary position of `last_token`
  lengths: jax.Array  # [batch] int32, tokens generated per row (its end token included)
  keys: jax.Array  # [batch] PRNG keys, one per row
  tokens: jax.Array  # [batch, max_new_tokens] int32, pad after each row's end
  records: TokenRecords
  cache: KVCache  # the quantized (policy) model's cache
  ref_cache: KVCache | None  # the reference model's cache (co-decoding), or None
