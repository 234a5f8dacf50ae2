"""Calibration methods on a tiny random model and real calibration text (GSM8K train solutions):
per-layer held-out output errors, whole-model KL to the float model, and that the scale folding of
AWQ / SmoothQuant leaves the float model unchanged."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxthink.models.decoder import Block
from jaxthink.models.rope import inverse_frequencies
from jaxthink.quant import QuantRules, QuantSpec, quantize
from jaxthink.quant.calibrate import BlockRunner
from jaxthink.quant.pipeline import transform_block
from test_quant_fixtures import gsm8k_calibration, tiny_config, tiny_params

OUTLIER_CHANNELS = (3, 77, 130, 201)


def outlier_params():
  """The tiny model with a few RMSNorm channels scaled x30, which gives its activations the
  per-channel outliers real LLMs have (a random init has none)."""
  params = jax.tree.map(lambda a: a, tiny_params())
  for i in range(tiny_config().num_layers):
    for norm in ("input_layernorm", "post_attention_layernorm"):
      scale = params[f"layers_{i}"][norm]["scale"]
      params[f"layers_{i}"][norm]["scale"] = scale.at[jnp.array(OUTLIER_CHANNELS)].multiply(30.0)
  return params


@functools.lru_cache(maxsize=None)
def run(scheme: str, method: str, outliers: bool = False):
  params = outlier_params() if outliers else tiny_params()
  return quantize(tiny_config(), params, QuantSpec(scheme, method), gsm8k_calibration())


def errors(report, key="heldout_rel_error"):
  return {path: entry[key] for path, entry in report["layers"].items()}


def table(columns: dict[str, dict[str, float]]) -> str:
  names = list(columns)
  lines = [f"{'layer':28s}" + "".join(f"{n:>14s}" for n in names)]
  for path in next(iter(columns.values())):
    lines.append(f"{path:28s}" + "".join(f"{columns[n][path]:14.3e}" for n in names))
  return "\n".join(lines)


def test_gptq_and_awq_beat_rtn_per_layer_w4a16_g128():
  rtn, gptq, awq = (errors(run("w4a16", m)[2]) for m in ("rtn", "gptq", "awq"))
  print("\nw4a16 g128, relative output error on held-out GSM8K activations\n"
        + table({"rtn": rtn, "gptq": gptq, "awq": awq}))
  print(f"mean: rtn {np.mean(list(rtn.values())):.3e}  gptq {np.mean(list(gptq.values())):.3e}  "
        f"awq {np.mean(list(awq.values())):.3e}")
  for path in rtn:
    assert gptq[path] < rtn[path], path
    # AWQ picks one scale for the linears sharing an input (q/k/v, gate/up) by their summed error:
    # the group never gets worse; a single member may, slightly.
    assert awq[path] <= 1.02 * rtn[path], path
  for layer in ("layers_0", "layers_1"):
    for group in (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"),
                  ("down_proj",)):
      paths = [p for p in rtn if p.startswith(layer) and p.endswith(group)]
      assert sum(awq[p] for p in paths) <= sum(rtn[p] for p in paths), paths


def test_smoothquant_beats_plain_w8a8_with_activation_outliers():
  plain, smooth = (errors(run("w8a8", m, outliers=True)[2]) for m in ("rtn", "smoothquant"))
  print(f"\nw8a8 (dynamic per-token int8 activations), RMSNorm channels {OUTLIER_CHANNELS} x30\n"
        + table({"plain": plain, "smoothquant": smooth}))
  for path in plain:
    if path.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):  # fed by an RMSNorm
      assert smooth[path] < plain[path], path
    else:  # o_proj, down_proj: nothing to fold into, same quantization
      assert smooth[path] == pytest.approx(plain[path], rel=1e-3), path


def test_whole_model_kl_ordering():
  kl = {name: run(scheme, method)[2]["heldout_mean_kl"] for name, (scheme, method) in {
      "int8 rtn": ("w8a16", "rtn"), "int4 rtn": ("w4a16", "rtn"), "int4 gptq": ("w4a16", "gptq"),
      "int4 awq": ("w4a16", "awq"), "int3 rtn": ("w3a16", "rtn")}.items()}
  print("\nmean token KL(float || quantized) on held-out GSM8K windows: "
        + ", ".join(f"{k} {v:.4f}" for k, v in kl.items()))
  assert kl["int8 rtn"] < kl["int4 rtn"] < kl["int3 rtn"]
  assert kl["int4 gptq"] < kl["int4 rtn"]


@pytest.mark.parametrize("method", ["awq", "smoothquant"])
def test_scale_folding_keeps_the_float_block(method):
  """The folded scales (RMSNorm -> q/k/v and gate/up; AWQ also v -> o across GQA heads, up ->
  down) change the float block's output only by rounding."""
  config, params = tiny_config(), outlier_params()
  data = gsm8k_calibration()
  x = params["embed_tokens"]["embedding"][jnp.asarray(data.tokens[:8])]
  stats, y, _ = BlockRunner(config, jnp.float32).statistics(params["layers_0"], x, x[:0], 8)
  spec = QuantSpec("w8a8" if method == "smoothquant" else "w4a16", method)
  t = transform_block(spec, QuantRules.from_spec(spec), config, 0, params["layers_0"], stats)
  work, info = t.params, t.info
  block = Block(config, inverse_frequencies(config.head_dim, config.rope_theta), jnp.float32)
  t = x.shape[1]
  allowed = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (x.shape[0], t, t))
  positions = jnp.broadcast_to(jnp.arange(t), x.shape[:2])
  folded, _ = jax.jit(block.apply)({"params": work}, x, positions, allowed, None, None, None)
  moved = {k: v for k, v in info.items() if v}
  print(f"\n{method}: {moved}")
  assert moved  # scales were actually folded
  assert not np.allclose(work["input_layernorm"]["scale"],
                         params["layers_0"]["input_layernorm"]["scale"])
  np.testing.assert_allclose(folded, y, rtol=1e-4, atol=1e-4 * float(jnp.abs(y).max()))


def test_w3a16_and_kv_cache_quantization_generate_end_to_end():
  """The w3a16 model with a kv4 cache generates through the decode engine (its Decoder.apply, AQT
  serve path) co-decoded with the float model. Teacher-forced on held-out GSM8K windows, KL to the
  float model grows from the float cache to kv8 to kv4."""
  from jaxthink.decode import generate  # the decode engine's public entry point
  from jaxthink.models.kv_cache import init_kv_cache
  config = tiny_config()
  model, params, report = run("w3a16", "rtn")
  float_model = model.clone(quant=None)
  assert {str(v.dtype) for v in jax.tree.leaves(params) if "int" in str(v.dtype)} == {"int4"}
  prompt = list(b"Natalia sold clips to 48 of her friends")
  r = generate((model, params), [prompt], max_new_tokens=24, eos_ids=(), kv_bits=4,
               reference=(float_model, tiny_params()))
  print(f"\nw3a16 kv4 greedy: {bytes(r.tokens[0].astype(np.uint8))!r}, mean KL(float || w3a16 "
        f"kv4) on its own trajectory {float(r.kl[0].mean()):.4f}")
  assert r.tokens.shape == (1, 24) and r.lengths[0] == 24
  assert np.all((r.tokens >= 0) & (r.tokens < config.vocab_size))
  assert np.all(np.isfinite(r.kl)) and np.all(r.kl >= -1e-5) and r.kl.mean() > 0

  tokens = jnp.asarray(gsm8k_calibration().heldout)
  mask = jnp.ones(tokens.shape, bool)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)

  @functools.partial(jax.jit, static_argnums=0)
  def kl(kv_bits, params):
    ref = jax.nn.log_softmax(float_model.apply({"params": tiny_params()}, tokens, positions,
                                               mask)[0])
    cache = init_kv_cache(config, tokens.shape[0], tokens.shape[1], jnp.float32, kv_bits)
    logits, _ = model.apply({"params": params}, tokens, positions, mask, cache)
    return jnp.mean(jnp.sum(jnp.exp(ref) * (ref - jax.nn.log_softmax(logits)), axis=-1))

  mean_kl = {None: report["heldout_mean_kl"], 8: float(kl(8, params)), 4: float(kl(4, params))}
  print("teacher-forced mean KL(float || w3a16) on held-out windows: "
        + ", ".join(f"kv{kv or 16} {v:.4f}" for kv, v in mean_kl.items()))
  assert 0 < mean_kl[None] < mean_kl[4] and mean_kl[8] < mean_kl[4]
