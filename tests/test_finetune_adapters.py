"""Adapter math on AQT-served linears: zero adapters change nothing, gradients match a float64
numpy transcription and finite differences, the integers never change."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxthink.eval.config import EMBEDDED_MODEL_DIR
from jaxthink.finetune.adapters import (AdapterConfigError, AdapterRule, AdapterSpec, adapted,
                                        init_adapters, merge_adapters, split_adapters,
                                        with_adapters)
from jaxthink.finetune.steps import StepFormat, encode, synthetic_step_solutions
from jaxthink.finetune.train import TrainSpec, finetune, solution_loss, train_step
from jaxthink.models import load_pretrained, save_pretrained
from jaxthink.models.decoder import positions_from_mask
from jaxthink.models.layers import Linear
from jaxthink.quant import QuantSpec, quantize
from jaxthink.quant.aqt_linear import LinearQuant, convert_linear

SPEC = AdapterSpec(rank=4, alpha=8.0)


@functools.lru_cache(maxsize=1)
def _models():
  pretrained = load_pretrained(EMBEDDED_MODEL_DIR, dtype=jnp.float32)
  qmodel, qparams, _ = quantize(pretrained.config, pretrained.params,
                                QuantSpec("w3a16", "rtn", group_size=64))
  return pretrained, qmodel, qparams


def _batch(n=2, seq=24, seed=0):
  tokens = jnp.asarray(np.random.default_rng(seed).integers(3, 600, (n, seq)), jnp.int32)
  mask = jnp.ones((n, seq), bool)
  return tokens, mask


@pytest.mark.parametrize("train", [False, True])
def test_zero_adapters_give_the_quantized_logits(train):
  _, qmodel, qparams = _models()
  tokens, mask = _batch()
  adapters = init_adapters(qmodel.config, SPEC, seed=3)
  assert all(float(jnp.abs(b).max()) == 0 for b in jax.tree.leaves(adapters)[1::2])  # B = 0
  reference, _ = qmodel.apply({"params": qparams}, tokens, positions_from_mask(mask), mask)
  logits, _ = adapted(qmodel, SPEC, train).apply({"params": with_adapters(qparams, adapters)},
                                                 tokens, positions_from_mask(mask), mask)
  assert float(jnp.max(jnp.abs(logits - reference))) <= 1e-6


def _served_layer(seed=0, n_in=128, n_out=48, group=64):
  rng = np.random.default_rng(seed)
  rule = LinearQuant(3, None, group)
  served = convert_linear(rule, jnp.asarray(rng.normal(size=(n_in, n_out)), jnp.float32))
  value = np.asarray(served["aqt"]["qrhs"]["value"]).astype(np.float64)  # [groups, group, out]
  scale = np.asarray(served["aqt"]["qrhs"]["scale"], np.float64).reshape(-1, 1, n_out)
  w = (value * scale).reshape(n_in, n_out)  # float64 transcription of the integer kernel
  return rule, served, w


def test_layer_gradient_and_sgd_step_match_float64_numpy():
  rule, served, w = _served_layer()
  rng = np.random.default_rng(1)
  x = rng.normal(size=(5, 128)).astype(np.float32)
  g = rng.normal(size=(5, 48)).astype(np.float32)
  a = (rng.normal(size=(128, 4)) * 0.1).astype(np.float32)
  b = (rng.normal(size=(4, 48)) * 0.1).astype(np.float32)  # non-zero: A's gradient is non-zero
  spec = AdapterSpec(rank=4, alpha=8.0)
  s = spec.alpha / spec.rank
  from jaxthink.finetune.adapters import LoraRules  # noqa: PLC0415
  layer = Linear(48, quant=LoraRules(spec, _OnlyRule(rule), train=True))

  def loss(adapter, x):
    y = layer.apply({"params": {**served, **adapter}}, x)
    return jnp.sum(y * g), y

  (value, y), (grads, grad_x) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      {"lora_a": jnp.asarray(a), "lora_b": jnp.asarray(b)}, jnp.asarray(x))
  x64, g64, a64, b64 = (v.astype(np.float64) for v in (x, g, a, b))
  y_ref = x64 @ w + s * (x64 @ a64) @ b64
  np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-5, atol=1e-4)
  grad_a = s * x64.T @ (g64 @ b64.T)
  grad_b = s * (x64 @ a64).T @ g64
  grad_x_ref = g64 @ (w + s * a64 @ b64).T
  np.testing.assert_allclose(np.asarray(grads["lora_a"]), grad_a, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(grads["lora_b"]), grad_b, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(grad_x), grad_x_ref, rtol=1e-4, atol=1e-4)
  # One optax SGD step moves the adapters by -lr times the float64 gradient.
  sgd = optax.sgd(0.01)
  updates, _ = sgd.update(grads, sgd.init(grads))
  stepped = optax.apply_updates({"lora_a": jnp.asarray(a), "lora_b": jnp.asarray(b)}, updates)
  np.testing.assert_allclose(np.asarray(stepped["lora_a"]), a64 - 0.01 * grad_a, atol=1e-5)
  np.testing.assert_allclose(np.asarray(stepped["lora_b"]), b64 - 0.01 * grad_b, atol=1e-5)


class _OnlyRule:
  """A `quant` that serves every layer with one `LinearQuant` (a single layer outside a decoder)."""

  def __init__(self, rule):
    self.rule = rule

  def dot(self, module, x, features):
    return self.rule.dot(module, x, features)


def test_model_gradient_after_one_step_matches_finite_differences():
  _, qmodel, qparams = _models()
  tokens, mask = _batch(seed=2)
  model = adapted(qmodel, SPEC, train=True)
  optimizer = TrainSpec(steps=10, warmup_steps=0, peak_lr=1e-2).optimizer()
  adapters = init_adapters(qmodel.config, SPEC, seed=0)
  adapters, _, _ = train_step(model, optimizer, adapters, optimizer.init(adapters), qparams,
                              tokens, mask, mask)
  assert float(jnp.abs(adapters["layers_1"]["mlp"]["up_proj"]["lora_b"]).max()) > 0
  loss = jax.jit(lambda ad: solution_loss(ad, qparams, model, tokens, mask, mask))
  grads = jax.grad(lambda ad: solution_loss(ad, qparams, model, tokens, mask, mask))(adapters)
  rng = np.random.default_rng(0)
  for trial in range(3):
    direction = jax.tree.map(lambda v: jnp.asarray(rng.normal(size=v.shape), jnp.float32),
                             adapters)
    norm = float(jnp.sqrt(sum(jnp.sum(d * d) for d in jax.tree.leaves(direction))))
    direction = jax.tree.map(lambda d: d / norm, direction)
    eps = 1e-2
    plus = loss(jax.tree.map(lambda p, d: p + eps * d, adapters, direction))
    minus = loss(jax.tree.map(lambda p, d: p - eps * d, adapters, direction))
    numeric = float(plus - minus) / (2 * eps)
    analytic = float(sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves(grads),
                                                         jax.tree.leaves(direction))))
    assert analytic == pytest.approx(numeric, rel=2e-2, abs=2e-4), trial


def test_training_leaves_the_integers_bit_identical():
  pretrained, qmodel, qparams = _models()
  before = jax.tree.map(np.array, qparams)
  data = synthetic_step_solutions("train", 16, seed=5)
  tokens, token_mask, loss_mask = encode(pretrained.tokenizer, data, StepFormat(), 192)
  adapters, record = finetune(qmodel, qparams, SPEC, tokens, token_mask, loss_mask,
                              TrainSpec(steps=3, batch_size=4, warmup_steps=1, peak_lr=1e-2))
  assert record["steps_run"] == 3
  assert float(jnp.abs(adapters["layers_0"]["self_attn"]["q_proj"]["lora_b"]).max()) > 0
  base, lora = split_adapters(with_adapters(qparams, adapters))
  for reference, trained in ((before, qparams), (before, base)):
    flat_ref, tree_ref = jax.tree.flatten(reference)
    flat, tree = jax.tree.flatten(trained)
    assert tree == tree_ref
    for r, t in zip(flat_ref, flat):
      assert r.dtype == np.asarray(t).dtype and r.tobytes() == np.asarray(t).tobytes()
  value = qparams["layers_0"]["self_attn"]["q_proj"]["aqt"]["qrhs"]["value"]
  assert value.dtype == jnp.int4
  assert jax.tree.structure(lora) == jax.tree.structure(adapters)


def test_rules_pick_targets_and_ranks():
  pretrained, _, _ = _models()
  spec = AdapterSpec(rank=4, rules=(AdapterRule(r".*/mlp/.*", rank=2),
                                    AdapterRule(r"layers_0/.*", adapt=False),
                                    AdapterRule(r".*/(q|v)_proj")))
  targets = spec.targets(pretrained.config)
  assert targets["layers_1/mlp/down_proj"] == (512, 192, 2)
  assert targets["layers_1/self_attn/q_proj"] == (192, 192, 4)
  assert "layers_0/self_attn/q_proj" not in targets and "layers_1/self_attn/k_proj" not in targets
  with pytest.raises(AdapterConfigError, match="match no linear"):
    AdapterSpec(rules=(AdapterRule("lm_head"),)).targets(pretrained.config)
  with pytest.raises(AdapterConfigError, match="rank"):
    AdapterSpec(rank=0)


def test_merged_float_export_matches_the_adapted_quantized_model(tmp_path):
  pretrained, qmodel, qparams = _models()
  tokens, mask = _batch(seed=4)
  rng = np.random.default_rng(3)
  adapters = jax.tree.map(lambda v: jnp.asarray(rng.normal(size=v.shape) * 0.05, jnp.float32),
                          init_adapters(qmodel.config, SPEC))
  positions = positions_from_mask(mask)
  adapted_logits, _ = adapted(qmodel, SPEC).apply({"params": with_adapters(qparams, adapters)},
                                                  tokens, positions, mask)
  merged = merge_adapters(qparams, adapters, SPEC)
  assert "aqt" not in str(jax.tree_util.tree_structure(merged))
  save_pretrained(tmp_path, pretrained.config, merged, dtype=jnp.float32)
  exported = load_pretrained(tmp_path, dtype=jnp.float32)
  merged_logits, _ = exported.model.apply({"params": exported.params}, tokens, positions, mask)
  np.testing.assert_allclose(np.asarray(merged_logits), np.asarray(adapted_logits), atol=2e-4)
  # The float model's own adapters merge the same way (kernel + (alpha / r) A B).
  float_merged = merge_adapters(pretrained.params, adapters, SPEC)
  float_logits, _ = adapted(pretrained.model, SPEC).apply(
      {"params": with_adapters(pretrained.params, adapters)}, tokens, positions, mask)
  np.testing.assert_allclose(
      np.asarray(pretrained.model.apply({"params": float_merged}, tokens, positions, mask)[0]),
      np.asarray(float_logits), atol=2e-4)


def test_adapters_on_zero_point_layers():
  """Asymmetric (zero-point) GPTQ layers are served by plain JAX: zero adapters give its logits,
  one training step moves the adapters, and the merged float export computes the adapted model."""
  pretrained, _, _ = _models()
  qmodel, qparams, _ = quantize(pretrained.config, pretrained.params,
                                QuantSpec("w3a16", "rtn", group_size=64, symmetric=False))
  assert "zq" in str(jax.tree_util.tree_structure(qparams))
  tokens, mask = _batch(seed=5)
  positions = positions_from_mask(mask)
  reference, _ = qmodel.apply({"params": qparams}, tokens, positions, mask)
  model = adapted(qmodel, SPEC, train=True)
  adapters = init_adapters(qmodel.config, SPEC, seed=1)
  logits, _ = model.apply({"params": with_adapters(qparams, adapters)}, tokens, positions, mask)
  assert float(jnp.max(jnp.abs(logits - reference))) <= 1e-6
  optimizer = TrainSpec(steps=10, warmup_steps=0, peak_lr=1e-2).optimizer()
  adapters, _, _ = train_step(model, optimizer, adapters, optimizer.init(adapters), qparams,
                              tokens, mask, mask)
  assert float(jnp.abs(adapters["layers_1"]["mlp"]["up_proj"]["lora_b"]).max()) > 0
  adapted_logits, _ = model.apply({"params": with_adapters(qparams, adapters)}, tokens,
                                  positions, mask)
  merged = merge_adapters(qparams, adapters, SPEC)
  assert "zq" not in str(jax.tree_util.tree_structure(merged))
  merged_logits, _ = pretrained.model.apply({"params": merged}, tokens, positions, mask)
  np.testing.assert_allclose(np.asarray(merged_logits), np.asarray(adapted_logits), atol=2e-4)
