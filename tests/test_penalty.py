"""The marker penalty on a real byte-level BPE tokenizer (jaxthink.tiny's): token-id sets per
marker, bans with λ = inf, and entropy gating checked against the recorded entropies."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxthink
from jaxthink.data.markers import load_markers
from jaxthink.decode import MarkerPenalty, Sampling, generate, marker_token_ids, marker_variants
from jaxthink.tiny.tokenizer import marker_texts, train_tokenizer
from hf_reference import make_hf_model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return train_tokenizer(marker_texts(), 500, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model(tokenizer, tmp_path_factory):
  path = tmp_path_factory.mktemp("model")
  make_hf_model(path, "qwen2", vocab_size=len(tokenizer), seed=5)
  m = jaxthink.load_pretrained(path, dtype=jnp.float32, tokenizer=False)
  return m.model, m.params


def test_each_default_marker_maps_to_all_its_variants(tokenizer):
  vocab = tokenizer.get_vocab()  # byte-level BPE: "Ġ" is the leading space
  ids = marker_token_ids(tokenizer)
  assert tuple(ids) == load_markers()
  for marker, got in ids.items():
    word = marker.split()[0]  # multi-word markers: their first token
    want = {vocab[word], vocab["Ġ" + word], vocab[word.lower()], vocab["Ġ" + word.lower()]}
    assert set(got) == want, (marker, [tokenizer.decode([i]) for i in got])


def test_split_marker_uses_its_first_visible_token(tokenizer):
  # Not in the vocabulary: " Zyxwv" is " " + "Z" + ..., or " Z" + ...; never the bare space.
  got = marker_token_ids(tokenizer, ["Zyxwv"])["Zyxwv"]
  space = tokenizer.get_vocab()["Ġ"]
  assert space not in got
  variants = [v.strip() for v in marker_variants("Zyxwv")]
  for i in got:
    piece = tokenizer.decode([i]).strip()
    assert piece and any(v.startswith(piece) for v in variants), piece
  assert {tokenizer.decode([i]).strip()[0] for i in got} == {"Z", "z"}


def run(model, penalty, steps=64):
  prompts = [[5 + i, 40 + 3 * i, 7] for i in range(8)]
  return generate(model, prompts, max_new_tokens=steps, eos_ids=(), seed=7,
                  sampling=Sampling(temperature=1.0), penalty=penalty)


def test_inf_bans_markers_and_gate_follows_entropy(tokenizer, model):
  markers = MarkerPenalty.from_tokenizer(tokenizer, "constant", 0.0)
  ids = np.asarray(markers.token_ids)
  free = run(model, markers)  # λ = 0: the same program, markers are sampled freely
  print(f"λ=0: {free.is_marker.sum()} marker tokens of {free.tokens.size} "
        f"({len(ids)} marker ids in a vocabulary of {len(tokenizer)})")
  assert free.is_marker.sum() > 10
  np.testing.assert_array_equal(free.is_marker, np.isin(free.tokens, ids))

  banned = run(model, MarkerPenalty.from_tokenizer(tokenizer, "constant", float("inf")))
  assert not np.isin(banned.tokens, ids).any() and not banned.is_marker.any()
  assert banned.penalty_fired.all()

  tau = float(np.median(free.entropy))
  gated = run(model, MarkerPenalty.from_tokenizer(tokenizer, "entropy_gated", float("inf"), tau))
  fired = gated.penalty_fired
  np.testing.assert_array_equal(fired, gated.entropy > tau)
  emitted = np.isin(gated.tokens, ids)
  print(f"gated at τ={tau:.5f}: fired at {fired.sum()} of {fired.size} steps; markers at "
        f"{(emitted & fired).sum()} fired and {(emitted & ~fired).sum()} unfired steps")
  assert 0 < fired.sum() < fired.size
  assert not (emitted & fired).any()
  assert (emitted & ~fired).any()


def test_bad_penalty_settings_are_named():
  with pytest.raises(ValueError, match="mode"):
    MarkerPenalty("always", 1.0, token_ids=(1,))
  with pytest.raises(ValueError, match="needs marker token ids"):
    MarkerPenalty("constant", 1.0)
  with pytest.raises(ValueError, match="λ"):
    MarkerPenalty("constant", float("nan"), token_ids=(1,))
  with pytest.raises(ValueError, match="another model's tokenizer"):
    MarkerPenalty("constant", 1.0, token_ids=(1, 999)).arrays(vocab_size=128)
