"""Tokenizer and the reasoning prompt, from the model directory (offline)."""

from __future__ import annotations

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
