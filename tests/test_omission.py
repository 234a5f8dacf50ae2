"""Computation / step omission / logical on hand-written responses: the synthetic task (step graph
from the generator) and two MATH-500 problems (quantities of the reference solution)."""

from fractions import Fraction

import pytest

from jaxthink.data.benchmarks import load_benchmark
from jaxthink.grading import analyze_response, failure_bucket, grade
from jaxthink.grading.omission import (ReferenceStep, omitted_steps, operation_steps,
                                       quantity_steps, reference_steps, synthetic_steps)
from jaxthink.tiny.task import Op, generate_problems


def bucket(text, gold, steps, benchmark="tiny"):
  verdict = grade(text, gold, benchmark)
  analysis = analyze_response(text, gold, verdict.correct)
  return failure_bucket(verdict, analysis, text, steps)


@pytest.mark.parametrize("difficulty", [1, 3, 5])
def test_reference_solution_steps_are_the_generators_step_graph(difficulty):
  # Every check kind, wrong-then-flagged steps included: the flagged slip is not a needed step.
  for ex in generate_problems("test", 300, 0, difficulty, check_fraction=0.6):
    assert operation_steps(ex.solution) == synthetic_steps(ex.ops), ex.solution


# Tom has 12 apples, buys 3 bags of 4 (two steps), gives 5 to Ann: 12 + 3 * 4 - 5 = 19.
OPS = (Op("+", 4, groups=3), Op("-", 5))
REFERENCE = ("<think>\nTom has 12 apples. 3 bags of 4 are 3 * 4 = 12.\nHe now has 12 + 12 = 24.\n"
             "He gives 5 to Ann: 24 - 5 = 19.\nSo Tom has 19 apples now. So the answer is 19.\n"
             "</think>\n\nThe answer is \\boxed{19}.")


def _tiny_response(lines, answer):
  return "<think>\n" + "\n".join(lines) + "\n</think>\n\nThe answer is \\boxed{" + answer + "}."


def test_synthetic_buckets_by_hand():
  steps = synthetic_steps(OPS)
  assert steps == (ReferenceStep("*", Fraction(4)), ReferenceStep("+", Fraction(12)),
                   ReferenceStep("-", Fraction(5)))
  assert operation_steps(REFERENCE) == steps
  assert reference_steps("tiny", "", REFERENCE, "19") == steps
  start = "Tom has 12 apples. 3 bags of 4 are 3 * 4 = 12."
  # The gift to Ann never happens: a step omission.
  omitted = _tiny_response([start, "He now has 12 + 12 = 24."], "24")
  assert omitted_steps(omitted, steps) == [ReferenceStep("-", Fraction(5))]
  assert bucket(omitted, "19", steps) == "step omission"
  # Every step done, but the gift is taken from the wrong running total: logical.
  logical = _tiny_response([start, "He now has 12 + 12 = 24.", "He gives 5 to Ann: 12 - 5 = 7."],
                           "7")
  assert omitted_steps(logical, steps) == [] and bucket(logical, "19", steps) == "logical"
  # A false claim: computation, whatever else is missing.
  wrong = _tiny_response([start, "He now has 12 + 12 = 25.", "He gives 5 to Ann: 25 - 5 = 20."],
                         "20")
  assert bucket(wrong, "19", steps) == "computation"
  # A slip the response flags itself is no computation error; here the answer is still wrong
  # because the gift was forgotten.
  flagged = _tiny_response([start, "He now has 12 + 12 = 25. Wait, 12 + 12 = 25 is wrong. "
                            "12 + 12 = 24."], "24")
  assert bucket(flagged, "19", steps) == "step omission"
  assert bucket(_tiny_response([start, "He now has 12 + 12 = 24.", "24 - 5 = 19."], "19"), "19",
                steps) is None


MATH = {p.id: p for p in load_benchmark("math500")}


def test_math500_hexagon_perimeter():
  # Reference: "its perimeter is $16\times 6 = 96$ ... $96/8 = \boxed{12}$": 96 is derived.
  p = MATH["test/prealgebra/930.json"]
  steps = quantity_steps(p.problem, p.solution, p.answer)
  assert steps == (ReferenceStep(quantity=Fraction(96)),)
  assert reference_steps("math500", p.problem, p.solution, p.answer) == steps
  skipped = ("<think>\nThe hexagon has side 16 and the octagon has 8 sides, so each side is "
             "16 / 8 = 2.\n</think>\n\nEach side is \\boxed{2} cm.")
  assert bucket(skipped, p.answer, steps, "math500") == "step omission"
  wrong_divisor = ("<think>\nThe perimeter is 16 * 6 = 96. Each side is 96 / 6 = 16.\n</think>\n\n"
                   "Each side is \\boxed{16} cm.")
  assert bucket(wrong_divisor, p.answer, steps, "math500") == "logical"
  slip = ("<think>\nThe perimeter is 16 * 6 = 96. Each side is 96 / 8 = 13.\n</think>\n\n"
          "\\boxed{13}")
  assert bucket(slip, p.answer, steps, "math500") == "computation"


def test_math500_linear_equation():
  # Reference: "... gives $3x-9 = 2x+74$ ... yield $x-9 = 74$ ... $x = \boxed{83}$": 74 derived;
  # 2 and 9 are in the problem ("Half", 3x-9), 83 is the answer.
  p = MATH["test/prealgebra/1388.json"]
  steps = quantity_steps(p.problem, p.solution, p.answer)
  assert steps == (ReferenceStep(quantity=Fraction(74)),)
  skipped = ("<think>\nHalf of 3x - 9 equals x + 37, so 3x - 9 = x + 37 and 2x = 46, x = 23.\n"
             "</think>\n\n\\boxed{23}")
  assert omitted_steps(skipped, steps) == list(steps)
  assert bucket(skipped, p.answer, steps, "math500") == "step omission"
  wrong_sign = ("<think>\nDoubling: 3x - 9 = 2x + 74, so x = 74 - 9 = 65.\n</think>\n\n"
                "\\boxed{65}")
  assert bucket(wrong_sign, p.answer, steps, "math500") == "logical"


def test_no_reference_solution_means_no_omission():
  assert reference_steps("aime24", "Find x.", "", "5") == ()
  assert bucket("<think>\nI guess.\n</think>\n\\boxed{4}", "5", ()) == "logical"
