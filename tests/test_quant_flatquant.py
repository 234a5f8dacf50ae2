"""W4A4 with transforms: the Kronecker transforms are invertible and the Hadamard one is the
Sylvester matrix; output error learned (FlatQuant) < Hadamard < plain (per layer for learned vs
Hadamard, on the mean and the whole-model KL for Hadamard vs plain) on a random model with injected
activation outliers and on the embedded model."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxthink.models.pretrained import sequence_logits
from jaxthink.quant import (QuantConfigError, QuantSpec, flatquant, load_quantized, quantize,
                            save_quantized)
from test_quant_fixtures import gsm8k_calibration, tiny_config
from test_quant_methods import outlier_params
from test_quant_zero_point import embedded


@pytest.mark.parametrize("n", [192, 256, 896])
def test_transform_times_folded_weights_gives_the_weights_back(n):
  rng = np.random.default_rng(n)
  n1, n2 = flatquant.kron_factors(n)
  # A transform as FlatQuant learns it: on activations with outlier channels, 40 AdamW steps.
  x = rng.normal(size=(1024, n)) * np.where(rng.random(n) < 0.02, 30.0, 1.0)
  kernel = rng.normal(size=(n, 32)).astype(np.float32)
  transform, _, info = flatquant.learn(jnp.asarray(x, jnp.float32), [jnp.asarray(kernel)],
                                       weight_bits=4, act_bits=4, steps=40)
  assert info["loss"] < info["start_loss"]  # it did move away from the rotation
  transform = {**transform, "act_clip": jnp.ones((), jnp.float32)}  # clipping is not part of T
  w = rng.normal(size=(n, 64)).astype(np.float32)
  t = np.asarray(flatquant.online(jnp.eye(n), transform))  # rows of I: T itself (online path)
  t_ref = np.diag(np.asarray(transform["scale"], np.float64)) @ np.kron(
      np.asarray(transform["left"], np.float64), np.asarray(transform["right"], np.float64))
  back = t @ np.asarray(flatquant.fold(jnp.asarray(w), transform))  # T (T^-1 W)
  err = np.max(np.abs(back - w)) / np.max(np.abs(w))
  cond = np.linalg.cond(np.asarray(transform["left"])) * np.linalg.cond(
      np.asarray(transform["right"]))
  print(f"\nn={n} = {n1} x {n2}, condition number {cond:.0f}: "
        f"max |T T^-1 W - W| / max |W| = {err:.1e} (float32); "
        f"online T vs numpy kron: {np.max(np.abs(t - t_ref)) / np.max(np.abs(t_ref)):.1e}")
  assert err < 1e-5
  np.testing.assert_allclose(t, t_ref, rtol=1e-5, atol=1e-5)
  h = flatquant.hadamard(n)
  rotation = np.asarray(flatquant.matrix(h), np.float64)
  np.testing.assert_allclose(rotation @ rotation.T, np.eye(n), atol=1e-5)  # orthogonal
  if n == 256:  # a power of two: exactly the Sylvester Hadamard matrix
    np.testing.assert_allclose(rotation, scipy.linalg.hadamard(n) / 16, atol=1e-6)


def per_layer(config, params, data, method):
  # Fewer AdamW steps and tokens than the default (150, 4096): the CPU test's budget.
  spec = QuantSpec("w4a4", method, transform_steps=60, transform_tokens=2048)
  _, _, report = quantize(config, params, spec, data)
  return {p: e["heldout_rel_error"] for p, e in report["layers"].items()}, report


@functools.lru_cache(maxsize=None)
def compare(which: str):
  if which == "outliers":
    config, params, data = tiny_config(), outlier_params(), gsm8k_calibration()
  else:
    model, data = embedded()
    config, params = model.config, model.params
  errors, kls = {}, {}
  for method in ("rtn", "hadamard", "flatquant"):
    errors[method], report = per_layer(config, params, data, method)
    kls[method] = report["heldout_mean_kl"]
  return errors, kls


@pytest.mark.parametrize("which", ["outliers", "embedded"])
def test_learned_beats_hadamard_beats_plain_w4a4(which):
  errors, kls = compare(which)
  print(f"\nw4a4 ({which}): held-out relative output error per layer")
  print(f"{'layer':28s} {'plain':>10s} {'hadamard':>10s} {'flatquant':>10s}")
  for path in errors["rtn"]:
    print(f"{path:28s} " + " ".join(f"{errors[m][path]:10.3e}" for m in errors))
  means = {m: np.mean(list(e.values())) for m, e in errors.items()}
  print("mean  " + "  ".join(f"{m} {v:.3e}" for m, v in means.items()))
  print("whole-model mean token KL to float: "
        + "  ".join(f"{m} {v:.4f}" for m, v in kls.items()))
  worse = [p for p in errors["rtn"] if errors["hadamard"][p] >= errors["rtn"][p]]
  print(f"hadamard not better than plain on {len(worse)} of {len(errors['rtn'])} layers: {worse}")
  assert means["flatquant"] < means["hadamard"] < means["rtn"]
  assert kls["flatquant"] < kls["hadamard"] < kls["rtn"]
  for path in errors["rtn"]:  # learned transforms start from the rotation and keep the best
    assert errors["flatquant"][path] < errors["hadamard"][path], path


def test_flatquant_checkpoint_round_trip(tmp_path):
  """The served `flat` transforms are saved and restored with the integers (orbax)."""
  spec = QuantSpec("w4a4", "flatquant", transform_steps=5, transform_tokens=512)
  model, params, report = quantize(tiny_config(), outlier_params(), spec, gsm8k_calibration())
  flat = params["layers_0"]["self_attn"]["q_proj"]["flat"]
  # not the identity placeholder a fresh model initialises: the restore must bring it back
  assert float(jnp.max(jnp.abs(flat["left"] - jnp.eye(flat["left"].shape[0])))) > 0.1
  save_quantized(tmp_path / "q", tiny_config(), spec, params, report)
  loaded, _, _ = load_quantized(tmp_path / "q", tokenizer=False)
  tokens = jnp.asarray(gsm8k_calibration().heldout[:2])
  mask = jnp.ones(tokens.shape, jnp.bool_)
  np.testing.assert_array_equal(sequence_logits(loaded.model, loaded.params, tokens, mask),
                                sequence_logits(model, params, tokens, mask))


def test_transforms_need_quantized_activations():
  with pytest.raises(QuantConfigError, match="w4a4"):
    QuantSpec("w4a16", "flatquant")
