"""Grader: every real gold answer graded correct against itself; hand-written pairs; extraction;
time limits in and outside the main thread."""

import json
import signal
import threading
import time

import pytest

from jaxthink.data.benchmarks import PACKAGE_DATA_DIR, read_problems
from jaxthink.grading import answers_match, extract_final_answer, grade, split_thinking
from jaxthink.grading.verify import call_with_time_limit, math_verify_equal

DATA = PACKAGE_DATA_DIR  # the benchmark files shipped with jaxthink


def as_model_writes(answer):
  return (
    "<think>\nOkay, let me work through this carefully. Wait, maybe I should check.\n"
    "</think>\n\nPutting it together, the final answer is $\\boxed{" + answer + "}$."
  )


@pytest.mark.parametrize("name", ["math500", "aime24", "aime25", "amc23", "gsm8k"])
def test_every_gold_answer_grades_correct_against_itself(name):
  problems = read_problems(name, DATA, "test")
  failures = [
    (p.id, p.answer)
    for p in problems
    if not grade(as_model_writes(p.answer), p.answer, name).correct
  ]
  assert failures == [], f"{len(failures)} of {len(problems)} golds graded wrong: {failures[:10]}"


def test_math_verify_route_parses_every_math500_gold():
  """Identical text is equal without math-verify; this checks the route taken whenever the
  model's text differs (gold as ``$gold$``, prediction as ``\\boxed{}``) on every gold format."""
  problems = read_problems("math500", DATA, "test")
  failures = [p.answer for p in problems if not math_verify_equal(p.answer, p.answer)]
  assert failures == []


def test_gsm8k_golds_written_with_thousands_commas():
  """GSM8K writes some golds as "2,125"; a model boxing that form must be graded correct too."""
  rows = [json.loads(line) for line in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()]
  raw = [row["answer"].split("#### ")[-1].strip() for row in rows]
  problems = read_problems("gsm8k", DATA, "test")
  with_commas = [(text, p.answer) for text, p in zip(raw, problems) if "," in text]
  assert len(with_commas) == 14
  assert all(grade(as_model_writes(text), gold, "gsm8k").correct for text, gold in with_commas)


EQUIVALENT = [
  ("0.5", "\\frac{1}{2}"),
  ("\\frac12", "0.5"),
  ("1/2", "\\frac{1}{2}"),
  ("\\dfrac{3}{4}", "\\frac34"),
  ("1.25", "\\frac{5}{4}"),
  ("1,000", "1000"),
  ("2125", "2,125"),
  ("10,\\!080", "10080"),
  ("1000000", "1,000,000"),
  ("18", "18 dollars"),
  ("18", "\\$18.00"),
  ("5", "\\text{5 apples}"),
  ("5.4 \\text{ cents}", "5.4"),
  ("864 \\mbox{ inches}^2", "864 square inches"),
  ("12", "12 cm"),
  ("90^\\circ", "90"),
  ("90", "90^{\\circ}"),
  ("50", "50\\%"),
  ("025", "25"),
  ("-1", "-1.0"),
  ("27", "27.0"),
  ("(3,4]", "\\left(3, 4\\right]"),
  ("(-\\infty, 0]", "(-\\infty,0]"),
  ("\\text{(C)}", "C"),
  ("\\text{(C)}", "(C)"),
  ("\\text{(C)}", "\\textbf{(C) } 12"),
  ("\\text{Evelyn}", "Evelyn"),
  ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
  ("x=5", "5"),
  ("1,-2", "-2, 1"),
  ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)"),
  ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}"),
  ("p - q", "-q + p"),
]
NOT_EQUIVALENT = [
  ("7", "8"),
  ("\\frac{1}{2}", "0.51"),
  ("\\frac13", "0.333"),
  ("\\pi", "3.14"),
  ("3", "3.5"),
  ("(3,4]", "(3,4)"),
  ("(3,4]", "[3,4]"),
  ("\\text{(C)}", "(D)"),
  ("\\text{(C)}", "D"),
  ("\\text{Evelyn}", "Evenly"),
  ("1000", "100"),
  ("2125", "2,126"),
  ("18", "81 dollars"),
  ("-1", "1"),
  ("\\sqrt{2}", "2"),
]


@pytest.mark.parametrize("gold,predicted", EQUIVALENT)
def test_equivalent_pairs(gold, predicted):
  assert answers_match(predicted, gold)
  assert grade(as_model_writes(predicted), gold, "math500").correct


@pytest.mark.parametrize("gold,predicted", NOT_EQUIVALENT)
def test_non_equivalent_pairs(gold, predicted):
  assert not answers_match(predicted, gold)
  assert not grade(as_model_writes(predicted), gold, "math500").correct


def test_final_answer_is_last_box_after_thinking():
  text = (
    "<think>\nmaybe \\boxed{3}?</think>\nFirst \\boxed{\\frac{1}{2}}, then "
    "\\boxed{\\{1, \\frac{2}{3}\\}} is it."
  )
  final = extract_final_answer(text)
  assert final.text == "\\{1, \\frac{2}{3}\\}" and final.kind == "boxed"
  assert text[final.start : final.end] == final.text
  assert final.start == text.index("\\{1")
  # The box inside the thinking is not the final answer.
  assert extract_final_answer("<think>\\boxed{3}</think> no answer here") is None


def test_fbox_unbalanced_and_fallbacks():
  assert extract_final_answer("Done: \\fbox{42}.").text == "42"
  assert extract_final_answer("\\boxed{7} and \\boxed{8").text == "7"  # unclosed box skipped
  assert extract_final_answer("Thus, the answer is $\\frac{3}{4}$. Bye").text == "\\frac{3}{4}"
  assert extract_final_answer("So the final answer is 3 + 4 = 7.").text == "7"
  text = "She makes 9 * 2 = $18 a day, so 1,250 in total."
  assert extract_final_answer(text) is None  # last-number fallback only for gsm8k
  last = extract_final_answer(text, "gsm8k")
  assert (last.text, last.kind, last.start) == ("1,250", "last_number", text.index("1,250"))
  assert grade(text, "1250", "gsm8k").correct
  assert not grade(text, "18", "gsm8k").correct


def test_truncated_response_is_wrong_and_flagged():
  cut = "<think>\nSo the answer is \\boxed{7}. Wait, let me check again 3 + "
  result = grade(cut, "7", "math500", hit_max_tokens=True)
  assert (result.correct, result.truncated, result.extracted) == (False, True, None)
  # Cut after the final answer was written: graded as usual, not truncated.
  done = "<think>\nhmm</think> So \\boxed{7}. Let me also"
  result = grade(done, "7", "math500", hit_max_tokens=True)
  assert (result.correct, result.truncated, result.hit_max_tokens) == (True, False, True)
  # Ended by itself with no answer: wrong, but not truncated.
  result = grade("<think>x</think> I am not sure.", "7", "math500")
  assert (result.correct, result.truncated) == (False, False)


def test_split_thinking_rules():
  text = "<think>abc</think>def"
  sections = split_thinking(text)
  assert (sections.thinking_start, sections.thinking_end, sections.answer_start) == (7, 10, 18)
  assert text[sections.thinking_start:sections.thinking_end] == "abc"
  assert (text[sections.answer_start:], sections.closed) == ("def", True)
  # Without a leading <think> (the chat template put it in the prompt) the thinking starts at 0.
  bare = split_thinking("abc</think>def")
  assert (bare.thinking_start, bare.thinking_end, bare.answer_start) == (0, 3, 11)
  cut = split_thinking("abc", hit_max_tokens=True)
  assert (cut.thinking_end, cut.answer_start, cut.closed) == (3, 3, False)
  plain = split_thinking("abc")
  assert (plain.thinking_end, plain.answer_start) == (0, 0)


def test_time_limit_in_main_thread():
  start = time.perf_counter()
  assert call_with_time_limit(time.sleep, 0.2, 5) == (False, None)
  assert time.perf_counter() - start < 2
  assert call_with_time_limit(sum, 1.0, [1, 2]) == (True, 3)
  assert signal.getitimer(signal.ITIMER_REAL)[0] == 0  # timer disarmed afterwards
  assert signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.default_int_handler, None)


def test_grading_outside_main_thread_uses_worker_process():
  results = {}

  def work():
    results["equal"] = answers_match("\\frac{1}{2}", "0.5", timeout_s=5)
    results["different"] = answers_match("0.51", "\\frac{1}{2}", timeout_s=5)
    results["grade"] = grade(as_model_writes("1,000"), "1000", "gsm8k").correct

  thread = threading.Thread(target=work)
  thread.start()
  thread.join(timeout=300)
  assert results == {"equal": True, "different": False, "grade": True}
