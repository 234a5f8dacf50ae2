"""Bad input to `generate` fails before any compilation, naming the problem and the fix."""

import dataclasses

import numpy as np
import pytest

from jaxthink.decode import bucket_length, generate
from jaxthink.models import Decoder, ModelConfig

CONFIG = ModelConfig(model_type="llama", vocab_size=32, hidden_size=16, intermediate_size=8,
                     num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, rms_norm_eps=1e-6,
                     rope_theta=1e4)
POLICY = (Decoder(CONFIG), {})


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompts=[[1, 2], []]), "prompt 1 is empty"),
    (dict(prompts=[[1, 40]]), "outside"),
    (dict(prompts=[]), "no prompts"),
    (dict(prompts=np.ones((2, 3, 1), np.int32)), r"\[batch, len\]"),
    (dict(prompts=np.ones((2, 3), np.int32), prompt_mask=np.ones((2, 4), bool)), "prompt_mask"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(kv_bits=2), "kv_bits"),
    (dict(reference=(Decoder(dataclasses.replace(CONFIG, vocab_size=64)), {})), "vocabulary"),
    (dict(policy=("not a model", {})), "Decoder"),
])
def test_bad_input_is_named(kwargs, match):
  args = dict(policy=POLICY, prompts=[[1, 2, 3]], max_new_tokens=4) | kwargs
  with pytest.raises((ValueError, TypeError), match=match):
    generate(args.pop("policy"), args.pop("prompts"), **args)


def test_prompt_buckets_are_powers_of_two():
  assert [bucket_length(n) for n in (1, 16, 17, 100, 129, 3000)] == [16, 16, 32, 128, 256, 4096]
