"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before w8a8.

Per input channel `j` of the linears fed by one RMSNorm:
`s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)` (max over tokens, and over every output channel of
every consumer); the norm's scale is divided by `s` and the consumers' kernel rows multiplied by it,
so the float model is unchanged while activations get flatter per token.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


@jax.jit
def smooth_scales(act_max: jax.Array, kernels: Sequence[jax.Array], alpha: float) -> jax.Array:
  """`s` `[in]` for activations with per-channel max `act_max` `[in]` read by `kernels`
  `[in, *]`."""
  w_max = jnp.max(jnp.stack([jnp.max(jnp.abs(k), axis=1) for k in kernels]), axis=0)
  w_max = jnp.maximum(w_max, 1e-5)
  return jnp.maximum(act_max ** alpha / w_max ** (1 - alpha), 1e-5)
