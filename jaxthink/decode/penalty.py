"""The marker penalty: z'(v) = z(v) - λ for the token ids that start an overthinking marker.

Markers are words or phrases (jaxthink/data/markers.txt). Each becomes the set of token ids that
can start it in generated text, using the model's own tokenizer: with and without a leading space,
with the first letter capitalised or not, and only the first token of markers the tokenizer
splits (so "Let me verify" penalises " Let"; that is the price of acting at the first token).
A bare-space first token is skipped (see `first_marker_token`).

Modes:
  off            no penalty (markers are still recorded as `is_marker`).
  constant       subtract λ from the marker logits at every step (the overthinking study).
  entropy_gated  subtract λ only at steps where the quantized model's next-token entropy (raw
                 logits, temperature 1, in nats) exceeds τ.
λ = inf bans the markers. λ is applied to the raw logits, before temperature, top-k and top-p
(the study does not say which; this is the choice jaxthink makes).
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
  """The texts that start `marker` in running text: capitalised or not, with or without a space."""
  marker = " ".join(marker.split())
  if not marker:
    raise ValueError("a marker must hold at least one non-space character.")
  cases = dict.fromkeys([marker, marker[0].upper() + marker[1:], marker[0].lower() + marker[1:]])
  return tuple(prefix + text for text in cases for prefix in ("", " "))


def _encode(tokenizer, text: str) -> list[int]:
  """Token ids of `text` without special tokens, for HF tokenizers and `tokenizers.Tokenizer`."""
  out = tokenizer.encode(text, add_special_tokens=False)
  return list(out.ids if hasattr(out, "ids") else out)


def first_marker_token(tokenizer, text: str) -> int:
  """The first token of `text` that carries a visible character.

  A vocabulary without " wait" encodes it as " " + "wait"; the marker starts at "wait", and
  penalising the bare space token would penalise every word.
  """
  ids = _encode(tokenizer, text)
  for i in ids:
    if tokenizer.decode([i]).strip():
      return int(i)
  raise ValueError(f"the tokenizer encodes marker variant {text!r} to no visible token; "
                   "remove the marker or use the model's own tokenizer.")


def marker_token_ids(tokenizer, markers: Sequence[str] | None = None) -> dict[str, tuple[int, ...]]:
  """`{marker: sorted token ids that start one of its variants}`.

  Args:
    tokenizer: the model's tokenizer (HF `PreTrainedTokenizerBase` or `tokenizers.Tokenizer`).
    markers: words / phrases; default: `jaxthink/data/markers.txt`.
  """
  markers = load_markers() if markers is None else tuple(markers)
  out = {}
  for marker in markers:
    out[marker] = tuple(sorted({first_marker_token(tokenizer, t) for t in marker_variants(marker)}))
  return out


@dataclasses.dataclass(frozen=True)
class MarkerPenalty:
  """Penalty settings; `token_ids` are also what `is_marker` records, whatever the mode.

  Attributes:
    mode: "off", "constant" or "entropy_gated".
    strength: λ, subtracted from marker logits (float("inf") bans them; negative boosts them).
    entropy_threshold: τ in nats, for "entropy_gated".
    token_ids: the penalised token ids (`marker_token_ids`, or any curated list).
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
    """The penalty on every token that starts a marker (`markers`: a list, a marker file, or
    None for jaxthink/data/markers.txt)."""
    if isinstance(markers, (str, Path)):
      markers = load_markers(markers)
    ids = sorted({i for ids in marker_token_ids(tokenizer, markers).values() for i in ids})
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
                         strength=jnp.asarray(self.strength, jnp.float32),
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
  if mode == "off":
    return logits, jnp.zeros((batch,), jnp.bool_)
  fired = (jnp.ones((batch,), jnp.bool_) if mode == "constant"
           else entropy > penalty.entropy_threshold)
  hit = fired[:, None] & penalty.penalty_mask[None, :]
  # `where`, not `logits - λ * hit`: with λ = inf, inf * 0 would be NaN on unpenalised tokens.
  return jnp.where(hit, logits - penalty.strength, logits), fired
