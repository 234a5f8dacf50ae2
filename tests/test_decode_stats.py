"""Co-decoding records: per-token KL, entropies and log-probs equal a numpy computation from the
full-sequence logits of both models (HF PyTorch) over the final sequences; the penalty steers the
choice but not the measurement."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxthink
from jaxthink.decode import MarkerPenalty, generate
from jaxthink.models.decoder import positions_from_mask
from jaxthink.models.kv_cache import init_kv_cache
from hf_reference import left_padded_batch, make_hf_model, reference_logits

NEW = 24
LAMBDA = 0.02  # below the logit spread of these random models: it changes some choices, not all
MARKER_IDS = tuple(range(3, 67))


def log_softmax(x):
  x = x.astype(np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_records_match_numpy_over_final_sequences(tmp_path):
  quant_hf = make_hf_model(tmp_path / "q", "qwen2", seed=0)
  ref_hf = make_hf_model(tmp_path / "r", "qwen2", seed=1)  # a different tree stands in for bf16
  quant = jaxthink.load_pretrained(tmp_path / "q", dtype=jnp.float32, tokenizer=False)
  ref = jaxthink.load_pretrained(tmp_path / "r", dtype=jnp.float32, tokenizer=False)
  rng = np.random.default_rng(1)
  prompts = [rng.integers(3, 128, n).tolist() for n in (9, 4, 13)]
  out = generate((quant.model, quant.params), prompts, max_new_tokens=NEW, eos_ids=(),
                 reference=(ref.model, ref.params),
                 penalty=MarkerPenalty("constant", LAMBDA, token_ids=MARKER_IDS))

  # The final sequences, left-padded, through both PyTorch models without any cache.
  seq = max(map(len, prompts)) + NEW
  tokens = np.zeros((len(prompts), seq), np.int64)
  mask = np.zeros((len(prompts), seq), bool)
  for i, p in enumerate(prompts):
    tokens[i, seq - len(p) - NEW:] = p + out.tokens[i].tolist()
    mask[i, seq - len(p) - NEW:] = True
  # Logits at column c predict token c + 1: the generated tokens are predicted by the NEW columns
  # ending one before the last.
  logq = log_softmax(reference_logits(quant_hf, tokens, mask)[:, -NEW - 1:-1])
  logp = log_softmax(reference_logits(ref_hf, tokens, mask)[:, -NEW - 1:-1])
  p, q = np.exp(logp), np.exp(logq)
  chosen = out.tokens[..., None]
  expected = dict(
      kl=(p * (logp - logq)).sum(-1),
      entropy=-(q * logq).sum(-1),
      ref_entropy=-(p * logp).sum(-1),
      log_prob=np.take_along_axis(logq, chosen, -1)[..., 0],
      ref_log_prob=np.take_along_axis(logp, chosen, -1)[..., 0])
  for name, want in expected.items():
    got = getattr(out, name)
    err = np.abs(got - want).max()
    print(f"{name}: max |ours - numpy| = {err:.1e} (mean value {want.mean():.4f})")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  assert (out.kl > 0).all()

  # Greedy on the penalised logits; the records above are of the unpenalised ones.
  is_marker = np.isin(np.arange(128), MARKER_IDS)
  np.testing.assert_array_equal(out.tokens, np.argmax(logq - LAMBDA * is_marker, -1))
  changed = (np.argmax(logq, -1) != out.tokens).sum()
  print(f"penalty changed {changed} of {out.tokens.size} greedy choices; "
        f"{out.is_marker.sum()} marker tokens chosen")
  assert changed > 0 and out.is_marker.any()
  np.testing.assert_array_equal(out.is_marker, is_marker[out.tokens])
  assert out.penalty_fired.all()


def test_bf16_model_records_kl_of_unrounded_float32_logits(tmp_path):
  """A bf16 model's logits leave the final projection in float32: the recorded KL equals the KL of
  the exact product (float64 numpy) of the final hidden state and the output weights, not of
  logits rounded to bf16 (which move it by ~1e-5 here)."""
  for tied in (True, False):
    models = []
    for name, seed in (("q", 0), ("r", 1)):
      make_hf_model(tmp_path / f"{name}{tied}", "qwen2", seed=seed, tie_word_embeddings=tied)
      models.append(jaxthink.load_pretrained(tmp_path / f"{name}{tied}", dtype=jnp.bfloat16,
                                             tokenizer=False))
    quant, ref = models
    tokens, mask = left_padded_batch([16] * 8, 128, 16, seed=3)
    out = generate(quant, tokens.tolist(), max_new_tokens=1, reference=ref, eos_ids=())

    def exact_logits(m):
      """The prompt's last hidden state (bf16, computed as prefill does: a prompt-sized cache,
      last position only) times the output weights, in float64."""
      cache = init_kv_cache(m.config, len(tokens), tokens.shape[1], jnp.bfloat16)
      run = jax.jit(lambda params: m.model.apply(
          {"params": params}, jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)),
          jnp.asarray(mask), cache, last_only=True,
          capture_intermediates=lambda module, _: module.name == "norm"))
      (logits, _), state = run(m.params)
      hidden = np.asarray(state["intermediates"]["norm"]["__call__"][0][:, -1].astype(jnp.float32),
                          np.float64)
      weights = m.params["embed_tokens"]["embedding"] if tied else m.params["lm_head"]["kernel"].T
      exact = hidden @ np.asarray(weights.astype(jnp.float32), np.float64).T
      np.testing.assert_allclose(logits[:, -1], exact, atol=1e-5, rtol=0)
      return exact

    kl = lambda zp, zq: (np.exp(log_softmax(zp)) * (log_softmax(zp) - log_softmax(zq))).sum(-1)
    zq, zp = exact_logits(quant), exact_logits(ref)
    want = kl(zp, zq)
    bf16 = lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)
    rounded_kl = kl(bf16(zp), bf16(zq))
    err = np.abs(out.kl[:, 0] - want).max()
    print(f"tied={tied}: |recorded - float32-logit KL| = {err:.1e}; bf16-rounded logits would be "
          f"{np.abs(rounded_kl - want).max():.1e} off (KL {want.mean():.4f})")
    np.testing.assert_allclose(out.kl[:, 0], want, atol=1e-6, rtol=0)
    assert np.abs(rounded_kl - want).max() > 1e-6  # the test can tell the two apart
