"""Weight-only linears with a zero point per group, served from integers.

aqtp 0.9.0 cannot serve a zero point (its `IntSymmetric` numerics only; the bias its `QTensor`
carries is refused outside fake-quant), so asymmetric layers are served here. A layer's params:

    zq/value  [groups, group_size, out]  int4 (<= 4 bits) or int8: q - 2^(bits-1)
    zq/scale  [groups, out]              float32
    zq/zero   [groups, out]              int4 / int8: zero - 2^(bits-1)

so `w = scale * (value - zero)` (the shift by 2^(bits-1) puts the unsigned grid 0 .. 2^bits - 1
into the signed container; it cancels in `value - zero`). Per channel is one group.

On accelerators the product never builds a float kernel: per group, `x_g @ value_g` (integers exact in bf16,
accumulated in float32), times the scale, minus the zero-point term `scale * zero * sum(x_g)`:

    y[o] = sum_g scale[g, o] * (x_g @ value_g[:, o] - zero[g, o] * sum_i x_g[i])
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxthink.quant.numerics import num_groups, storage_dtype

_HP = jax.lax.Precision.HIGHEST


def freeze(q: jax.Array, scale: jax.Array, zero: jax.Array, bits: int,
           group_size: int | None) -> dict[str, Any]:
  """Served params `{"zq": ...}` from integers `q` `[in, out]` (0 .. 2^bits - 1), scales and
  zero points `[groups, out]` (as `numerics.quantize_asym` and `gptq(symmetric=False)` give)."""
  shift, dtype = 2 ** (bits - 1), storage_dtype(bits)
  groups = scale.shape[0]
  value = (q.astype(jnp.int32) - shift).reshape(groups, q.shape[0] // groups, q.shape[1])
  return {"zq": {"value": value.astype(dtype), "scale": scale.astype(jnp.float32),
                 "zero": (zero.astype(jnp.int32) - shift).astype(dtype)}}


def dequantize(frozen: dict[str, jax.Array]) -> jax.Array:
  """The float32 kernel `[in, out]` that `zq` params stand for."""
  value, scale, zero = frozen["value"], frozen["scale"], frozen["zero"]
  w = (value.astype(jnp.float32) - zero.astype(jnp.float32)[:, None]) * scale[:, None]
  return w.reshape(-1, value.shape[-1])


def dot(module: nn.Module, x: jax.Array, features: int, bits: int,
        group_size: int | None) -> jax.Array:
  """`x` `[..., in]` times the layer's zero-point kernel -> `[..., features]` in `module.dtype`."""
  in_features = x.shape[-1]
  groups = num_groups(in_features, group_size)
  size, store = in_features // groups, storage_dtype(bits)
  zq = module.param("zq", lambda _: {
      "value": jnp.zeros((groups, size, features), store),
      "scale": jnp.ones((groups, features), jnp.float32),
      "zero": jnp.zeros((groups, features), store)})
  return product(x.astype(module.dtype), zq, dequantize_first=jax.default_backend() == "cpu")


def product(x: jax.Array, zq: dict[str, jax.Array], dequantize_first: bool) -> jax.Array:
  """`x` `[..., in]` times the kernel of `zq` params -> `[..., out]` in `x.dtype`.

  `dequantize_first` (XLA:CPU): one float32 kernel per call, then one plain matmul; there the
  grouped product below runs 3x slower than the float model (small batched dots), and memory
  traffic, which integer storage saves on accelerators, is not what bounds a CPU. Otherwise the
  grouped product, which never builds a float kernel.
  """
  groups, size, _ = zq["value"].shape
  if dequantize_first:
    y = jnp.matmul(x.astype(jnp.float32), dequantize(zq), precision=_HP)
    return y.astype(x.dtype)
  xg = x.reshape(x.shape[:-1] + (groups, size))
  partial = jnp.einsum("...gi,gio->...go", xg, zq["value"].astype(x.dtype),
                       preferred_element_type=jnp.float32)
  x_sum = jnp.sum(xg.astype(jnp.float32), axis=-1)  # [..., groups]
  scale = zq["scale"].astype(jnp.float32)
  y = (jnp.einsum("...go,go->...o", partial, scale, precision=_HP)
       - jnp.einsum("...g,go->...o", x_sum, scale * zq["zero"].astype(jnp.float32), precision=_HP))
  return y.astype(x.dtype)
