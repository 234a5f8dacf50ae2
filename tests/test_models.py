"""Parity of the Flax decoder with the HF PyTorch reference, on tiny random checkpoints."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxthink
from hf_reference import left_padded_batch, make_hf_model, reference_logits

CASES = {
    # GQA with several kv heads, untied, Qwen2 q/k/v bias.
    "qwen2_gqa": dict(family="qwen2", overrides=dict(num_key_value_heads=2)),
    # One kv head (MQA), tied embeddings.
    "qwen2_mqa_tied": dict(family="qwen2", overrides=dict(num_key_value_heads=1,
                                                          tie_word_embeddings=True)),
    # Llama 3 rope scaling; positions beyond the original context exercise all three bands.
    "llama3_rope": dict(family="llama", overrides=dict(rope_parameters=dict(
        rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
        high_freq_factor=4.0, original_max_position_embeddings=16))),
    "llama_bias": dict(family="llama", overrides=dict(attention_bias=True, mlp_bias=True)),
    # Qwen3 q/k norm with an explicit head_dim different from hidden / heads.
    "qwen3_qknorm": dict(family="qwen3", overrides=dict(head_dim=32, tie_word_embeddings=True)),
    # Sharded checkpoint on disk.
    "qwen3_sharded": dict(family="qwen3", overrides=dict(head_dim=16), max_shard_size="40KB"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_pytorch(case, tmp_path):
  spec = CASES[case]
  ref = make_hf_model(tmp_path, spec["family"], max_shard_size=spec.get("max_shard_size"),
                      **spec["overrides"])
  if "max_shard_size" in spec:
    assert (tmp_path / "model.safetensors.index.json").exists()
  tokens, mask = left_padded_batch([20, 7, 13], vocab_size=128, seq=20)
  model = jaxthink.load_pretrained(tmp_path, dtype=jnp.float32, tokenizer=False)
  ours = np.asarray(model.logits(tokens, mask))
  theirs = reference_logits(ref, tokens, mask)
  err = np.abs(ours - theirs)[mask].max()
  print(f"{case}: max |logit diff| = {err:.2e}")
  assert err <= 1e-4
  np.testing.assert_array_equal(ours.argmax(-1)[mask], theirs.argmax(-1)[mask])


def test_bf16_checkpoint_loads_into_float32(tmp_path):
  ref = make_hf_model(tmp_path, "qwen2", torch_dtype=torch.bfloat16)
  # The reference is the bf16-rounded weights, run in float32.
  ref = ref.to(torch.bfloat16).to(torch.float32)
  tokens, mask = left_padded_batch([9, 16], vocab_size=128, seq=16)
  model = jaxthink.load_pretrained(tmp_path, dtype=jnp.float32, tokenizer=False)
  ours = np.asarray(model.logits(tokens, mask))
  theirs = reference_logits(ref, tokens, mask)
  assert np.abs(ours - theirs)[mask].max() <= 1e-4
  np.testing.assert_array_equal(ours.argmax(-1)[mask], theirs.argmax(-1)[mask])


def test_bf16_compute_stays_close(tmp_path):
  ref = make_hf_model(tmp_path, "llama")
  tokens, mask = left_padded_batch([12, 5], vocab_size=128, seq=12)
  model = jaxthink.load_pretrained(tmp_path, dtype=jnp.bfloat16, tokenizer=False)
  leaves = [model.params["embed_tokens"]["embedding"], model.params["norm"]["scale"]]
  assert all(x.dtype == jnp.bfloat16 for x in leaves)
  ours = np.asarray(model.logits(tokens, mask))
  assert ours.dtype == np.float32
  theirs = reference_logits(ref, tokens, mask)
  assert np.abs(ours - theirs)[mask].max() < 0.1


def test_save_pretrained_round_trips_through_transformers(tmp_path):
  ref = make_hf_model(tmp_path / "a", "qwen3", head_dim=16)
  model = jaxthink.load_pretrained(tmp_path / "a", dtype=jnp.float32, tokenizer=False)
  jaxthink.save_pretrained(tmp_path / "b", model.config, model.params, dtype=jnp.float32)
  import transformers
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b").eval()
  tokens, mask = left_padded_batch([10, 4], vocab_size=128, seq=10)
  np.testing.assert_allclose(reference_logits(reloaded, tokens, mask),
                             reference_logits(ref, tokens, mask), atol=1e-5)
