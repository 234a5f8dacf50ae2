"""The integer grids shared by every method, one scale per (input group, output channel).

Symmetric: `q = clip(round_half_even(w / scale), -qmax, qmax)`, `qmax = 2**(bits-1) - 1`,
`scale = bound / qmax` with `bound = max |w|` over the group (RTN) or a searched/derived bound
(AWQ clipping, GPTQ). This is AQT's `IntSymmetric(preserve_zero=True, preserve_max_val=True)`;
searches (AWQ, GPTQ) run on this jnp version and the final integers are produced by AQT's convert
step on the same grid.

Asymmetric (zero point, the GPTQ reference's `sym=False` quantizer): the range `[lo, hi]` of the
group (min / max of `w`, or a searched range), widened to contain 0, gives
`scale = (hi - lo) / (2**bits - 1)`, `zero = round(-lo / scale)` and
`q = clip(round(w / scale) + zero, 0, 2**bits - 1)`, `w ~ scale * (q - zero)`. Its range is an
array `[2, groups, out]` (lo, hi) where the symmetric bound is `[groups, out]`.

Kernels are `[in_features, out_features]`; groups split the input axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def qmax(bits: int) -> int:
  return 2 ** (bits - 1) - 1


def storage_dtype(bits: int):
  """Container dtype of `bits`-bit integers (3- and 4-bit values live in int4)."""
  return jnp.int4 if bits <= 4 else jnp.int8


def num_groups(in_features: int, group_size: int | None) -> int:
  return 1 if group_size is None else in_features // group_size


def grouped(w: jax.Array, group_size: int | None) -> jax.Array:
  """`[in, out]` -> `[groups, group_size, out]`."""
  n = num_groups(w.shape[0], group_size)
  return w.reshape(n, w.shape[0] // n, w.shape[1])


def absmax_bound(w: jax.Array, group_size: int | None) -> jax.Array:
  """`max |w|` per group and output channel, `[groups, out]`."""
  return jnp.max(jnp.abs(grouped(w, group_size)), axis=1)


def scale_from_bound(bound: jax.Array, bits: int) -> jax.Array:
  # An all-zero group gets bound 1 (as AQT's AbsMaxCalibration does), so its scale is finite.
  return jnp.where(bound == 0, 1.0, bound) / qmax(bits)


def quantize(w: jax.Array, bits: int, group_size: int | None,
             bound: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Integers `[in, out]` (int32) and scales `[groups, out]` of `w` `[in, out]`."""
  w = w.astype(jnp.float32)
  bound = absmax_bound(w, group_size) if bound is None else bound
  scale = scale_from_bound(bound.astype(jnp.float32), bits)
  q = jnp.clip(jnp.round(grouped(w, group_size) / scale[:, None, :]), -qmax(bits), qmax(bits))
  return q.reshape(w.shape).astype(jnp.int32), scale


def dequantize(q: jax.Array, scale: jax.Array, group_size: int | None) -> jax.Array:
  """`[in, out]` float32 from integers `[in, out]` and scales `[groups, out]`."""
  w = grouped(q.astype(jnp.float32), group_size) * scale[:, None, :]
  return w.reshape(q.shape)


def levels(bits: int, symmetric: bool) -> tuple[int, int]:
  """Smallest and largest integer of the grid."""
  return (-qmax(bits), qmax(bits)) if symmetric else (0, 2 ** bits - 1)


def minmax_range(w: jax.Array, group_size: int | None) -> jax.Array:
  """`[2, groups, out]`: min and max of `w` per group and output channel."""
  g = grouped(w, group_size)
  return jnp.stack([jnp.min(g, axis=1), jnp.max(g, axis=1)])


def weight_range(w: jax.Array, group_size: int | None, symmetric: bool) -> jax.Array:
  """The grid's full range: `max |w|` `[groups, out]` (symmetric), else min / max
  `[2, groups, out]`."""
  return absmax_bound(w, group_size) if symmetric else minmax_range(w, group_size)


def scale_zero(value_range: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
  """Asymmetric scale and integer zero point `[groups, out]` of a range `[2, groups, out]`."""
  lo = jnp.minimum(value_range[0], 0)
  hi = jnp.maximum(value_range[1], 0)
  empty = (lo == 0) & (hi == 0)  # an all-zero group: the reference's range [-1, 1]
  lo, hi = jnp.where(empty, -1, lo), jnp.where(empty, 1, hi)
  scale = (hi - lo) / (2 ** bits - 1)
  return scale, jnp.round(-lo / scale)


def quantize_asym(w: jax.Array, bits: int, group_size: int | None,
                  value_range: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Integers `[in, out]` (int32, 0 .. 2^bits - 1), scales and zero points `[groups, out]`."""
  w = w.astype(jnp.float32)
  value_range = minmax_range(w, group_size) if value_range is None else value_range
  scale, zero = scale_zero(value_range.astype(jnp.float32), bits)
  q = jnp.clip(jnp.round(grouped(w, group_size) / scale[:, None, :]) + zero[:, None, :], 0,
               2 ** bits - 1)
  return q.reshape(w.shape).astype(jnp.int32), scale, zero.astype(jnp.int32)


def dequantize_asym(q: jax.Array, scale: jax.Array, zero: jax.Array,
                    group_size: int | None) -> jax.Array:
  """`[in, out]` float32 `scale * (q - zero)` per group."""
  w = (grouped(q.astype(jnp.float32), group_size) - zero[:, None, :]) * scale[:, None, :]
  return w.reshape(q.shape)


def fake_quantize(w: jax.Array, bits: int, group_size: int | None,
                  bound: jax.Array | None = None, symmetric: bool = True) -> jax.Array:
  """`w` rounded to its grid, in float32 (for searches and error estimates); `bound`: the
  symmetric bound `[groups, out]` or the asymmetric range `[2, groups, out]`."""
  if not symmetric:
    q, scale, zero = quantize_asym(w, bits, group_size, bound)
    return dequantize_asym(q, scale, zero, group_size)
  q, scale = quantize(w, bits, group_size, bound)
  return dequantize(q, scale, group_size)


def gram_error(delta: jax.Array, gram: jax.Array) -> jax.Array:
  """`sum over tokens of ||x @ delta||^2 / n` from the Gram matrix `gram = x^T x / n` `[in, in]`:
  the output error of a weight change `delta` `[in, out]` on the calibration activations."""
  hp = jax.lax.Precision.HIGHEST
  return jnp.sum(jnp.dot(gram, delta, precision=hp) * delta)
