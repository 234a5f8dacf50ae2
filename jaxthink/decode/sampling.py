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


def sampling_logits(logits: jax.Array,
                    sampling: Sampling) -> tuple[jax.Array, jax.Array | None]:
  """The logits a sampled step draws from: `logits` `[batch, vocab]` / T, restricted by top-k /
  top-p (-inf outside), and the candidate ids `[batch, k]` they are over (None: the whole
  vocabulary, in id order). Their softmax is the sampling distribution."""
  scaled = logits.astype(jnp.float32) / sampling.temperature
  vocab = scaled.shape[-1]
  k = min(sampling.top_k, vocab) if sampling.top_k else (vocab if sampling.top_p < 1 else 0)
  candidates = None
  if k:  # candidates sorted by decreasing probability
    scaled, candidates = jax.lax.top_k(scaled, k)
  if sampling.top_p < 1:
    probs = jax.nn.softmax(scaled, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    # The most likely token is always kept (its mass_before is 0 < top_p).
    scaled = jnp.where(mass_before < sampling.top_p, scaled, -jnp.inf)
  return scaled, candidates


def choose_tokens(logits: jax.Array, keys: jax.Array, step: jax.Array,
                  sampling: Sampling) -> jax.Array:
  """Next tokens `[batch]` int32 from `logits` `[batch, vocab]` (-inf marks banned tokens).

  Args:
    keys: `[batch]` per-row keys (`row_keys`); unused when greedy.
    step: `[]` the decode step, folded into the keys.
  """
  if sampling.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled, candidates = sampling_logits(logits, sampling)
  step_keys = jax.vmap(lambda key: jax.random.fold_in(key, step))(keys)
  picked = jax.vmap(jax.random.categorical)(step_keys, scaled)
  if candidates is not None:
    picked = jnp.take_along_axis(candidates, picked[:, None], axis=-1)[:, 0]
  return picked.astype(jnp.int32)
