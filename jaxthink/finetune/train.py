"""Trains the adapters of a frozen (quantized) decoder with optax.

AdamW with linear warmup and cosine decay, gradient clipping by global norm, next-token
cross-entropy on the solution tokens only (`loss_mask`). Only the adapter tree is differentiated
and updated; the base params (AQT's integers and scales, or float weights) are a constant input.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxthink.config import ConfigError
from jaxthink.finetune.adapters import AdapterSpec, adapted, init_adapters, with_adapters
from jaxthink.models.decoder import Decoder, positions_from_mask
from jaxthink.tiny.train import length_bucketed_batches


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """Optimisation settings. `max_seconds`: stop early once training has run this long."""

  steps: int = 300
  batch_size: int = 16
  max_len: int = 256
  peak_lr: float = 2e-3
  warmup_steps: int = 30
  end_lr_fraction: float = 0.02
  weight_decay: float = 0.0
  clip_norm: float = 1.0
  seed: int = 0
  max_seconds: float | None = None

  def __post_init__(self):
    for name in ("steps", "batch_size", "max_len"):
      if getattr(self, name) < 1:
        raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1.")
    if not 0 <= self.warmup_steps < self.steps:
      raise ConfigError(f"train.warmup_steps={self.warmup_steps} must be in [0, steps).")
    if self.peak_lr <= 0 or self.clip_norm <= 0:
      raise ConfigError("train.peak_lr and train.clip_norm must be > 0.")

  def optimizer(self) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, self.peak_lr, self.warmup_steps,
                                                  self.steps, self.peak_lr * self.end_lr_fraction)
    return optax.chain(optax.clip_by_global_norm(self.clip_norm),
                       optax.adamw(schedule, weight_decay=self.weight_decay))


def solution_loss(adapters: Any, base: Any, model: Decoder, tokens: jax.Array,
                  token_mask: jax.Array, loss_mask: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy (float32) over the `loss_mask` tokens, `[batch, seq]` inputs."""
  logits, _ = model.apply({"params": with_adapters(base, adapters)}, tokens,
                          positions_from_mask(token_mask), token_mask)
  weights = loss_mask[:, 1:].astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32),
                                                        tokens[:, 1:])
  return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2, 3))
def train_step(model: Decoder, optimizer: optax.GradientTransformation, adapters: Any,
               opt_state: Any, base: Any, tokens, token_mask, loss_mask):
  """One optax step on the adapters; returns `(adapters, opt_state, loss)`."""
  loss, grads = jax.value_and_grad(solution_loss)(adapters, base, model, tokens, token_mask,
                                                  loss_mask)
  updates, opt_state = optimizer.update(grads, opt_state, adapters)
  return optax.apply_updates(adapters, updates), opt_state, loss


def finetune(model: Decoder, base: Any, spec: AdapterSpec, tokens: np.ndarray,
             token_mask: np.ndarray, loss_mask: np.ndarray, train: TrainSpec,
             log: Callable[[str], None] | None = None) -> tuple[Any, dict[str, Any]]:
  """Trains fresh adapters of `spec` on `model` (its `quant` kept) with `base` params frozen.

  Args: `tokens`, `token_mask`, `loss_mask` `[n, max_len]` (`jaxthink.finetune.steps.encode`).
  Returns `(adapters, record)`: the record holds the losses every 10 steps, steps run, seconds.
  """
  lora_model = adapted(model, spec, train=True)
  adapters = init_adapters(model.config, spec, train.seed)
  optimizer = train.optimizer()
  opt_state = optimizer.init(adapters)
  batches = length_bucketed_batches(token_mask, train.batch_size, train.steps,
                                    np.random.default_rng(train.seed))
  losses, started, step = [], time.perf_counter(), 0
  for step, (rows, width) in enumerate(batches):
    adapters, opt_state, loss = train_step(
        lora_model, optimizer, adapters, opt_state, base, jnp.asarray(tokens[rows, :width]),
        jnp.asarray(token_mask[rows, :width]), jnp.asarray(loss_mask[rows, :width]))
    if step % 10 == 0 or step == train.steps - 1:
      losses.append((step, float(loss)))
      if log is not None:
        log(f"step {step}: loss {float(loss):.4f}")
    if train.max_seconds is not None and time.perf_counter() - started > train.max_seconds:
      break
  return adapters, {"losses": losses, "steps_run": step + 1,
                    "seconds": round(time.perf_counter() - started, 1)}
