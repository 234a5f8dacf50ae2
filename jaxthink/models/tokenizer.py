"""Tokenizer and the reasoning prompt, from the model directory (offline)."""

from __future__ import annotations

import codecs
from pathlib import Path

from tokenizers import decoders
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

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
  when it is already decoded): `len(decode(ids[:i]))` for token `i`, so a token that starts inside
  a multi-byte character starts after it (the prefix decodes the cut character as one U+FFFD).

  Byte-level BPE (Qwen2, Llama 3, Qwen3), in one pass: HF's decode maps every piece (added tokens
  too) back to bytes and decodes them all at once with invalid UTF-8 replaced by U+FFFD; an
  incremental UTF-8 decoder with `errors="replace"` does the same, and a prefix's length is the
  characters it has emitted plus one for bytes it holds back (an unfinished character). Other
  tokenizers, or text that decode post-processed, fall back to decoding every prefix (exact,
  quadratic).
  """
  if text is None:
    text = tokenizer.decode(ids, skip_special_tokens=False)
  offsets = _byte_level_offsets(tokenizer, ids, text)
  if offsets is None:
    offsets = [len(tokenizer.decode(ids[:i], skip_special_tokens=False)) for i in range(len(ids))]
  return offsets


_BYTE_OF_CHAR = {c: b for b, c in bytes_to_unicode().items()}


def _byte_level_offsets(tokenizer: PreTrainedTokenizerBase, ids: list[int],
                        text: str) -> list[int] | None:
  """`token_char_offsets` for a byte-level decoder, or None when the tokenizer is not one or
  its decode is not the plain byte decoding (e.g. clean_up_tokenization_spaces)."""
  backend = getattr(tokenizer, "backend_tokenizer", None)
  if not isinstance(getattr(backend, "decoder", None), decoders.ByteLevel):
    return None
  decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
  offsets, parts, emitted = [], [], 0
  for piece in tokenizer.convert_ids_to_tokens(ids):
    offsets.append(emitted + bool(decoder.getstate()[0]))  # held-back bytes: one U+FFFD
    # Like HF's ByteLevel decoder: a piece spelling bytes one character each, else its UTF-8.
    data = (bytes(_BYTE_OF_CHAR[c] for c in piece) if all(c in _BYTE_OF_CHAR for c in piece)
            else piece.encode())
    parts.append(decoder.decode(data))
    emitted += len(parts[-1])
  parts.append(decoder.decode(b"", final=True))
  return offsets if "".join(parts) == text else None
