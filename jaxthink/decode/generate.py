"""`generate`: the public entry point of the decode engine (numpy in, numpy out)."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxthink.decode.loop import LoopSpec, decode, init_state, insert, prefill
from jaxthink.decode.mesh import padded_batch_size, place_params, put_batch, to_numpy
from jaxthink.decode.penalty import MarkerPenalty
from jaxthink.decode.sampling import Sampling
from jaxthink.decode.state import TokenRecords
from jaxthink.models.decoder import Decoder


@dataclasses.dataclass(frozen=True)
class DecodeResult:
  """Generated tokens and per-token measurements, numpy, `[batch, max_new_tokens]` unless noted.

  Slots after a row's end (`lengths`) hold `pad_id` in `tokens` and 0 / False elsewhere. The
  measurements use the unpenalised, temperature-1 logits. The reference fields are None without a
  reference model.
  """

  tokens: np.ndarray  # int32; a row's end token (if any) is included, at `lengths - 1`
  lengths: np.ndarray  # [batch] int32, tokens generated per row
  finished: np.ndarray  # [batch] bool, the row ended with an end token (else hit the limit)
  entropy: np.ndarray  # float32, entropy of p_quant in nats
  log_prob: np.ndarray  # float32, log p_quant(token)
  is_marker: np.ndarray  # bool, token is a marker token
  penalty_fired: np.ndarray  # bool, the penalty was applied at this step
  marker_in_top: np.ndarray  # bool, a marker is among the 20 most likely tokens (raw logits)
  kl: np.ndarray | None = None  # float32, KL(p_ref ‖ p_quant) in nats
  ref_entropy: np.ndarray | None = None  # float32, entropy of p_ref
  ref_log_prob: np.ndarray | None = None  # float32, log p_ref(token)
  prompt_bucket: int = 0  # the padded prompt length the program was compiled for

  @classmethod
  def from_records(cls, tokens, lengths, finished, records: TokenRecords,
                   prompt_bucket: int = 0) -> "DecodeResult":
    """From the decode state's buffers (numpy)."""
    return cls(tokens=tokens, lengths=lengths, finished=finished, entropy=records.entropy,
               log_prob=records.log_prob, is_marker=records.is_marker,
               penalty_fired=records.penalty_fired, marker_in_top=records.marker_in_top,
               kl=records.kl,
               ref_entropy=records.ref_entropy, ref_log_prob=records.ref_log_prob,
               prompt_bucket=prompt_bucket)

  def sequences(self) -> list[list[int]]:
    """Each row's generated tokens, up to and including its end token."""
    return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths)]


def bucket_length(n: int, minimum: int = 16) -> int:
  """The padded prompt length for a longest prompt of `n` tokens: the next power of two (at least
  `minimum`), so a run over many prompts compiles a handful of programs."""
  return max(minimum, 1 << (max(n, 1) - 1).bit_length())


def generate(policy: tuple[Decoder, Any] | Any, prompts: Sequence[Sequence[int]] | np.ndarray, *,
             max_new_tokens: int, budgets: Sequence[int] | None = None,
             sampling: Sampling = Sampling(), penalty: MarkerPenalty = MarkerPenalty(),
             reference: tuple[Decoder, Any] | Any | None = None,
             eos_ids: Sequence[int] | None = None, seed: int | Sequence[int] = 0,
             mesh: Mesh | None = None,
             kv_bits: int | None = None, pad_id: int | None = None,
             prompt_mask: np.ndarray | None = None, cache_dtype: Any = None) -> DecodeResult:
  """Generates continuations of `prompts` with one compiled loop.

  Args:
    policy: `(model, params)` of the generating (quantized) model, or a `Pretrained`.
    prompts: token-id lists of different lengths, or a `[batch, len]` array (with `prompt_mask`
      when it is padded, left or right).
    max_new_tokens: tokens generated at most per row (the size of every buffer and of the cache
      beyond the prompt).
    budgets: optional per-row limits (each <= max_new_tokens).
    sampling: greedy (default) or temperature / top-k / top-p.
    penalty: the marker penalty; its `token_ids` are recorded as `is_marker` in every mode.
    reference: `(model, params)` (or `Pretrained`) co-decoded on the policy's tokens, for KL and
      the reference's entropy and log-probs.
    eos_ids: ids that end a row; default: the policy config's `eos_token_ids`. `()` never stops.
    seed: sampling seed; same seed, prompts and settings give the same tokens. A sequence gives
      each row its own seed, so a row's tokens don't depend on the rest of its batch.
    mesh: a `('data', 'model')` mesh (`jaxthink.decode.mesh`), or None for the default device.
    kv_bits: None, 8 or 4: quantize the policy's KV cache (the reference's stays float).
    pad_id: fills token slots after a row's end; default: the config's pad id, else 0.
    prompt_mask: `[batch, len]` bool, True at real tokens of an array `prompts`.
    cache_dtype: float KV cache dtype; default: the policy's compute dtype.
  """
  spec, params, ref_params = loop_setup(
      policy, reference, max_new_tokens=max_new_tokens, sampling=sampling, penalty=penalty,
      eos_ids=eos_ids, pad_id=pad_id, kv_bits=kv_bits, cache_dtype=cache_dtype, mesh=mesh)
  config = spec.policy.config
  rows = _prompt_rows(prompts, prompt_mask, config.vocab_size)
  budgets = np.broadcast_to(np.asarray(max_new_tokens if budgets is None else budgets, np.int32),
                            (len(rows),))
  if budgets.min() < 1 or budgets.max() > max_new_tokens:
    raise ValueError(f"budgets must lie in [1, max_new_tokens={max_new_tokens}].")
  batch = len(rows)
  padded = padded_batch_size(batch, mesh)
  rows = rows + [rows[0]] * (padded - batch)  # filler rows, dropped from the result
  budgets = np.concatenate([budgets, np.ones(padded - batch, np.int32)])
  tokens, lengths = right_padded(rows, spec.pad_id)
  arrays = penalty.arrays(config.vocab_size)
  # The static path: every row enters at once and the batch runs until its last row is done
  # (`jaxthink.decode.engine` refills finished rows instead).
  state = init_state(spec, padded, tokens.shape[1] + spec.max_new_tokens)
  first = prefill(spec, params, ref_params, put_batch(tokens, mesh), put_batch(lengths, mesh),
                  _seeds(seed, batch, padded, mesh), arrays)
  state = insert(spec, state, first, jnp.arange(padded), jnp.asarray(budgets))
  state, _ = decode(spec, params, ref_params, state, arrays, padded, spec.max_new_tokens)
  out = to_numpy(jax.tree.map(lambda x: x[:batch], (state.tokens, state.generated, state.ended,
                                                    state.records)))
  return DecodeResult.from_records(*out, prompt_bucket=tokens.shape[1])


def right_padded(rows: Sequence[Sequence[int]], pad_id: int,
                 bucket: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Prompts as `[n, bucket]` int32 (default `bucket_length(longest)`), each row's tokens first
  then `pad_id`, and their lengths `[n]` int32."""
  lengths = np.asarray([len(r) for r in rows], np.int32)
  bucket = bucket or bucket_length(int(lengths.max()))
  tokens = np.full((len(rows), bucket), pad_id, np.int32)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
  return tokens, lengths


def loop_setup(policy, reference, *, max_new_tokens: int, sampling: Sampling,
               penalty: MarkerPenalty, eos_ids: Sequence[int] | None, pad_id: int | None,
               kv_bits: int | None, cache_dtype: Any, mesh: Mesh | None
               ) -> tuple[LoopSpec, Any, Any]:
  """The loop's static spec and the placed params of `policy` and `reference` (None without),
  checked, with the defaults `generate` documents: shared by the static path and the engine."""
  model, params = _model_and_params(policy)
  config = model.config
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1.")
  ref_model, ref_params = (None, None) if reference is None else _model_and_params(reference)
  if ref_model is not None and ref_model.config.vocab_size != config.vocab_size:
    raise ValueError(f"the reference model's vocabulary ({ref_model.config.vocab_size}) differs "
                     f"from the policy's ({config.vocab_size}); KL needs the same tokenizer.")
  spec = LoopSpec(
      policy=model, reference=ref_model, sampling=sampling, penalty_mode=penalty.mode,
      eos_ids=tuple(config.eos_token_ids if eos_ids is None else (int(i) for i in eos_ids)),
      pad_id=int(pad_id if pad_id is not None else (config.pad_token_id or 0)),
      max_new_tokens=int(max_new_tokens), kv_bits=kv_bits,
      cache_dtype=jnp.dtype(cache_dtype or model.dtype), mesh=mesh)
  return (spec, place_params(params, mesh),
          None if ref_model is None else place_params(ref_params, mesh))


def _model_and_params(model) -> tuple[Decoder, Any]:
  """`(Decoder, params)` from such a pair or from a `Pretrained`."""
  if hasattr(model, "model") and hasattr(model, "params"):
    return model.model, model.params
  if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], Decoder):
    return model
  raise TypeError(f"expected (Decoder, params) or a Pretrained, got {type(model).__name__}.")


def _seeds(seed, batch: int, padded: int, mesh: Mesh | None) -> jax.Array:
  """A scalar seed, or per-row seeds `[padded]` (filler rows reuse row 0's)."""
  seeds = np.asarray(seed, np.uint32)
  if seeds.ndim == 0:
    return jnp.asarray(seeds)
  if seeds.shape != (batch,):
    raise ValueError(f"per-row seeds must have shape ({batch},), got {seeds.shape}.")
  return put_batch(np.concatenate([seeds, np.full(padded - batch, seeds[0], np.uint32)]), mesh)


def _prompt_rows(prompts, prompt_mask, vocab_size: int) -> list[list[int]]:
  """Prompts as lists of ids, checked."""
  if isinstance(prompts, np.ndarray) or hasattr(prompts, "shape"):
    array = np.asarray(prompts)
    if array.ndim != 2:
      raise ValueError(f"prompts as an array must be [batch, len]; got shape {array.shape}.")
    mask = np.ones(array.shape, bool) if prompt_mask is None else np.asarray(prompt_mask, bool)
    if mask.shape != array.shape:
      raise ValueError(f"prompt_mask shape {mask.shape} differs from prompts {array.shape}.")
    rows = [row[m].tolist() for row, m in zip(array, mask)]
  else:
    if prompt_mask is not None:
      raise ValueError("prompt_mask applies to array prompts; lists of ids need none.")
    rows = [[int(t) for t in row] for row in prompts]
  if not rows:
    raise ValueError("no prompts given.")
  for i, row in enumerate(rows):
    if not row:
      raise ValueError(f"prompt {i} is empty; every prompt needs at least one token (e.g. BOS).")
    if min(row) < 0 or max(row) >= vocab_size:
      raise ValueError(f"prompt {i} has token ids outside [0, {vocab_size}); was it encoded "
                       "with this model's tokenizer?")
  return rows
