"""Greedy generation is token-identical to HF transformers `generate` (PyTorch, float32)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxthink
from jaxthink.decode import generate
from hf_reference import make_hf_model

NEW_TOKENS = 48
PROMPT_LENGTHS = [11, 3, 7, 1]
FAMILIES = {
    "qwen2": dict(),
    "llama": dict(rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                       low_freq_factor=1.0, high_freq_factor=4.0,
                                       original_max_position_embeddings=16)),
    "qwen3": dict(head_dim=32, tie_word_embeddings=True),
}


def hf_greedy(model, prompts, pad_id: int, eos_id: int) -> np.ndarray:
  """HF generate on a left-padded batch: `[batch, <= NEW_TOKENS]` new tokens, pad after EOS."""
  seq = max(len(p) for p in prompts)
  ids = torch.full((len(prompts), seq), pad_id, dtype=torch.long)
  mask = torch.zeros((len(prompts), seq), dtype=torch.long)
  for i, p in enumerate(prompts):
    ids[i, seq - len(p):] = torch.tensor(p)
    mask[i, seq - len(p):] = 1
  with torch.no_grad():
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                         do_sample=False, pad_token_id=pad_id, eos_token_id=eos_id)
  return out[:, seq:].numpy()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_matches_hf_generate(family, tmp_path):
  hf = make_hf_model(tmp_path, family, seed=3, **FAMILIES[family])
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 128, n).tolist() for n in PROMPT_LENGTHS]
  # End token: one that row 1 emits mid-way, so rows end early and must end where HF ends them.
  eos = int(hf_greedy(hf, prompts, pad_id=0, eos_id=2)[1, NEW_TOKENS // 2])
  theirs = hf_greedy(hf, prompts, pad_id=0, eos_id=eos)
  model = jaxthink.load_pretrained(tmp_path, dtype=jnp.float32, tokenizer=False)
  ours = generate(model, prompts, max_new_tokens=NEW_TOKENS, eos_ids=[eos],
                  pad_id=0)
  n = theirs.shape[1]  # HF stops early only when every row has ended
  print(f"{family}: eos {eos}, HF generated {n} columns; row lengths {ours.lengths.tolist()}")
  np.testing.assert_array_equal(ours.tokens[:, :n], theirs)
  assert (ours.tokens[:, n:] == 0).all()
  assert n == NEW_TOKENS or ours.finished.all()
  assert ours.finished[1] and ours.lengths[1] <= NEW_TOKENS // 2 + 1
  for row, length, done in zip(ours.tokens, ours.lengths, ours.finished):
    ended = np.flatnonzero(row == eos)
    assert length == (ended[0] + 1 if done else NEW_TOKENS)
    assert done == (ended.size > 0)
