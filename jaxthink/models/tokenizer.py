"""Tokenizer and the reasoning prompt, from the model directory (offline)."""

from __future__ import annotations

import codecs
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from jaxthink.models.config import CheckpointError

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
THINK_OPEN = "<think>"


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
  try:
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"no usable tokenizer in {path} (tokenizer.json / tokenizer_config.json "
                          f"expected): {e}") from e


def reasoning_prompt(tokenizer: PreTrainedTokenizerBase, problem: str,
                     instruction: str | None = DEFAULT_INSTRUCTION, think: bool = True) -> str:
  """The chat-templated prompt for `problem`, ending where the model starts to reason.

  R1-distilled templates already open `<think>` in the generation prompt; for templates that
  don't, `think=True` opens it, when the vocabulary knows the token.
  """
  content = problem if not instruction else f"{problem}\n{instruction}"
  if tokenizer.chat_template is None:
    raise CheckpointError("the tokenizer has no chat template; set `chat_template` in "
                          "tokenizer_config.json (reasoning prompts are built from it).")
  prompt = tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                         add_generation_prompt=True, tokenize=False)
  if think and THINK_OPEN in tokenizer.get_vocab() and not prompt.rstrip().endswith(THINK_OPEN):
    prompt += THINK_OPEN + "\n"
  return prompt


def token_char_offsets(tokenizer: PreTrainedTokenizerBase, ids: list[int],
                       text: str | None = None) -> list[int]:
  """The character offset where each token of `ids` starts in `text` = `decode(ids)` (pass it
  when it is already decoded).

  Byte-level BPE (Qwen2, Llama 3, Qwen3): each vocabulary piece spells its bytes one character per
  byte, so offsets come from the byte lengths in one pass (a token ending inside a multi-byte
  character starts where that character starts). Other tokenizers fall back to decoding every
  prefix (exact, quadratic).
  """
  if text is None:
    text = tokenizer.decode(ids, skip_special_tokens=False)
  added = tokenizer.added_tokens_decoder
  pieces = tokenizer.convert_ids_to_tokens(ids)
  byte_lengths = [len(added[i].content.encode()) if i in added else len(p)
                  for i, p in zip(ids, pieces)]
  data = text.encode()
  if sum(byte_lengths) != len(data):
    return [len(tokenizer.decode(ids[:i], skip_special_tokens=False)) for i in range(len(ids))]
  decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
  offsets, chars, position = [], 0, 0
  for n in byte_lengths:
    offsets.append(chars)  # complete characters before this token's first byte
    chars += len(decoder.decode(data[position:position + n]))
    position += n
  return offsets
