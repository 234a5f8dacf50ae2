"""Quantized linears executed by AQT (`aqt.jax.v2`), in its convert -> serve flow.

`Linear(quant=rule)` calls `rule.dot(linear, x, features)`:

* CONVERT (`LinearQuant(mode="convert")`): reads the float `kernel` `[in, out]` (and optionally a
  `bound` `[groups, out]`, the range each group's scale covers) and lets AQT quantize it; AQT's
  freezer writes the integers and scales into the layer's params (`aqt/qrhs/{value, scale}`).
* SERVE (`QuantRules`, the decoder's `quant`): creates no float kernel; AQT reads the frozen
  integers and scales and runs the dot (weight-only: float x int; w8a8/w4a4: int x int with dynamic
  per-token activation scales, int32 accumulation).

A layer with `symmetric=False` (weight-only, a zero point per group) is served by
`jaxthink.quant.zero_point` instead: AQT has no zero-point numerics.

Group-wise scales use AQT's tiling of the contraction axis; values are then stored
`[groups, group_size, out]` with scales `[groups, 1, 1, out]` (per channel: `[in, out]` and
`[1, 1, out]`). Scales are float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from aqt.jax.v2 import aqt_dot_general, calibration, tiled_dot_general
from aqt.jax.v2 import config as aqt_config
from aqt.jax.v2.flax import aqt_flax
from aqt.jax.v2.numerics import int_numerics
from aqt.jax.v2.utils import QuantMode

from jaxthink.models.layers import Linear
from jaxthink.quant import flatquant, zero_point
from jaxthink.quant.numerics import storage_dtype
from jaxthink.quant.spec import TRANSFORMS, LayerRule, QuantSpec, match_layer

_MODES = {"convert": QuantMode.CONVERT, "serve": QuantMode.SERVE}


@dataclasses.dataclass(frozen=True)
class LinearQuant:
  """The quantization of one linear layer (hashable: it is a Flax module attribute)."""

  weight_bits: int
  act_bits: int | None = None
  group_size: int | None = None
  mode: str = "serve"
  symmetric: bool = True  # False: weight-only with a zero point, served by `zero_point`
  transform: bool = False  # an online activation transform (`flatquant`) before the product

  def dot(self, module: nn.Module, x: jax.Array, features: int) -> jax.Array:
    """`x` `[..., in]` times the layer's quantized kernel -> `[..., features]`."""
    if not self.symmetric:
      return zero_point.dot(module, x, features, self.weight_bits, self.group_size)
    in_features = x.shape[-1]
    if self.mode == "convert":
      kernel = module.param("kernel", nn.initializers.zeros_init(), (in_features, features),
                            jnp.float32).astype(jnp.float32)
      bound = module.get_variable("params", "bound") if module.has_variable("params", "bound") \
          else None
      x = x.astype(jnp.float32)
    else:
      if self.transform:  # the layer's own `flat` params: x T (T^-1 is folded into its weights)
        flat = module.param("flat", lambda _: flatquant.identity(in_features))
        x = flatquant.online(x, flat)
      # No float kernel in serve mode: AQT ignores this placeholder and reads the frozen integers.
      kernel = jnp.zeros((in_features, features), module.dtype)
      bound = None
      x = x.astype(module.dtype)
    dot_general = aqt_flax.AqtDotGeneral(
        self.aqt_config(bound),
        prng_name=None,  # no stochastic rounding; without this serve-mode apply asks for an RNG
        rhs_quant_mode=_MODES[self.mode],
        rhs_freeze_mode=aqt_flax.FreezerMode.CALIBRATION_AND_VALUE,
        quant_collection="params",  # served params hold the integers: Decoder.apply is unchanged
        tiling_fn=None if self.group_size is None else functools.partial(
            _contraction_tiling, group_size=self.group_size),
        name="aqt")
    # AQT's frozen scale layout follows the rank of x: always contract a [1, tokens, in] view.
    x3 = x.reshape((1, -1, in_features))
    y = dot_general(x3, kernel, (((2,), (0,)), ((), ())), None)
    return y.reshape(x.shape[:-1] + (features,))

  def aqt_config(self, bound: jax.Array | None = None) -> aqt_dot_general.DotGeneral:
    """AQT forward config: symmetric int weights (per output channel or group), optionally int
    activations with dynamic per-token scales; `bound` `[groups, out]` fixes the weight scales."""
    cfg = aqt_config.dot_general_make(lhs_bits=self.act_bits, rhs_bits=self.weight_bits)
    lhs = cfg.fwd.dg_quantizer.lhs.numerics if self.act_bits is None else _numerics(self.act_bits)
    aqt_config.set_numerics(cfg.fwd, lhs, _numerics(self.weight_bits))
    if bound is not None:
      groups = 1 if self.group_size is None else bound.shape[0]
      # AQT's weight scale shape: [1, out] per channel, [groups, 1, out] when tiled.
      bound = bound.reshape((1, -1) if self.group_size is None else (groups, 1, -1))
      cfg.fwd.dg_quantizer.rhs.calibration = functools.partial(calibration.ConstantCalibration,
                                                               bound=bound)
    return cfg


@dataclasses.dataclass(frozen=True)
class QuantRules:
  """The decoder's `quant`: resolves each linear's `LinearQuant` from its path by the rule list."""

  weight_bits: int
  act_bits: int | None = None
  group_size: int | None = None
  rules: tuple[LayerRule, ...] = (LayerRule(r".*"),)
  symmetric: bool = True
  transform: bool = False
  kv_rotation: bool = False  # attention rotates queries and keys (`kv_rotation_matrix`)

  @classmethod
  def from_spec(cls, spec: QuantSpec) -> "QuantRules | None":
    """None for a spec that keeps weights in float (scheme 'none')."""
    if spec.weight_bits is None:
      return None
    return cls(spec.weight_bits, spec.act_bits, spec.resolved_group_size(), spec.rules,
               spec.resolved_symmetric(), spec.method in TRANSFORMS, spec.resolved_kv_rotation())

  @staticmethod
  def kv_rotation_matrix(head_dim: int) -> np.ndarray:
    """The orthogonal `[head_dim, head_dim]` rotation of keys and values (a Hadamard matrix)."""
    return np.kron(*flatquant.hadamard_factors(head_dim))  # numpy: a constant inside a trace

  def for_layer(self, name: str) -> "QuantRules":
    del name  # rules match the full path, known only inside the layer (`dot`)
    return self

  def layer(self, path: str) -> LinearQuant | None:
    """The serve-mode rule of the linear at `path` (`layers_0/self_attn/q_proj`), None: float."""
    setting = match_layer(self.rules, path, self.weight_bits, self.group_size)
    if setting is None:
      return None
    return LinearQuant(setting[0], self.act_bits, setting[1], symmetric=self.symmetric,
                       transform=self.transform)

  def dot(self, module: nn.Module, x: jax.Array, features: int) -> jax.Array | None:
    """Returns None for a layer the rules leave in float (`Linear` then uses its float kernel)."""
    rule = self.layer("/".join(module.path))
    return None if rule is None else rule.dot(module, x, features)


@functools.partial(jax.jit, static_argnums=0)
def convert_linear(rule: LinearQuant, kernel: jax.Array, bound: jax.Array | None = None) -> Any:
  """AQT's convert step for one linear: float `kernel` `[in, out]` (and scale `bound`
  `[groups, out]`; None: AQT's abs-max calibration) -> the served params `{"aqt": ...}`."""
  rule = dataclasses.replace(rule, mode="convert")
  params = {"kernel": kernel.astype(jnp.float32)}
  if bound is not None:
    params["bound"] = bound.astype(jnp.float32)
  x = jnp.zeros((1, kernel.shape[0]), jnp.float32)
  _, state = Linear(kernel.shape[1], quant=rule).apply({"params": params}, x, mutable=["params"])
  return {"aqt": state["params"]["aqt"]}


def _numerics(bits: int) -> int_numerics.IntSymmetric:
  # preserve_max_val: the largest |w| maps to +-qmax (scale = absmax / (2^(b-1) - 1)), the usual
  # symmetric grid; 3-bit values are stored in int4 (AQT would default to int8).
  return int_numerics.IntSymmetric(bits=bits, preserve_zero=True, preserve_max_val=True, clip=True,
                                   clip_gradient=False, round=True, noise_fn=None,
                                   dtype=storage_dtype(bits))


def _contraction_tiling(lhs, rhs, dimension_numbers, group_size: int) -> tiled_dot_general.Cfg:
  """Splits the contraction axis of both operands into tiles of `group_size` (one scale each)."""
  del lhs, rhs
  (lhs_ca, rhs_ca), _ = dimension_numbers
  tiling = lambda axes: tiled_dot_general.TensorTiling(
      contraction_axes=[tiled_dot_general.AxisTiling(axis=a, tile_size=group_size, tile_count=None)
                        for a in axes], remaining_axes=[])
  return tiled_dot_general.Cfg(lhs=tiling(lhs_ca), rhs=tiling(rhs_ca))
