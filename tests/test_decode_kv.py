"""KV-cache quantization: symmetric per-token, per-kv-head int8 / int4 as numpy computes it, and
its effect on the next-token distribution grows as bits shrink."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxthink
from jaxthink.decode import generate
from jaxthink.models.kv_cache import dequantize_kv, init_kv_cache, quantize_kv
from hf_reference import make_hf_model


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_matches_numpy(bits):
  x = np.random.default_rng(0).normal(size=(2, 5, 3, 16)).astype(np.float32)
  x[0, 0, 0] = 0  # an all-zero vector stays zero
  q, scale = quantize_kv(jnp.asarray(x), bits)
  qmax = 2 ** (bits - 1) - 1
  want_scale = np.abs(x).max(-1) / qmax
  want_q = np.clip(np.round(x / np.where(want_scale > 0, want_scale, 1)[..., None]), -qmax, qmax)
  # 4-bit values are packed int4 on accelerators, int8 on CPU (XLA:CPU updates int4 slowly).
  assert q.dtype == {8: jnp.int8, 4: jnp.int8 if jax.default_backend() == "cpu" else jnp.int4}[bits]
  np.testing.assert_allclose(scale, want_scale, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(q.astype(jnp.int32)), want_q)
  back = np.asarray(dequantize_kv(q, scale, jnp.float32))
  assert (np.abs(back - x) <= want_scale[..., None] / 2 + 1e-6).all()


def test_cache_layout():
  config = jaxthink.ModelConfig(model_type="llama", vocab_size=8, hidden_size=16,
                                intermediate_size=8, num_layers=2, num_heads=4, num_kv_heads=2,
                                head_dim=4, rms_norm_eps=1e-6, rope_theta=1e4)
  cache = init_kv_cache(config, batch=3, max_len=10, kv_bits=4)
  layer = cache.layers[1]
  assert layer.k.dtype == (jnp.int8 if jax.default_backend() == "cpu" else jnp.int4)
  assert layer.k.shape == (3, 2, 10, 4)
  assert layer.k_scale.shape == (3, 2, 10) and cache.bits == 4
  assert init_kv_cache(config, 3, 10, jnp.bfloat16).layers[0].v.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="kv_bits"):
    init_kv_cache(config, 3, 10, kv_bits=2)


def test_kl_to_float_cache_grows_as_bits_shrink(tmp_path):
  make_hf_model(tmp_path, "qwen3", seed=4, head_dim=16)
  m = jaxthink.load_pretrained(tmp_path, dtype=jnp.float32, tokenizer=False)
  prompts = [list(range(3, 20)), [40, 41, 42, 43, 44, 45]]
  kl = {}
  for bits in (None, 8, 4):
    # The same weights with a float cache are the reference: KL measures the cache alone.
    out = generate((m.model, m.params), prompts, max_new_tokens=24, eos_ids=(), kv_bits=bits,
                   reference=(m.model, m.params))
    kl[bits] = float(out.kl.mean())
  print("mean KL(float cache ‖ quantized cache):", kl)
  assert kl[None] < 1e-6
  assert 0 < kl[8] < kl[4]
  assert kl[4] > 10 * kl[8]  # int4 keeps 16x fewer levels than int8
