"""Control token sets for the penalty: random tokens matched to the markers in corpus frequency.

Penalising any 50 tokens shortens or lengthens a CoT somewhat; a control set of the same size and
the same frequency profile shows what is specific to the markers.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def token_counts(tokenizer, texts: Iterable[str], vocab_size: int) -> np.ndarray:
  """How often each token id occurs in `texts`, `[vocab_size]` int64."""
  counts = np.zeros(vocab_size, np.int64)
  for text in texts:
    ids = np.asarray(tokenizer.encode(text, add_special_tokens=False), np.int64)
    np.add.at(counts, ids[ids < vocab_size], 1)
  return counts


def frequency_matched_tokens(marker_ids: Sequence[int], counts: np.ndarray, seed: int,
                             pool: int = 10) -> tuple[int, ...]:
  """For each marker token, a random non-marker token among the `pool` nearest to it in corpus
  frequency (rank order), without repeats; seeded."""
  rng = np.random.default_rng(seed)
  rank = np.empty(len(counts), np.int64)
  rank[np.argsort(-counts, kind="stable")] = np.arange(len(counts))  # 0 = most frequent
  available = np.ones(len(counts), bool)
  markers = sorted({int(i) for i in marker_ids})
  available[markers] = False
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
