"""Sampling: seeded and reproducible; temperature, top-k and top-p give numpy's distributions."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxthink
from jaxthink.decode import Sampling, generate
from jaxthink.decode.sampling import choose_tokens, row_keys
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
