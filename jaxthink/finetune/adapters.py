"""Low-rank adapters (LoRA) on the linears of a quantized (or float) decoder.

`y = W x + (alpha / r) · B A x`, `A` `[in, r]`, `B` `[r, out]`, float32, `B` zero-initialised so an
adapted model starts exactly where its base is. `W` is whatever the base layer serves: AQT's frozen
integers and scales (`jaxthink.quant`), or the float kernel (the float baseline). Adapters only add
a term; the base parameters are never touched, so the integers stay bit-identical through training.

Why not qwix 0.1.8's LoRA (`qwix.LoraProvider` / `apply_lora_to_model`)? It intercepts
`dot_general` calls whose right operand is a parameter of the calling module. On the float `Linear`
it works (it creates `kernel_lora_a/b`), but an AQT-served `Linear` has no float kernel: its product
runs inside AQT's `AqtDotGeneral` on the frozen integer tensor, so qwix finds no weight and adds no
adapter, silently (checked on the embedded model: zero `lora` parameters created). The delta here
is instead a wrapper around the decoder's `quant` rules: `Linear` calls `rules.dot(module, x, n)`,
and `LoraRules.dot` returns the base product plus the low-rank term, with the adapter parameters
(`lora_a`, `lora_b`) created in the same `Linear` scope. No model code changes.

Which layers get adapters, and at which rank, is a rule list like the quantization rules: the first
`AdapterRule.pattern` that fully matches a linear's path (`layers_0/self_attn/q_proj`) decides.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxthink.models.config import ModelConfig
from jaxthink.quant.metrics import dequantize_frozen, frozen_layers
from jaxthink.quant.spec import linear_shapes

ADAPTER_KEYS = ("lora_a", "lora_b")


class AdapterConfigError(ValueError):
  """An adapter setting is invalid; the message says the fix."""


@dataclasses.dataclass(frozen=True)
class AdapterRule:
  """`pattern` (a regular expression fully matching a linear's path) -> adapt it or not, and at
  which rank (None: the spec's)."""

  pattern: str
  adapt: bool = True
  rank: int | None = None

  def __post_init__(self):
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise AdapterConfigError(f"adapter rule pattern {self.pattern!r} is not a valid regular "
                               f"expression: {e}")
    if self.rank is not None and self.rank < 1:
      raise AdapterConfigError(f"adapter rule {self.pattern!r}: rank={self.rank} must be >= 1.")


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
  """Rank, scale and target layers of the adapters (default: every linear of the blocks)."""

  rank: int = 8
  alpha: float = 16.0  # the delta is scaled by alpha / rank
  rules: tuple[AdapterRule, ...] = (AdapterRule(r".*"),)

  def __post_init__(self):
    if self.rank < 1:
      raise AdapterConfigError(f"adapter.rank={self.rank} must be >= 1.")
    if not self.rules:
      raise AdapterConfigError("adapter.rules is empty: no layer would get an adapter. Use "
                               "[{pattern: '.*'}] for every linear of the blocks.")

  def layer_rank(self, path: str) -> int | None:
    """The adapter rank of the linear at `path`, or None: no adapter."""
    for rule in self.rules:
      if re.fullmatch(rule.pattern, path):
        return (rule.rank or self.rank) if rule.adapt else None
    return None

  def targets(self, config: ModelConfig) -> dict[str, tuple[int, int, int]]:
    """`{path: (in_features, out_features, rank)}` of every adapted linear."""
    out = {}
    for path, (n_in, n_out) in linear_shapes(config).items():
      rank = self.layer_rank(path)
      if rank is not None:
        out[path] = (n_in, n_out, rank)
    if not out:
      raise AdapterConfigError(f"adapter.rules {[r.pattern for r in self.rules]} match no linear "
                               "of the model (paths look like 'layers_0/self_attn/q_proj').")
    return out


@dataclasses.dataclass(frozen=True)
class LoraRules:
  """The decoder's `quant` for an adapted model: `base` (a `QuantRules`, or None for float) plus
  the adapters of `spec`. Hashable: it is a Flax module attribute."""

  spec: AdapterSpec
  base: Any = None
  train: bool = False  # give the quantized product a gradient in x (`_served_dot`)

  def for_layer(self, name: str) -> "LoraRules":
    del name  # the full path is known only inside the layer (`dot`)
    return self

  @property
  def kv_rotation(self) -> bool:  # the base's rotated keys and values (`QuantRules`) are kept
    return getattr(self.base, "kv_rotation", False)

  def kv_rotation_matrix(self, head_dim: int):
    return self.base.kv_rotation_matrix(head_dim)

  def dot(self, module: nn.Module, x: jax.Array, features: int) -> jax.Array:
    """`x` `[..., in]` -> base product + `(alpha / r) · (x A) B`, `[..., features]`."""
    y = None
    if self.base is not None:
      y = _served_dot(self.base, module, x, features) if self.train else \
          self.base.dot(module, x, features)
    if y is None:  # a float layer: the product `Linear` itself computes without a rule
      kernel = module.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], features),
                            module.param_dtype)
      y = jnp.dot(x.astype(module.dtype), kernel.astype(module.dtype),
                  preferred_element_type=module.out_dtype or module.dtype)
    rank = self.spec.layer_rank("/".join(module.path))
    if rank is None:
      return y
    a = module.param("lora_a", _init_a, (x.shape[-1], rank), jnp.float32)
    b = module.param("lora_b", nn.initializers.zeros, (rank, features), jnp.float32)
    delta = jnp.dot(jnp.dot(x.astype(jnp.float32), a), b) * (self.spec.alpha / rank)
    return (y.astype(jnp.float32) + delta).astype(y.dtype)


def _served_dot(base: Any, module: nn.Module, x: jax.Array, features: int) -> jax.Array | None:
  """The base rule's product, differentiable in `x` (None: the rules leave the layer in float).

  AQT's own backward rule does not run under jax 0.10 (its Flax VJP calls the removed
  `jax.core.get_aval`), so AQT sees a constant input and the gradient to `x` comes from
  `(x - stop_gradient(x)) @ W`, `W` the dequantized integers: exactly zero in the forward pass
  (the served product is unchanged bit for bit) and exactly `dy/dx = W^T` for weight-only schemes.
  With quantized activations (w8a8, w4a4) this is the straight-through estimate.
  """
  params = module.variables.get("params", {})
  if "aqt" not in params:  # float, or zero-point layers (plain JAX, differentiable as they are)
    return base.dot(module, x, features)
  if "flat" in params:
    raise NotImplementedError("adapters on W4A4 / W8A8 layers with learned or Hadamard "
                              "transforms are not supported; use method gptq / rtn / awq.")
  y = base.dot(module, jax.lax.stop_gradient(x), features)
  w = dequantize_frozen(params["aqt"]["qrhs"])
  x32 = x.astype(jnp.float32)
  return y + jnp.dot(x32 - jax.lax.stop_gradient(x32), w).astype(y.dtype)


def _init_a(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
  # PEFT's default for A (kaiming-uniform, a = sqrt(5)): U(-1/sqrt(in), 1/sqrt(in)).
  bound = 1.0 / math.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def adapted(model: nn.Module, spec: AdapterSpec, train: bool = False) -> nn.Module:
  """The same `Decoder` with adapters on the linears `spec` targets (its quantization kept).
  `train`: differentiable through the quantized products (one extra float product per layer,
  so inference leaves it off)."""
  return model.clone(quant=LoraRules(spec, model.quant, train))


def init_adapters(config: ModelConfig, spec: AdapterSpec, seed: int = 0) -> dict[str, Any]:
  """Fresh adapters `{layers_i: {self_attn|mlp: {name: {lora_a [in, r], lora_b [r, out]}}}}`,
  float32, `A` random and `B` zero."""
  flat = {}
  for i, (path, (n_in, n_out, rank)) in enumerate(sorted(spec.targets(config).items())):
    key = jax.random.fold_in(jax.random.key(seed), i)
    flat[tuple(path.split("/")) + ("lora_a",)] = _init_a(key, (n_in, rank))
    flat[tuple(path.split("/")) + ("lora_b",)] = jnp.zeros((rank, n_out), jnp.float32)
  return flax.traverse_util.unflatten_dict(flat)


def split_adapters(params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
  """`(base, adapters)` of an adapted model's params (adapter leaves are `lora_a` / `lora_b`)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  base = {k: v for k, v in flat.items() if k[-1] not in ADAPTER_KEYS}
  lora = {k: v for k, v in flat.items() if k[-1] in ADAPTER_KEYS}
  return flax.traverse_util.unflatten_dict(base), flax.traverse_util.unflatten_dict(lora)


def with_adapters(base: Any, adapters: Any) -> dict[str, Any]:
  """The base params with the adapter leaves added (the params of `adapted(model, spec)`)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(base))
  flat.update(flax.traverse_util.flatten_dict(flax.core.unfreeze(adapters)))
  return flax.traverse_util.unflatten_dict(flat)


def merge_adapters(params: Any, adapters: Any, spec: AdapterSpec, dtype=jnp.float32) -> dict:
  """Float params of a plain `Decoder` (no `quant`) computing the adapted model: each adapted
  kernel becomes `W + (alpha / r) A B`, `W` the float kernel or the dequantized integers (quantized
  layers left without an adapter are dequantized too), ready for `save_pretrained` (HF export)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  kernels = {path: jnp.asarray(flat.pop(tuple(path.split("/")) + ("kernel",)), jnp.float32)
             for path in _paths(flat, ("kernel",))}
  for path, frozen in frozen_layers(flax.traverse_util.unflatten_dict(flat)).items():
    kernels[path] = dequantize_frozen(frozen)
  if any("flat" in k for k in flat):
    raise NotImplementedError("merging adapters into layers with W4A4 transforms is not "
                              "supported (their kernels hold T^-1 W).")
  flat = {k: v for k, v in flat.items() if "aqt" not in k and "zq" not in k}
  lora = flax.traverse_util.flatten_dict(flax.core.unfreeze(adapters))
  for path in _paths(lora, ("lora_a",)):
    a, b = (lora[tuple(path.split("/")) + (name,)] for name in ADAPTER_KEYS)
    kernels[path] = kernels[path] + jnp.dot(a, b) * (spec.alpha / a.shape[1])
  for path, kernel in kernels.items():
    flat[tuple(path.split("/")) + ("kernel",)] = kernel
  return flax.traverse_util.unflatten_dict({k: jnp.asarray(v, dtype) for k, v in flat.items()})


def _paths(flat: dict, leaf: tuple[str, ...]) -> list[str]:
  """Layer paths (`layers_0/mlp/up_proj`) of the flat params ending in `leaf`, blocks only."""
  return ["/".join(k[:-len(leaf)]) for k in flat
          if k[-len(leaf):] == leaf and k[0].startswith("layers_")]
