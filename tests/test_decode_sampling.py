"""Sampling: seeded and reproducible; temperature, top-k and top-p give numpy's distributions."""

import jax.numpy as jnp
import numpy as np
import pytest

import jax
import jaxthink
from jaxthink.decode import Sampling, generate
from jaxthink.decode.sampling import NUCLEUS_CANDIDATES, choose_tokens, row_keys
from hf_reference import make_hf_model

ROWS = 4000
LOGITS = np.array([2.0, 1.5, 1.4, 0.3, 0.2, -0.5, -1.0, -3.0, 0.9, -np.inf], np.float32)


def numpy_distribution(logits, temperature, top_k=0, top_p=1.0):
  """The target distribution, computed independently: sort, cut, renormalise."""
  z = logits.astype(np.float64) / temperature
  order = np.argsort(-z, kind="stable")
  keep = np.zeros(len(z), bool)
  keep[order[:top_k or len(z)]] = True
  p = np.where(keep, np.exp(z - z[keep].max()), 0)
  p /= p.sum()
  if top_p < 1:
    mass_before = np.cumsum(p[order]) - p[order]
    keep[order[mass_before >= top_p]] = False
    p = np.where(keep, p, 0)
    p /= p.sum()
  return p


def sample_frequencies(sampling, seed=0):
  logits = jnp.broadcast_to(jnp.asarray(LOGITS), (ROWS, len(LOGITS)))
  tokens = np.asarray(choose_tokens(logits, row_keys(seed, ROWS), jnp.int32(3), sampling))
  return np.bincount(tokens, minlength=len(LOGITS)) / ROWS


@pytest.mark.parametrize("sampling", [Sampling(1.0), Sampling(0.5), Sampling(1.0, top_k=3),
                                      Sampling(0.7, top_p=0.8), Sampling(1.5, top_k=5, top_p=0.7)],
                         ids=str)
def test_sampled_frequencies_follow_numpy(sampling):
  want = numpy_distribution(LOGITS, sampling.temperature, sampling.top_k, sampling.top_p)
  got = sample_frequencies(sampling)
  print(sampling, "support", np.flatnonzero(want).tolist(), "max |freq - p|",
        np.abs(got - want).max().round(4))
  assert (got[want == 0] == 0).all()  # the support is restricted exactly
  np.testing.assert_allclose(got, want, atol=0.03)


def sort_all_choose_tokens(logits, keys, step, sampling):
  """The exact algorithm before the nucleus search (#16): sort the whole vocabulary, cut, draw."""
  scaled = logits.astype(jnp.float32) / sampling.temperature
  vocab = scaled.shape[-1]
  k = min(sampling.top_k, vocab) if sampling.top_k else (vocab if sampling.top_p < 1 else 0)
  if k:
    scaled, candidates = jax.lax.top_k(scaled, k)
  if sampling.top_p < 1:
    probs = jax.nn.softmax(scaled, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    scaled = jnp.where(mass_before < sampling.top_p, scaled, -jnp.inf)
  step_keys = jax.vmap(lambda key: jax.random.fold_in(key, step))(keys)
  picked = jax.vmap(jax.random.categorical)(step_keys, scaled)
  if k:
    picked = jnp.take_along_axis(candidates, picked[:, None], axis=-1)[:, 0]
  return picked.astype(jnp.int32)


def nucleus_sizes(logits, temperature, top_p):
  return np.array([np.count_nonzero(numpy_distribution(row, temperature, top_p=top_p))
                   for row in logits])


def wide_logits(rows, vocab, scale, seed):
  """Random logits `[rows, vocab]`; `scale` sets how peaked (small: flat, large nuclei)."""
  return np.random.default_rng(seed).normal(size=(rows, vocab)).astype(np.float32) * scale


@pytest.mark.parametrize("flat_row", [False, True], ids=["nucleus-fits", "one-flat-row"])
def test_nucleus_search_draws_what_the_full_sort_draws(flat_row):
  logits = wide_logits(16, 3000, scale=3.0, seed=1)
  if flat_row:  # a nucleus of ~2600 tokens: the step falls back to sorting everything
    logits[5] = wide_logits(1, 3000, scale=0.1, seed=2)[0]
  sizes = nucleus_sizes(logits, 0.6, 0.95)
  assert (sizes.max() > NUCLEUS_CANDIDATES) == flat_row
  keys = row_keys(7, len(logits))
  new, old = (jax.jit(f, static_argnums=3) for f in (choose_tokens, sort_all_choose_tokens))
  for sampling in (Sampling(0.6, top_p=0.95), Sampling(0.6, top_k=500, top_p=0.95),
                   Sampling(0.6, top_k=20), Sampling(0.6)):
    for step in range(20):
      got = np.asarray(new(jnp.asarray(logits), keys, jnp.int32(step), sampling))
      want = np.asarray(old(jnp.asarray(logits), keys, jnp.int32(step), sampling))
      np.testing.assert_array_equal(got, want, err_msg=f"{sampling} step {step}")
      for row, token in enumerate(got):  # and inside numpy's kept set
        assert numpy_distribution(logits[row], 0.6, sampling.top_k, sampling.top_p)[token] > 0


@pytest.mark.parametrize("scale", [2.0, 0.05], ids=["candidates", "fallback"])
def test_nucleus_search_frequencies_follow_numpy(scale):
  """Top-p over a vocabulary larger than the candidate set: numpy's kept set, renormalised."""
  row = wide_logits(1, 1000, scale, seed=3)[0]
  row[:10] = LOGITS[:9].tolist() + [3.0]  # a few likely tokens, so frequencies are measurable
  sampling = Sampling(0.7, top_p=0.8)
  want = numpy_distribution(row, sampling.temperature, top_p=sampling.top_p)
  assert (np.count_nonzero(want) > NUCLEUS_CANDIDATES) == (scale < 1)
  rows = 8000
  logits = jnp.broadcast_to(jnp.asarray(row), (rows, len(row)))
  tokens = np.asarray(choose_tokens(logits, row_keys(0, rows), jnp.int32(3), sampling))
  got = np.bincount(tokens, minlength=len(row)) / rows
  print("support", np.count_nonzero(want), "max |freq - p|", np.abs(got - want).max().round(4))
  assert (got[want == 0] == 0).all()
  np.testing.assert_allclose(got, want, atol=0.02)


def test_greedy_and_top1_pick_the_argmax():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(64, 50)), jnp.float32)
  keys = row_keys(0, 64)
  want = np.argmax(np.asarray(logits), -1)
  for sampling in (Sampling(0.0), Sampling(2.0, top_k=1), Sampling(2.0, top_p=1e-6)):
    np.testing.assert_array_equal(choose_tokens(logits, keys, jnp.int32(0), sampling), want)


def test_same_seed_same_tokens(tmp_path):
  make_hf_model(tmp_path, "llama", seed=2)
  m = jaxthink.load_pretrained(tmp_path, dtype=jnp.float32, tokenizer=False)
  prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
  sampling = Sampling(temperature=0.8, top_p=0.9)
  run = lambda seed: generate((m.model, m.params), prompts, max_new_tokens=32, eos_ids=(),
                              sampling=sampling, seed=seed).tokens
  a, b, c = run(1), run(1), run(2)
  np.testing.assert_array_equal(a, b)
  assert (a != c).mean() > 0.5


def test_bad_sampling_settings_are_named():
  with pytest.raises(ValueError, match="temperature"):
    Sampling(-1.0)
  with pytest.raises(ValueError, match="top_p"):
    Sampling(1.0, top_p=0.0)
  with pytest.raises(ValueError, match="top_k"):
    Sampling(1.0, top_k=-2)
