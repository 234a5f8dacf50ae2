"""GPTQ against a direct numpy transcription of the published procedure (symmetric grid and the
reference's zero-point `sym=False` quantizer), and what the symmetric grid costs against an
asymmetric (zero-point) one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxthink.quant.gptq import gptq
from jaxthink.quant.numerics import fake_quantize, gram_error


def gptq_reference(kernel, hessian, bits, groupsize=-1, percdamp=0.01, blocksize=128,
                   actorder=False, static_groups=False, sym=True):
  """Frantar et al. 2022, Algorithm 1 with lazy batch updates, as in the authors' `fasterquant`,
  float64. `W` is `[out, in]` (rows are output channels, the paper's layout). Symmetric grid
  `clip(round(w / s), -maxq, maxq)` with `s = max|w| / maxq` per row (and group); `sym=False`:
  the reference `Quantizer.find_params` / `quantize` with a zero point: `xmin = min(min w, 0)`,
  `xmax = max(max w, 0)` (both 0: -1, +1), `s = (xmax - xmin) / (2^b - 1)`,
  `z = round(-xmin / s)`, `q = clip(round(w / s) + z, 0, 2^b - 1)`, `w ~ s (q - z)`.
  Returns integers `[in, out]`, scales `[groups, out]` and zero points (None when symmetric)."""
  W = kernel.T.astype(np.float64).copy()
  H = hessian.astype(np.float64).copy()
  maxq = 2 ** (bits - 1) - 1 if sym else 2 ** bits - 1
  low = -maxq if sym else 0
  rows, columns = W.shape

  def find_params(part):
    if sym:
      absmax = np.abs(part).max(axis=1)
      absmax[absmax == 0] = 1
      return absmax / maxq, np.zeros(part.shape[0])
    xmin, xmax = np.minimum(part.min(axis=1), 0), np.maximum(part.max(axis=1), 0)
    empty = (xmin == 0) & (xmax == 0)
    xmin[empty], xmax[empty] = -1, 1
    scale = (xmax - xmin) / maxq
    return scale, np.round(-xmin / scale)

  dead = np.diag(H) == 0
  H[dead, dead] = 1
  W[:, dead] = 0
  scale, zero = find_params(W)
  if static_groups:
    groups = [find_params(W[:, i:i + groupsize]) for i in range(0, columns, groupsize)]
  if actorder:
    perm = np.argsort(-np.diag(H), kind="stable")
    W, H = W[:, perm], H[perm][:, perm]
    invperm = np.argsort(perm)
  Q = np.zeros_like(W)
  H[np.diag_indices(columns)] += percdamp * np.mean(np.diag(H))
  L = np.linalg.cholesky(H)
  L_inv = np.linalg.inv(L)
  Hinv = np.linalg.cholesky(L_inv.T @ L_inv).T  # upper Cholesky factor of H^-1
  scales = {}
  for i1 in range(0, columns, blocksize):
    i2 = min(i1 + blocksize, columns)
    W1 = W[:, i1:i2].copy()
    Q1 = np.zeros_like(W1)
    Err1 = np.zeros_like(W1)
    Hinv1 = Hinv[i1:i2, i1:i2]
    for i in range(i2 - i1):
      w = W1[:, i]
      d = Hinv1[i, i]
      if groupsize != -1:
        if not static_groups:
          if (i1 + i) % groupsize == 0:
            scale, zero = find_params(W[:, i1 + i:i1 + i + groupsize])
            scales[(i1 + i) // groupsize] = scale, zero
        else:
          idx = perm[i1 + i] if actorder else i1 + i
          scale, zero = groups[idx // groupsize]
      q = np.clip(np.round(w / scale) + zero, low, maxq)
      Q1[:, i] = q
      err1 = (w - (q - zero) * scale) / d
      W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
      Err1[:, i] = err1
    Q[:, i1:i2] = Q1
    W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
  if actorder:
    Q = Q[:, invperm]
  if groupsize == -1:
    grid = [(scale, zero)]
  elif static_groups:
    grid = groups
  else:
    grid = [scales[g] for g in sorted(scales)]
  out_scales, out_zeros = np.stack([s for s, _ in grid]), np.stack([z for _, z in grid])
  return Q.T.astype(np.int64), out_scales, None if sym else out_zeros.astype(np.int64)


def _layer(seed, n_in=256, n_out=96, tokens=2048):
  """A layer with correlated, unevenly scaled inputs (as real activations are)."""
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(n_in, n_in)) / np.sqrt(n_in)
  x = rng.normal(size=(tokens, n_in)) @ mix * rng.lognormal(0, 1, size=n_in)
  kernel = rng.normal(size=(n_in, n_out)) * 0.05
  return kernel, x.T @ x / tokens


CASES = {
    "g64_3bit": dict(bits=3, groupsize=64),  # groups start inside a lazy block
    "act_order_static_g128": dict(bits=4, groupsize=128, actorder=True, static_groups=True),
    # per channel; blocks not dividing the channels (the last block is shorter)
    "act_order_per_channel_blocks_of_96": dict(bits=4, groupsize=-1, actorder=True, blocksize=96),
    # zero points (the studies' GPTQ): groups, act-order with static groups, per channel
    "asym_g64_3bit": dict(bits=3, groupsize=64, sym=False),
    "asym_act_order_static_g128": dict(bits=4, groupsize=128, actorder=True, static_groups=True,
                                       sym=False),
    "asym_per_channel_4bit": dict(bits=4, groupsize=-1, sym=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_gptq_matches_reference_transcription(case):
  options = CASES[case]
  kernel, hessian = _layer(seed=len(case))
  ref_q, ref_scale, ref_zero = gptq_reference(kernel, hessian, **options)
  kwargs = dict(bits=options["bits"],
                group_size=None if options["groupsize"] == -1 else options["groupsize"],
                block_size=options.get("blocksize", 128), act_order=options.get("actorder", False),
                static_groups=options.get("static_groups", False),
                symmetric=options.get("sym", True))
  with jax.enable_x64(True):
    q64, s64, z64 = gptq(jnp.asarray(kernel), jnp.asarray(hessian), **kwargs)
    q64, s64 = np.asarray(q64), np.asarray(s64)
  same64 = np.mean(q64 == ref_q)
  same32 = float("nan")
  if case.endswith("act_order_static_g128"):  # float32, as quantize() runs it
    q32, _, _ = gptq(jnp.asarray(kernel, jnp.float32), jnp.asarray(hessian, jnp.float32), **kwargs)
    same32 = np.mean(np.asarray(q32) == ref_q)
    assert same32 > 0.99
  repeat = lambda a: np.repeat(a, kernel.shape[0] // len(a), axis=0)
  if ref_zero is None:
    top = 2 ** (options["bits"] - 1) - 1
    rtn = np.clip(np.round(kernel / repeat(ref_scale)), -top, top)
  else:
    rtn = np.clip(np.round(kernel / repeat(ref_scale)) + repeat(ref_zero), 0,
                  2 ** options["bits"] - 1)
  rtn_same = np.mean(rtn == ref_q)
  also32 = "" if np.isnan(same32) else f", float32 {same32:.4%}"
  print(f"\n{case}: integers equal to the numpy reference: float64 {same64:.4%}{also32} (plain "
        f"rounding would agree on only {rtn_same:.2%})")
  np.testing.assert_array_equal(q64, ref_q)
  np.testing.assert_allclose(s64, ref_scale, rtol=1e-12)
  if ref_zero is None:
    assert z64 is None
  else:
    np.testing.assert_array_equal(np.asarray(z64), ref_zero)


def _round_trip(w, bits, groupsize, asymmetric):
  """Numpy RTN per (input group, output channel), `w` `[in, out]` -> dequantized weights.
  Symmetric: the served grid (`s = max|w| / (2^(b-1) - 1)`, 2^b - 1 levels around 0).
  Asymmetric: min/max with an integer zero point (`s = (max - min) / (2^b - 1)`, 2^b levels), as
  GPTQ/AWQ checkpoints usually are."""
  n_in, n_out = w.shape
  g = w.reshape(n_in // groupsize, groupsize, n_out)
  if asymmetric:
    lo, hi = np.minimum(g.min(axis=1), 0), np.maximum(g.max(axis=1), 0)
    scale = np.where(hi > lo, (hi - lo) / (2 ** bits - 1), 1.0)[:, None]
    zero = np.round(-lo[:, None] / scale)
    q = np.clip(np.round(g / scale) + zero, 0, 2 ** bits - 1)
    return ((q - zero) * scale).reshape(w.shape)
  qmax = 2 ** (bits - 1) - 1
  scale = np.abs(g).max(axis=1, keepdims=True) / qmax
  return (np.clip(np.round(g / scale), -qmax, qmax) * scale).reshape(w.shape)


def test_cost_of_the_symmetric_grid_against_zero_points():
  """What serving symmetric integers costs (AQT 0.9.0 has no zero-point numerics), measured as the
  layer output error on correlated activations. Random weights understate the gap of trained
  weights; heavy-tailed (Student-t) weights are shown beside Gaussian ones."""
  rng = np.random.default_rng(0)
  _, gram = _layer(seed=3, n_in=512, n_out=1, tokens=4096)
  weights = {"gaussian": rng.normal(size=(512, 256)),
             "student-t(3)": rng.standard_t(3, size=(512, 256))}
  print("\nrelative output error  ||X(W - Q(W))||^2 / ||XW||^2:")
  ratios = {}
  for name, w in weights.items():
    for bits in (4, 3):
      for groupsize in (128, 512):
        err = {}
        for asym in (False, True):
          # jaxthink's grid (float32) is numpy's (float64) but for ties at a rounding boundary.
          ours = np.asarray(fake_quantize(jnp.asarray(w, jnp.float32), bits, groupsize,
                                          symmetric=not asym), np.float64)
          same = np.isclose(ours, _round_trip(w, bits, groupsize, asym), rtol=1e-5, atol=1e-6)
          assert same.mean() > 0.999, (name, bits, groupsize, asym, same.mean())
          d = w - ours
          err[asym] = np.sum((gram @ d) * d) / np.sum((gram @ w) * w)
          np.testing.assert_allclose(float(gram_error(jnp.asarray(d, jnp.float32),
                                                      jnp.asarray(gram, jnp.float32))),
                                     np.sum((gram @ d) * d), rtol=1e-4)
        ratios[name, bits, groupsize] = err[False] / err[True]
        label = "per channel" if groupsize == 512 else f"g{groupsize}"
        print(f"  {name:13s} w{bits} {label:12s} symmetric {err[False]:.3e}  asymmetric "
              f"{err[True]:.3e}  symmetric/asymmetric {ratios[name, bits, groupsize]:.2f}x")
  assert all(r > 1 for r in ratios.values())  # zero points help; the printout says how much
