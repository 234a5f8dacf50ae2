"""Step omission: the steps a reference solution needs, and which of them a response leaves out.

Two kinds of reference step:

* an *operation* (`op`, `amount`): on the embedded model's synthetic task every step is one
  "a op b = c" of whole numbers (`jaxthink.tiny.task`), so the true ones in the reference solution
  are exactly the generator's step graph (`synthetic_steps` builds the same list from the
  computation itself). A response omits the step when none of its true "a op b = c" applies that
  operation to that amount (it may merge steps, skip one, or never do it);
* a *quantity*: on MATH-style solutions, the plain numbers the reference derives ("= 96") that are
  neither given in the problem nor the final answer. A response omits it when the number never
  appears in it.
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction
from typing import Sequence

# "a op b = c" with whole numbers: the synthetic task's one-operation steps.
_OPERATION = re.compile(r"(?<![\d.])(\d+) ?([-+*/]) ?(\d+) ?= ?(\d+)(?![\d.]\d)")
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
          "/": lambda a, b: a / b if b else None}
# A number right after "=" that is the whole right side (not "= 2x + 74", "= 2^3", "= \frac").
_DERIVED = re.compile(r"=\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)(?![\d.,]*\s*[A-Za-z\\^_({])")
_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")


@dataclasses.dataclass(frozen=True)
class ReferenceStep:
  """An operation step (`op`, `amount`) or a derived `quantity` (exactly one is set)."""

  op: str | None = None
  amount: Fraction | None = None
  quantity: Fraction | None = None

  def describe(self) -> str:
    if self.quantity is not None:
      return f"quantity {_text(self.quantity)}"
    return f"step '{self.op} {_text(self.amount)}'"


def _text(x: Fraction) -> str:
  return str(x.numerator) if x.denominator == 1 else f"{float(x):g}"


def _number(text: str) -> Fraction:
  return Fraction(text.replace(",", ""))


def _operations(text: str) -> list[tuple[str, Fraction]]:
  """(operator, right operand) of each true "a op b = c" in `text`, in order."""
  out = []
  for found in _OPERATION.finditer(text):
    a, op, b, c = found.groups()
    if _APPLY[op](Fraction(a), Fraction(b)) == Fraction(c):
      out.append((op, Fraction(b)))
  return out


def operation_steps(reference_solution: str) -> tuple[ReferenceStep, ...]:
  """The one-operation steps of a synthetic-task reference solution (its true claims; a
  deliberately wrong, flagged step is false and so not needed), first occurrence of each."""
  seen = dict.fromkeys(_operations(reference_solution))
  return tuple(ReferenceStep(op=op, amount=amount) for op, amount in seen)


def synthetic_steps(ops: Sequence) -> tuple[ReferenceStep, ...]:
  """The generator's step graph of a computation (`jaxthink.tiny.task.Op`s): one step per
  operation, two for "k bags of m" (k * m, then adding or removing the product)."""
  steps = []
  for op in ops:
    if op.groups > 1:
      steps.append(ReferenceStep(op="*", amount=Fraction(op.amount)))
      steps.append(ReferenceStep(op=op.kind, amount=Fraction(op.groups * op.amount)))
    else:
      steps.append(ReferenceStep(op=op.kind, amount=Fraction(op.amount)))
  return tuple(dict.fromkeys(steps))


def quantity_steps(problem: str, reference_solution: str, answer: str) -> tuple[ReferenceStep, ...]:
  """The numbers a MATH-style reference solution derives after "=" that the problem does not give
  and that are not the final answer."""
  clean = lambda text: text.replace("\\!", "").replace("{,}", ",")
  given = {_number(n) for n in _NUMBER.findall(clean(problem))}
  final = {_number(n) for n in _NUMBER.findall(clean(answer))}
  derived = dict.fromkeys(_number(m.group(1)) for m in _DERIVED.finditer(clean(reference_solution)))
  return tuple(ReferenceStep(quantity=q) for q in derived if q not in given and q not in final)


def omitted_steps(response: str, steps: Sequence[ReferenceStep]) -> list[ReferenceStep]:
  """The reference steps `response` leaves out (see the module docstring)."""
  operations = set(_operations(response))
  numbers = {_number(n) for n in _NUMBER.findall(response.replace("\\!", ""))}
  return [s for s in steps
          if (s.quantity is not None and s.quantity not in numbers)
          or (s.quantity is None and (s.op, s.amount) not in operations)]


def reference_steps(benchmark: str, problem: str, solution: str,
                    answer: str) -> tuple[ReferenceStep, ...]:
  """The steps a benchmark problem's reference solution needs: operations on the synthetic task
  (`tiny`), derived quantities elsewhere (none without a reference solution)."""
  if not solution:
    return ()
  if benchmark == "tiny":
    return operation_steps(solution)
  return quantity_steps(problem, solution, answer)
