"""The marker penalty: z'(v) = z(v) - λ for v in a set S of single vocabulary tokens.

As in the overthinking study, a marker is one vocabulary token. Each marker of
jaxthink/data/markers.txt contributes its spellings that the model's own tokenizer writes as a
single token: with and without a leading space, with the first letter capitalised or not ("Wait",
" Wait", "wait", " wait"). A spelling the tokenizer splits is dropped, and so is every multi-word
phrase ("Hold on", "Let me verify"): penalising a phrase's first token alone would penalise
ordinary words (" on", " let", " hold") at every step, a confound the study does not have. The
analysis still counts phrases in the text (jaxthink.data.markers).

Modes:
  off            no penalty (markers are still recorded as `is_marker`).
  constant       subtract λ from the marker logits at every step (the overthinking study).
  entropy_gated  subtract λ only at steps where the quantized model's next-token entropy (raw
                 logits, temperature 1, in nats) exceeds τ.
λ = inf bans the markers; λ < 0 boosts them (the study's direction check). λ is applied to the raw
logits, before temperature, top-k and top-p (the study does not say which; this is the choice
jaxthink makes).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxthink.data.markers import load_markers

MODES = ("off", "constant", "entropy_gated")


def marker_variants(marker: str) -> tuple[str, ...]:
  """The spellings of `marker` in running text: capitalised or not, with or without a space."""
  marker = " ".join(marker.split())
  if not marker:
    raise ValueError("a marker must hold at least one non-space character.")
  cases = dict.fromkeys([marker, marker[0].upper() + marker[1:], marker[0].lower() + marker[1:]])
  return tuple(prefix + text for text in cases for prefix in ("", " "))


def _encode(tokenizer, text: str) -> list[int]:
  """Token ids of `text` without special tokens, for HF tokenizers and `tokenizers.Tokenizer`."""
  out = tokenizer.encode(text, add_special_tokens=False)
  return list(out.ids if hasattr(out, "ids") else out)


def marker_token_ids(tokenizer, markers: Sequence[str] | None = None) -> dict[str, tuple[int, ...]]:
  """`{marker: sorted ids of its single-token spellings}`; `()` for a phrase or a word the
  vocabulary splits in every spelling (not penalised).

  Args:
    tokenizer: the model's tokenizer (HF `PreTrainedTokenizerBase` or `tokenizers.Tokenizer`).
    markers: words / phrases; default: `jaxthink/data/markers.txt`.
  """
  markers = load_markers() if markers is None else tuple(markers)
  out = {}
  for marker in markers:
    phrase = len(marker.split()) > 1
    encoded = [] if phrase else [_encode(tokenizer, t) for t in marker_variants(marker)]
    out[marker] = tuple(sorted({ids[0] for ids in encoded if len(ids) == 1}))
  return out


@dataclasses.dataclass(frozen=True)
class MarkerPenalty:
  """Penalty settings; `token_ids` are also what `is_marker` records, whatever the mode.

  Attributes:
    mode: "off", "constant" or "entropy_gated".
    strength: λ, subtracted from marker logits (float("inf") bans them; negative boosts them).
    entropy_threshold: τ in nats, for "entropy_gated".
    token_ids: the penalised token ids (`marker_token_ids`, a control set, or any curated list).
    marker_ids: the ids recorded as `is_marker`, when they differ from `token_ids` (a control run
      penalising other tokens still counts the real markers); None: `token_ids`.
  """

  mode: str = "off"
  strength: float = 0.0
  entropy_threshold: float = 0.0
  token_ids: tuple[int, ...] = ()
  marker_ids: tuple[int, ...] | None = None

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"penalty mode {self.mode!r} is unknown; use one of {MODES}.")
    if np.isnan(self.strength) or self.strength == -np.inf:
      raise ValueError(f"penalty strength λ={self.strength} must be a number or +inf (ban).")
    if not np.isfinite(self.entropy_threshold):
      raise ValueError(f"entropy_threshold τ={self.entropy_threshold} must be finite (nats).")
    if self.mode != "off" and not self.token_ids:
      raise ValueError(f"penalty mode {self.mode!r} needs marker token ids; build the penalty with "
                       "MarkerPenalty.from_tokenizer(tokenizer, ...) or pass token_ids.")

  @classmethod
  def from_tokenizer(cls, tokenizer, mode: str = "off", strength: float = 0.0,
                     entropy_threshold: float = 0.0,
                     markers: Sequence[str] | str | Path | None = None) -> "MarkerPenalty":
    """The penalty on the single-token marker spellings (`markers`: a list, a marker file, or
    None for jaxthink/data/markers.txt)."""
    if isinstance(markers, (str, Path)):
      markers = load_markers(markers)
    by_marker = marker_token_ids(tokenizer, markers)
    ids = sorted({i for ids in by_marker.values() for i in ids})
    if not ids and mode != "off":
      raise ValueError(f"none of the markers {list(by_marker)} is a single token of this "
                       "tokenizer (phrases are never penalised); add single-word markers.")
    return cls(mode, float(strength), float(entropy_threshold), tuple(ids))

  def arrays(self, vocab_size: int) -> "PenaltyArrays":
    """The traced part (λ, τ, marker mask): a λ or τ sweep reuses one compiled program."""
    def mask(token_ids) -> jax.Array:
      ids = np.asarray(token_ids, np.int64)
      if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"marker token ids must lie in [0, {vocab_size}); got {ids.min()}.."
                         f"{ids.max()}. Were they built with another model's tokenizer?")
      out = np.zeros(vocab_size, bool)
      out[ids] = True
      return jnp.asarray(out)

    markers = self.token_ids if self.marker_ids is None else self.marker_ids
    return PenaltyArrays(penalty_mask=mask(self.token_ids), marker_mask=mask(markers),
                         strength=jnp.asarray(0.0 if self.mode == "off" else self.strength,
                                              jnp.float32),
                         entropy_threshold=jnp.asarray(self.entropy_threshold, jnp.float32))


@flax.struct.dataclass
class PenaltyArrays:
  penalty_mask: jax.Array  # [vocab] bool, the penalised tokens
  marker_mask: jax.Array  # [vocab] bool, the tokens recorded as markers
  strength: jax.Array  # [] float32, λ
  entropy_threshold: jax.Array  # [] float32, τ


def apply_penalty(logits: jax.Array, entropy: jax.Array, penalty: PenaltyArrays,
                  mode: str) -> tuple[jax.Array, jax.Array]:
  """Penalised logits `[batch, vocab]` and whether the penalty fired `[batch]` bool.

  Args:
    logits: raw logits `[batch, vocab]`.
    entropy: `[batch]` entropy of the raw logits (the gate of "entropy_gated").
  """
  batch = logits.shape[0]
  # "off" runs as λ = 0 (`MarkerPenalty.arrays`): a variant and its penalised twin share programs.
  fired = (entropy > penalty.entropy_threshold if mode == "entropy_gated"
           else jnp.broadcast_to(penalty.strength != 0, (batch,)))
  hit = fired[:, None] & penalty.penalty_mask[None, :]
  # `where`, not `logits - λ * hit`: with λ = inf, inf * 0 would be NaN on unpenalised tokens.
  return jnp.where(hit, logits - penalty.strength, logits), fired
