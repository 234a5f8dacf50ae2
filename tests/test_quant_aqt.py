"""AQT execution: RTN integers and scales against numpy, the serve path against numpy, bytes and
dtypes of the served params, and an orbax round trip in a fresh process (with and without a
mesh)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import flax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxthink.models.layers import Linear
from jaxthink.models.pretrained import sequence_logits
from jaxthink.quant import (LinearQuant, QuantSpec, convert_linear, frozen_layers, quantize,
                            save_quantized)
from multidevice import run_on_8_cpu_devices
from test_quant_fixtures import gsm8k_calibration, tiny_config, tiny_params
from test_quant_methods import run

REPO = Path(__file__).resolve().parents[1]


def numpy_symmetric(w: np.ndarray, bits: int, group_size: int | None):
  """Symmetric round-to-nearest: per output channel (and input group), `s = max|w| / qmax`,
  `q = clip(round(w / s), -qmax, qmax)`; returns q `[in, out]`, s `[groups, out]`, w / s."""
  qmax = 2 ** (bits - 1) - 1
  n_in, n_out = w.shape
  gs = n_in if group_size is None else group_size
  groups = w.reshape(n_in // gs, gs, n_out)
  absmax = np.abs(groups).max(axis=1)
  scale = np.where(absmax == 0, np.float32(1), absmax) / np.float32(qmax)
  ratio = groups / scale[:, None, :]
  q = np.clip(np.round(ratio), -qmax, qmax)
  return (q.reshape(n_in, n_out).astype(np.int32), scale.astype(np.float32),
          ratio.reshape(n_in, n_out))


def _kernel(seed=0, n_in=256, n_out=48):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(n_in, n_out)).astype(np.float32) * rng.lognormal(0, 1, size=n_out)
  w[:128, 5] = 0  # an all-zero group
  return w.astype(np.float32)


@pytest.mark.parametrize("bits, group_size", [(8, None), (4, None), (4, 128), (3, 64)])
def test_rtn_through_aqt_matches_numpy(bits, group_size):
  w = _kernel(bits)
  served = convert_linear(LinearQuant(bits, None, group_size), jnp.asarray(w))["aqt"]["qrhs"]
  value, scale = np.asarray(served["value"]), np.asarray(served["scale"])
  q_ref, s_ref, ratio = numpy_symmetric(w, bits, group_size)
  q = value.astype(np.int32).reshape(q_ref.shape)
  tie = np.abs(np.abs(ratio - np.floor(ratio)) - 0.5) < 1e-5
  differ = q != q_ref
  ulps = np.abs(scale.reshape(s_ref.shape).view(np.int32) - s_ref.view(np.int32))
  print(f"\nw{bits} group {group_size}: stored {value.dtype} {value.shape}, scales {scale.shape}; "
        f"{differ.sum()} of {q.size} integers differ from numpy ({tie.sum()} near-ties); scales "
        f"equal {np.mean(ulps == 0):.0%}, max {ulps.max()} ulp apart")
  assert value.dtype == (jnp.int8 if bits == 8 else jnp.int4)
  assert not np.any(differ & ~tie)
  # XLA's float32 division on CPU multiplies by the reciprocal: scales agree to 1 ulp.
  np.testing.assert_array_max_ulp(scale.reshape(s_ref.shape), s_ref, maxulp=1)
  assert np.abs(q).max() == 2 ** (bits - 1) - 1

  # The serve path computes x @ (q * s) from exactly these integers and scales.
  x = np.random.default_rng(1).normal(size=(2, 5, w.shape[0])).astype(np.float32)
  y = Linear(w.shape[1], quant=LinearQuant(bits, None, group_size)).apply(
      {"params": {"aqt": {"qrhs": served}}}, jnp.asarray(x))
  gs = w.shape[0] if group_size is None else group_size
  w_deq = (q_ref.reshape(-1, gs, w.shape[1]) * s_ref[:, None, :]).reshape(w.shape)
  np.testing.assert_allclose(y, x @ w_deq, rtol=1e-5, atol=1e-4)


def test_w8a8_serve_matches_numpy_per_token_int8():
  w = _kernel(0)
  rule = LinearQuant(8, 8, None)
  served = convert_linear(rule, jnp.asarray(w))
  x = np.random.default_rng(2).normal(size=(3, 7, w.shape[0])).astype(np.float32)
  x[..., 9] *= 40  # an outlier channel
  y = Linear(w.shape[1], quant=rule).apply({"params": served}, jnp.asarray(x))
  q_w, s_w, _ = numpy_symmetric(w, 8, None)
  s_x = np.abs(x).max(axis=-1, keepdims=True) / np.float32(127)
  q_x = np.clip(np.round(x / s_x), -127, 127)
  expected = (q_x.astype(np.int64) @ q_w.astype(np.int64)) * s_x * s_w[0]
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4)


def test_served_params_are_integers_and_small():
  rows = {}
  for name, (scheme, method) in {"int8 per channel": ("w8a16", "rtn"),
                                 "int4 g128": ("w4a16", "rtn"), "int3 g128": ("w3a16", "rtn"),
                                 "w8a8": ("w8a8", "rtn")}.items():
    _, params, report = run(scheme, method, outliers=scheme == "w8a8")
    layers = frozen_layers(params)
    assert len(layers) == 7 * tiny_config().num_layers
    for path, frozen in layers.items():
      assert frozen["value"].dtype == (jnp.int8 if scheme.startswith("w8") else jnp.int4), path
      assert frozen["scale"].dtype == jnp.float32
    flat = flax.traverse_util.flatten_dict(params)
    # No float kernel is kept for a quantized linear; embeddings and lm_head stay float.
    assert not [p for p in flat if p[-1] == "kernel" and p[0].startswith("layers_")]
    assert flat[("lm_head", "kernel")].dtype == jnp.float32
    rows[name] = report["weight_bytes"]
  print("\nquantized weight bytes (values + float32 scales) / bf16 bytes: "
        + ", ".join(f"{k} {v['ratio']:.3f}" for k, v in rows.items()))
  assert rows["int8 per channel"]["ratio"] <= 0.55
  assert rows["int4 g128"]["ratio"] <= 0.30


CHILD = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, flax
    from jaxthink.models.pretrained import sequence_logits
    from jaxthink.models.sharding import make_mesh
    from jaxthink.quant import load_quantized, frozen_layers
    out, tokens = sys.argv[1], np.load(sys.argv[2])
    mask = np.ones(tokens.shape, bool)
    model, spec, report = load_quantized(out, tokenizer=False)
    dtypes = sorted({str(f[k].dtype) for f in frozen_layers(model.params).values() for k in f})
    kernels = [p for p in flax.traverse_util.flatten_dict(model.params)
               if p[-1] == "kernel" and p[0].startswith("layers_")]
    logits = np.asarray(sequence_logits(model.model, model.params, tokens, mask))
    sharded, _, _ = load_quantized(out, mesh=make_mesh(4, 2), tokenizer=False)
    flat = flax.traverse_util.flatten_dict(sharded.params)
    specs = {"/".join(p): str(tuple(flat[p].sharding.spec)) for p in flat}
    logits_mesh = np.asarray(sequence_logits(sharded.model, sharded.params, tokens, mask))
    np.savez(out + "/child.npz", logits=logits, logits_mesh=logits_mesh)
    print(json.dumps({"devices": jax.device_count(), "dtypes": dtypes, "kernels": len(kernels),
                      "scheme": spec.scheme, "specs": specs, "method": report["method"]}))
    """)


@pytest.mark.parametrize("symmetric", [True, False])  # AQT's layout; the zero-point layout (zq)
def test_orbax_round_trip_in_a_fresh_process(tmp_path, symmetric):
  spec = QuantSpec("w4a16", "gptq", symmetric=symmetric)
  model, params, report = quantize(tiny_config(), tiny_params(), spec, gsm8k_calibration())
  out = save_quantized(tmp_path / "ckpt", tiny_config(), spec, params, report)
  meta = json.loads((out / "quant.json").read_text())
  assert meta["report"]["calibration"]["tokens_sha256"] == report["calibration"]["tokens_sha256"]
  tokens = np.asarray(np.frombuffer(b"Janet has 3 apples and buys 5 more. How many?", np.uint8),
                      np.int32)[None]
  np.save(tmp_path / "tokens.npy", tokens)
  logits = np.asarray(sequence_logits(model, params, jnp.asarray(tokens),
                                      jnp.ones(tokens.shape, bool)))
  proc = run_on_8_cpu_devices(CHILD, str(out), str(tmp_path / "tokens.npy"), cwd=REPO,
                              timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  child = json.loads(proc.stdout.strip().splitlines()[-1])
  restored = np.load(out / "child.npz")
  print(f"\nfresh process: {child['devices']} devices, restored dtypes {child['dtypes']}, "
        f"float kernels in blocks {child['kernels']}; max |logit diff| no mesh "
        f"{np.abs(restored['logits'] - logits).max():.1e}, (data 4, model 2) mesh "
        f"{np.abs(restored['logits_mesh'] - logits).max():.1e}")
  assert child["dtypes"] == ["float32", "int4"] and child["kernels"] == 0
  assert (child["scheme"], child["method"]) == ("w4a16", "gptq")
  np.testing.assert_array_equal(restored["logits"], logits)
  np.testing.assert_allclose(restored["logits_mesh"], logits, atol=1e-5, rtol=1e-5)
  specs = child["specs"]
  # Like the float kernels: q/k/v/gate/up split over outputs, o/down over inputs (= groups).
  leaf = "aqt/qrhs" if symmetric else "zq"
  assert specs[f"layers_0/self_attn/q_proj/{leaf}/value"] == "(None, None, 'model')"
  assert specs[f"layers_1/mlp/up_proj/{leaf}/value"] == "(None, None, 'model')"
  assert specs[f"layers_0/self_attn/o_proj/{leaf}/value"] == "('model', None, None)"
  if symmetric:
    assert specs["layers_0/self_attn/q_proj/aqt/qrhs/scale"] == "(None, None, None, 'model')"
    assert specs["layers_1/mlp/down_proj/aqt/qrhs/scale"] == "('model', None, None, None)"
  else:  # scales and zero points [groups, out]
    assert specs["layers_0/self_attn/q_proj/zq/scale"] == "(None, 'model')"
    assert specs["layers_0/self_attn/q_proj/zq/zero"] == "(None, 'model')"
    assert specs["layers_1/mlp/down_proj/zq/zero"] == "('model', None)"
  assert specs["layers_0/self_attn/q_proj/bias"] == "('model',)"
  assert specs["embed_tokens/embedding"] == "('model', None)"
