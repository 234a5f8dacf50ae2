"""Token-level statistics from the decode engine's per-token buffers.

Every buffer is a numpy array ``[batch, seq]`` (one row per response; ``[seq]`` is read as one row),
aligned with ``valid`` (True at generated tokens, False at padding). KL is KL(p_ref || q_quant) of
the position, attributed to the token the quantised model sampled there; entropies are of the
next-token distributions; all computed in float32 by the decode engine.

Correlations use the reference model's entropy by default, as the overthinking study does
(position-level Spearman rho = 0.92 there). scipy is a dependency of jax, so its ``pearsonr`` /
``spearmanr`` (average ranks for ties) are used.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import scipy.stats

BUFFER_FIELDS = ("kl", "entropy_quant", "entropy_ref", "logprobs", "is_marker", "penalty_fired")


@dataclasses.dataclass(frozen=True)
class TokenBuffers:
  """Per-token buffers ``[batch, seq]``; ``kl`` and ``entropy_ref`` are None without a reference
  model. ``token_ids`` (optional) are the sampled tokens; ``marker_in_top`` (optional): a marker
  was among the 20 most likely next tokens."""

  valid: np.ndarray
  entropy_quant: np.ndarray
  logprobs: np.ndarray
  is_marker: np.ndarray
  penalty_fired: np.ndarray
  kl: np.ndarray | None = None
  entropy_ref: np.ndarray | None = None
  token_ids: np.ndarray | None = None
  marker_in_top: np.ndarray | None = None

  def __post_init__(self):
    shape = np.shape(self.valid)
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value is not None and np.shape(value) != shape:
        raise ValueError(
          f"buffer {field.name!r} has shape {np.shape(value)}, expected {shape} like 'valid'"
        )

  @classmethod
  def from_decode_result(cls, result) -> "TokenBuffers":
    """Buffers of a ``jaxthink.decode.generate.DecodeResult`` (``[batch, max_new_tokens]``
    arrays plus ``lengths``; slots past a row's length are padding)."""
    lengths = np.asarray(result.lengths)
    valid = np.arange(np.shape(result.tokens)[1])[None, :] < lengths[:, None]
    return cls(
      valid=valid,
      entropy_quant=np.asarray(result.entropy),
      logprobs=np.asarray(result.log_prob),
      is_marker=np.asarray(result.is_marker),
      penalty_fired=np.asarray(result.penalty_fired),
      kl=None if result.kl is None else np.asarray(result.kl),
      entropy_ref=None if result.ref_entropy is None else np.asarray(result.ref_entropy),
      token_ids=np.asarray(result.tokens),
      marker_in_top=np.asarray(result.marker_in_top),
    )

  @classmethod
  def from_sequences(cls, sequences: Sequence[Mapping[str, np.ndarray]]) -> "TokenBuffers":
    """Pad per-response 1-D buffers (dicts with the fields of ``BUFFER_FIELDS``, optionally
    ``token_ids`` and ``marker_in_top``; ``kl``/``entropy_ref`` may be absent) into
    ``[n_responses, max_len]``."""
    if not sequences:
      raise ValueError("no sequences to stack")
    lengths = [len(s["entropy_quant"]) for s in sequences]
    width = max(lengths)
    valid = np.arange(width)[None, :] < np.asarray(lengths)[:, None]

    def stack(name, dtype, fill):
      if any(name not in s or s[name] is None for s in sequences):
        return None
      out = np.full((len(sequences), width), fill, dtype=dtype)
      for row, (s, n) in enumerate(zip(sequences, lengths)):
        if len(s[name]) != n:
          raise ValueError(
            f"response {row}: {name!r} has {len(s[name])} tokens, entropy_quant has {n}"
          )
        out[row, :n] = s[name]
      return out

    return cls(
      valid=valid,
      entropy_quant=stack("entropy_quant", np.float32, np.nan),
      logprobs=stack("logprobs", np.float32, np.nan),
      is_marker=stack("is_marker", bool, False),
      penalty_fired=stack("penalty_fired", bool, False),
      kl=stack("kl", np.float32, np.nan),
      entropy_ref=stack("entropy_ref", np.float32, np.nan),
      token_ids=stack("token_ids", np.int64, -1),
      marker_in_top=stack("marker_in_top", bool, False),
    )


def _rows(array: np.ndarray) -> np.ndarray:
  array = np.asarray(array)
  return array[None, :] if array.ndim == 1 else array


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson correlation of two 1-D arrays; NaN with fewer than 2 points or a constant input."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return float("nan")
  return float(scipy.stats.pearsonr(x, y).statistic)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Spearman rank correlation (ties get average ranks); NaN when undefined."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return float("nan")
  return float(scipy.stats.spearmanr(x, y).statistic)


def bootstrap_interval(statistic, *samples: np.ndarray, confidence: float = 0.95,
                       n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap interval of `statistic(*samples)` (samples resampled together, paired by
  index; `statistic` takes the arrays and an `axis`); (NaN, NaN) for fewer than 2 points."""
  samples = [np.asarray(x, np.float64) for x in samples]
  if samples[0].size < 2:
    return float("nan"), float("nan")
  result = scipy.stats.bootstrap(samples, statistic, paired=True, vectorized=True,
                                 confidence_level=confidence, n_resamples=n_resamples,
                                 method="percentile", rng=np.random.default_rng(seed))
  low, high = result.confidence_interval
  return float(low), float(high)


def _mean(values: np.ndarray) -> float:
  return float(np.mean(values)) if values.size else float("nan")


def top_quantile_mask(values: np.ndarray, quantile: float = 0.9) -> np.ndarray:
  """True where ``values`` >= their ``quantile`` (linear interpolation): the top decile at 0.9."""
  values = np.asarray(values)
  return values >= np.quantile(values, quantile) if values.size else np.zeros(0, bool)


def marker_rate_by_entropy(
  entropy: np.ndarray, is_marker: np.ndarray, quantile: float = 0.9
) -> tuple[float, float]:
  """(share of marker tokens among tokens in the top entropy decile, share among the rest);
  1-D arrays of valid tokens."""
  top = top_quantile_mask(entropy, quantile)
  is_marker = np.asarray(is_marker, bool)
  return _mean(is_marker[top].astype(np.float64)), _mean(is_marker[~top].astype(np.float64))


def near_markers(is_marker: np.ndarray, valid: np.ndarray, window: int) -> np.ndarray:
  """``[batch, seq]`` True at valid non-marker tokens within ``window`` positions of a marker in
  the same response."""
  if window < 0:
    raise ValueError(f"window must be >= 0, got {window}")
  is_marker = _rows(is_marker).astype(bool) & _rows(valid).astype(bool)
  near = np.zeros_like(is_marker)
  seq = is_marker.shape[1]
  for shift in range(1, min(window, seq - 1) + 1):
    near[:, shift:] |= is_marker[:, :-shift]
    near[:, :-shift] |= is_marker[:, shift:]
  return near & ~is_marker & _rows(valid).astype(bool)


def mean_kl_by_token(
  token_ids: np.ndarray, kl: np.ndarray, valid: np.ndarray, min_count: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per sampled token id: (ids, mean KL, count) for ids seen >= ``min_count`` times, sorted by
  mean KL, highest first (the study's per-token averages, for the high/low-KL controls)."""
  keep = _rows(valid).astype(bool) & np.isfinite(_rows(kl))
  ids = _rows(token_ids)[keep].astype(np.int64)
  values = _rows(kl)[keep].astype(np.float64)
  if ids.size == 0:
    return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
  counts = np.bincount(ids)
  sums = np.bincount(ids, weights=values)
  chosen = np.flatnonzero(counts >= min_count)
  means = sums[chosen] / counts[chosen]
  order = np.argsort(-means, kind="stable")
  return chosen[order], means[order], counts[chosen][order]


@dataclasses.dataclass(frozen=True)
class TokenStats:
  """Summary of a variant's token buffers. KL fields are NaN without a reference model.

  marker_rate_top_decile / marker_rate_rest: share of sampled marker tokens among positions in
  the top entropy decile / the other positions. kl_at_markers / kl_near_markers / kl_elsewhere:
  mean KL at marker tokens / at non-marker tokens within ``window`` of one / at the other tokens.
  """

  n_tokens: int
  mean_kl: float
  median_kl: float
  pearson_kl_entropy: float
  spearman_kl_entropy: float
  mean_entropy_ref: float
  mean_entropy_quant: float
  mean_logprob: float
  marker_rate: float
  marker_rate_top_decile: float
  marker_rate_rest: float
  kl_at_markers: float
  kl_near_markers: float
  kl_elsewhere: float
  penalty_fire_rate: float
  window: int

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def token_stats(buffers: TokenBuffers, *, window: int = 3, entropy: str = "ref") -> TokenStats:
  """Statistics of one variant's buffers. ``entropy``: "ref" (reference model, the study's choice)
  or "quant" for the correlation and the entropy deciles ("ref" falls back to "quant" when
  there is no reference)."""
  if entropy not in ("ref", "quant"):
    raise ValueError(f"entropy must be 'ref' or 'quant', got {entropy!r}")
  valid = _rows(buffers.valid).astype(bool)
  marker = _rows(buffers.is_marker).astype(bool)
  chosen_entropy = (
    buffers.entropy_ref
    if entropy == "ref" and buffers.entropy_ref is not None
    else buffers.entropy_quant
  )
  chosen_entropy = _rows(chosen_entropy).astype(np.float64)
  has_entropy = valid & np.isfinite(chosen_entropy)
  top, rest = marker_rate_by_entropy(chosen_entropy[has_entropy], marker[has_entropy])

  nan = float("nan")
  kl_fields = dict(
    mean_kl=nan,
    median_kl=nan,
    pearson_kl_entropy=nan,
    spearman_kl_entropy=nan,
    kl_at_markers=nan,
    kl_near_markers=nan,
    kl_elsewhere=nan,
    mean_entropy_ref=nan,
  )
  if buffers.kl is not None:
    kl = _rows(buffers.kl).astype(np.float64)
    has_kl = valid & np.isfinite(kl)
    both = has_kl & np.isfinite(chosen_entropy)
    near = near_markers(marker, valid, window)
    kl_fields.update(
      mean_kl=_mean(kl[has_kl]),
      median_kl=float(np.median(kl[has_kl])) if has_kl.any() else nan,
      pearson_kl_entropy=pearson(kl[both], chosen_entropy[both]),
      spearman_kl_entropy=spearman(kl[both], chosen_entropy[both]),
      kl_at_markers=_mean(kl[has_kl & marker]),
      kl_near_markers=_mean(kl[has_kl & near]),
      kl_elsewhere=_mean(kl[has_kl & ~marker & ~near]),
    )
  if buffers.entropy_ref is not None:
    entropy_ref = _rows(buffers.entropy_ref).astype(np.float64)
    kl_fields["mean_entropy_ref"] = _mean(entropy_ref[valid & np.isfinite(entropy_ref)])
  entropy_quant = _rows(buffers.entropy_quant).astype(np.float64)
  logprobs = _rows(buffers.logprobs).astype(np.float64)
  return TokenStats(
    n_tokens=int(valid.sum()),
    mean_entropy_quant=_mean(entropy_quant[valid & np.isfinite(entropy_quant)]),
    mean_logprob=_mean(logprobs[valid & np.isfinite(logprobs)]),
    marker_rate=_mean(marker[valid].astype(np.float64)),
    marker_rate_top_decile=top,
    marker_rate_rest=rest,
    penalty_fire_rate=_mean(_rows(buffers.penalty_fired)[valid].astype(np.float64)),
    window=window,
    **kl_fields,
  )
