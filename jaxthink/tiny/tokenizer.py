"""A byte-level BPE tokenizer for the tiny model, saved as an HF tokenizer directory.

Like the big reasoning models' tokenizers: byte-level BPE (any text round-trips), digits split
one per token (so arithmetic is learnable, as in Qwen2), markers such as " Wait" learned as real
vocabulary tokens from the corpus, `<think>` / `</think>` added as non-special tokens (decoding
with skip_special_tokens keeps them, as in DeepSeek-R1-Distill), and a chat template whose
generation prompt opens the thinking section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from jaxthink.data.markers import load_markers
from jaxthink.models.tokenizer import DEFAULT_INSTRUCTION
from jaxthink.tiny.task import Example

EOS = "<|endoftext|>"
SPECIAL_TOKENS = (EOS, "<|user|>", "<|assistant|>")
THINK_TOKENS = ("<think>", "</think>")

# <|user|>\n{content}\n<|assistant|>\n<think>\n  (assistant turns end with EOS).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}"
    "{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' + message['content'] + '<|endoftext|>\\n' }}"
    "{%- else %}"
    "{{ raise_exception('the tiny chat template knows the roles user and assistant, not '"
    " + message['role']) }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n<think>\\n' }}{%- endif %}")


def marker_texts(markers: Sequence[str] | None = None) -> list[str]:
  """Every word of every marker, capitalised and not, with and without a leading space, twice
  (BPE's min_frequency): so each is a single vocabulary token, as in big models, even the
  markers the task never writes. A marker split into pieces would make the decode engine's
  marker-to-token map catch generic pieces such as "Ġ"."""
  words = dict.fromkeys(w for m in (load_markers() if markers is None else markers)
                        for w in m.replace("-", " ").split())
  texts = []
  for w in words:
    upper, lower = w[:1].upper() + w[1:], w.lower()
    texts += [f"{upper} {lower}\n{lower} {upper}"] * 2
  return texts


def corpus_texts(examples: Iterable[Example], instruction: str = DEFAULT_INSTRUCTION,
                 markers: Sequence[str] | None = None) -> list[str]:
  """The tokenizer's training texts: each problem with the reasoning instruction (as
  jaxthink.reasoning_prompt builds the prompt), each solution, and `marker_texts(markers)`
  (default: jaxthink/data/markers.txt)."""
  texts = []
  for ex in examples:
    texts.append(f"{ex.problem}\n{instruction}" if instruction else ex.problem)
    texts.append(ex.solution)
  return texts + marker_texts(markers)


def train_tokenizer(texts: Iterable[str], vocab_size: int,
                    out_dir: str | Path) -> PreTrainedTokenizerFast:
  """Trains byte-level BPE on `texts` and saves it (tokenizer.json, tokenizer_config.json with
  the chat template) to `out_dir`; returns the tokenizer as AutoTokenizer loads it from there.

  `vocab_size` bounds the vocabulary including special tokens; a small corpus may stop short
  of it (BPE runs out of pairs to merge). Same texts give the same vocabulary.
  """
  floor = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS) + len(THINK_TOKENS)
  if vocab_size <= floor:
    raise ValueError(f"vocab_size {vocab_size} leaves no room for merges: the byte alphabet and "
                     f"special tokens alone take {floor}; use a few thousand")
  tok = Tokenizer(models.BPE())  # no unk token: every byte is in the alphabet
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size - len(THINK_TOKENS), min_frequency=2, show_progress=False,
      special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])

  hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS,
                               chat_template=CHAT_TEMPLATE, clean_up_tokenization_spaces=False)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  # The template goes into tokenizer_config.json, where real checkpoints keep it.
  hf.save_pretrained(str(out_dir), save_jinja_files=False)
  return PreTrainedTokenizerFast.from_pretrained(str(out_dir), local_files_only=True)
