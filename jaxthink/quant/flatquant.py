"""Transforms that flatten outliers before W4A4: a Hadamard rotation (QuaRot-style, no training) and
learned FlatQuant-style affine transforms (arXiv 2410.09426), per linear input.

A linear `y = x W` with activations `x` `[tokens, n]` is computed as `y = (x T) (T^-1 W)`:

    T = diag(s) (L kron R),   n = n1 * n2,  L `[n1, n1]`, R `[n2, n2]` invertible, s `[n]` > 0

`T^-1 W = (L^-1 kron R^-1) diag(1/s) W` is folded into the weights (then quantized per output
channel, symmetric, with a learned clipping ratio per channel); `x T` is applied online before the
per-token activation quantization, which clips each token at a learned ratio of its `max |x|`.
`x (L kron R)` costs two small matmuls: with `X = x.reshape(n1, n2)` it is `L^T X R`.

Hadamard: `s = 1`, no clipping, `L kron R` orthogonal: `n = m * 2^k` (m odd) gives
`L = Q_m kron H_{2^a}`, `R = H_{2^b}` (a + b = k, Sylvester Hadamard matrices scaled to be
orthogonal, `Q_m` a seeded random orthogonal matrix when m > 1: 192, 896 or 4864 have no Hadamard
matrix jaxthink builds). FlatQuant starts from that rotation and trains L, R, s and both clipping
ratios with AdamW (optax) to match the float layer's outputs on calibration activations, keeping
the best iterate (so its calibration loss never exceeds the rotation's). The linears reading one
activation (q/k/v, gate/up) share its transform and are trained together.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg

from jaxthink.quant.numerics import qmax

_HP = jax.lax.Precision.HIGHEST
_CLIP_INIT = 6.0  # logit of the clipping ratios at the start: sigmoid(6) = 0.9975, nearly none


def kron_factors(n: int) -> tuple[int, int]:
  """`(n1, n2)` with `n1 * n2 = n`: the odd part and half the power of two go left."""
  k = (n & -n).bit_length() - 1  # n = m * 2^k
  a = k // 2
  return (n >> k) << a, 1 << (k - a)


def hadamard_factors(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Orthogonal `L` `[n1, n1]`, `R` `[n2, n2]` whose Kronecker product is the rotation."""
  n1, n2 = kron_factors(n)
  m = n >> ((n & -n).bit_length() - 1)  # the odd part
  q = np.linalg.qr(np.random.default_rng(seed).normal(size=(m, m)))[0] if m > 1 else np.ones((1, 1))
  h = lambda size: scipy.linalg.hadamard(size) / np.sqrt(size)
  return np.kron(q, h(n1 // m)).astype(np.float32), h(n2).astype(np.float32)


def identity(n: int) -> dict[str, jax.Array]:
  """Served transform params that change nothing (the placeholder shapes of a layer)."""
  n1, n2 = kron_factors(n)
  return {"left": jnp.eye(n1, dtype=jnp.float32), "right": jnp.eye(n2, dtype=jnp.float32),
          "scale": jnp.ones((n,), jnp.float32), "act_clip": jnp.ones((), jnp.float32)}


def kron_apply(x: jax.Array, left: jax.Array, right: jax.Array) -> jax.Array:
  """`x (left kron right)` for `x` `[..., n1 * n2]`."""
  n1, n2 = left.shape[0], right.shape[0]
  xm = x.reshape(x.shape[:-1] + (n1, n2))
  y = jnp.einsum("...ij,ik,jl->...kl", xm, left, right, precision=_HP)
  return y.reshape(x.shape)


def fold(w: jax.Array, transform: dict[str, jax.Array]) -> jax.Array:
  """`T^-1 W` for `W` `[n, out]`: the weights that undo the online transform."""
  n1, n2 = transform["left"].shape[0], transform["right"].shape[0]
  w = (w / transform["scale"][:, None]).reshape(n1, n2, -1)
  left_inv, right_inv = jnp.linalg.inv(transform["left"]), jnp.linalg.inv(transform["right"])
  return jnp.einsum("ik,jl,klo->ijo", left_inv, right_inv, w, precision=_HP).reshape(n1 * n2, -1)


def online(x: jax.Array, transform: dict[str, jax.Array]) -> jax.Array:
  """`x T`, each token clipped to `act_clip * max |x T|` (float32), before quantization."""
  y = kron_apply(x.astype(jnp.float32) * transform["scale"], transform["left"],
                 transform["right"])
  bound = transform["act_clip"] * jnp.max(jnp.abs(y), axis=-1, keepdims=True)
  return jnp.clip(y, -bound, bound)


def matrix(transform: dict[str, jax.Array]) -> jax.Array:
  """`T` `[n, n]` itself (for statistics and checks)."""
  return transform["scale"][:, None] * jnp.kron(transform["left"], transform["right"])


def hadamard(n: int, seed: int = 0) -> dict[str, jax.Array]:
  left, right = hadamard_factors(n, seed)
  return {**identity(n), "left": jnp.asarray(left), "right": jnp.asarray(right)}


def _round_ste(x):
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def fake_quant_tokens(x: jax.Array, bits: int) -> jax.Array:
  """Per-token symmetric fake quantization (straight-through rounding)."""
  s = jnp.maximum(jnp.max(jnp.abs(x), axis=-1, keepdims=True), 1e-8) / qmax(bits)
  return jnp.clip(_round_ste(x / s), -qmax(bits), qmax(bits)) * s


def fake_quant_channels(w: jax.Array, bits: int, ratio: jax.Array) -> jax.Array:
  """Per-output-channel symmetric fake quantization of `w` `[n, out]` clipped at
  `ratio * max |w|` (`ratio` `[out]`)."""
  bound = jnp.maximum(ratio * jnp.max(jnp.abs(w), axis=0), 1e-8)
  s = bound / qmax(bits)
  return jnp.clip(_round_ste(w / s), -qmax(bits), qmax(bits)) * s


def _transform(p):
  return {"left": p["left"], "right": p["right"], "scale": jnp.exp(p["log_scale"]),
          "act_clip": jax.nn.sigmoid(p["act_logit"])}


def output_error(p, x, kernels, weight_bits: int, act_bits: int):
  """Summed relative output error of the fake-quantized linears reading `x` `[tokens, n]`."""
  t = _transform(p)
  xq = fake_quant_tokens(online(x, t), act_bits)
  total = 0.0
  for w, logit in zip(kernels, p["w_logits"]):
    wq = fake_quant_channels(fold(w, t), weight_bits, jax.nn.sigmoid(logit))
    y = jnp.dot(x, w, precision=_HP)
    total = total + jnp.sum((jnp.dot(xq, wq, precision=_HP) - y) ** 2) / jnp.sum(y ** 2)
  return total


@functools.partial(jax.jit, static_argnames=("weight_bits", "act_bits", "steps", "lr"))
def _train(init, x, kernels, *, weight_bits: int, act_bits: int, steps: int, lr: float):
  opt = optax.adamw(lr, weight_decay=0.0)
  loss_grad = jax.value_and_grad(output_error)

  def step(carry, _):
    p, state, best_loss, best = carry
    loss, grad = loss_grad(p, x, kernels, weight_bits, act_bits)
    better = loss < best_loss
    best = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best)
    best_loss = jnp.where(better, loss, best_loss)
    updates, state = opt.update(grad, state, p)
    return (optax.apply_updates(p, updates), state, best_loss, best), loss

  carry = (init, opt.init(init), jnp.asarray(jnp.inf, jnp.float32), init)
  (p, _, best_loss, best), losses = jax.lax.scan(step, carry, None, length=steps)
  final = output_error(p, x, kernels, weight_bits, act_bits)
  return jax.tree.map(lambda a, b: jnp.where(final < best_loss, a, b), p, best), losses


def learn(x: jax.Array, kernels: Sequence[jax.Array], *, weight_bits: int, act_bits: int,
          steps: int = 150, lr: float = 5e-3, seed: int = 0) -> tuple[dict, list, dict]:
  """FlatQuant for the linears `kernels` `[n, out_i]` reading activations `x` `[tokens, n]`.

  Returns the served transform, each kernel's weight clipping ratio `[out_i]`, and the
  calibration loss (summed relative output error) at the Hadamard start and after training.
  """
  n = x.shape[-1]
  left, right = hadamard_factors(n, seed)
  init = {"left": jnp.asarray(left), "right": jnp.asarray(right),
          "log_scale": jnp.zeros((n,), jnp.float32),
          "act_logit": jnp.asarray(_CLIP_INIT, jnp.float32),
          "w_logits": [jnp.full((k.shape[1],), _CLIP_INIT, jnp.float32) for k in kernels]}
  x = jnp.asarray(x, jnp.float32)
  kernels = [jnp.asarray(k, jnp.float32) for k in kernels]
  best, losses = _train(init, x, kernels, weight_bits=weight_bits, act_bits=act_bits,
                        steps=steps, lr=lr)
  end = float(output_error(best, x, kernels, weight_bits, act_bits))
  return (_transform(best), [jax.nn.sigmoid(w) for w in best["w_logits"]],
          {"start_loss": float(losses[0]), "loss": end})


def served(transform: dict[str, Any]) -> dict[str, jax.Array]:
  """The layer's `flat` params (float32)."""
  return {k: jnp.asarray(v, jnp.float32) for k, v in transform.items()}
