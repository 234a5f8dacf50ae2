"""Grade one response: extract its final answer and check it against the gold answer."""

from __future__ import annotations

import dataclasses

from jaxthink.grading.extract import extract_final_answer
from jaxthink.grading.verify import DEFAULT_TIMEOUT_S, match_answers


@dataclasses.dataclass(frozen=True)
class Grade:
  """The verdict on one response.

  correct: the final answer is equivalent to the gold answer.
  extracted: the final answer's text (None: no final answer found).
  method: how it was found: "boxed", "answer_is", "last_number" (None when not found).
  answer_start, answer_end: its character span in the response (None when not found).
  hit_max_tokens: the caller says decoding stopped at the token budget.
  truncated: hit_max_tokens and no final answer; such a response is wrong.
  timed_out: the equivalence check ran past its time limit (counted wrong).
  """

  correct: bool
  extracted: str | None
  method: str | None
  answer_start: int | None
  answer_end: int | None
  gold: str
  hit_max_tokens: bool
  truncated: bool
  timed_out: bool

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def grade(
  response_text: str,
  gold: str,
  benchmark: str | None = None,
  *,
  hit_max_tokens: bool = False,
  timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> Grade:
  """Grade ``response_text`` (the generated text, thinking included) against ``gold``.

  ``benchmark`` switches on benchmark-specific fallbacks (gsm8k: the last number);
  ``hit_max_tokens`` is whether decoding stopped at max_new_tokens rather than at an end token.
  """
  final = extract_final_answer(response_text, benchmark, hit_max_tokens=hit_max_tokens)
  if final is None:
    return Grade(
      correct=False,
      extracted=None,
      method=None,
      answer_start=None,
      answer_end=None,
      gold=gold,
      hit_max_tokens=hit_max_tokens,
      truncated=hit_max_tokens,
      timed_out=False,
    )
  match = match_answers(final.text, gold, timeout_s=timeout_s)
  return Grade(
    correct=match.equal,
    extracted=final.text,
    method=final.kind,
    answer_start=final.start,
    answer_end=final.end,
    gold=gold,
    hit_max_tokens=hit_max_tokens,
    truncated=False,
    timed_out=match.timed_out,
  )
