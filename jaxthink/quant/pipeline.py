"""`quantize`: float decoder params + `QuantSpec` -> (quantized `Decoder`, AQT serve params,
report).

Block by block: the float block runs over the calibration windows (statistics of its linears'
inputs), the method transforms and rounds its weights, AQT's convert step turns each kernel into
integers and scales, and the float block's output feeds the next block (every layer is calibrated
on the float model's activations; GPTQ's reference code instead feeds the quantized blocks'
outputs forward). Methods:

* rtn: AQT's own abs-max calibration of the (unchanged) kernel.
* zero-point grids (`symmetric: false`, weight-only): every method's integers, scales and zero
  points are stored directly (`jaxthink.quant.zero_point`), AQT has no zero-point numerics.
* gptq: error-compensated integers and scales (linears sharing an input share one Hessian and are
  solved together); AQT converts `q * scale` with its scale fixed to `scale`, which gives back
  exactly these integers (checked).
* awq: per-channel scales folded into the op before (RMSNorm -> q/k/v and gate/up, v -> o, up ->
  down), optional clipping range per group, which becomes AQT's fixed scale.
* smoothquant: alpha-migration folded into both RMSNorms, then w8a8 RTN.
* hadamard / flatquant (w4a4, w8a8): per linear input a transform `T` (`jaxthink.quant.flatquant`:
  a rotation, or learned on the block's raw calibration inputs); `T^-1 W` is folded into the
  weights (RTN per channel, FlatQuant's learned clipping as AQT's fixed scale), `x T` runs online
  from the layer's `flat` params before AQT's per-token activation quantization.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxthink.models.config import ModelConfig
from jaxthink.models.decoder import Decoder
from jaxthink.models.layers import Linear
from jaxthink.quant import awq, flatquant, smoothquant, zero_point
from jaxthink.quant.aqt_linear import LinearQuant, QuantRules, convert_linear
from jaxthink.quant.calibrate import (INPUT_OF, BlockRunner, CalibrationData, InputStats,
                                      calibration_data)
from jaxthink.quant.gptq import gptq
from jaxthink.quant.metrics import dequantize_frozen, mean_token_kl, weight_bytes
from jaxthink.quant.numerics import absmax_bound, dequantize, gram_error, qmax, quantize_asym
from jaxthink.quant.sharding import shard_params
from jaxthink.quant.spec import TRANSFORMS, QuantConfigError, QuantSpec

SCOPE = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
         "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
# (op the scale folds into, the activation it scales, the linears reading that activation)
_SCALE_GROUPS = (("input_layernorm", "attn_in", ("q_proj", "k_proj", "v_proj")),
                 ("v_proj", "o_in", ("o_proj",)),
                 ("post_attention_layernorm", "mlp_in", ("gate_proj", "up_proj")),
                 ("up_proj", "down_in", ("down_proj",)))
_HP = jax.lax.Precision.HIGHEST


def quantize(model_config: ModelConfig, params: Any, spec: QuantSpec,
             calibration_tokens: np.ndarray | CalibrationData | None = None, *,
             tokenizer: Any = None, dtype=None, mesh: jax.sharding.Mesh | None = None,
             log: Callable[[str], None] | None = None) -> tuple[Decoder, Any, dict[str, Any]]:
  """Quantizes a float decoder.

  Args:
    model_config: the architecture.
    params: float params (`jaxthink.load_pretrained(...).params`), left unchanged.
    spec: the recipe.
    calibration_tokens: `[samples, seq]` token windows, or `CalibrationData` (with held-out
      windows for the error report). If None and `tokenizer` is given, built from
      `spec.calibration`; rtn works without calibration (no error report then).
    tokenizer: turns `spec.calibration`'s text into tokens when `calibration_tokens` is None.
    dtype: compute dtype of the quantized model (default: the params' dtype).
    mesh: optional mesh; the quantized params are placed like their float kernels.
    log: called with a progress line per block.

  Returns:
    `(Decoder(quant=rules), quantized params, report)`; `decoder.apply({'params': qparams}, ...)`
    runs exactly like the float model's apply. The report (JSON-ready) holds `scheme`, `method`,
    `group_size`, `kv_bits`, `spec`, `calibration` (source, token hash, sizes), `weight_bytes`,
    `heldout_mean_kl` (mean token KL(float || quantized) on the held-out windows) and `layers`:
    per linear `bits`, `group_size`, `act_bits`, `calib_rel_error` (weight rounding's output error
    on the calibration activations, from their Gram matrix), `heldout_rel_error` (output error of
    the served layer, activation quantization included, on held-out activations) and the method's
    choices (`awq_alpha`, `smooth_scale_range`).
  """
  started = time.time()
  spec.check_fits(model_config)
  dtype = jnp.dtype(dtype or params["embed_tokens"]["embedding"].dtype)
  rules = QuantRules.from_spec(spec)
  model = Decoder(model_config, dtype=dtype, param_dtype=dtype, quant=rules)
  report: dict[str, Any] = {"scheme": spec.scheme, "method": spec.method,
                            "group_size": spec.resolved_group_size(), "kv_bits": spec.kv_bits,
                            "symmetric": spec.resolved_symmetric(),
                            "spec": dataclasses.asdict(spec)}
  if rules is None:
    return model, params, report
  data = _calibration(spec, calibration_tokens, tokenizer, model_config)
  report["calibration"] = None if data is None else data.description

  # Leaves that stay in float are kept in the compute dtype (the decoder's param_dtype).
  qparams = jax.tree.map(lambda a: jnp.asarray(a, dtype), dict(flax.core.unfreeze(params)))
  runner = BlockRunner(model_config, dtype)
  embed = jnp.asarray(params["embed_tokens"]["embedding"]).astype(dtype)
  x = xh = None
  if data is not None:
    x, xh = embed[jnp.asarray(data.tokens)], embed[jnp.asarray(data.heldout)]
  layers: dict[str, Any] = {}
  for i in range(model_config.num_layers):
    name = f"layers_{i}"
    stats = raw = None
    if data is not None:
      if spec.method in TRANSFORMS:
        raw = runner.inputs(params[name], x, spec.calibration.batch_size, spec.transform_tokens)
      stats, x, xh = runner.statistics(params[name], x, xh, spec.calibration.batch_size)
    qparams[name], info = _quantize_block(spec, rules, model_config, i, qparams[name], stats, dtype,
                                          raw)
    layers.update({f"{name}/{SCOPE[k]}/{k}": v for k, v in info.items() if v})
    if log is not None:
      errors = [v["heldout_rel_error"] for v in info.values() if "heldout_rel_error" in v]
      log(f"{name}: quantized {sum(bool(v) for v in info.values())} linears"
          + (f", mean held-out relative error {np.mean(errors):.2e}" if errors else ""))
  report["layers"] = layers
  report["weight_bytes"] = weight_bytes(qparams)
  if data is not None and data.heldout.shape[0]:
    reference = Decoder(model_config, dtype=dtype, param_dtype=dtype)
    report["heldout_mean_kl"] = mean_token_kl(reference, params, model, qparams, data.heldout,
                                              spec.calibration.batch_size)
  report["seconds"] = time.time() - started
  if mesh is not None:
    qparams = shard_params(qparams, mesh)
  return model, qparams, report


def _calibration(spec: QuantSpec, tokens, tokenizer, config: ModelConfig) -> CalibrationData | None:
  if isinstance(tokens, CalibrationData):
    data = tokens
  elif tokens is not None:
    data = CalibrationData.from_tokens(tokens)
  elif tokenizer is not None:
    data = calibration_data(tokenizer, spec.calibration)
  elif spec.needs_calibration:
    raise QuantConfigError(f"method {spec.method!r} needs calibration data: pass "
                           "calibration_tokens=..., or tokenizer=... to read spec.calibration.")
  else:
    return None
  top = max(int(data.tokens.max()), int(data.heldout.max()) if data.heldout.size else 0)
  if top >= config.vocab_size:
    raise QuantConfigError(f"calibration token id {top} is outside the model's vocabulary "
                           f"({config.vocab_size}); was the text tokenized with another tokenizer?")
  return data


def _quantize_block(spec: QuantSpec, rules: QuantRules, config: ModelConfig, index: int,
                    block: Any, stats: dict[str, InputStats] | None, dtype,
                    raw: dict[str, jax.Array] | None = None) -> tuple[Any, dict]:
  """One decoder block's served params and per-linear report entries."""
  t = transform_block(spec, rules, config, index, block, stats, raw)
  integers = _gptq(t.params, stats, t.rules, spec) if spec.method == "gptq" else {}
  out = jax.tree.map(lambda w, o: w.astype(o.dtype), t.params, flax.core.unfreeze(block))
  for n, r in t.rules.items():
    if r is None:
      continue
    kernel, bound = t.params[SCOPE[n]][n]["kernel"], t.bounds.get(n)
    if not r.symmetric:
      q, scale, zero = integers[n] if n in integers else quantize_asym(
          kernel, r.weight_bits, r.group_size, bound)
      frozen = zero_point.freeze(q, scale, zero, r.weight_bits, r.group_size)
      dequantized = zero_point.dequantize(frozen["zq"])
    else:
      if n in integers:
        q, scale, _ = integers[n]
        kernel, bound = dequantize(q, scale, r.group_size), scale * qmax(r.weight_bits)
      frozen = convert_linear(r, kernel, bound)
      if n in integers and not _same_integers(frozen, q):
        raise RuntimeError(f"AQT's convert did not reproduce GPTQ's integers for layer {n}.")
      dequantized = dequantize_frozen(frozen["aqt"]["qrhs"])
    weights = {**frozen, "flat": t.online[n]} if n in t.online else frozen
    served = dict(weights)
    if "bias" in out[SCOPE[n]][n]:
      served["bias"] = out[SCOPE[n]][n]["bias"]
    out[SCOPE[n]][n] = served
    t.info[n].update(bits=r.weight_bits, group_size=r.group_size, act_bits=r.act_bits)
    if stats is None:
      continue
    key, out_scale = INPUT_OF[n], t.out_scale.get(n, 1.0)
    # Errors in the original output coordinates (folding may have rescaled this layer's outputs).
    w = t.params[SCOPE[n]][n]["kernel"] * out_scale
    delta = (t.params[SCOPE[n]][n]["kernel"] - dequantized) * out_scale
    t.info[n]["calib_rel_error"] = float(gram_error(delta, t.stats[key].gram)
                                         / gram_error(w, t.stats[key].gram))
    if stats[key].heldout.shape[0]:
      t.info[n]["heldout_rel_error"] = float(_heldout_error(
          r, dtype, weights, t.stats[key].heldout, stats[key].heldout,
          jnp.asarray(t.reference.get(n, block[SCOPE[n]][n]["kernel"]), jnp.float32),
          jnp.asarray(out_scale)))
  return out, t.info


@dataclasses.dataclass
class BlockTransform:
  """One block after the method's equivalence-preserving step (AWQ / SmoothQuant scale folding)."""

  params: Any  # float32 block params with the scales folded in: the float block is unchanged
  stats: dict[str, InputStats] | None  # statistics of the transformed linear inputs
  bounds: dict[str, jax.Array]  # fixed scale ranges [groups, out] (AWQ clipping)
  rules: dict[str, LinearQuant | None]  # each linear's quantization (None: stays float)
  out_scale: dict[str, jax.Array]  # per output channel: the factor folding divided it by
  info: dict[str, dict[str, Any]]  # report entries per linear
  online: dict[str, Any] = dataclasses.field(default_factory=dict)  # served `flat` transforms
  # Float kernels in the served layer's output coordinates where they differ from the block's
  # (v_proj under kv_rotation), for the held-out error.
  reference: dict[str, jax.Array] = dataclasses.field(default_factory=dict)


def transform_block(spec: QuantSpec, rules: QuantRules, config: ModelConfig, index: int,
                    block: Any, stats: dict[str, InputStats] | None,
                    raw: dict[str, jax.Array] | None = None) -> BlockTransform:
  """Applies the method's scale folding or transform (none for rtn / gptq) to block `index`;
  `raw`: the block's raw calibration inputs (flatquant)."""
  t = BlockTransform(
      params=jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), flax.core.unfreeze(block)),
      stats=stats, bounds={}, rules={n: rules.layer(f"layers_{index}/{SCOPE[n]}/{n}")
                                     for n in SCOPE},
      out_scale={}, info={n: {} for n in SCOPE})
  if rules.kv_rotation:
    raw = _rotate_values(t, config, raw)
  if spec.method == "smoothquant":
    _smooth(t, spec)
  elif spec.method == "awq":
    _awq(t, spec, config)
  elif spec.method in TRANSFORMS:
    _transform(t, spec, raw)
  return t


def _rotate_values(t: BlockTransform, config: ModelConfig,
                   raw: dict[str, jax.Array] | None) -> dict[str, jax.Array] | None:
  """Folds the values' per-head rotation `R` (`QuantRules.kv_rotation_matrix`) into the block:
  v_proj writes `v R` (what the cache stores), o_proj reads `o R` (its rows per head `R^T W`), so
  the block's function is unchanged. Returns `raw` with the o_proj inputs rotated; the o_proj
  input statistics are rotated in place."""
  r = jnp.asarray(QuantRules.kv_rotation_matrix(config.head_dim))
  attn, d = t.params["self_attn"], config.head_dim
  v = attn["v_proj"]
  t.reference["v_proj"] = v["kernel"] = jnp.einsum(
      "ikd,de->ike", v["kernel"].reshape(v["kernel"].shape[0], -1, d), r,
      precision=_HP).reshape(v["kernel"].shape)
  if "bias" in v:
    v["bias"] = jnp.dot(v["bias"].reshape(-1, d), r, precision=_HP).reshape(-1)
  o = attn["o_proj"]["kernel"]
  attn["o_proj"]["kernel"] = jnp.einsum("de,hdo->heo", r, o.reshape(-1, d, o.shape[-1]),
                                        precision=_HP).reshape(o.shape)
  rotate = lambda x: jnp.dot(x.reshape(x.shape[:-1] + (-1, d)), r,
                             precision=_HP).reshape(x.shape)  # o R, head by head
  if t.stats is not None:
    t.stats = dict(t.stats)
    st = t.stats["o_in"]
    gram = rotate(rotate(st.gram).T).T  # B^T G B with B = diag(R, ..., R)
    t.stats["o_in"] = dataclasses.replace(st, gram=gram, heldout=rotate(st.heldout))
  return None if raw is None else {**raw, "o_in": rotate(raw["o_in"])}


def _same_integers(frozen: Any, q: jax.Array) -> bool:
  value = frozen["aqt"]["qrhs"]["value"]
  return bool(jnp.array_equal(value.astype(jnp.int32).reshape(q.shape), q))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _heldout_error(rule: LinearQuant, dtype, served: Any, x: jax.Array, x_reference: jax.Array,
                   kernel_reference: jax.Array, out_scale: jax.Array) -> jax.Array:
  """`||y_quant - y_float||^2 / ||y_float||^2` of one linear on held-out activations; the quantized
  side runs AQT's serve path on the (possibly smoothed/scaled) inputs it sees in the model, its
  output multiplied back by the factor folding divided it by."""
  y_ref = jnp.dot(x_reference, kernel_reference, precision=_HP)
  linear = Linear(kernel_reference.shape[1], dtype=dtype, param_dtype=dtype, quant=rule)
  y = linear.apply({"params": served}, x.astype(dtype)).astype(jnp.float32) * out_scale
  return jnp.sum((y - y_ref) ** 2) / jnp.sum(y_ref ** 2)


def _fold(t: BlockTransform, prev: str, consumers: tuple[str, ...], s: jax.Array,
          expand: jax.Array | None = None) -> None:
  """Divides the output of `prev` (an RMSNorm or a linear) by `s` and multiplies the consumers'
  kernel rows by `s[expand]`: the float block computes the same function."""
  work = t.params
  s_in = s if expand is None else s[expand]
  for n in consumers:
    work[SCOPE[n]][n]["kernel"] = work[SCOPE[n]][n]["kernel"] * s_in[:, None]
  if prev in SCOPE:
    layer = work[SCOPE[prev]][prev]
    layer["kernel"] = layer["kernel"] / s[None, :]
    if "bias" in layer:
      layer["bias"] = layer["bias"] / s
    t.out_scale[prev] = t.out_scale.get(prev, 1.0) * s
  else:
    work[prev]["scale"] = work[prev]["scale"] / s


def _smooth(t: BlockTransform, spec: QuantSpec) -> None:
  t.stats = dict(t.stats)
  for prev, key, names in (_SCALE_GROUPS[0], _SCALE_GROUPS[2]):  # the two RMSNorms
    if all(t.rules[n] is None for n in names):
      continue
    s = smoothquant.smooth_scales(t.stats[key].abs_max,
                                  [t.params[SCOPE[n]][n]["kernel"] for n in names],
                                  spec.smooth_alpha)
    _fold(t, prev, names, s)
    t.stats[key] = t.stats[key].scaled(1 / s)
    for n in names:
      t.info[n]["smooth_scale_range"] = [float(jnp.min(s)), float(jnp.max(s))]


def _awq(t: BlockTransform, spec: QuantSpec, config: ModelConfig) -> None:
  t.stats = dict(t.stats)
  for prev, key, names in _SCALE_GROUPS:
    active = tuple(n for n in names if t.rules[n] is not None)
    if not active:
      continue
    st = t.stats[key]
    if prev == "v_proj":
      # o_proj input channel (head h, dim i) is v channel (kv head of h, dim i): tie their scales.
      d, groups = config.head_dim, config.num_heads // config.num_kv_heads
      c = jnp.arange(config.num_heads * d)
      expand = (c // d // groups) * d + c % d
      x_mean = jax.ops.segment_sum(st.abs_mean, expand, config.num_kv_heads * d) / groups
    else:
      expand = jnp.arange(st.abs_mean.shape[0])
      x_mean = st.abs_mean
    kernels = tuple(t.params[SCOPE[n]][n]["kernel"] for n in active)
    settings = tuple((t.rules[n].weight_bits, t.rules[n].group_size, t.rules[n].symmetric)
                     for n in active)
    s, alpha = awq.search_scale(kernels, settings, st.gram, x_mean, expand, grid=spec.awq_grid)
    _fold(t, prev, names, s, expand)
    t.stats[key] = st.scaled(1 / s[expand])
    for n in active:
      t.info[n]["awq_alpha"] = float(alpha)
  if spec.awq_clip:
    for n, r in t.rules.items():
      if r is not None and n not in ("q_proj", "k_proj"):  # as the reference: no q/k clipping
        t.bounds[n] = awq.search_clip(t.params[SCOPE[n]][n]["kernel"], t.stats[INPUT_OF[n]].gram,
                                      bits=r.weight_bits, group_size=r.group_size,
                                      grid=spec.awq_grid, symmetric=r.symmetric)


def _transform(t: BlockTransform, spec: QuantSpec, raw: dict[str, jax.Array] | None) -> None:
  """One transform per linear input, shared by the linears reading it."""
  if spec.method == "flatquant" and raw is None:
    raise QuantConfigError("method 'flatquant' learns its transforms from calibration data: pass "
                           "calibration_tokens=... or tokenizer=....")
  t.stats = None if t.stats is None else dict(t.stats)
  for key in ("attn_in", "o_in", "mlp_in", "down_in"):
    names = [n for n in SCOPE if INPUT_OF[n] == key and t.rules[n] is not None]
    if not names:
      continue
    kernels = [t.params[SCOPE[n]][n]["kernel"] for n in names]
    r = t.rules[names[0]]
    if spec.method == "hadamard":
      transform, clips, info = flatquant.hadamard(kernels[0].shape[0]), None, {}
    else:
      transform, clips, info = flatquant.learn(
          raw[key], kernels, weight_bits=r.weight_bits, act_bits=r.act_bits,
          steps=spec.transform_steps, lr=spec.transform_lr, seed=spec.calibration.seed)
    for i, n in enumerate(names):
      folded = flatquant.fold(kernels[i], transform)
      t.params[SCOPE[n]][n]["kernel"] = folded
      t.online[n] = flatquant.served(transform)
      if clips is not None:
        t.bounds[n] = absmax_bound(folded, r.group_size) * clips[i][None, :]
      t.info[n].update({f"transform_{k}": v for k, v in info.items()})
    if t.stats is not None:
      # Weight-rounding errors are measured on x T; held-out inputs stay raw (served online).
      m = flatquant.matrix(transform)
      st = t.stats[key]
      t.stats[key] = InputStats(jnp.dot(m.T, jnp.dot(st.gram, m, precision=_HP), precision=_HP),
                                st.abs_mean, st.abs_max, st.heldout)


def _gptq(work, stats, rule, spec: QuantSpec) -> dict[str, tuple[jax.Array, ...]]:
  """GPTQ per shared input: linears with the same input and setting are solved as one kernel (the
  algorithm treats output channels independently given the Hessian)."""
  result = {}
  for key in ("attn_in", "o_in", "mlp_in", "down_in"):
    by_setting: dict[tuple, list[str]] = {}
    for n in (n for n in SCOPE if INPUT_OF[n] == key and rule[n] is not None):
      by_setting.setdefault((rule[n].weight_bits, rule[n].group_size, rule[n].symmetric),
                            []).append(n)
    for (bits, group_size, symmetric), names in by_setting.items():
      kernels = [work[SCOPE[n]][n]["kernel"] for n in names]
      q, scale, zero = gptq(jnp.concatenate(kernels, axis=1), stats[key].gram, bits=bits,
                            group_size=group_size, damp=spec.damp, block_size=spec.block_size,
                            act_order=spec.act_order, static_groups=spec.static_groups,
                            symmetric=symmetric)
      start = 0
      for n, k in zip(names, kernels):
        width = k.shape[1]
        part = slice(start, start + width)
        result[n] = (q[:, part], scale[:, part], None if zero is None else zero[:, part])
        start += width
  return result
