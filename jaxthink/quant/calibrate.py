"""Calibration: text -> token windows -> per-block statistics of every linear's inputs.

The float model is run one decoder block at a time over the calibration windows (memory stays at one
block's activations); for each distinct linear input (`attn_in` feeds q/k/v, `o_in`, `mlp_in` feeds
gate/up, `down_in`) the statistics the methods need are accumulated in float32:
`gram = X^T X / n` (GPTQ's Hessian, and exact output errors of any weight change), mean and max of
`|x|` per channel (AWQ, SmoothQuant). Held-out windows are kept as raw activations, to measure
each quantized layer's output error on data the methods never saw.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxthink.models.config import ModelConfig
from jaxthink.models.decoder import Block
from jaxthink.models.layers import Linear
from jaxthink.models.rope import inverse_frequencies
from jaxthink.quant.spec import CalibrationSpec, QuantConfigError

# Which activation feeds which linear (linears sharing an input share its statistics).
INPUT_OF = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "o_proj": "o_in",
            "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "down_in"}
_CAPTURED = {"q_proj": "attn_in", "o_proj": "o_in", "gate_proj": "mlp_in", "down_proj": "down_in"}
_HP = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class CalibrationData:
  """Token windows for calibration and for held-out measurement, and where they came from."""

  tokens: np.ndarray  # [num_samples, seq_len] int32
  heldout: np.ndarray  # [heldout_samples, seq_len] int32
  description: dict[str, Any]

  @classmethod
  def from_tokens(cls, tokens, heldout=None, source: str = "tokens") -> "CalibrationData":
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2 or tokens.size == 0:
      raise QuantConfigError(f"calibration tokens must be a non-empty [samples, seq_len] array, "
                             f"got shape {tokens.shape}.")
    heldout = np.zeros((0, tokens.shape[1]), np.int32) if heldout is None else np.asarray(
        heldout, np.int32)
    return cls(tokens, heldout, {"source": source, "tokens_sha256": _sha256(tokens, heldout),
                                 "num_samples": int(tokens.shape[0]),
                                 "seq_len": int(tokens.shape[1]),
                                 "heldout_samples": int(heldout.shape[0])})


def read_texts(spec: CalibrationSpec) -> list[str]:
  """The calibration documents of `spec.source` (see `CalibrationSpec`), non-empty ones only."""
  if spec.source == "self_traces":
    raise QuantConfigError("calibration source 'self_traces' is written by the float model first: "
                           "resolve it with jaxthink.quant.self_traces.resolve_self_traces(spec, "
                           "model, directory) (eval runs and `python -m jaxthink.quantize` do).")
  if spec.source == "gsm8k":
    from jaxthink.data.benchmarks import BenchmarkDataError, read_problems  # noqa: PLC0415
    try:  # the train split's file only (not through tfds, which reads every split)
      texts = [p.solution for p in read_problems("gsm8k", spec.data_dir, split="train")]
    except BenchmarkDataError as e:
      raise QuantConfigError(f"calibration data: {e}") from e
  else:
    path = Path(spec.source).expanduser()
    if not path.is_file():
      raise QuantConfigError(f"calibration file {path} not found; set calibration.source to "
                             "'gsm8k' or to an existing .jsonl / text file.")
    texts = _jsonl_texts(path, spec.text_field) if path.suffix == ".jsonl" else [path.read_text()]
  texts = [t for t in texts if t.strip()]
  if not texts:
    raise QuantConfigError(f"calibration source {spec.source!r} holds no text; give a file with "
                           "calibration documents.")
  return texts


def calibration_data(tokenizer: Any, spec: CalibrationSpec) -> CalibrationData:
  """Tokenizes the source (documents shuffled with `spec.seed`, joined by the end-of-sequence
  token) and cuts consecutive windows: `num_samples` for calibration, then `heldout_samples`."""
  texts = read_texts(spec)
  order = np.random.default_rng(spec.seed).permutation(len(texts))
  needed = (spec.num_samples + spec.heldout_samples) * spec.seq_len
  eos = getattr(tokenizer, "eos_token_id", None)
  stream: list[int] = []
  for start in range(0, len(order), 256):  # tokenize only as much text as the windows need
    for ids in _encode(tokenizer, [texts[i] for i in order[start:start + 256]]):
      stream.extend(ids)
      if eos is not None:
        stream.append(eos)
    if len(stream) >= needed:
      break
  if len(stream) < needed:
    raise QuantConfigError(
        f"calibration source {spec.source!r} yields {len(stream)} tokens, but "
        f"{spec.num_samples} + {spec.heldout_samples} windows of {spec.seq_len} tokens need "
        f"{needed}; lower calibration.num_samples / seq_len / heldout_samples or give more text.")
  windows = np.asarray(stream[:needed], np.int32).reshape(-1, spec.seq_len)
  data = CalibrationData.from_tokens(windows[:spec.num_samples], windows[spec.num_samples:],
                                     source=spec.source)
  return dataclasses.replace(data, description={**data.description, "documents": len(texts),
                                                "seed": spec.seed})


@flax.struct.dataclass
class InputStats:
  """Statistics of one linear input `x` `[tokens, in]` over the calibration windows."""

  gram: jax.Array  # [in, in] X^T X / n
  abs_mean: jax.Array  # [in] mean |x|
  abs_max: jax.Array  # [in] max |x|
  heldout: jax.Array  # [heldout tokens, in] the held-out activations themselves

  def scaled(self, s: jax.Array) -> "InputStats":
    """The statistics of `x * s` (after a per-channel scale has been folded upstream)."""
    return InputStats(self.gram * s[:, None] * s[None, :], self.abs_mean * jnp.abs(s),
                      self.abs_max * jnp.abs(s), self.heldout * s)


class BlockRunner:
  """Runs the float decoder block `i` over calibration windows, collecting its linears' inputs."""

  def __init__(self, config: ModelConfig, dtype):
    self.config = config
    self.dtype = dtype
    self._forward = _block_forward(config, jnp.dtype(dtype).name)
    self._inputs = _block_inputs(config, jnp.dtype(dtype).name)

  def statistics(self, block_params: Any, x: jax.Array, heldout: jax.Array,
                 batch_size: int) -> tuple[dict[str, InputStats], jax.Array, jax.Array]:
    """Statistics of the block's linear inputs, and the block's outputs.

    Args:
      block_params: the float params of one block (`params['layers_i']`).
      x: `[samples, seq, hidden]` calibration hidden states entering the block.
      heldout: `[heldout samples, seq, hidden]` held-out hidden states (may be empty).
      batch_size: windows per forward pass.

    Returns:
      `{input name: InputStats}`, and the block outputs for `x` and for `heldout`.
    """
    totals, outputs = None, []
    for start in range(0, x.shape[0], batch_size):
      y, sums = self._forward(block_params, x[start:start + batch_size])
      outputs.append(y)
      totals = sums if totals is None else _combine(totals, sums)
    n = x.shape[0] * x.shape[1]
    if heldout.shape[0]:
      y_heldout, inputs_heldout = self._inputs(block_params, heldout)
    else:
      y_heldout, inputs_heldout = heldout, None
    stats = {}
    for name, (gram, abs_sum, abs_max) in totals.items():
      width = gram.shape[0]
      held = (jnp.zeros((0, width), jnp.float32) if inputs_heldout is None
              else inputs_heldout[name].reshape(-1, width).astype(jnp.float32))
      stats[name] = InputStats(gram / n, abs_sum / n, abs_max, held)
    return stats, jnp.concatenate(outputs), y_heldout


  def inputs(self, block_params: Any, x: jax.Array, batch_size: int,
             max_tokens: int) -> dict[str, jax.Array]:
    """The block's raw linear inputs `{input name: [tokens, width]}` (float32) over the first
    windows of `x` holding at least `max_tokens` tokens (methods that need more than a Gram)."""
    windows = min(x.shape[0], -(-max_tokens // x.shape[1]))
    parts = [self._inputs(block_params, x[s:min(s + batch_size, windows)])[1]
             for s in range(0, windows, batch_size)]
    return {k: jnp.concatenate([p[k].reshape(-1, p[k].shape[-1]) for p in parts])
            .astype(jnp.float32)[:max_tokens] for k in parts[0]}


@functools.lru_cache(maxsize=None)
def _block_inputs(config: ModelConfig, dtype: str):
  """jitted `(block params, x [b, t, hidden]) -> (block output, {input name: activations})`."""
  inv_freq = inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
  block = Block(config, inv_freq, jnp.dtype(dtype), jnp.dtype(dtype))

  def capture(next_fun, args, kwargs, context):
    if isinstance(context.module, Linear) and context.method_name == "__call__" \
        and context.module.name in _CAPTURED:
      context.module.sow("intermediates", "input", args[0])
    return next_fun(*args, **kwargs)

  @jax.jit
  def run(params, x):
    b, t = x.shape[:2]
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    allowed = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), jnp.bool_)), (b, t, t))
    with nn.intercept_methods(capture):
      (y, _), state = block.apply({"params": params}, x.astype(dtype), positions, allowed, None,
                                  None, None, mutable=["intermediates"])
    found = state["intermediates"]
    inputs = {key: found[scope][name]["input"][0]
              for scope in ("self_attn", "mlp") for name, key in _CAPTURED.items()
              if name in found.get(scope, {})}
    return y, inputs

  return run


@functools.lru_cache(maxsize=None)
def _block_forward(config: ModelConfig, dtype: str):
  """jitted `(block params, x) -> (block output, {input name: (sum x^T x, sum |x|, max |x|)})`."""
  inputs_of = _block_inputs(config, dtype)

  @jax.jit
  def run(params, x):
    y, inputs = inputs_of(params, x)
    sums = {}
    for name, a in inputs.items():
      a = a.reshape(-1, a.shape[-1]).astype(jnp.float32)
      sums[name] = (jnp.dot(a.T, a, precision=_HP), jnp.sum(jnp.abs(a), axis=0),
                    jnp.max(jnp.abs(a), axis=0))
    return y, sums

  return run


def _combine(a, b):
  return {k: (a[k][0] + b[k][0], a[k][1] + b[k][1], jnp.maximum(a[k][2], b[k][2])) for k in a}


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
  if callable(tokenizer) and hasattr(tokenizer, "pad_token_id"):  # a transformers tokenizer
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]
  return [list(tokenizer.encode(t)) for t in texts]


def _jsonl_texts(path: Path, field: str) -> list[str]:
  texts = []
  with path.open(encoding="utf-8") as lines:
    for number, line in enumerate(lines, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise QuantConfigError(f"{path}, line {number}: not valid JSON ({e.msg}).") from None
      if not isinstance(row, dict) or not isinstance(row.get(field), str):
        raise QuantConfigError(f"{path}, line {number}: no text field {field!r}; set "
                               "calibration.text_field to the field holding the text.")
      texts.append(row[field])
  return texts


def _sha256(*arrays: np.ndarray) -> str:
  digest = hashlib.sha256()
  for a in arrays:
    digest.update(np.ascontiguousarray(a, np.int32).tobytes())
  return digest.hexdigest()
