"""The Pallas decode kernels shipped inside jax, behind `decode_attention`: run in Pallas interpret
mode on CPU (both the GPU kernel and, through TPU interpret mode, the TPU kernel), each equals
softmax attention computed in numpy and `chunked_attention` on the same cache, at ragged per-row
lengths with GQA; a whole decode step of a model gives the chunked path's logits, and the request
engine (and generation from a kv8 cache) its greedy tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxthink
from jaxthink.decode import Engine, Request, generate
from jaxthink.models.attention import chunked_attention
from jaxthink.models.decoder import positions_from_mask
from jaxthink.models.kv_cache import LayerKV, init_kv_cache, quantize_kv
from jaxthink.models.pallas_attention import (page_size_for, paged_decode_attention, paged_view,
                                              select_kernel)
from hf_reference import make_hf_model



@pytest.fixture(autouse=True, scope="module")
def _no_persistent_cache_writes():
  """Interpret-mode kernels compile to host callbacks, which XLA:CPU cannot serialize: writing
  them to the session's persistent cache segfaults. jax decides once per process whether the
  cache is used, but reads the minimum compile time at every write."""
  minimum = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
  yield
  jax.config.update("jax_persistent_cache_min_compile_time_secs", minimum)


B, KV, G, D, SLOTS = 3, 2, 3, 32, 96  # 96 slots: pages of 32, three per row
LENGTHS = [1, 45, 96]  # one key; mid-page, past two page boundaries; the full row


def _numpy_decode_attention(q, k, v, lengths):
  """q `[b, kv, g, d]`, k / v `[b, kv, slots, d]` float64: row b attends to its first lengths[b]."""
  out = np.zeros(q.shape)
  for b, n in enumerate(lengths):
    scores = np.einsum("kgd,ksd->kgs", q[b], k[b, :, :n]) / np.sqrt(q.shape[-1])
    p = np.exp(scores - scores.max(-1, keepdims=True))
    out[b] = np.einsum("kgs,ksd->kgd", p / p.sum(-1, keepdims=True), v[b, :, :n])
  return out


def _cache(bits, dtype):
  """A random cache and the float64 values it stands for (dequantized when quantized)."""
  rng = np.random.default_rng(1)
  k, v = (rng.normal(size=(B, KV, SLOTS, D)).astype(np.float32) for _ in range(2))
  if bits is None:
    cache = LayerKV(jnp.asarray(k, dtype), jnp.asarray(v, dtype))
    return cache, np.asarray(cache.k, np.float64), np.asarray(cache.v, np.float64)
  (qk, sk), (qv, sv) = quantize_kv(jnp.asarray(k), bits), quantize_kv(jnp.asarray(v), bits)
  back = lambda x, s: np.asarray(x, np.float64) * np.asarray(s, np.float64)[..., None]
  return LayerKV(qk, qv, sk, sv, bits), back(qk, sk), back(qv, sv)


# (kernel, kv bits, cache dtype, tolerance): the TPU kernel reads K and V as bf16 whatever the
# cache holds, and the GPU kernel rounds the scaled queries to a bf16 cache's dtype.
CASES = [("gpu", None, jnp.float32, 2e-6), ("gpu", 8, jnp.float32, 2e-6),
         ("gpu", None, jnp.bfloat16, 1e-2), ("tpu", None, jnp.bfloat16, 1e-2)]


@pytest.mark.parametrize("kernel,bits,dtype,tol", CASES)
def test_kernel_matches_numpy_and_chunked(kernel, bits, dtype, tol):
  cache, k, v = _cache(bits, dtype)
  q = np.random.default_rng(2).normal(size=(B, 1, KV, G, D)).astype(np.float32)
  want = _numpy_decode_attention(q[:, 0].astype(np.float64), k, v, LENGTHS)
  got = paged_decode_attention(jnp.asarray(q), cache, jnp.asarray(LENGTHS, jnp.int32), kernel,
                               interpret=True)
  assert got.shape == (B, KV, G, 1, D) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got)[:, :, :, 0], want, atol=tol)
  chunked = chunked_attention(jnp.asarray(q), cache, jnp.asarray(LENGTHS)[:, None] - 1,
                              jnp.asarray(LENGTHS) - 1, jnp.float32, 32)
  np.testing.assert_allclose(np.asarray(got), np.asarray(chunked), atol=tol)


def test_paged_view_is_the_cache_page_by_page():
  """Page `page_indices[b * kv_heads + h, i]` of the pool is slots `i * page .. + page - 1` of
  row b, head h, and the scales follow their values."""
  cache, _, _ = _cache(8, jnp.float32)
  k_pages, v_pages, k_scales, v_scales, page_indices = paged_view(cache, 32)
  assert k_pages.shape == (1, B * KV * 3, 32, D) and page_indices.shape == (B * KV, 3)
  k, s = np.asarray(cache.k), np.asarray(cache.k_scale)
  for b in range(B):
    for h in range(KV):
      for i in range(3):
        page = int(page_indices[b * KV + h, i])
        np.testing.assert_array_equal(np.asarray(k_pages[0, page]), k[b, h, 32 * i:32 * i + 32])
        np.testing.assert_array_equal(np.asarray(k_scales[0, page]), s[b, h, 32 * i:32 * i + 32])
  np.testing.assert_array_equal(np.asarray(v_pages[0, 17]), np.asarray(cache.v)[2, 1, 64:96])
  assert v_scales.shape == (1, B * KV * 3, 32)


def test_page_size_and_kernel_choice():
  assert [page_size_for(n) for n in (512 + 32768, 16 + 112, 48, 96)] == [64, 64, 16, 32]
  with pytest.raises(ValueError, match="multiple of 16"):
    page_size_for(16 + 100)
  assert select_kernel("pallas", "tpu") == ("tpu", False)
  assert select_kernel("pallas", "gpu") == ("gpu", False)
  assert select_kernel("pallas_tpu", "cpu") == ("tpu", True)
  assert select_kernel("pallas_gpu", "gpu") == ("gpu", False)
  with pytest.raises(ValueError, match="use decode_attention='chunked'"):
    select_kernel("pallas", "cpu")
  with pytest.raises(ValueError, match="cannot run on gpu"):
    select_kernel("pallas_tpu", "gpu")


@pytest.mark.parametrize("kernel,bits", [("tpu", 8), ("gpu", 4)])
def test_unreadable_caches_are_refused(kernel, bits):
  cache, _, _ = _cache(bits, jnp.float32)
  with pytest.raises(ValueError, match=f"cannot read a kv{bits} cache.*chunked"):
    paged_decode_attention(jnp.zeros((B, 1, KV, G, D)), cache, jnp.asarray(LENGTHS), kernel, True)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  path = tmp_path_factory.mktemp("pallas")
  make_hf_model(path, "qwen2", seed=7)  # GQA: 4 query heads over 2 kv heads
  return jaxthink.load_pretrained(path, dtype=jnp.float32, tokenizer=False)


@pytest.mark.parametrize("option,cache_dtype,tol", [("pallas_gpu", jnp.float32, 1e-6),
                                                    ("pallas_tpu", jnp.bfloat16, 5e-3)])
def test_decode_step_through_the_decoder(model, option, cache_dtype, tol):
  """Ragged prompts prefilled into one cache, then one decode step per row: the kernel's logits
  and cache are the chunked path's."""
  rng = np.random.default_rng(3)
  prompt_lengths = np.array([5, 17, 30])
  tokens = rng.integers(3, 100, (3, 32)).astype(np.int32)
  mask = np.arange(32)[None] < prompt_lengths[:, None]
  cache = init_kv_cache(model.config, 3, 32 + 16, cache_dtype)
  _, cache = model.model.apply({"params": model.params}, jnp.asarray(tokens),
                               positions_from_mask(jnp.asarray(mask)), jnp.asarray(mask), cache)
  step = jnp.asarray(rng.integers(3, 100, (3, 1)), jnp.int32)
  outputs = {}
  for name in ("chunked", option):
    outputs[name] = model.model.clone(decode_attention=name).apply(
        {"params": model.params}, step, cache.lengths[:, None], jnp.ones((3, 1), bool), cache)
  (want, want_cache), (got, got_cache) = outputs["chunked"], outputs[option]
  got, want = np.asarray(got), np.asarray(want)
  assert np.abs(want).max() > 0.1  # logits of a real scale, not all near zero
  print(f"{option}: max |logits - chunked logits| {np.abs(got - want).max():.2e}")
  np.testing.assert_allclose(got, want, atol=tol)
  np.testing.assert_array_equal(np.asarray(got_cache.lengths), prompt_lengths + 1)
  # The first layer's new keys come before any attention, so they are written identically.
  np.testing.assert_array_equal(np.asarray(got_cache.layers[0].k),
                                np.asarray(want_cache.layers[0].k))


@pytest.mark.parametrize("option", ["pallas_gpu", "pallas_tpu"])
def test_engine_with_the_kernel_equals_chunked(model, option):
  """The kernel inside the request engine's compiled loop: two slots for five ragged requests,
  three of them inserted into slots freed mid-run; greedy tokens as with chunked attention."""
  rng = np.random.default_rng(4)
  requests = [Request(rng.integers(3, 100, n).tolist(), budget, seed=i)
              for i, (n, budget) in enumerate(zip([5, 17, 9, 30, 3], [16, 4, 11, 7, 16]))]
  run = lambda name: [r.tokens[0].tolist() for r in Engine(
      (model.model.clone(decode_attention=name), model.params), slots=2, max_new_tokens=16,
      eos_ids=()).run(requests)]
  assert run(option) == run("chunked")


def test_int8_cache_generation_equals_chunked(model):
  """The GPU kernel reads a kv8 cache with its per-token scales: 16 greedy tokens per row."""
  prompts = [list(range(3, 8)), list(range(10, 27)), list(range(30, 60))]
  run = lambda name: generate((model.model.clone(decode_attention=name), model.params), prompts,
                              max_new_tokens=16, eos_ids=(), kv_bits=8).tokens
  np.testing.assert_array_equal(np.asarray(run("pallas_gpu")), np.asarray(run("chunked")))


def test_unknown_option_is_named(model):
  with pytest.raises(ValueError, match="decode_attention='flash' is not one of"):
    generate((model.model.clone(decode_attention="flash"), model.params), [[3, 4]],
             max_new_tokens=2, eos_ids=())
