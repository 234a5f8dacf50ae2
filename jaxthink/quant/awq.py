"""AWQ (Lin et al., 2024): activation-aware per-input-channel scales, then optional clipping.

Scale search: for the linears reading one activation `x`, try `s = mean|x|^alpha` (normalised by
`sqrt(max s * min s)`) for alpha on a grid; keep the alpha whose quantized `Q(W * s) / s` has the
smallest output error. The output error of a weight change `D` is `tr(D^T G D)` with the
calibration Gram matrix `G = X^T X / n`, so it is exact over every calibration token (the reference
evaluates the attention / MLP sub-module output on the same tokens; here each linear's output).
The scale is folded into the op before (`jaxthink.quant.pipeline`): an RMSNorm, v_proj for o_proj
(scales tied across the query heads sharing a kv head), up_proj for down_proj.

Clip search: per group and output channel, shrink the range `max|w|` by factors `1 - i/grid`
(down to `1 - max_shrink`) and keep the one with the smallest error of that group's partial output,
`d^T G_gg d` with the group's diagonal block of `G`. As in the reference, q/k are not clipped.
With a zero-point grid both ends of the group's min/max range shrink by the same factor.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxthink.quant.numerics import fake_quantize, gram_error, grouped, weight_range

Setting = tuple[int, "int | None", bool]  # (bits, group_size, symmetric)


@functools.partial(jax.jit, static_argnames=("settings", "grid"))
def search_scale(kernels: Sequence[jax.Array], settings: Sequence[Setting], gram: jax.Array,
                 x_mean: jax.Array, expand: jax.Array, *, grid: int = 20):
  """Best AWQ scale for `kernels` `[in, out_i]` reading activations with Gram `gram` `[in, in]`.

  Args:
    kernels, settings: the consumers and their `(bits, group_size, symmetric)`.
    x_mean: `[m]` mean |x| in the scale's own space (m = in, or the kv channels for o_proj).
    expand: `[in]` index of each input channel's scale in that space.
    grid: number of alphas, `alpha = i / grid`.

  Returns:
    scale `[m]` and the chosen alpha.
  """
  def scale(alpha):
    s = jnp.maximum(x_mean ** alpha, 1e-4)
    return s / jnp.sqrt(jnp.max(s) * jnp.min(s))

  def loss(alpha):
    rows = scale(alpha)[expand][:, None]
    return sum(gram_error(k - fake_quantize(k * rows, bits, gs, symmetric=sym) / rows, gram)
               for k, (bits, gs, sym) in zip(kernels, settings))

  alphas = jnp.arange(grid, dtype=jnp.float32) / grid
  losses = jax.lax.map(loss, alphas)
  best = alphas[jnp.argmin(losses)]
  return scale(best), best


@functools.partial(jax.jit, static_argnames=("bits", "group_size", "grid", "max_shrink",
                                             "symmetric"))
def search_clip(kernel: jax.Array, gram: jax.Array, *, bits: int, group_size: int | None,
                grid: int = 20, max_shrink: float = 0.5, symmetric: bool = True) -> jax.Array:
  """Per-(group, output channel) range minimising that group's output error: the bound
  `[groups, out]` (symmetric) or the range `[2, groups, out]` (lo, hi; zero point)."""
  n_in = kernel.shape[0]
  gs = n_in if group_size is None else group_size
  n_groups = n_in // gs
  g4 = gram.reshape(n_groups, gs, n_groups, gs)
  blocks = g4[jnp.arange(n_groups), :, jnp.arange(n_groups), :]  # [groups, gs, gs]
  full = weight_range(kernel, group_size, symmetric)

  def errors(shrink):
    bound = full * (1 - shrink)
    lo, hi = (-bound, bound) if symmetric else (bound[0], bound[1])
    clipped = jnp.clip(grouped(kernel, group_size), lo[:, None, :], hi[:, None, :])
    rounded = fake_quantize(clipped.reshape(kernel.shape), bits, group_size, bound, symmetric)
    delta = grouped(kernel - rounded, group_size)
    return jnp.einsum("gio,gij,gjo->go", delta, blocks, delta, precision=jax.lax.Precision.HIGHEST)

  shrinks = jnp.arange(int(max_shrink * grid), dtype=jnp.float32) / grid
  errs = jax.lax.map(errors, shrinks)  # [steps, groups, out]
  return full * (1 - shrinks[jnp.argmin(errs, axis=0)])  # [groups, out] broadcasts over lo/hi
