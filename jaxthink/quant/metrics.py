"""What a quantization costs: weight bytes, dequantized kernels, mean token KL to the float
model."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxthink.decode.stats import kl_divergence, log_probs
from jaxthink.models.decoder import Decoder
from jaxthink.models.kv_cache import init_kv_cache
from jaxthink.models.pretrained import sequence_logits
from jaxthink.quant import zero_point

_BITS = {jnp.dtype(jnp.int4): 4, jnp.dtype(jnp.int8): 8}


def frozen_layers(params: Any) -> dict[str, dict[str, jax.Array]]:
  """`{'layers_0/self_attn/q_proj': {'value': ..., 'scale': ...}}` for every quantized linear
  (AQT's `aqt/qrhs`; zero-point layers' `zq` also hold `'zero'`)."""
  flat = flax.traverse_util.flatten_dict(params)
  layers: dict[str, dict[str, jax.Array]] = {}
  for path, value in flat.items():
    if len(path) >= 4 and path[-3:-1] == ("aqt", "qrhs"):
      layers.setdefault("/".join(path[:-3]), {})[path[-1]] = value
    elif len(path) >= 3 and path[-2] == "zq":
      layers.setdefault("/".join(path[:-2]), {})[path[-1]] = value
  return layers


def dequantize_frozen(frozen: dict[str, jax.Array]) -> jax.Array:
  """The float kernel `[in, out]` (float32) a layer's frozen `value`/`scale` (/`zero`) stand for."""
  if "zero" in frozen:
    return zero_point.dequantize(frozen)
  value, scale = frozen["value"], frozen["scale"]
  out = value.shape[-1]
  if value.ndim == 3:  # [groups, group_size, out] with scales [groups, 1, 1, out]
    w = value.astype(jnp.float32) * scale.reshape(value.shape[0], 1, out)
    return w.reshape(-1, out)
  return value.astype(jnp.float32) * scale.reshape(1, out)


def weight_bytes(params: Any) -> dict[str, float]:
  """Bytes of the quantized linears (values at their bit width, packed, plus float scales) against
  the same weights in bf16."""
  quantized = reference = 0.0
  for frozen in frozen_layers(params).values():
    value, scale = frozen["value"], frozen["scale"]
    quantized += value.size * _BITS[jnp.dtype(value.dtype)] / 8 + scale.size * scale.dtype.itemsize
    if "zero" in frozen:
      quantized += frozen["zero"].size * _BITS[jnp.dtype(frozen["zero"].dtype)] / 8
    reference += value.size * 2
  return {"quantized_bytes": quantized, "bf16_bytes": reference,
          "ratio": quantized / reference if reference else float("nan")}


def mean_token_kl(reference: Decoder, reference_params: Any, model: Decoder, params: Any,
                  tokens: np.ndarray, batch_size: int = 8, kv_bits: int | None = None) -> float:
  """Mean over all positions of `KL(p_reference || p_model)` of the next-token distributions
  (float32), on unpadded windows `tokens` `[samples, seq]`. With `kv_bits`, the model reads its
  keys and values back from an integer cache of that width (as it decodes)."""
  total, count = 0.0, 0
  for start in range(0, tokens.shape[0], batch_size):
    batch = jnp.asarray(tokens[start:start + batch_size], jnp.int32)
    mask = jnp.ones(batch.shape, jnp.bool_)
    logits = (sequence_logits(model, params, batch, mask) if kv_bits is None
              else cached_logits(model, params, batch, kv_bits))
    kl = _kl(sequence_logits(reference, reference_params, batch, mask), logits)
    total += float(jnp.sum(kl))
    count += kl.size
  return total / count


def cached_logits(model: Decoder, params: Any, tokens: jax.Array,
                  kv_bits: int | None) -> jax.Array:
  """Logits `[batch, seq, vocab]` of unpadded `tokens` `[batch, seq]` in one pass through an
  empty cache of `kv_bits` (float32 for None): every query attends to the keys and values as the
  cache holds them."""
  cache = init_kv_cache(model.config, tokens.shape[0], tokens.shape[1], jnp.float32, kv_bits)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  logits, _ = model.apply({"params": params}, tokens, positions, jnp.ones(tokens.shape, bool),
                          kv_cache=cache)
  return logits


@jax.jit
def _kl(ref_logits: jax.Array, logits: jax.Array) -> jax.Array:
  return kl_divergence(log_probs(ref_logits), log_probs(logits))
