"""GPTQ (Frantar et al., 2022): round input channels one at a time, pushing each rounding error onto
the channels not yet rounded through the inverse Hessian of the layer's inputs.

Algorithm 1 of the paper with its lazy batch updates: the upper Cholesky factor `U` of `H^-1`
(`H = X^T X / n + damp * mean(diag) * I`) is computed once; inside a block of `block_size` channels
each rounding error updates the rest of the block at once, the remaining channels get one matrix
update per block. Options as in the reference code: act-order (channels by decreasing `diag(H)`),
group-wise scales computed when a group starts (from the error-updated weights) or, with
`static_groups`, from the original weights before any update.

The grid is `jaxthink.quant.numerics`, symmetric or with a zero point per group (the reference's
`sym=False`: min/max range of the group, widened to contain 0); kernels are `[in, out]`, so the
paper's columns are rows here. Dtype follows the inputs (float32, or float64 under
`jax.enable_x64(True)`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxthink.quant.numerics import levels, scale_from_bound, scale_zero, weight_range

_HP = jax.lax.Precision.HIGHEST


@functools.partial(jax.jit, static_argnames=("bits", "group_size", "block_size", "act_order",
                                             "static_groups", "symmetric"))
def gptq(kernel: jax.Array, hessian: jax.Array, *, bits: int, group_size: int | None,
         damp: float = 0.01, block_size: int = 128, act_order: bool = False,
         static_groups: bool = False, symmetric: bool = True
         ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """Error-compensated quantization of one linear.

  Args:
    kernel: `[in, out]` float weights.
    hessian: `[in, in]` `X^T X / n` of the layer's calibration inputs (any positive scale).
    bits: weight bits; group_size: input channels per scale (None: per output channel).
    damp: added to the diagonal, as a fraction of its mean.
    block_size: lazy-batch block size; act_order / static_groups: as in the reference code.
    symmetric: False for a zero point per group and output channel.

  Returns:
    integers `[in, out]` int32, scales `[groups, out]` and zero points `[groups, out]` int32
    (None when symmetric), so that `kernel ~ (q - zero) * scale`.
  """
  dtype = jnp.result_type(kernel.dtype, hessian.dtype, jnp.float32)
  w = kernel.astype(dtype)
  h = hessian.astype(dtype)
  n_in, n_out = w.shape
  gs = n_in if group_size is None else group_size
  n_groups = n_in // gs
  q_lo, q_hi = levels(bits, symmetric)

  def grid(w):  # scale and zero point [groups, out] of the (possibly updated) weights
    if symmetric:
      scale = scale_from_bound(weight_range(w, group_size, True), bits)
      return scale.astype(dtype), jnp.zeros_like(scale, dtype)
    scale, zero = scale_zero(weight_range(w, group_size, False), bits)
    return scale.astype(dtype), zero.astype(dtype)

  # Inputs never seen in calibration carry no information: zero their weights, unit diagonal.
  dead = jnp.diag(h) == 0
  h = h + jnp.diag(dead.astype(dtype))
  w = jnp.where(dead[:, None], 0, w)
  static_scale, static_zero = grid(w)

  perm = jnp.argsort(-jnp.diag(h), stable=True) if act_order else jnp.arange(n_in)
  w = w[perm]
  h = h[perm][:, perm]
  h = h + damp * jnp.mean(jnp.diag(h)) * jnp.eye(n_in, dtype=dtype)
  chol = jax.scipy.linalg.cholesky(h, lower=True)
  h_inv = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(n_in, dtype=dtype))
  u = jax.scipy.linalg.cholesky(h_inv, lower=False)  # h_inv = u^T u, u upper triangular

  # Pad to whole blocks: padded channels are zero weights with an identity factor, isolated.
  n_blocks = -(-n_in // block_size)
  n_pad = n_blocks * block_size - n_in
  w = jnp.pad(w, ((0, n_pad), (0, 0)))
  u = jnp.pad(u, ((0, n_pad), (0, n_pad))) + jnp.diag(
      jnp.concatenate([jnp.zeros(n_in, dtype), jnp.ones(n_pad, dtype)]))
  position_group = jnp.minimum(jnp.arange(n_in + n_pad) // gs, n_groups - 1)
  # With static groups a channel keeps the scale of its original group, wherever act-order puts it.
  static_row_scale = jnp.pad(static_scale[perm // gs], ((0, n_pad), (0, 0)), constant_values=1)
  static_row_zero = jnp.pad(static_zero[perm // gs], ((0, n_pad), (0, 0)))
  group_start = jnp.arange(n_groups) * gs

  def block(b, carry):
    w, q, scales, zeros = carry
    start = b * block_size
    if static_groups:
      row_scale = jax.lax.dynamic_slice_in_dim(static_row_scale, start, block_size)
      row_zero = jax.lax.dynamic_slice_in_dim(static_row_zero, start, block_size)
    else:
      # Groups starting in this block take their scale from the weights as updated so far (the
      # reference reads them at the group's first channel; within a block they are not yet
      # touched by the lazy update, so reading at block start is the same).
      starting = (group_start >= start) & (group_start < start + block_size)
      current_scale, current_zero = grid(w[:n_in])
      scales = jnp.where(starting[:, None], current_scale, scales)
      zeros = jnp.where(starting[:, None], current_zero, zeros)
      rows = jax.lax.dynamic_slice_in_dim(position_group, start, block_size)
      row_scale, row_zero = scales[rows], zeros[rows]
    w1 = jax.lax.dynamic_slice_in_dim(w, start, block_size)
    u1 = jax.lax.dynamic_slice(u, (start, start), (block_size, block_size))

    def column(i, inner):
      w1, q1, err1 = inner
      row, s, z = w1[i], row_scale[i], row_zero[i]
      qi = jnp.clip(jnp.round(row / s) + z, q_lo, q_hi)
      err = (row - (qi - z) * s) / u1[i, i]
      # u1 is upper triangular: only channels i.. of the block move.
      w1 = w1 - u1[i][:, None] * err[None, :]
      return w1, q1.at[i].set(qi), err1.at[i].set(err)

    empty = jnp.zeros((block_size, n_out), dtype)
    _, q1, err1 = jax.lax.fori_loop(0, block_size, column, (w1, empty, empty))
    q = jax.lax.dynamic_update_slice_in_dim(q, q1, start, axis=0)
    # Lazy batch update of every later channel (earlier rows of u are zero in these columns;
    # this block's own rows become stale but are never read again).
    u_rows = jax.lax.dynamic_slice_in_dim(u, start, block_size)
    w = w - jnp.dot(u_rows.T, err1, precision=_HP)
    return w, q, scales, zeros

  q = jnp.zeros_like(w)
  scales = jnp.ones((n_groups, n_out), dtype)
  zeros = jnp.zeros((n_groups, n_out), dtype)
  _, q, scales, zeros = jax.lax.fori_loop(0, n_blocks, block, (w, q, scales, zeros))
  q_original = jnp.zeros((n_in, n_out), dtype).at[perm].set(q[:n_in])
  if static_groups:
    scales, zeros = static_scale, static_zero
  return q_original.astype(jnp.int32), scales, None if symmetric else zeros.astype(jnp.int32)
