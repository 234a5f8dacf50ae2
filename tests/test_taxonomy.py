"""Failure taxonomy: one hand-written response per bucket; arithmetic claims checked by hand."""

from fractions import Fraction

import pytest

from jaxthink.data.benchmarks import PACKAGE_DATA_DIR, read_problems
from jaxthink.grading import (
  BUCKETS,
  analyze_response,
  failure_bucket,
  find_arithmetic_claims,
  grade,
)

DATA = PACKAGE_DATA_DIR  # the benchmark files shipped with jaxthink


def bucket(text, gold, hit_max_tokens=False):
  verdict = grade(text, gold, "math500", hit_max_tokens=hit_max_tokens)
  analysis = analyze_response(text, gold, verdict.correct, hit_max_tokens=hit_max_tokens)
  return failure_bucket(verdict, analysis, text)


def test_one_example_per_bucket():
  assert BUCKETS == ("overthinking", "truncated", "computation", "step omission", "logical",
                     "other")
  assert bucket("<think>\nSo 6 * 7 = 42. Hmm, wait, maybe 41.\n</think>\n\\boxed{41}", "42") == (
    "overthinking"
  )
  assert (
    bucket("<think>\nLet me try 2 * 3 = 6 and keep going with", "42", hit_max_tokens=True)
    == "truncated"
  )
  assert bucket("<think>\nSo 12 * 12 = 154.\n</think>\n\\boxed{154}", "144") == "computation"
  assert (
    bucket("<think>\nThe area is 6 * 7 = 42. So the area is 42.\n</think>\n\\boxed{42}", "21")
    == "logical"
  )
  assert bucket("<think>\nThe area is 6 * 7 = 42.\n</think>\nI am not sure.", "21") == "other"
  assert bucket("<think>\nSo 6 * 7 = 42.\n</think>\n\\boxed{42}", "42") is None


def test_priority_order():
  # Overthinking beats a false claim; truncation beats a false claim.
  assert bucket("<think>\nSo 6 * 7 = 42. But 6 * 7 = 48.\n</think>\n\\boxed{48}", "42") == (
    "overthinking"
  )
  assert bucket("<think>\nHere 2 + 2 = 5 and then", "42", hit_max_tokens=True) == "truncated"


def test_a_slip_taken_back_is_not_a_computation_error():
  # Flagged in place, or restated right later ("= 44, not 43"), the slip is not kept: the wrong
  # answer is then a logical error (every kept step is right).
  for fix in ("11 * 4 = 43 is wrong. 11 * 4 = 44.",
              "11 * 4 = 43. Wait, let me check: 40 + 4 = 44. So 11 * 4 = 44, not 43."):
    text = f"<think>\nThe area is {fix} So the area is 44.\n</think>\n\\boxed{{44}}"
    assert bucket(text, "21") == "logical", fix
  # A restatement of another value, or of another left side, takes nothing back.
  for kept in ("11 * 4 = 43. So 11 * 4 = 44, not 45.", "11 * 4 = 43. So 10 * 4 = 40, not 43."):
    assert bucket(f"<think>\n{kept}\n</think>\n\\boxed{{43}}", "21") == "computation", kept


# (text, [(claim text, holds)]) evaluated by hand.
CLAIMS = [
  ("So 3 + 4 = 7.", [("3 + 4 = 7", True)]),
  ("So 3 + 4 = 8.", [("3 + 4 = 8", False)]),
  ("Then 12 \\times 3 = 36 apples", [("12 \\times 3 = 36", True)]),
  ("$3 \\times 4 = 13 \\text{ cm}$", [("3 \\times 4 = 13", False)]),
  ("1 + 1 = 2\\sqrt{3}", []),
  ("7 \\cdot 8 = 54", [("7 \\cdot 8 = 54", False)]),
  ("6 ÷ 2 × 3 = 9", [("6 ÷ 2 × 3 = 9", True)]),  # left to right: (6 / 2) * 3
  ("12 x 3 = 36", [("12 x 3 = 36", True)]),
  ("1 – 3/4 = 1/2", [("1 – 3/4 = 1/2", False)]),
  ("1,000 + 2,500 = 3,500", [("1,000 + 2,500 = 3,500", True)]),
  ("(2 + 3) * 4 = 20.", [("(2 + 3) * 4 = 20", True)]),
  ("2 + 3 * 4 = 20", [("2 + 3 * 4 = 20", False)]),  # precedence: 14
  ("$20 + $30 = $50", [("20 + $30 = $50", True)]),  # claim starts at the number
  ("1/2 + 1/4 = 3/4", [("1/2 + 1/4 = 3/4", True)]),
  ("0.1 + 0.2 = 0.3", [("0.1 + 0.2 = 0.3", True)]),  # exact, not binary floating point
  ("10 / 3 = 3.33", [("10 / 3 = 3.33", True)]),  # rounded to the written places
  ("10 / 3 = 3.4", [("10 / 3 = 3.4", False)]),
  ("10 / 4 = 2", [("10 / 4 = 2", False)]),
  ("-3 + 5 = 2", [("-3 + 5 = 2", True)]),
  ("\\(3 + 4 = 8\\)", [("3 + 4 = 8", False)]),
  ("x = 5 - 3 = 2", [("5 - 3 = 2", True)]),
  ("a = 3 + 4 = 7, b = 2 * 2 = 5", [("3 + 4 = 7", True), ("2 * 2 = 5", False)]),
  ("so 3 + 4 = 8 + x", []),  # the right side is an expression
  ("16 - 3 - 4 = <<16-3-4=9>>9", [("16-3-4=9", True)]),
  # Not checkable: variables, exponents, LaTeX, percent, times, division by zero, equations.
  ("2x + 3 = 7", []),
  ("x - 3 = 4", []),
  ("2^3 + 1 = 9", []),
  ("\\frac{1}{2} + 1 = 2", []),
  ("50 * 2 = 100%", []),
  ("3:00 + 2 = 5:00", []),
  ("f(3+4) = 8", []),
  ("5 / 0 = 1", []),
  ("3 + 4 = 7x", []),
  ("3 + 4 == 8", []),
  ("1 + 2 = 3 + x", []),
  ("So 7 = 8", []),
  ("5 - 1 = 3 1/2", []),
  ("4 / 3 = 1 and 1/3", []),
  ("$1 / 2 = 50 cents", []),
  ("60 / 3/4 = 80", []),
  ("16,0000/10 = 16000", []),
]


@pytest.mark.parametrize("text,expected", CLAIMS)
def test_arithmetic_claims(text, expected):
  claims = find_arithmetic_claims(text)
  assert [(c.text, c.holds) for c in claims] == expected
  for claim in claims:
    assert text[claim.start : claim.end] == claim.text


def test_claim_values_are_exact_fractions():
  (claim,) = find_arithmetic_claims("We get 1/3 + 1/6 = 0.5 here")
  assert (claim.left, claim.right, claim.holds) == (Fraction(1, 2), Fraction(1, 2), True)


# Hand-reviewed: each is a literal slip in GSM8K's reference solution text (e.g. test-1024 writes
# "$32 - $20 = $300" for $320 - $20; train-6256 "10 x 1,248 = 11,480" for 12,480).
GSM8K_SLIPS = {
  "test": [("test-1024", "32 - $20 = $300")],
  "train": [
    ("train-167", "192*100=$1920"),
    ("train-198", "6/3=.5"),
    ("train-502", "3/1=1"),
    ("train-716", "100 * 0.75 = $0.75"),
    ("train-3334", "4200+$3000 = $8600"),
    ("train-3859", "5 * 3 = $15,000"),
    ("train-4504", "13 / 6 = 2"),
    ("train-4691", "2*8 = 24"),
    ("train-4973", "200*.55=100"),
    ("train-5195", "5 x 1/2 = 10"),
    ("train-5781", "7+9+1+2 = $19.50"),
    ("train-6157", "70 + 40 = 100"),
    ("train-6256", "10 x 1,248 = 11,480"),
    ("train-6700", "2 / 12 = .125"),
    ("train-6713", "3 x (8/16) = 6"),
    ("train-6760", "4+4+6 = 18"),
    ("train-7178", "1152/ 1,536 = .5"),
  ],
}


@pytest.mark.parametrize("split,minimum_claims", [("test", 4000), ("train", 20000)])
def test_gsm8k_reference_solutions(split, minimum_claims):
  """Real data: thousands of claims in the reference solutions are read and hold; the only
  false ones are the solutions' own slips."""
  claims, false = 0, []
  for problem in read_problems("gsm8k", DATA, split):
    found = find_arithmetic_claims(problem.solution)
    claims += len(found)
    false += [(problem.id, c.text) for c in found if not c.holds]
  assert claims >= minimum_claims
  assert false == GSM8K_SLIPS[split]
