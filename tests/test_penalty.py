"""The marker penalty: which tokens it penalises (the embedded tokenizer and Llama-3- / Qwen2-style
byte-level BPE tokenizers trained here), bans with λ = inf, entropy gating, and the sampled
distribution against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import jaxthink
from jaxthink.data.markers import load_markers
from jaxthink.decode import MarkerPenalty, Sampling, generate, marker_token_ids
from jaxthink.decode.penalty import apply_penalty
from jaxthink.decode.sampling import row_keys
from jaxthink.eval.config import EMBEDDED_MODEL_DIR
from jaxthink.models.tokenizer import load_tokenizer
from jaxthink.tiny.tokenizer import marker_texts, train_tokenizer
from hf_reference import make_hf_model, reference_logits

# The pre-tokenizer splits of Llama 3 (numbers in groups of up to 3) and Qwen2 (single digits).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
# Reasoning-like text where markers' phrase words are also ordinary words.
CORPUS = [
    "Wait, let me check the sum again: 12 + 30 = 42.",
    "But on the interval [0, 1] the function is positive, so hold the sign.",
    "Hold on, let x be the number of apples on the table.",
    "Maybe we should check the second case. Perhaps it is wrong.",
    "Alternatively, let us hold the value fixed and check it on day one.",
    "However, on second thought, we must verify it. Let me verify the total.",
    "Let me double-check: 3 + 4 = 7. Hmm, actually that is right.",
    "On the other hand, let me check again. Actually the second thought was wrong.",
    "wait but maybe however perhaps alternatively actually hmm wrong",
    "Let the total be T. Check: T = 5 on the second day. Me, I hold on.",
]
ORDINARY = ["on", "On", " on", " On", "let", "Let", " let", " Let", "hold", "Hold", " hold",
            " Hold", " check", "Check", " me", " second", " verify", " again", " thought"]


def byte_level_bpe(split: str, special_tokens: list[str]) -> PreTrainedTokenizerFast:
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(split), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=600, min_frequency=2, show_progress=False,
                                special_tokens=special_tokens,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS * 20, trainer)
  return PreTrainedTokenizerFast(tokenizer_object=tok)


TOKENIZERS = {
    "embedded": lambda: load_tokenizer(EMBEDDED_MODEL_DIR),
    "llama3": lambda: byte_level_bpe(LLAMA3_SPLIT, ["<|begin_of_text|>", "<|eot_id|>"]),
    "qwen2": lambda: byte_level_bpe(QWEN2_SPLIT, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
}


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_penalised_set_is_the_single_token_marker_spellings(name):
  tok = TOKENIZERS[name]()
  vocab = tok.get_vocab()  # byte-level pieces: "Ġ" is the leading space
  piece = lambda text: text.replace(" ", "Ġ")
  penalised = set(MarkerPenalty.from_tokenizer(tok, "constant", 2.0).token_ids)
  words = {m.lower() for m in load_markers() if len(m.split()) == 1}
  # Every penalised token is a marker word (any case, with or without a space) ...
  texts = sorted(tok.decode([i]) for i in penalised)
  print(f"{name}: {len(penalised)} penalised tokens: {texts}")
  assert penalised and all(t.strip().lower() in words for t in texts), texts
  # ... so none of the phrases' ordinary words, though the vocabulary has them as tokens.
  present = [w for w in ORDINARY if piece(w) in vocab]
  assert len(present) >= (8 if name == "embedded" else 14), present
  assert not {vocab[piece(w)] for w in present} & penalised
  # Every single-token spelling of every marker word is penalised.
  spellings = {s + c for w in words for c in (w, w.capitalize()) for s in ("", " ")}
  in_vocab = {vocab[piece(s)] for s in spellings if piece(s) in vocab}
  assert in_vocab == penalised
  # Phrases contribute nothing of their own; a marker the vocabulary splits is dropped.
  by_marker = marker_token_ids(tok)
  assert all(by_marker[m] == () for m in load_markers() if len(m.split()) > 1)
  if name != "embedded":
    assert by_marker["Backtrack"] == () and "Ġbacktrack" not in vocab


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return train_tokenizer(marker_texts(), 500, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model(tokenizer, tmp_path_factory):
  path = tmp_path_factory.mktemp("model")
  make_hf_model(path, "qwen2", vocab_size=len(tokenizer), seed=5)
  m = jaxthink.load_pretrained(path, dtype=jnp.float32, tokenizer=False)
  return m.model, m.params


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


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_sampled_steps_draw_from_the_penalised_softmax(tmp_path):
  """T = 0.6, finite λ: at every step the sampling distribution is softmax((z - λ·1_S) / T) of the
  step's raw logits z (HF PyTorch, teacher-forced on the generated tokens), the loop's draw is the
  Gumbel-max draw from it, and the recorded statistics are those of the unpenalised z."""
  new, lam, temperature, vocab = 24, 1.5, 0.6, 128
  quant_hf = make_hf_model(tmp_path / "q", "qwen2", seed=0)
  ref_hf = make_hf_model(tmp_path / "r", "qwen2", seed=1)
  quant = jaxthink.load_pretrained(tmp_path / "q", dtype=jnp.float32, tokenizer=False)
  ref = jaxthink.load_pretrained(tmp_path / "r", dtype=jnp.float32, tokenizer=False)
  marked = np.isin(np.arange(vocab), np.arange(3, 100, 3))
  penalty = MarkerPenalty("constant", lam, token_ids=tuple(np.flatnonzero(marked).tolist()))
  sampling = Sampling(temperature=temperature)
  rng = np.random.default_rng(2)
  prompts = [rng.integers(3, vocab, n).tolist() for n in (9, 4, 13)]
  seeds = np.array([11, 12, 13], np.uint32)
  out = generate(quant, prompts, max_new_tokens=new, sampling=sampling, penalty=penalty,
                 reference=ref, eos_ids=(), seed=seeds)

  seq = max(map(len, prompts)) + new
  tokens, mask = np.zeros((3, seq), np.int64), np.zeros((3, seq), bool)
  for i, p in enumerate(prompts):
    tokens[i, seq - len(p) - new:] = p + out.tokens[i].tolist()
    mask[i, seq - len(p) - new:] = True
  z = reference_logits(quant_hf, tokens, mask)[:, -new - 1:-1]  # [3, new, vocab] float32
  z_ref = reference_logits(ref_hf, tokens, mask)[:, -new - 1:-1]
  want = _log_softmax((z.astype(np.float64) - lam * marked) / temperature)

  # The engine's sampling distribution from each step's logits, by the functions the loop uses.
  flat = jnp.asarray(z.reshape(-1, vocab))
  penalised, fired = apply_penalty(flat, jnp.zeros(len(flat)), penalty.arrays(vocab), "constant")
  assert bool(fired.all())
  got = np.asarray(jax.nn.softmax(penalised / temperature, axis=-1)).reshape(want.shape)
  err = np.abs(got - np.exp(want)).max()
  mass = np.exp(want)[..., marked].sum(-1).mean()
  unpenalised = np.exp(_log_softmax(z / temperature))[..., marked].sum(-1).mean()
  print(f"max |engine - numpy| of the penalised distribution: {err:.1e}; mean mass on S "
        f"{unpenalised:.3f} -> {mass:.3f}")
  np.testing.assert_allclose(got, np.exp(want), atol=1e-6, rtol=0)
  assert mass < 0.5 * unpenalised

  # Every draw of the loop is the Gumbel-max draw from that distribution with the step's noise.
  keys = row_keys(jnp.asarray(seeds), 3)
  noise = np.stack([np.asarray(jax.vmap(lambda k, t=t: jax.random.gumbel(
      jax.random.fold_in(k, t), (vocab,)))(keys)) for t in range(new)], axis=1)
  scores = np.sort(want + noise, axis=-1)
  clear = scores[..., -1] - scores[..., -2] > 1e-3  # not a near-tie that logit noise could flip
  assert clear.mean() > 0.95
  np.testing.assert_array_equal(out.tokens[clear], np.argmax(want + noise, -1)[clear])
  assert out.is_marker.any() and (~out.is_marker).any()

  # The recorded statistics are the unpenalised, temperature-1 ones.
  logq, logp = _log_softmax(z), _log_softmax(z_ref)
  chosen = out.tokens[..., None]
  expected = dict(log_prob=np.take_along_axis(logq, chosen, -1)[..., 0],
                  entropy=-(np.exp(logq) * logq).sum(-1),
                  kl=(np.exp(logp) * (logp - logq)).sum(-1),
                  ref_log_prob=np.take_along_axis(logp, chosen, -1)[..., 0])
  for name, value in expected.items():
    np.testing.assert_allclose(getattr(out, name), value, atol=1e-4, rtol=0)
  top20 = np.argsort(-z, axis=-1)[..., :20]
  np.testing.assert_array_equal(out.marker_in_top, marked[top20].any(-1))
