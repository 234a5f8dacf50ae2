"""Find the final answer of a response: split off the thinking, then take the last ``\\boxed{...}``.

Offsets are character offsets into the full response text, so callers can map them to tokens.
"""

from __future__ import annotations

import dataclasses
import re

THINK_START = "<think>"
THINK_END = "</think>"

# Benchmarks whose answers are plain numbers, where the last number of the answer is a fair fallback.
LAST_NUMBER_BENCHMARKS = frozenset({"gsm8k"})


@dataclasses.dataclass(frozen=True)
class Sections:
  """A response split at ``</think>``: ``thinking`` = text[thinking_start:thinking_end],
  ``answer`` = text[answer_start:]."""

  thinking_start: int
  thinking_end: int
  answer_start: int
  closed: bool  # the response contains ``</think>``


def split_thinking(text: str, *, hit_max_tokens: bool = False) -> Sections:
  """Split a response into its thinking and its answer section.

  The thinking starts after a leading ``<think>`` (chat templates of R1-style models usually put
  that tag in the prompt) and ends at the first ``</think>``. Without ``</think>``: a response cut
  at the token budget was still thinking (all thinking, empty answer); a response that ended on its
  own never entered a thinking phase (all answer).
  """
  opened = text.find(THINK_START)
  end = text.find(THINK_END)
  start = opened + len(THINK_START) if opened != -1 and (end == -1 or opened < end) else 0
  if end != -1:
    return Sections(start, end, end + len(THINK_END), closed=True)
  if hit_max_tokens:
    return Sections(start, len(text), len(text), closed=False)
  return Sections(0, 0, 0, closed=False)


@dataclasses.dataclass(frozen=True)
class Span:
  """A piece of the response: ``text`` == response[start:end]."""

  text: str
  start: int
  end: int
  kind: str  # "boxed", "answer_is", "is_the_answer", "equals", "last_number"


_BOX_OPEN = re.compile(r"\\(?:boxed|fbox|framebox)\s*\{")


def _closing_brace(text: str, open_index: int, limit: int) -> int | None:
  """Index of the brace closing the one at ``open_index`` (escaped ``\\{``/``\\}`` don't count)."""
  depth = 0
  index = open_index
  while index < limit:
    char = text[index]
    if char == "\\":
      index += 2
      continue
    if char == "{":
      depth += 1
    elif char == "}":
      depth -= 1
      if depth == 0:
        return index
    index += 1
  return None


def find_boxed(text: str, start: int = 0, end: int | None = None) -> list[Span]:
  """Every top-level ``\\boxed{...}`` / ``\\fbox{...}`` in text[start:end] with balanced braces,
  in order; the span is the content between the braces. An unclosed box is skipped."""
  end = len(text) if end is None else end
  spans = []
  position = start
  while (found := _BOX_OPEN.search(text, position, end)) is not None:
    close = _closing_brace(text, found.end() - 1, end)
    if close is None:
      position = found.end()
      continue
    content_start, content_end = strip_span(text, found.end(), close)
    spans.append(Span(text[content_start:content_end], content_start, content_end, "boxed"))
    position = close + 1
  return spans


def strip_span(text: str, start: int, end: int) -> tuple[int, int]:
  """(start, end) moved inward past whitespace."""
  while start < end and text[start].isspace():
    start += 1
  while end > start and text[end - 1].isspace():
    end -= 1
  return start, end


# "the answer is X" / "final answer: X"; X runs to the end of the sentence.
_ANSWER_IS = re.compile(
  r"\banswer\s*(?:is|would\s+be|should\s+be|must\s+be|:)\s*:?[ \t]*(?:\*\*)?", re.IGNORECASE
)
_SENTENCE_END = re.compile(r"[.;!?](?=\s|$)|,\s|\n|\*\*|$")


def _math_or_sentence(text: str, start: int, end: int) -> tuple[int, int]:
  """Span of X right after an "answer is": a ``$...$`` / ``\\(...\\)`` group if X starts with one,
  else the rest of the sentence."""
  for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
    if text.startswith(opener, start):
      close = text.find(closer, start + len(opener), end)
      if close != -1:
        return strip_span(text, start + len(opener), close)
  stop = _SENTENCE_END.search(text, start, end)
  return strip_span(text, start, stop.start() if stop else end)


def find_answer_is(text: str, start: int = 0, end: int | None = None) -> list[Span]:
  """Every "the answer is X" (also "answer: X", "answer should be X") in text[start:end], in order.

  X must hold a digit, a backslash or be a lone letter (a choice); when X is an equation chain
  ("3 + 4 = 7") only the part after the last ``=`` is kept.
  """
  end = len(text) if end is None else end
  spans = []
  for found in _ANSWER_IS.finditer(text, start, end):
    x_start, x_end = _math_or_sentence(text, found.end(), end)
    value = text[x_start:x_end]
    if "=" in value:
      x_start, x_end = strip_span(text, x_start + value.rindex("=") + 1, x_end)
      value = text[x_start:x_end]
    if value.startswith(("\\boxed", "\\fbox")):
      continue  # counted as a boxed answer
    if re.search(r"[\d\\]", value) or re.fullmatch(r"\(?[A-Z]\)?", value):
      spans.append(Span(value, x_start, x_end, "answer_is"))
  return spans


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def find_last_number(text: str, start: int = 0, end: int | None = None) -> Span | None:
  """The last number in text[start:end] (thousands commas allowed), or None."""
  end = len(text) if end is None else end
  last = None
  for found in _NUMBER.finditer(text, start, end):
    last = found
  if last is None:
    return None
  value = last.group().rstrip(",")
  return Span(value, last.start(), last.start() + len(value), "last_number")


def extract_final_answer(
  text: str, benchmark: str | None = None, *, hit_max_tokens: bool = False
) -> Span | None:
  """The final answer of a response, from its answer section (after ``</think>``), or None.

  Order: the last balanced ``\\boxed{}``/``\\fbox{}``; else the last "the answer is X"; else, for
  benchmarks with numeric answers (gsm8k), the last number.
  """
  sections = split_thinking(text, hit_max_tokens=hit_max_tokens)
  start = sections.answer_start
  if boxed := find_boxed(text, start):
    return boxed[-1]
  if answer_is := find_answer_is(text, start):
    return answer_is[-1]
  if benchmark is not None and benchmark.lower() in LAST_NUMBER_BENCHMARKS:
    return find_last_number(text, start)
  return None
