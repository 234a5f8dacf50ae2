"""Failure taxonomy: every wrong response falls in exactly one bucket.

Priority order (the first that applies), after "Quantization Meets Reasoning" (arXiv 2501.03035)
plus the overthinking study's buckets:

1. ``overthinking``: a correct answer appeared in the thinking and was abandoned;
2. ``truncated``: no final answer within the token budget;
3. ``computation``: some claim "a op b = c" in the response is false (exact arithmetic) and the
   response never retracts it ("18 + 9 = 29 is wrong", or later "18 + 9 = 27, not 29");
4. ``other``: no final answer found although the response ended (format; an LLM judge may label
   these);
5. ``step omission``: the final answer is reached while a step the reference solution needs is
   missing (``jaxthink.grading.omission``: on the synthetic task exactly, from the generator's
   step graph; on MATH-style problems, derived quantities of the reference that never appear);
6. ``logical``: the rest: a wrong answer whose steps are each arithmetically right and complete.

Arithmetic claims: ``<expression> = <number>`` where the left side holds only numbers (``1,000``
thousands commas, decimals, ``$`` signs), + - * / × ÷ x ``\\times`` ``\\cdot`` ``\\div`` and
parentheses, with at least one operator, and the right side is one number or a fraction ``a/b``;
evaluated exactly with fractions. A right side written as a decimal counts as true when it is the
exact value rounded to its decimal places ("10 / 3 = 3.33"). Anything the reader cannot be sure of
is skipped rather than guessed at: variables, exponents, LaTeX commands, percent signs, mixed
numbers ("3 1/2", "1 and 1/3"), chained divisions ("60 / 3/4": ÷ 3/4 or ÷ 3 then ÷ 4?), a right
side that is an expression, unit changes ("$1 / 2 = 50 cents"). On GSM8K's reference solutions
every claim it flags is a real slip of the solution text (tests/test_taxonomy.py lists them).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from fractions import Fraction
from typing import Sequence

from jaxthink.grading.grade import Grade
from jaxthink.grading.omission import ReferenceStep, omitted_steps
from jaxthink.grading.overthinking import OverthinkingResult

BUCKETS = ("overthinking", "truncated", "computation", "step omission", "logical", "other")

# Same-length replacements keep character offsets valid.
_OPERATOR_SPELLINGS = {
  "\\times": "*",
  "\\cdot": "*",
  "\\div": "/",
  "×": "*",
  "·": "*",
  "÷": "/",
  "−": "-",
  "–": "-",
  "\\left(": "(",
  "\\right)": ")",
  "\\(": " ",
  "\\)": " ",
  "\\[": " ",
  "\\]": " ",
}
_SIDE_CHARS = frozenset("0123456789.,+-*/()$ \t")
_TOKEN = re.compile(r"\s*(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+|[-+*/()])")
# A comma that is not a thousands separator ends an expression ("for 3, 4 + 5 = 9").
_LIST_COMMA = re.compile(r",(?!\d{3}(?!\d))")
_LEFT_NEIGHBOURS = frozenset("\n=<>[{")
# "12 x 3": an x between numbers is a multiplication sign.
_TIMES_X = re.compile(r"(?<=[\d$)¼½¾⅓⅔⅛])(\s*)x(?=\s*\(?\$?\d)")
# Mixed numbers in words ("1 and 1/3") and units smaller than the left side's ("= 50 cents").
_AND_NUMBER_AFTER = re.compile(r"\s*and\s+\(?\$?\d")
_AND_NUMBER_BEFORE = re.compile(r"\d\s+and\s*$")
_CONVERSION_UNITS = re.compile(
  r"\s*(?:cents?|percent|minutes?|seconds?|inches|inch|cm|mm|grams?|"
  r"ounces?|pence)\b",
  re.IGNORECASE,
)
# "12 + 3 = 14 is wrong": a slip the response flags itself is not a false claim it keeps.
_RETRACTED = re.compile(r"\s*(?:is|was)\s+(?:wrong|incorrect|not right)\b", re.IGNORECASE)
# "12 + 3 = 15, not 14": a later true claim on the same left side takes the slip back.
_NOT_VALUE = re.compile(r",?\s+not\s+(\d[\d,]*(?:\.\d+)?)(?![\d,]*\s*[*/+-])")
_SIMPLE_NUMBER = re.compile(r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:/\d+)?")


@dataclasses.dataclass(frozen=True)
class ArithmeticClaim:
  """``left = right`` found at response[start:end]; ``holds`` says whether it is true."""

  text: str
  start: int
  end: int
  left: Fraction
  right: Fraction
  holds: bool


def _spell_operators(text: str) -> str:
  for spelling, operator in _OPERATOR_SPELLINGS.items():
    text = text.replace(spelling, operator.ljust(len(spelling)))
  return _TIMES_X.sub(r"\1*", text)


def _tokens(side: str) -> list[str] | None:
  side = side.replace("$", " ")
  tokens, position = [], 0
  while position < len(side):
    found = _TOKEN.match(side, position)
    if found is None:
      if side[position:].strip():
        return None
      break
    tokens.append(found.group(1))
    position = found.end()
  return tokens


def _evaluate(node: ast.AST) -> Fraction:
  if isinstance(node, ast.Expression):
    return _evaluate(node.body)
  if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
    return Fraction(repr(node.value))  # repr round-trips the written decimal ("0.1" -> 1/10)
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
    value = _evaluate(node.operand)
    return -value if isinstance(node.op, ast.USub) else value
  if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
    left, right = _evaluate(node.left), _evaluate(node.right)
    if isinstance(node.op, ast.Add):
      return left + right
    if isinstance(node.op, ast.Sub):
      return left - right
    if isinstance(node.op, ast.Mult):
      return left * right
    return left / right
  raise ValueError("not simple arithmetic")


def _value(tokens: list[str]) -> Fraction | None:
  if not tokens:
    return None
  try:
    # Python refuses leading zeros ("025"); drop them and the thousands commas. Spaces between
    # tokens keep "3 1/2" and "400 000" from fusing into one number: they fail to parse.
    source = " ".join(re.sub(r"(?<![\d.])0+(?=\d)", "", t.replace(",", "")) for t in tokens)
    return _evaluate(ast.parse(source, mode="eval"))
  except (SyntaxError, ValueError, ZeroDivisionError):
    return None


def _chained_division(tokens: list[str]) -> bool:
  """``a / b/c``: plain text writers mean a / (b/c) as often as (a/b) / c."""
  divisions = [i for i, t in enumerate(tokens) if t == "/"]
  return any(j - i == 2 for i, j in zip(divisions, divisions[1:]))


def _has_binary_operator(tokens: list[str]) -> bool:
  return any(t in "+-*/" and i > 0 and tokens[i - 1] not in "+-*/(" for i, t in enumerate(tokens))


def _left_side(text: str, equals: int) -> tuple[int, list[str]] | None:
  start = equals
  while start > 0 and text[start - 1] in _SIDE_CHARS:
    start -= 1
  side = text[start:equals]
  if commas := list(_LIST_COMMA.finditer(side)):
    start += commas[-1].end()
    side = text[start:equals]
  stripped = side.lstrip(" \t$")
  if not stripped:
    return None
  adjacent = side[0] not in " \t"
  if adjacent and start > 0 and text[start - 1] not in _LEFT_NEIGHBOURS:
    return None  # glued to a variable, a brace, a colon, a comma ("5x+3", "3:00+2", "16,0000")
  if _AND_NUMBER_BEFORE.search(text, max(0, start - 40), start):
    return None  # "1 and 1/4 = ..."
  if stripped[0] in "+*/":
    return None  # continues something we did not read ("2x + 3 = 7")
  if stripped[0] == "-":
    before = text[max(0, start - 40) : start].rstrip()
    if before and (before[-1].isalnum() or before[-1] in ")}]"):
      return None  # a binary minus after a variable ("x - 3 = 4")
  tokens = _tokens(side)
  if tokens is None or not _has_binary_operator(tokens) or _chained_division(tokens):
    return None
  return start + len(side) - len(side.lstrip(" \t$")), tokens


def _right_side(text: str, equals: int) -> tuple[int, list[str]] | None:
  end = equals + 1
  while end < len(text) and text[end] in _SIDE_CHARS:
    end += 1
  side = text[equals + 1 : end]
  if comma := _LIST_COMMA.search(side):
    side = side[: comma.start()]
    end = equals + 1 + len(side)
  else:
    following = text[end] if end < len(text) else " "
    trimmed = side.rstrip()
    glued = trimmed == side and (following.isalnum() or following in "{\\")
    if glued or following in "^_%":
      return None  # "= 7x", "= 2\\sqrt{3}", "= 2^3", "= 50%"
  if _AND_NUMBER_AFTER.match(text, end) or _CONVERSION_UNITS.match(text, end):
    return None  # "= 1 and 1/3", "= 50 cents"
  side = side.rstrip(" \t$")
  while side.endswith("."):  # a sentence's full stop, not a decimal point
    side = side[:-1].rstrip(" \t$")
  if not _SIMPLE_NUMBER.fullmatch(re.sub(r"\s*/\s*", "/", side.replace("$", "").strip())):
    return None  # an expression or "3 1/2": not a single value
  return equals + 1 + len(side), _tokens(side)


def _decimals(tokens: list[str]) -> int | None:
  """Decimal places of a right side that is one decimal number (for rounding), else None."""
  if len(tokens) == 1 and "." in tokens[0]:
    return len(tokens[0].split(".")[1])
  if len(tokens) == 2 and tokens[0] == "-" and "." in tokens[1]:
    return len(tokens[1].split(".")[1])
  return None


def find_arithmetic_claims(text: str) -> list[ArithmeticClaim]:
  """Every checkable arithmetic claim in ``text``, in order (see the module docstring)."""
  spelled = _spell_operators(text)
  claims = []
  for found in re.finditer(r"(?<![=<>!])=(?!=)", spelled):
    left = _left_side(spelled, found.start())
    right = _right_side(spelled, found.start())
    if left is None or right is None:
      continue
    (start, left_tokens), (end, right_tokens) = left, right
    left_value, right_value = _value(left_tokens), _value(right_tokens)
    if left_value is None or right_value is None:
      continue
    places = _decimals(right_tokens)
    if places is None:
      holds = left_value == right_value
    else:
      holds = abs(left_value - right_value) <= Fraction(1, 2 * 10**places)
    claims.append(ArithmeticClaim(text[start:end], start, end, left_value, right_value, holds))
  return claims


def failure_bucket(
  grade: Grade, overthinking: OverthinkingResult, response_text: str,
  reference_steps: Sequence[ReferenceStep] = (),
) -> str | None:
  """The bucket of a wrong response (see ``BUCKETS``), or None for a correct one.

  ``reference_steps``: the steps the reference solution needs (``omission.reference_steps``);
  without them no response is a step omission.
  """
  if grade.correct:
    return None
  if overthinking.overthinking_error:
    return "overthinking"
  if grade.truncated:
    return "truncated"
  claims = find_arithmetic_claims(response_text)
  false = [c for c in claims if not c.holds]
  retracted = {(c.left, c.right) for c in false if _RETRACTED.match(response_text, c.end)}
  retracted |= {(c.left, Fraction(m.group(1).replace(",", ""))) for c in claims
                if c.holds and (m := _NOT_VALUE.match(response_text, c.end))}
  if any((c.left, c.right) not in retracted for c in false):
    return "computation"
  if grade.extracted is None:
    return "other"
  if omitted_steps(response_text, reference_steps):
    return "step omission"
  return "logical"
