"""Tokenizer loading from the model directory, the reasoning prompt, token character offsets."""

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import jaxthink
from jaxthink.models import CheckpointError, load_tokenizer, reasoning_prompt
from jaxthink.models.tokenizer import _byte_level_offsets, token_char_offsets

TINY = Path(jaxthink.__file__).parent / "tiny" / "model"
# Multi-byte text: 2-byte (é), 3-byte (CJK), 4-byte (emoji) characters.
MIXED = ["Solve 3x + 5 = 20. So x = 5, café, naïve.", "你好，世界！答案是五。", "Wait 🤔 hmm 🙂👍 ok",
         "数学 🧮 math: ∑ x² = 1 — done"]

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


def prefix_decode_offsets(tok, ids):
  """The definition: token i starts at len(decode(ids[:i])) (quadratic)."""
  return [len(tok.decode(ids[:i], skip_special_tokens=False)) for i in range(len(ids))]


def check_offsets(tok, ids, one_pass=True):
  """Offsets equal the definition; `one_pass`: and come from the linear byte-level path."""
  want = prefix_decode_offsets(tok, ids)
  text = tok.decode(ids, skip_special_tokens=False)
  assert token_char_offsets(tok, ids, text) == want, (ids, text)
  assert token_char_offsets(tok, ids) == want
  assert (_byte_level_offsets(tok, ids, text) is not None) == one_pass
  return text


def responses(tok, rng, specials):
  """Token lists: whole texts, texts cut at random tokens (multi-byte characters split, U+FFFD),
  byte soup from the whole vocabulary, and special tokens in between."""
  encoded = [tok.encode(t, add_special_tokens=False) for t in MIXED]
  yield encoded[0]  # pure ASCII and é
  yield from encoded
  vocab = len(tok)
  for _ in range(60):
    ids = list(encoded[rng.integers(len(encoded))])
    for _ in range(rng.integers(1, 4)):  # drop a token: a character loses some of its bytes
      del ids[rng.integers(len(ids))]
    for _ in range(rng.integers(0, 3)):
      ids.insert(rng.integers(len(ids) + 1), int(rng.choice(specials)))
    yield ids
    yield rng.integers(0, vocab, rng.integers(1, 40)).tolist()


def test_offsets_of_the_embedded_tokenizer_match_prefix_decoding():
  tok = load_tokenizer(TINY)
  specials = list(tok.added_tokens_decoder)  # <|endoftext|>, <|user|>, <|assistant|>, <think>...
  texts = [check_offsets(tok, ids) for ids in responses(tok, np.random.default_rng(0), specials)]
  assert sum("\ufffd" in t for t in texts) > 50  # cut characters were exercised
  assert any(t.isascii() for t in texts) and any("<think>" in t for t in texts)


def byte_level_bpe(tmp_path):
  """A byte-level BPE trained here on multi-byte text (its merges cut characters in several
  places), with special tokens: ASCII, full-width (DeepSeek style), and one spelling bytes."""
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  specials = ["<|end|>", "<｜Assistant｜>", "ĠĀé"]
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(MIXED * 20, trainer)
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=specials,
                                 clean_up_tokenization_spaces=False)
  fast.save_pretrained(tmp_path)
  return load_tokenizer(tmp_path)


def test_offsets_of_a_trained_byte_level_bpe_match_prefix_decoding(tmp_path):
  tok = byte_level_bpe(tmp_path)
  specials = tok.convert_tokens_to_ids(["<|end|>", "<｜Assistant｜>", "ĠĀé"])
  pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
  assert any(len(p) > 1 and all(ord(c) >= 0x80 for c in p) for p in pieces)  # multi-byte merges
  texts = [check_offsets(tok, ids) for ids in responses(tok, np.random.default_rng(1), specials)]
  assert sum("\ufffd" in t for t in texts) > 50


def test_offsets_fall_back_for_other_decoders(tmp_path):
  tok = load_tokenizer(_save(tmp_path / "word", PLAIN))  # word level: pieces joined by spaces
  check_offsets(tok, tok.convert_tokens_to_ids(["2+2?", "<think>", "2+2?", "<unk>"]), False)
  tok = byte_level_bpe(tmp_path / "bpe")
  tok.clean_up_tokenization_spaces = True  # decode rewrites " ," and " 's": not plain bytes
  tok.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = True
  check_offsets(tok, tok.encode("a , b 's c . 你", add_special_tokens=False), False)
