"""Building blocks of the decoder: RMSNorm, the Linear layer, and the gated MLP."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class RMSNorm(nn.Module):
  """Root-mean-square norm, statistics in float32 (as HF computes them)."""

  eps: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return scale.astype(self.dtype) * normed.astype(self.dtype)


class Linear(nn.Module):
  """`y = x @ kernel (+ bias)`, kernel `[in_features, out_features]`.

  `quant` is the quantization rule for this layer (`jaxthink.quant`), or None for a float layer.
  `quant.dot(self, x, features)` runs the quantized product inside this module's scope (AQT's
  integers and scales are this layer's params, no float kernel) or returns None when the rules
  leave this layer in float. Keeping both paths in one module lets the reference and the quantized
  model be the same code with two parameter trees.

  `out_dtype`: the product's output dtype, accumulated and returned without rounding to `dtype`
  (the lm_head's float32 logits from a bf16 model); None: `dtype`.
  """

  features: int
  use_bias: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  quant: Any = None
  out_dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = None if self.quant is None else self.quant.dot(self, x, self.features)
    if y is None:
      kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features),
                          self.param_dtype)
      y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype),
                  preferred_element_type=self.out_dtype or self.dtype)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class MLP(nn.Module):
  """SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`."""

  intermediate_size: int
  use_bias: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  quant: Any = None  # a `QuantRules`-like object: `.for_layer(name)` -> per-layer rule or None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    linear = lambda name, n: Linear(n, self.use_bias, self.dtype, self.param_dtype,
                                    _rule(self.quant, name), name=name)
    hidden = nn.silu(linear("gate_proj", self.intermediate_size)(x)) * linear(
        "up_proj", self.intermediate_size)(x)
    return linear("down_proj", x.shape[-1])(hidden)


def _rule(quant: Any, name: str) -> Any:
  return None if quant is None else quant.for_layer(name)
