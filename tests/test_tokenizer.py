"""Tokenizer loading from the model directory and the reasoning prompt."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from jaxthink.models import CheckpointError, load_tokenizer, reasoning_prompt

R1_LIKE = ("{% for m in messages %}<|User|>{{ m['content'] }}{% endfor %}"
           "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}")
PLAIN = ("{% for m in messages %}<|User|>{{ m['content'] }}{% endfor %}"
         "{% if add_generation_prompt %}<|Assistant|>{% endif %}")


def _save(tmp_path, template, specials=("<think>", "</think>")):
  vocab = {w: i for i, w in enumerate(["<unk>", "<|User|>", "<|Assistant|>", *specials, "2+2?"])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                 additional_special_tokens=list(specials))
  fast.chat_template = template
  fast.save_pretrained(tmp_path)
  return tmp_path


def test_r1_template_opens_think_once(tmp_path):
  tok = load_tokenizer(_save(tmp_path, R1_LIKE))
  assert reasoning_prompt(tok, "2+2?") == (
      "<|User|>2+2?\nPlease reason step by step, and put your final answer within \\boxed{}."
      "<|Assistant|><think>\n")


def test_plain_template_gets_think_appended(tmp_path):
  tok = load_tokenizer(_save(tmp_path, PLAIN))
  assert reasoning_prompt(tok, "2+2?", instruction=None) == "<|User|>2+2?<|Assistant|><think>\n"
  assert reasoning_prompt(tok, "2+2?", instruction=None, think=False) == "<|User|>2+2?<|Assistant|>"


def test_vocab_without_think_token_is_left_alone(tmp_path):
  tok = load_tokenizer(_save(tmp_path, PLAIN, specials=()))
  assert reasoning_prompt(tok, "2+2?", instruction=None) == "<|User|>2+2?<|Assistant|>"


def test_missing_tokenizer_and_template(tmp_path):
  with pytest.raises(CheckpointError, match="no usable tokenizer"):
    load_tokenizer(tmp_path)
  tok = load_tokenizer(_save(tmp_path / "t", None))
  with pytest.raises(CheckpointError, match="no chat template"):
    reasoning_prompt(tok, "x")
