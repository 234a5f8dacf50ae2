"""Control token sets for the penalty, chosen from a token-level run of the same model without it.

  high_kl         the `size` tokens with the highest mean KL(p_ref ‖ p_quant), each position's KL
                  attributed to the token sampled there (as the overthinking study does), over the
                  tokens sampled >= `min_count` times
  low_kl          the `size` tokens with the lowest such mean KL
  random_neither  `size` random tokens (seeded) among the other ranked tokens: in neither list
  random_matched  for each marker token, a random token near it in frequency rank in the run's
                  generated text (the reasoning the penalty acts on, not the problem statements)

Special tokens (the tokenizer's added tokens: chat, think and end tokens) and the marker tokens are
never in a control set, so a control neither breaks the text's structure nor penalises a marker.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxthink.analysis.stats import TokenBuffers
from jaxthink.analysis.tokens import kl_ranking


def special_token_ids(tokenizer, eos_ids: Sequence[int] = ()) -> frozenset[int]:
  """Ids that are never a control token: special and added tokens, and the end ids."""
  return frozenset({*tokenizer.all_special_ids, *tokenizer.added_tokens_decoder, *eos_ids})


def generated_token_counts(buffers: TokenBuffers, vocab_size: int) -> np.ndarray:
  """How often each token id was generated, `[vocab_size]` int64."""
  ids = np.asarray(buffers.token_ids)[np.asarray(buffers.valid, bool)]
  return np.bincount(ids, minlength=vocab_size)[:vocab_size]


def control_token_set(name: str, buffers: TokenBuffers, marker_ids: Sequence[int],
                      excluded: frozenset[int], *, size: int, min_count: int, seed: int,
                      vocab_size: int) -> tuple[int, ...]:
  """The sorted ids of control set `name` (see the module docstring) from the source run's
  per-token buffers (`token_ids`, and `kl` for the KL sets)."""
  banned = excluded | {int(i) for i in marker_ids}
  if name == "random_matched":
    counts = generated_token_counts(buffers, vocab_size)
    return frequency_matched_tokens(marker_ids, counts, seed, excluded=excluded)
  if buffers.kl is None:
    raise ValueError(f"control set {name!r} ranks tokens by KL: the source run has no KL "
                     "(co-decode a quantized model with `reference: true`).")
  ranked = kl_ranking(buffers, excluded=banned, min_count=min_count).ranked_ids
  need = 3 * size if name == "random_neither" else 2 * size
  if len(ranked) < need:
    raise ValueError(f"control set {name!r} of {size} tokens needs {need} ranked tokens, but only "
                     f"{len(ranked)} (not special, not markers) were sampled >= {min_count} times "
                     "in the source run; lower penalty.min_count or penalty.set_size, or generate "
                     "more (limit, samples_per_problem).")
  if name == "high_kl":
    chosen = ranked[:size]
  elif name == "low_kl":
    chosen = ranked[-size:]
  elif name == "random_neither":
    chosen = np.random.default_rng(seed).choice(ranked[size:-size], size, replace=False)
  else:
    raise ValueError(f"unknown control set {name!r}.")
  return tuple(sorted(int(i) for i in chosen))


def frequency_matched_tokens(marker_ids: Sequence[int], counts: np.ndarray, seed: int,
                             pool: int = 10, excluded: frozenset[int] = frozenset()
                             ) -> tuple[int, ...]:
  """For each marker token, a random token among the `pool` nearest to it in frequency rank
  (`counts`), never a marker or an `excluded` id, without repeats; seeded. Equal counts are ranked
  in random order, so a marker never sampled matches random unsampled tokens, not its id
  neighbours."""
  rng = np.random.default_rng(seed)
  shuffled = rng.permutation(len(counts))
  rank = np.empty(len(counts), np.int64)
  rank[shuffled[np.argsort(-counts[shuffled], kind="stable")]] = np.arange(len(counts))  # 0: most
  available = np.ones(len(counts), bool)
  markers = sorted({int(i) for i in marker_ids})
  available[markers] = False
  available[[i for i in excluded if i < len(counts)]] = False
  chosen = []
  for marker in markers:
    candidates = np.flatnonzero(available)
    if not len(candidates):
      raise ValueError("the vocabulary has too few non-marker tokens for a matched control set.")
    nearest = candidates[np.argsort(np.abs(rank[candidates] - rank[marker]), kind="stable")[:pool]]
    pick = int(rng.choice(nearest))
    available[pick] = False
    chosen.append(pick)
  return tuple(sorted(chosen))
