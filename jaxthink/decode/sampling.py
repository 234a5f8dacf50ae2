"""Choosing the next token: greedy, or sampling with temperature, top-k and top-p (nucleus).

Randomness is per row: each row has its own key and step `t` uses `fold_in(row_key, t)`, so a row's
tokens depend only on the seed, its index in the batch and its own logits, not on batch padding
or on how the batch is split over devices.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is chosen (static: part of the compiled program).

  Attributes:
    temperature: 0 picks the most likely token (greedy); > 0 samples from softmax(logits / T).
    top_k: keep only the k most likely tokens (0: no limit).
    top_p: keep the smallest set of most likely tokens whose probability reaches p (1: no limit).
  """

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature >= 0:
      raise ValueError(f"temperature={self.temperature} must be >= 0 (0 means greedy).")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k} must be >= 0 (0 means no limit).")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 means no limit).")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def row_keys(seed: int | jax.Array, rows: int) -> jax.Array:
  """One PRNG key per batch row `[rows]`: from a scalar `seed` and the row index, or from
  per-row seeds `[rows]` (then a row's tokens don't depend on which batch it is in)."""
  seed = jnp.asarray(seed)
  if seed.ndim == 1:
    return jax.vmap(jax.random.key)(seed)
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(rows))


# Top-p without top-k first looks for the nucleus among this many most likely tokens (a partial
# top-k costs ~1% of sorting a 152K vocabulary on CPU); it sorts everything only when some row's
# nucleus is larger.
NUCLEUS_CANDIDATES = 256
# Candidates must hold top_p + this much mass: a margin over float32 rounding of the mass sums, so
# the token after the last candidate is outside the nucleus in the full sort's arithmetic too.
_MASS_MARGIN = 1e-4


def choose_tokens(logits: jax.Array, keys: jax.Array, step: jax.Array,
                  sampling: Sampling) -> jax.Array:
  """Next tokens `[batch]` int32 from `logits` `[batch, vocab]` (-inf marks banned tokens).

  Args:
    keys: `[batch]` per-row keys (`row_keys`); unused when greedy.
    step: `[]` or `[batch]` int32, each row's decode step (tokens it has generated), folded into
      its key.
  """
  if sampling.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = logits.astype(jnp.float32) / sampling.temperature
  step_keys = jax.vmap(jax.random.fold_in)(keys, jnp.broadcast_to(step, keys.shape))
  vocab = scaled.shape[-1]
  if sampling.top_k:  # top-p, if any, renormalises within the k most likely tokens
    top, ids = jax.lax.top_k(scaled, min(sampling.top_k, vocab))
    return _sample_sorted(top, ids, jax.nn.logsumexp(top, axis=-1, keepdims=True), step_keys,
                          sampling.top_p)
  if sampling.top_p == 1:
    return jax.vmap(jax.random.categorical)(step_keys, scaled).astype(jnp.int32)
  log_norm = jax.nn.logsumexp(scaled, axis=-1, keepdims=True)  # over the whole vocabulary
  sort_all = lambda: _sample_sorted(*jax.lax.top_k(scaled, vocab), log_norm, step_keys,
                                    sampling.top_p)
  if vocab <= NUCLEUS_CANDIDATES:
    return sort_all()
  top, ids = jax.lax.top_k(scaled, NUCLEUS_CANDIDATES)
  candidates_mass = jnp.exp(top - log_norm).sum(axis=-1)
  fits = jnp.all(candidates_mass >= sampling.top_p + _MASS_MARGIN)
  return jax.lax.cond(
      fits, lambda: _sample_sorted(top, ids, log_norm, step_keys, sampling.top_p), sort_all)


def _sample_sorted(scaled: jax.Array, ids: jax.Array, log_norm: jax.Array, step_keys: jax.Array,
                   top_p: float) -> jax.Array:
  """Samples among candidates sorted by decreasing probability: `scaled` `[batch, k]`, their token
  `ids` `[batch, k]`, `log_norm` `[batch, 1]` the log-sum-exp that normalises them.

  Keeps the smallest prefix whose mass reaches `top_p`. The draw is the Gumbel-max over the
  candidates' positions, and JAX's Gumbel noise for `k` positions is the first `k` of the noise
  for more (counter-based threefry: `jax_threefry_partitionable`, the default), so a prefix of the
  full sort draws the same token as the full sort with the same key (with the flag off, the same
  distribution).
  """
  if top_p < 1:
    probs = jnp.exp(scaled - log_norm)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # The most likely token is always kept (its mass_before is 0 < top_p).
    scaled = jnp.where(mass_before < top_p, scaled, -jnp.inf)
  picked = jax.vmap(jax.random.categorical)(step_keys, scaled)
  return jnp.take_along_axis(ids, picked[:, None], axis=-1)[:, 0].astype(jnp.int32)
