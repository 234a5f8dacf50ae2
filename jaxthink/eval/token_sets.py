"""Each variant's penalised token set, chosen once and recorded in the run directory.

    <output_dir>/token_sets/<variant>.json
      mode, strength, token_set, source, min_count, set_size, seed: the penalty's settings
      penalised: [{id, text, count, mean_kl}] the exact penalised tokens (count / mean_kl: in the
                 source run, for control sets)
      markers: {ids, texts, not_penalised}: the single-token marker spellings (recorded as
               `is_marker` in every variant) and the marker lines that contribute no token
               (phrases, words the tokenizer splits)

A control set is chosen from its finished source run the first time the variant runs and read
back from this file afterwards, so every response of a resumed run penalises the same tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxthink.analysis.stats import TokenBuffers
from jaxthink.analysis.tokens import kl_ranking
from jaxthink.data.markers import load_markers
from jaxthink.decode.penalty import MarkerPenalty, marker_token_ids
from jaxthink.eval.controls import control_token_set, generated_token_counts, special_token_ids
from jaxthink.eval.run_dir import RunDir


def token_set_file(run: RunDir, variant: str) -> Path:
  return run.path / "token_sets" / f"{variant}.json"


def variant_buffers(run: RunDir, variant: str) -> TokenBuffers | None:
  """The per-token buffers of `variant`'s finished responses (None without any)."""
  rows = [r for r in run.rows() if r["variant"] == variant]
  if not rows:
    return None
  return TokenBuffers.from_sequences([dict(np.load(run.path / r["token_file"])) for r in rows])


def token_text(tokenizer, token_id: int) -> str:
  return tokenizer.decode([int(token_id)])


def variant_penalty(run: RunDir, variant, tokenizer, vocab_size: int,
                    eos_ids=()) -> MarkerPenalty:
  """The `MarkerPenalty` of `variant` (its markers, or its control set chosen from the source
  run's buffers), recorded in `token_set_file` on first use."""
  spec = variant.penalty
  markers = MarkerPenalty.from_tokenizer(tokenizer, spec.mode, spec.strength,
                                         spec.entropy_threshold, spec.markers)
  file = token_set_file(run, variant.name)
  if spec.token_set == "markers":
    return _record(run, file, variant, markers, tokenizer)
  buffers = None  # the source run's, when the set is chosen now
  if file.exists():
    ids = tuple(t["id"] for t in json.loads(file.read_text())["penalised"])
  elif run.writer:
    buffers = variant_buffers(run, spec.source)
    if buffers is None:
      raise ValueError(f"variant {variant.name!r}: its source run {spec.source!r} has no results "
                       "to choose the control set from.")
    ids = control_token_set(
        spec.token_set, buffers, markers.token_ids, special_token_ids(tokenizer, eos_ids),
        size=spec.set_size or len(markers.token_ids), min_count=spec.min_count, seed=spec.seed,
        vocab_size=vocab_size)
  else:
    ids = ()
  ids = _shared(ids, vocab_size)
  penalty = MarkerPenalty(spec.mode, markers.strength, markers.entropy_threshold, ids,
                          marker_ids=markers.token_ids)
  return _record(run, file, variant, penalty, tokenizer, buffers)


def _shared(ids: tuple[int, ...], vocab_size: int) -> tuple[int, ...]:
  """Process 0's ids on every host (only it reads the run directory)."""
  if jax.process_count() == 1:
    return tuple(ids)
  mask = np.zeros(vocab_size, bool)
  mask[list(ids)] = True
  return tuple(int(i) for i in np.flatnonzero(multihost_utils.broadcast_one_to_all(mask)))


def _record(run: RunDir, file: Path, variant, penalty: MarkerPenalty, tokenizer,
            source: TokenBuffers | None = None) -> MarkerPenalty:
  """Writes `file` (process 0, once) and returns `penalty`; `source`: the buffers a control set
  was chosen from."""
  if not run.writer or file.exists():
    return penalty
  spec = variant.penalty
  penalised = {int(i): {"id": int(i), "text": token_text(tokenizer, i)}
               for i in (penalty.token_ids if spec.mode != "off" else ())}
  if source is not None:  # how the control tokens fared in the source run
    counts = generated_token_counts(source, max(penalised, default=0) + 1)
    for i, entry in penalised.items():
      entry["count"] = int(counts[i])
    if source.kl is not None:
      ranking = kl_ranking(source, min_count=1)
      for i, mean in zip(ranking.ids.tolist(), ranking.mean_kl.tolist()):
        if i in penalised:
          penalised[i]["mean_kl"] = mean
  markers = penalty.token_ids if penalty.marker_ids is None else penalty.marker_ids
  by_marker = marker_token_ids(tokenizer, load_markers(spec.markers))
  record = {
      "variant": variant.name, "mode": spec.mode, "strength": penalty.strength,
      "token_set": spec.token_set, "source": spec.source, "min_count": spec.min_count,
      "set_size": spec.set_size, "seed": spec.seed, "penalised": list(penalised.values()),
      "markers": {"ids": list(markers), "texts": [token_text(tokenizer, i) for i in markers],
                  "not_penalised": [m for m, ids in by_marker.items() if not ids]},
  }
  file.parent.mkdir(parents=True, exist_ok=True)
  file.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
  return penalty
