"""Tiny random HF models (PyTorch reference) saved with `save_pretrained`, shared by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers

FAMILIES = {
    "qwen2": transformers.Qwen2Config,
    "llama": transformers.LlamaConfig,
    "qwen3": transformers.Qwen3Config,
}

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def make_hf_model(out_dir: Path, family: str, *, torch_dtype=torch.float32, seed: int = 0,
                  max_shard_size: str | None = None, **overrides):
  """Creates, saves and returns a random `family` model (PyTorch, eval mode, float32)."""
  torch.manual_seed(seed)
  config = FAMILIES[family](**{**BASE, **overrides})
  model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
  # Random init leaves norms at 1 and biases at 0: perturb them so the test sees them.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight") or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  save_kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.to(torch_dtype).save_pretrained(out_dir, **save_kwargs)
  return model.to(torch.float32)


def reference_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """HF float32 logits `[batch, seq, vocab]` for a padded batch."""
  with torch.no_grad():
    mask_t = torch.tensor(mask, dtype=torch.long)
    position_ids = (mask_t.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=mask_t,
                position_ids=position_ids)
  return out.logits.float().numpy()


def left_padded_batch(lengths, vocab_size: int, seq: int, pad_id: int = 0, seed: int = 0):
  """Random token ids `[batch, seq]` left-padded to `seq`, and the mask."""
  rng = np.random.default_rng(seed)
  tokens = np.full((len(lengths), seq), pad_id, np.int32)
  mask = np.zeros((len(lengths), seq), bool)
  for i, n in enumerate(lengths):
    tokens[i, seq - n:] = rng.integers(3, vocab_size, n)
    mask[i, seq - n:] = True
  return tokens, mask
