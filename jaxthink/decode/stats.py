"""Per-token measurements over the full vocabulary, in float32.

Everything here takes raw (unpenalised, temperature-1) logits: the statistics describe the
models' own next-token distributions, not the sampling distribution a penalty or temperature
produces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def log_probs(logits: jax.Array) -> jax.Array:
  """Log-softmax `[..., vocab]` in float32."""
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def entropy(logp: jax.Array) -> jax.Array:
  """Entropy in nats `[...]` of the distributions with log-probs `logp` `[..., vocab]`."""
  p = jnp.exp(logp)
  return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def kl_divergence(logp: jax.Array, logq: jax.Array) -> jax.Array:
  """KL(p ‖ q) in nats `[...]` from log-probs `[..., vocab]`; here p = reference, q = quantized."""
  p = jnp.exp(logp)
  return jnp.sum(jnp.where(p > 0, p * (logp - logq), 0.0), axis=-1)


def token_log_prob(logp: jax.Array, tokens: jax.Array) -> jax.Array:
  """`logp[b, tokens[b]]` `[batch]` for `logp` `[batch, vocab]`."""
  return jnp.take_along_axis(logp, tokens[:, None].astype(jnp.int32), axis=-1)[:, 0]
