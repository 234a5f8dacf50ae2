"""Overthinking analysis of one response: answers reached in the thinking, then abandoned.

A response is an *overthinking error* when its final answer is wrong while some intermediate
candidate answer in its thinking was right. Candidates, in order of position:

- ``boxed``: ``\\boxed{X}`` / ``\\fbox{X}`` inside the thinking;
- ``answer_is``: "the answer is X", "answer: X", "the answer should be X";
- ``is_the_answer``: "so X is the answer" (also thus / therefore / hence);
- ``equals``: "= X" closing a concluding sentence ("So 3 + 4 = 7.", "Therefore the total is
  $2 \\cdot 9 = 18$ dollars."), where X is a number, a simple fraction, ``\\frac{}{}`` or ``\\sqrt{}``
  and the sentence starts with so / thus / therefore / hence / finally / altogether / in total /
  that gives / this gives / which gives / that means / this means.

Positions are character offsets into the whole response; with ``token_offsets`` (the character
start of each generated token) they are also token indices. A candidate is *reached* at the token
holding its last character; the tokens after that token, to the end of the response, are the tokens
spent after it.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from typing import Sequence

from jaxthink.data.markers import count_markers, load_markers
from jaxthink.grading.extract import Span, find_answer_is, find_boxed, split_thinking, strip_span
from jaxthink.grading.verify import DEFAULT_TIMEOUT_S, answers_match

_KIND_ORDER = ("boxed", "answer_is", "is_the_answer", "equals")

_IS_THE_ANSWER = re.compile(
  r"\b(?:so|thus|therefore|hence)\b,?\s+(?:\$(?P<math>[^$\n]+)\$|(?P<word>[^\s,$]+))\s+"
  r"(?:is|should\s+be|must\s+be|would\s+be)\s+(?:the|my|our)\s+(?:final\s+)?answer\b",
  re.IGNORECASE,
)

_VALUE = (
  r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?"
  r"|-?\\[dt]?frac\s*\{[^{}]*\}\s*\{[^{}]*\}"
  r"|-?\d*\s*\\sqrt\s*\{[^{}]*\}"
)
_EQUALS_CLOSING = re.compile(
  r"=\s*(?:\\?\$)?\s*(?P<x>" + _VALUE + r")\s*(?:\\?%)?\s*(?:\$|\\\)|\\\])?"
  r"(?:[ \t]+[A-Za-z][A-Za-z ]{0,30})?[ \t]*(?:[.!](?=\s|$)|\n|$)"
)
_SENTENCE_BREAK = re.compile(r"[.!?](?=\s)|\n")
_CONCLUDING = re.compile(
  r"[\s*_#>-]*(?:so|thus|therefore|hence|finally|altogether|in total|in all|that gives|"
  r"this gives|which gives|that means|this means)\b",
  re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True)
class Candidate:
  """An answer stated in the thinking. ``text`` == response[char_start:char_end]; token_start and
  token_end (inclusive) are the tokens holding its first and last character (None without
  token offsets)."""

  text: str
  kind: str
  char_start: int
  char_end: int
  token_start: int | None
  token_end: int | None
  correct: bool


@dataclasses.dataclass(frozen=True)
class OverthinkingResult:
  """The overthinking analysis of one response.

  candidates: intermediate answers in the thinking, in order of position.
  final_correct: the graded final answer was right (given by the caller).
  overthinking_error: final answer wrong and some candidate correct.
  first_correct: index into ``candidates`` of the first correct one (None if none).
  first_correct_char / first_correct_token: where that answer is reached (its last character /
      the token holding it); None without a correct candidate (token: or without offsets).
  chars_after_first_correct / tokens_after_first_correct: response left after that point.
  thinking_chars / thinking_tokens: length of the thinking (tokens: None without offsets).
  marker_counts: occurrences of each marker in the thinking; n_markers their sum.
  """

  candidates: tuple[Candidate, ...]
  final_correct: bool
  overthinking_error: bool
  first_correct: int | None
  first_correct_char: int | None
  first_correct_token: int | None
  chars_after_first_correct: int | None
  tokens_after_first_correct: int | None
  thinking_chars: int
  thinking_tokens: int | None
  marker_counts: dict[str, int]
  n_markers: int

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _is_the_answer(text: str, start: int, end: int) -> list[Span]:
  spans = []
  for found in _IS_THE_ANSWER.finditer(text, start, end):
    group = "math" if found.group("math") is not None else "word"
    x_start, x_end = strip_span(text, found.start(group), found.end(group))
    spans.append(Span(text[x_start:x_end], x_start, x_end, "is_the_answer"))
  return spans


def _equals_closing(text: str, start: int, end: int) -> list[Span]:
  # Sentence starts once for the whole thinking (a trace can hold thousands of "=").
  sentence_starts = [start] + [b.end() for b in _SENTENCE_BREAK.finditer(text, start, end)]
  spans = []
  for found in _EQUALS_CLOSING.finditer(text, start, end):
    sentence = sentence_starts[bisect.bisect_right(sentence_starts, found.start()) - 1]
    if _CONCLUDING.match(text, sentence, found.start()):
      spans.append(Span(found.group("x"), found.start("x"), found.end("x"), "equals"))
  return spans


def find_candidates(text: str, start: int = 0, end: int | None = None) -> list[Span]:
  """Candidate answers in text[start:end], ordered by position. Where two overlap, the earlier
  one stays (at the same start: boxed > answer_is > is_the_answer > equals)."""
  end = len(text) if end is None else end
  found = (
    find_boxed(text, start, end)
    + find_answer_is(text, start, end)
    + _is_the_answer(text, start, end)
    + _equals_closing(text, start, end)
  )
  found.sort(key=lambda s: (s.start, _KIND_ORDER.index(s.kind)))
  kept: list[Span] = []
  for span in found:
    if not kept or span.start >= kept[-1].end:
      kept.append(span)
  return kept


def token_index(token_offsets: Sequence[int], char: int) -> int:
  """Index of the token holding character ``char``, given each token's start offset."""
  return max(bisect.bisect_right(token_offsets, char) - 1, 0)


def _check_offsets(token_offsets: Sequence[int], text_length: int) -> None:
  if len(token_offsets) == 0:
    raise ValueError("token_offsets is empty; pass the start character of each generated token")
  if any(b < a for a, b in zip(token_offsets, token_offsets[1:])):
    raise ValueError("token_offsets must be non-decreasing character offsets")
  if token_offsets[0] < 0 or token_offsets[-1] > text_length:
    raise ValueError(
      f"token_offsets must lie in [0, {text_length}] (the response length), got "
      f"{token_offsets[0]}..{token_offsets[-1]}"
    )


def analyze_response(
  response_text: str,
  gold: str,
  final_correct: bool,
  *,
  token_offsets: Sequence[int] | None = None,
  markers: Sequence[str] | None = None,
  hit_max_tokens: bool = False,
  timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> OverthinkingResult:
  """Overthinking analysis of one response (``final_correct`` comes from its ``Grade``).

  token_offsets: ``[n_tokens]`` character start of each generated token in ``response_text``.
  markers: words/phrases to count in the thinking (default: ``jaxthink/data/markers.txt``).
  """
  if token_offsets is not None:
    token_offsets = [int(offset) for offset in token_offsets]
    _check_offsets(token_offsets, len(response_text))
  markers = tuple(markers) if markers is not None else load_markers()
  sections = split_thinking(response_text, hit_max_tokens=hit_max_tokens)
  start, end = sections.thinking_start, sections.thinking_end

  verdicts: dict[str, bool] = {}
  candidates = []
  for span in find_candidates(response_text, start, end):
    if span.text not in verdicts:
      verdicts[span.text] = answers_match(span.text, gold, timeout_s=timeout_s)
    tokens = (
      (token_index(token_offsets, span.start), token_index(token_offsets, span.end - 1))
      if token_offsets is not None
      else (None, None)
    )
    candidates.append(
      Candidate(span.text, span.kind, span.start, span.end, *tokens, correct=verdicts[span.text])
    )

  first = next((i for i, c in enumerate(candidates) if c.correct), None)
  first_char = candidates[first].char_end - 1 if first is not None else None
  first_token = candidates[first].token_end if first is not None else None
  counts = count_markers(response_text[start:end], markers)
  return OverthinkingResult(
    candidates=tuple(candidates),
    final_correct=final_correct,
    overthinking_error=(not final_correct) and first is not None,
    first_correct=first,
    first_correct_char=first_char,
    first_correct_token=first_token,
    chars_after_first_correct=(
      len(response_text) - 1 - first_char if first_char is not None else None
    ),
    tokens_after_first_correct=(
      len(token_offsets) - 1 - first_token if first_token is not None else None
    ),
    thinking_chars=end - start,
    thinking_tokens=(
      bisect.bisect_left(token_offsets, end) - bisect.bisect_left(token_offsets, start)
      if token_offsets is not None
      else None
    ),
    marker_counts=counts,
    n_markers=sum(counts.values()),
  )
