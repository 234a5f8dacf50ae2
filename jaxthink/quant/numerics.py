"""The integer grid shared by every method: symmetric, one scale per (input group, output channel).

`q = clip(round_half_even(w / scale), -qmax, qmax)`, `qmax = 2**(bits-1) - 1`,
`scale = bound / qmax` with `bound = max |w|` over the group (RTN) or a searched/derived bound
(AWQ clipping, GPTQ). This is AQT's `IntSymmetric(preserve_zero=True, preserve_max_val=True)`;
searches (AWQ, GPTQ) run on this jnp version and the final integers are produced by AQT's convert
step on the same grid.

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


def fake_quantize(w: jax.Array, bits: int, group_size: int | None,
                  bound: jax.Array | None = None) -> jax.Array:
  """`w` rounded to its grid, in float32 (for searches and error estimates)."""
  q, scale = quantize(w, bits, group_size, bound)
  return dequantize(q, scale, group_size)


def gram_error(delta: jax.Array, gram: jax.Array) -> jax.Array:
  """`sum over tokens of ||x @ delta||^2 / n` from the Gram matrix `gram = x^T x / n` `[in, in]`:
  the output error of a weight change `delta` `[in, out]` on the calibration activations."""
  hp = jax.lax.Precision.HIGHEST
  return jnp.sum(jnp.dot(gram, delta, precision=hp) * delta)
