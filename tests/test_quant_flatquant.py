"""W4A4 with transforms: the Kronecker transforms are invertible and the Hadamard one is the
Sylvester matrix; per-layer output error learned (FlatQuant) < Hadamard < plain on a random model
with injected activation outliers and on the embedded model; whole-model KL printed."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxthink.quant import QuantSpec, flatquant, quantize
from test_quant_fixtures import gsm8k_calibration, tiny_config
from test_quant_methods import outlier_params
from test_quant_zero_point import embedded


@pytest.mark.parametrize("n", [192, 256, 896])
def test_transform_times_folded_weights_gives_the_weights_back(n):
  rng = np.random.default_rng(n)
  n1, n2 = flatquant.kron_factors(n)
  transform = {"left": jnp.asarray(np.eye(n1) + 0.3 * rng.normal(size=(n1, n1)), jnp.float32),
               "right": jnp.asarray(np.eye(n2) + 0.3 * rng.normal(size=(n2, n2)), jnp.float32),
               "scale": jnp.asarray(rng.lognormal(0, 0.5, size=n), jnp.float32),
               "act_clip": jnp.ones((), jnp.float32)}
  w = rng.normal(size=(n, 64)).astype(np.float32)
  t = np.asarray(flatquant.online(jnp.eye(n), transform))  # rows of I: T itself (online path)
  t_ref = np.diag(np.asarray(transform["scale"], np.float64)) @ np.kron(
      np.asarray(transform["left"], np.float64), np.asarray(transform["right"], np.float64))
  back = t @ np.asarray(flatquant.fold(jnp.asarray(w), transform))  # T (T^-1 W)
  err = np.max(np.abs(back - w)) / np.max(np.abs(w))
  print(f"\nn={n} = {n1} x {n2}: max |T T^-1 W - W| / max |W| = {err:.1e} (float32); "
        f"online T vs numpy kron: {np.max(np.abs(t - t_ref)) / np.max(np.abs(t_ref)):.1e}")
  assert err < 1e-5
  np.testing.assert_allclose(t, t_ref, rtol=1e-5, atol=1e-5)
  h = flatquant.hadamard(n)
  rotation = np.asarray(flatquant.matrix(h), np.float64)
  np.testing.assert_allclose(rotation @ rotation.T, np.eye(n), atol=1e-5)  # orthogonal
  if n == 256:  # a power of two: exactly the Sylvester Hadamard matrix
    np.testing.assert_allclose(rotation, scipy.linalg.hadamard(n) / 16, atol=1e-6)


def per_layer(config, params, data, method):
  _, _, report = quantize(config, params, QuantSpec("w4a4", method), data)
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
  assert means["flatquant"] < means["hadamard"] < means["rtn"]
  for path in errors["rtn"]:
    assert errors["hadamard"][path] < errors["rtn"][path], path
    assert errors["flatquant"][path] < errors["hadamard"][path], path
