"""Zero-point (asymmetric) weight grids: RTN integers and zero points against numpy, the served
product against numpy, integer-only served params (and an orbax round trip), and the layer output
error against the symmetric grid on the embedded model and on a random 0.5B-shaped layer with
real calibration text."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxthink
from jaxthink.models.config import ModelConfig
from jaxthink.models.hf_io import init_params
from jaxthink.models.layers import Linear
from jaxthink.models.pretrained import sequence_logits
from jaxthink.quant import (CalibrationSpec, LinearQuant, QuantConfigError, QuantSpec,
                            calibration_data, frozen_layers, load_quantized, quantize,
                            save_quantized, zero_point)
from test_quant_fixtures import ByteTokenizer, DATA_DIR, gsm8k_calibration, tiny_config, \
    tiny_params

TINY = Path(jaxthink.__file__).parent / "tiny"


def numpy_asymmetric(w: np.ndarray, bits: int, group_size: int | None):
  """Min/max grid per (input group, output channel), the GPTQ reference's `sym=False` quantizer:
  range widened to contain 0, `s = (hi - lo) / (2^b - 1)`, `z = round(-lo / s)`,
  `q = clip(round(w / s) + z, 0, 2^b - 1)`. Returns q `[in, out]`, s and z `[groups, out]`."""
  n_in, n_out = w.shape
  gs = n_in if group_size is None else group_size
  g = w.reshape(n_in // gs, gs, n_out)
  lo, hi = np.minimum(g.min(axis=1), 0), np.maximum(g.max(axis=1), 0)
  empty = (lo == 0) & (hi == 0)
  lo, hi = np.where(empty, np.float32(-1), lo), np.where(empty, np.float32(1), hi)
  scale = ((hi - lo) / np.float32(2 ** bits - 1)).astype(np.float32)
  zero = np.round(-lo / scale)
  ratio = g / scale[:, None, :]
  q = np.clip(np.round(ratio) + zero[:, None, :], 0, 2 ** bits - 1)
  return (q.reshape(n_in, n_out).astype(np.int32), scale, zero.astype(np.int32),
          ratio.reshape(n_in, n_out))


def stored_integers(frozen, bits):
  """The unsigned integers and zero points a `zq` layer stands for (stored shifted by 2^(b-1))."""
  shift = 2 ** (bits - 1)
  value = np.asarray(frozen["value"]).astype(np.int32)
  return (value.reshape(-1, value.shape[-1]) + shift,
          np.asarray(frozen["zero"]).astype(np.int32) + shift, np.asarray(frozen["scale"]))


@pytest.mark.parametrize("scheme, group_size", [("w4a16", 128), ("w3a16", 64), ("w4a16", -1),
                                                ("w8a16", 128)])
def test_rtn_zero_point_integers_match_numpy(scheme, group_size):
  params = tiny_params()
  bits = QuantSpec(scheme).weight_bits
  _, qparams, report = quantize(tiny_config(), params, QuantSpec(scheme, "rtn",
                                                                 group_size=group_size,
                                                                 symmetric=False))
  assert report["symmetric"] is False
  layers = frozen_layers(qparams)
  assert len(layers) == 14
  near_ties = 0
  for path, frozen in layers.items():
    block, scope, name = path.split("/")
    kernel = np.asarray(params[block][scope][name]["kernel"], np.float32)
    q_ref, s_ref, z_ref, ratio = numpy_asymmetric(kernel, bits,
                                                  None if group_size == -1 else group_size)
    q, z, s = stored_integers(frozen, bits)
    # XLA's float32 division by a broadcast operand on CPU multiplies by the reciprocal: scales
    # agree to 1 ulp, so an integer may differ only where w / s sits on a rounding tie.
    tie = np.abs(np.abs(ratio - np.floor(ratio)) - 0.5) < 1e-5
    differ = q != q_ref
    assert not np.any(differ & ~tie), path
    near_ties += int(differ.sum())
    np.testing.assert_array_equal(z, z_ref, err_msg=path)
    np.testing.assert_array_max_ulp(s, s_ref, maxulp=1)
  print(f"\n{scheme} group {group_size}: 14 layers' integers equal numpy but {near_ties} at "
        f"rounding ties, zero points equal, scales to 1 ulp; stored {frozen['value'].dtype} "
        f"{frozen['value'].shape}, zero "
        f"{frozen['zero'].dtype} {frozen['zero'].shape}")


# The grouped product in float32 only: XLA:CPU has no batched bf16 x bf16 -> f32 dot.
@pytest.mark.parametrize("dtype, rtol, grouped", [(jnp.float32, 1e-5, False),
                                                  (jnp.bfloat16, 2e-2, False),
                                                  (jnp.float32, 1e-5, True)])
def test_served_zero_point_product_matches_numpy(dtype, rtol, grouped):
  """Both products: the layer's (on CPU: dequantize, then one matmul) and the grouped integer one
  that accelerators run."""
  rng = np.random.default_rng(0)
  w = (rng.normal(size=(256, 48)) + rng.normal(size=(1, 48))).astype(np.float32)  # off-centre
  x = rng.normal(size=(3, 5, 256)).astype(np.float32)
  q, s, z, _ = numpy_asymmetric(w, 4, 64)
  served = zero_point.freeze(jnp.asarray(q), jnp.asarray(s), jnp.asarray(z), 4, 64)
  if grouped:
    y = zero_point.product(jnp.asarray(x, dtype), served["zq"], dequantize_first=False)
  else:
    linear = Linear(48, dtype=dtype, param_dtype=dtype, quant=LinearQuant(4, None, 64,
                                                                         symmetric=False))
    y = linear.apply({"params": served}, jnp.asarray(x, dtype))
  y = np.asarray(y, np.float64)
  w_hat = ((q.reshape(4, 64, 48) - z[:, None]) * s[:, None].astype(np.float64)).reshape(256, 48)
  x_in = np.asarray(jnp.asarray(x, dtype), np.float64)  # the input as the layer sees it
  y_ref = x_in @ w_hat
  err = np.max(np.abs(y - y_ref)) / np.max(np.abs(y_ref))
  print(f"\n{jnp.dtype(dtype).name}, {'grouped' if grouped else 'layer'}: served zero-point "
        f"product vs numpy x @ s (q - z): max error {err:.2e} of the largest output")
  assert err < rtol


def test_served_params_hold_integers_only_and_survive_orbax(tmp_path):
  spec = QuantSpec("w4a16", "gptq", group_size=128)
  assert spec.resolved_symmetric() is False  # the studies' GPTQ: zero points by default
  params = tiny_params()
  model, qparams, report = quantize(tiny_config(), params, spec, gsm8k_calibration())
  flat = jax.tree_util.tree_flatten_with_path(qparams)[0]
  for path, leaf in flat:
    keys = [p.key for p in path]
    if "zq" in keys:
      expected = jnp.float32 if keys[-1] == "scale" else jnp.int4
      assert leaf.dtype == expected, keys
    if keys[0].startswith("layers_") and keys[-1] == "kernel":
      raise AssertionError(f"float kernel left in served params: {keys}")
  zq_bytes = report["weight_bytes"]
  print(f"\nw4a16 g128 zero-point GPTQ: served {zq_bytes['quantized_bytes']:.0f} bytes vs bf16 "
        f"{zq_bytes['bf16_bytes']:.0f}: ratio {zq_bytes['ratio']:.4f} (int4 values + float32 "
        "scale + int4 zero per group)")
  # 4 bits + (32 + 4) bits per 128 weights, as a fraction of 16 bits
  assert zq_bytes["ratio"] == pytest.approx((4 + 36 / 128) / 16)
  save_quantized(tmp_path / "q", tiny_config(), spec, qparams, report)
  loaded, loaded_spec, _ = load_quantized(tmp_path / "q", tokenizer=False)
  assert loaded_spec.resolved_symmetric() is False
  tokens = jnp.asarray(gsm8k_calibration().heldout[:2])
  mask = jnp.ones(tokens.shape, jnp.bool_)
  np.testing.assert_array_equal(sequence_logits(loaded.model, loaded.params, tokens, mask),
                                sequence_logits(model, qparams, tokens, mask))


def test_zero_point_is_refused_with_quantized_activations():
  with pytest.raises(QuantConfigError, match="weight-only"):
    QuantSpec("w4a4", "rtn", symmetric=False)
  assert QuantSpec("w4a4", "gptq").resolved_symmetric() is True
  assert QuantSpec("w3a16", "awq").resolved_symmetric() is False
  assert QuantSpec("w3a16", "rtn").resolved_symmetric() is True


@functools.lru_cache(maxsize=None)
def embedded():
  model = jaxthink.load_pretrained(TINY / "model", dtype=jnp.float32)
  data = calibration_data(model.tokenizer, CalibrationSpec(
      source=str(TINY / "data" / "calibration.jsonl"), num_samples=32, seq_len=256,
      heldout_samples=8))
  return model, data


def layer_errors(config, params, data, spec):
  report = quantize(config, params, spec, data)[2]
  return {path: entry["heldout_rel_error"] for path, entry in report["layers"].items()}


@pytest.mark.parametrize("bits", [3, 4])
def test_zero_points_lower_every_layer_error_on_the_embedded_model(bits):
  model, data = embedded()
  scheme = f"w{bits}a16"
  for method in ("rtn", "gptq", "awq"):
    sym, asym = (layer_errors(model.config, model.params, data,
                              QuantSpec(scheme, method, group_size=64, symmetric=s))
                 for s in (True, False))
    ratios = np.array([asym[p] / sym[p] for p in sym])
    print(f"\nembedded model {scheme} g64 {method}: held-out layer error asym / sym: mean "
          f"{ratios.mean():.3f}, max {ratios.max():.3f} over {len(ratios)} layers")
    assert ratios.max() < 1, method


def qwen05b_layer() -> ModelConfig:
  """One decoder block with Qwen2.5-0.5B's shapes (hidden 896, MLP 4864, 14 / 2 heads of 64),
  byte vocabulary for the real GSM8K calibration text."""
  return ModelConfig(model_type="qwen2", vocab_size=256, hidden_size=896, intermediate_size=4864,
                     num_layers=1, num_heads=14, num_kv_heads=2, head_dim=64, rms_norm_eps=1e-6,
                     rope_theta=1e6, qkv_bias=True, eos_token_ids=(10,), pad_token_id=0)


def test_zero_points_lower_gptq_error_on_a_random_05b_shaped_layer():
  config = qwen05b_layer()
  params = init_params(config, seed=0, dtype=jnp.float32)
  data = calibration_data(ByteTokenizer(), CalibrationSpec(
      source="gsm8k", data_dir=str(DATA_DIR), num_samples=16, seq_len=128, heldout_samples=2))
  for bits in (3, 4):
    sym, asym = (layer_errors(config, params, data, QuantSpec(f"w{bits}a16", "gptq",
                                                             group_size=128, symmetric=s))
                 for s in (True, False))
    ratios = {p.split("/")[-1]: asym[p] / sym[p] for p in sym}
    print(f"\n0.5B-shaped layer, GPTQ w{bits} g128, held-out error asym / sym: "
          + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    assert max(ratios.values()) < 1
