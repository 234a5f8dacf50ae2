"""`QuantSpec`: what to quantize, to how many bits, with which method — static, validated, hashable.

An eval config embeds one `QuantSpec` per variant; `python -m jaxthink.quantize` reads one from
YAML (`jaxthink.config.from_dict`). Bad values fail here, before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import re

from jaxthink.config import path_field
from jaxthink.models.config import ModelConfig
from jaxthink.models.kv_cache import KV_BITS  # the decode engine's cache options


class QuantConfigError(ValueError):
  """A quantization setting is invalid or does not fit the model; the message says the fix."""


@dataclasses.dataclass(frozen=True)
class Scheme:
  weight_bits: int | None  # None: weights stay in float
  act_bits: int | None  # None: activations stay in float; else dynamic per-token quantization
  default_group_size: int | None  # None: one scale per output channel


SCHEMES = {
    "none": Scheme(None, None, None),  # float weights (e.g. KV-cache quantization alone)
    "w8a16": Scheme(8, None, None),
    "w4a16": Scheme(4, None, 128),
    "w3a16": Scheme(3, None, 128),
    "w8a8": Scheme(8, 8, None),
    "w4a4": Scheme(4, 4, None),
}
METHODS = ("rtn", "gptq", "awq", "smoothquant", "hadamard", "flatquant")
TRANSFORMS = ("hadamard", "flatquant")  # online activation transforms, weight-and-activation only
PER_CHANNEL = -1  # `group_size: -1` asks for one scale per output channel (GPTQ's convention)


def _check_group_size(size: int | None, where: str) -> None:
  if size is not None and size != PER_CHANNEL and size < 1:
    raise QuantConfigError(f"{where}={size} is not valid: use a positive group size, -1 for per "
                           "channel, or leave it unset for the scheme's default.")


@dataclasses.dataclass(frozen=True)
class LayerRule:
  """One entry of the rule list: the first rule whose `pattern` fully matches a linear's path
  (`layers_3/self_attn/q_proj`, `layers_0/mlp/down_proj`) decides that layer. A layer no rule
  matches stays in float. Embeddings and the output head are never quantized."""

  pattern: str
  quantize: bool = True
  weight_bits: int | None = None  # overrides the scheme's weight bits for matching layers
  group_size: int | None = None  # overrides the spec's group size (-1: per channel)

  def __post_init__(self):
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise QuantConfigError(f"rule pattern {self.pattern!r} is not a valid regular expression: "
                             f"{e}")
    if self.weight_bits is not None and not 2 <= self.weight_bits <= 8:
      raise QuantConfigError(f"rule {self.pattern!r}: weight_bits={self.weight_bits} is not "
                             "supported; use 2..8 (int4 storage up to 4 bits, int8 above).")
    _check_group_size(self.group_size, f"rule {self.pattern!r}: group_size")


CALIBRATION_KEYWORDS = ("gsm8k", "self_traces")  # calibration sources that are not file paths


@dataclasses.dataclass(frozen=True)
class CalibrationSpec:
  """Where calibration text comes from and how much of it is used.

  `source`: "gsm8k" (train-split solutions read through `jaxthink.data.benchmarks`, from
  `data_dir`; None: the GSM8K train split shipped with jaxthink); "self_traces" (the float model's
  own reasoning, as the studies calibrate: one sampled trace of up to `trace_tokens` tokens for
  each of the first `num_traces` train-split problems of benchmark `traces_from`, generated once
  into the run or checkpoint directory, `jaxthink.quant.self_traces`); or the path of a `.jsonl`
  file (field `text_field` of every row) or of a plain text file. The text is tokenized,
  concatenated and cut into `num_samples` windows of `seq_len` tokens, plus `heldout_samples`
  further windows that only measure the result.
  """

  source: str = path_field("gsm8k", keywords=CALIBRATION_KEYWORDS)
  data_dir: str | None = path_field(None)
  traces_from: str = "gsm8k"
  num_traces: int = 128
  trace_tokens: int = 2048
  text_field: str = "text"
  num_samples: int = 128
  seq_len: int = 512
  heldout_samples: int = 8
  batch_size: int = 8  # sequences per forward pass while collecting statistics
  seed: int = 0

  def __post_init__(self):
    for name in ("num_samples", "seq_len", "batch_size", "num_traces", "trace_tokens"):
      if getattr(self, name) < 1:
        raise QuantConfigError(f"calibration.{name} must be >= 1, got {getattr(self, name)}.")
    if self.heldout_samples < 0:
      raise QuantConfigError(f"calibration.heldout_samples must be >= 0, got "
                             f"{self.heldout_samples}.")


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """A quantization recipe.

  Attributes:
    scheme: one of `SCHEMES` (`w8a16`, `w4a16`, `w3a16`, `w8a8`, `w4a4`, or `none`).
    method: `rtn` (round to nearest), `gptq`, `awq`, `smoothquant` (w8a8 only), or the online
      transforms `hadamard` / `flatquant` (w4a4 / w8a8).
    group_size: input channels sharing one scale; None takes the scheme's default (128 for
      w4a16/w3a16, per channel otherwise), -1 means per channel.
    kv_bits: None, 8 or 4: KV-cache quantization, applied by the decode engine's cache.
    symmetric: the weight grid. False: a zero point per group and output channel (min/max range,
      weight-only schemes); True: symmetric (`max |w|`). None (default) takes the studies'
      choice: asymmetric for GPTQ / AWQ at 3 and 4 bits weight-only, symmetric otherwise.
    rules: which linears are quantized (first full match of `LayerRule.pattern` wins).
    calibration: calibration text (used by gptq/awq/smoothquant, and by every method for the
      per-layer error report).
    damp: GPTQ dampening, as a fraction of the Hessian's mean diagonal.
    block_size: GPTQ lazy-batch block size.
    act_order: GPTQ processes input channels by decreasing Hessian diagonal.
    static_groups: GPTQ computes group scales from the weights before any update (needed with
      act_order and groups, so groups stay contiguous in storage).
    awq_grid: AWQ scale-exponent grid size (alpha in {0, 1/grid, ..., (grid-1)/grid}).
    awq_clip: AWQ also searches a clipping range per group.
    smooth_alpha: SmoothQuant migration strength.
    transform_steps / transform_lr / transform_tokens: FlatQuant's AdamW steps, learning rate
      and calibration tokens per linear input (`jaxthink.quant.flatquant`).
    kv_rotation: rotate keys and values by a Hadamard matrix per head before the quantized cache
      (QuaRot / FlatQuant's KV4: the values' rotation folded into v_proj and o_proj, the keys'
      applied to queries and keys after RoPE, so the float model is unchanged). None (default):
      on for `hadamard` / `flatquant` with `kv_bits`, off otherwise.
  """

  scheme: str = "w4a16"
  method: str = "rtn"
  group_size: int | None = None
  kv_bits: int | None = None
  symmetric: bool | None = None
  rules: tuple[LayerRule, ...] = (LayerRule(r".*"),)
  calibration: CalibrationSpec = CalibrationSpec()
  damp: float = 0.01
  block_size: int = 128
  act_order: bool = False
  static_groups: bool = False
  awq_grid: int = 20
  awq_clip: bool = True
  smooth_alpha: float = 0.5
  transform_steps: int = 150
  transform_lr: float = 5e-3
  transform_tokens: int = 4096
  kv_rotation: bool | None = None

  def __post_init__(self):
    if self.scheme not in SCHEMES:
      raise QuantConfigError(f"unknown quantization scheme {self.scheme!r}; valid schemes are "
                             f"{sorted(SCHEMES)}.")
    if self.method not in METHODS:
      raise QuantConfigError(f"unknown quantization method {self.method!r}; valid methods are "
                             f"{list(METHODS)}.")
    if self.method == "smoothquant" and self.scheme != "w8a8":
      raise QuantConfigError(f"method 'smoothquant' is for scheme 'w8a8' (weights and "
                             f"activations in int8), not {self.scheme!r}.")
    if self.method in TRANSFORMS and self.act_bits is None:
      raise QuantConfigError(f"method {self.method!r} transforms activations before quantizing "
                             f"them: use it with 'w4a4' or 'w8a8', not {self.scheme!r}.")
    if self.scheme == "none" and self.method != "rtn":
      raise QuantConfigError(f"scheme 'none' keeps float weights; method {self.method!r} needs a "
                             "weight scheme such as 'w4a16'.")
    if self.kv_bits not in KV_BITS:
      raise QuantConfigError(f"kv_bits={self.kv_bits!r} is not supported; use one of "
                             f"{list(KV_BITS)}.")
    _check_group_size(self.group_size, "group_size")
    if self.symmetric is False and self.act_bits is not None:
      raise QuantConfigError(
          f"symmetric: false (zero-point weights) is for weight-only schemes (w8a16, w4a16, "
          f"w3a16), not {self.scheme!r}: its int x int product needs symmetric weights. Drop "
          "`symmetric` or use a weight-only scheme.")
    if self.kv_rotation and (self.kv_bits is None or self.weight_bits is None
                             or self.method in ("awq", "smoothquant")):
      raise QuantConfigError("kv_rotation: true rotates keys and values before a quantized cache: "
                             "set kv_bits (8 or 4) and a weight scheme, with a method other than "
                             "awq / smoothquant (their scales fold into v_proj), or drop it.")
    if not self.rules:
      raise QuantConfigError("rules is empty: no layer would be quantized. Use the default "
                             "[{pattern: '.*'}] to quantize every linear of the blocks.")
    if not 0 < self.damp < 1:
      raise QuantConfigError(f"damp={self.damp} must be in (0, 1) (GPTQ uses 0.01).")
    if self.block_size < 1:
      raise QuantConfigError(f"block_size={self.block_size} must be >= 1 (GPTQ uses 128).")
    if self.awq_grid < 1:
      raise QuantConfigError(f"awq_grid={self.awq_grid} must be >= 1 (AWQ uses 20).")
    if not 0 <= self.smooth_alpha <= 1:
      raise QuantConfigError(f"smooth_alpha={self.smooth_alpha} must be in [0, 1] (SmoothQuant "
                             "uses 0.5).")

  @property
  def weight_bits(self) -> int | None:
    return SCHEMES[self.scheme].weight_bits

  @property
  def act_bits(self) -> int | None:
    return SCHEMES[self.scheme].act_bits

  def resolved_symmetric(self) -> bool:
    """The weight grid: the explicit `symmetric`, else the studies' default."""
    if self.symmetric is not None:
      return self.symmetric
    return not (self.method in ("gptq", "awq") and self.act_bits is None
                and self.weight_bits in (3, 4))

  def resolved_kv_rotation(self) -> bool:
    """Whether keys and values are rotated before the cache: the explicit `kv_rotation`, else on
    for the transform methods with a quantized cache."""
    if self.kv_rotation is not None:
      return self.kv_rotation
    return self.method in TRANSFORMS and self.kv_bits is not None

  @property
  def needs_calibration(self) -> bool:
    return self.method != "rtn"

  def resolved_group_size(self) -> int | None:
    """The spec-wide group size: None for per channel."""
    size = SCHEMES[self.scheme].default_group_size if self.group_size is None else self.group_size
    return None if size == PER_CHANNEL else size

  def layer_setting(self, path: str) -> tuple[int, int | None] | None:
    """`(weight_bits, group_size)` of the linear at `path`, or None if it stays in float."""
    return match_layer(self.rules, path, self.weight_bits, self.resolved_group_size())

  def check_fits(self, config: ModelConfig) -> None:
    """Raises `QuantConfigError` if a quantized layer's input width is not a multiple of its group
    size, or if the GPTQ options cannot be stored as contiguous groups."""
    for path, (in_features, _) in linear_shapes(config).items():
      setting = self.layer_setting(path)
      if setting is None:
        continue
      _, group = setting
      if group is not None and in_features % group:
        divisors = [g for g in (32, 64, 128, 256) if in_features % g == 0]
        raise QuantConfigError(
            f"group_size {group} does not fit layer {path}: its {in_features} input channels are "
            f"not a multiple of {group}. Use a group size dividing {in_features} "
            f"(e.g. {divisors or 'per channel, -1'}) or a rule for this layer.")
      if self.method == "gptq" and self.act_order and group is not None and not self.static_groups:
        raise QuantConfigError(
            "GPTQ with act_order and group-wise scales needs static_groups: true (groups must stay "
            "contiguous input channels for AQT's tiled storage).")


def match_layer(rules: tuple[LayerRule, ...], path: str, weight_bits: int | None,
                group_size: int | None) -> tuple[int, int | None] | None:
  """`(weight_bits, group_size)` the first matching rule gives the linear at `path`; None: float."""
  if weight_bits is None:
    return None
  for rule in rules:
    if re.fullmatch(rule.pattern, path):
      if not rule.quantize:
        return None
      group = group_size if rule.group_size is None else (
          None if rule.group_size == PER_CHANNEL else rule.group_size)
      return rule.weight_bits or weight_bits, group
  return None


def linear_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
  """`{path: (in_features, out_features)}` of every linear in the decoder blocks."""
  h, d, i = config.hidden_size, config.head_dim, config.intermediate_size
  per_layer = {
      "self_attn/q_proj": (h, config.num_heads * d),
      "self_attn/k_proj": (h, config.num_kv_heads * d),
      "self_attn/v_proj": (h, config.num_kv_heads * d),
      "self_attn/o_proj": (config.num_heads * d, h),
      "mlp/gate_proj": (h, i),
      "mlp/up_proj": (h, i),
      "mlp/down_proj": (i, h),
  }
  return {f"layers_{n}/{name}": shape for n in range(config.num_layers)
          for name, shape in per_layer.items()}
