"""Reflective worked solutions: a model organism's hesitation, re-checks and re-derivations.

Real R1-distilled models hesitate ("Wait", "Hmm", "Alternatively") where a step is hard, re-derive
it another way, and sometimes change an answer they already had. This module writes the tiny
task's solutions that way, so that the model learns *when* it may hesitate and *how* to re-check;
nothing in it knows about quantization (whether quantization makes the model hesitate more is
what the demo measures).

Each step "a op b = c" has a *hardness*: carries and borrows, crossing a hundred, a two-digit
factor. On a step of hardness h the solution

- *slips* with probability min(max_slip, slip_per_hardness · h): it writes a near miss (off by 1, 2
  or 10) and, at once, "Wait, let me check: <the step another way>. So a op b = c, not w." — or,
  when the slip is the last step and it is not caught there (1 − caught_at_step), the wrong
  candidate answer stands until the final re-check finds it;
- otherwise *doubts* the right result with probability
  min(max_check, check_base + check_per_hardness · h):
  "Wait, let me check: <another way>. Yes, a op b = c.", sometimes chained ("Alternatively, ...");
- after the candidate answer ("So the answer is N."), re-derives the whole computation with
  probability min(max_recheck, recheck_per_hardness · Σh) (always after an uncaught slip) and
  either confirms it or replaces it: "That gives N, not W. So the answer is N." With
  talk_out_per_hardness > 0 the re-derivation of a right answer can itself slip at the last step
  (probability min(max_slip, talk_out_per_hardness · h)), and the solution trusts it: "That gives
  W, not N. So the answer is W." — a right answer talked out of, as real reasoning traces
  sometimes do.

The other way to do a step is a real computation: a sum by tens then ones, a difference by adding
back, a product by tens and ones, a quotient by multiplying back. A model that re-derives wrongly
talks itself out of a right answer exactly as the study's quantized models do.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

Equation = tuple[int, str, int, int]  # (a, op, b, c): "a op b = c"

CHECK_OPENERS = (("Wait, let me check:", 0.5), ("Hmm, let me verify:", 0.25),
                 ("Wait, let me double-check:", 0.25))
RECHECK_OPENERS = (("Wait, let me recompute:", 0.6), ("Hmm, let me go over it again:", 0.4))


@dataclasses.dataclass(frozen=True)
class Reflection:
  """Rates of the reflective behaviour (see the module docstring); h is a step's hardness."""
  slip_per_hardness: float = 0.05
  max_slip: float = 0.2
  caught_at_step: float = 0.6
  check_base: float = 0.05
  check_per_hardness: float = 0.25
  max_check: float = 0.6
  chain: float = 0.4
  recheck_per_hardness: float = 0.1
  max_recheck: float = 0.6
  talk_out_per_hardness: float = 0.0

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"Reflection.{field.name} must be in [0, 1], got {value}")


# Reflection designs by name (`jaxthink.tiny.train --reflection`): `organism`, the committed model
# organism's; `overturning`, more final re-checks, which can talk a right answer out of itself.
REFLECTIONS = {
    "organism": Reflection(),
    "overturning": Reflection(recheck_per_hardness=0.2, max_recheck=0.8,
                              talk_out_per_hardness=0.15),
}


def _digits(n: int) -> list[int]:
  return [int(d) for d in reversed(str(n))]


def hardness(a: int, op: str, b: int, c: int) -> int:
  """How error-prone "a op b = c" is, by hand: carries or borrows, crossing a hundred, and for
  products and quotients the size of the numbers."""
  if op == "+":
    carries, carry = 0, 0
    da, db = _digits(a), _digits(b)
    for i in range(max(len(da), len(db))):
      carry = (da[i] if i < len(da) else 0) + (db[i] if i < len(db) else 0) + carry >= 10
      carries += carry
    return carries + (a < 100 <= c)
  if op == "-":
    borrows, borrow = 0, 0
    da, db = _digits(a), _digits(b)
    for i in range(len(da)):
      borrow = da[i] - (db[i] if i < len(db) else 0) - borrow < 0
      borrows += borrow
    return borrows + (c < 100 <= a)
  if op == "*":
    return (a >= 10) + ((a % 10) * b >= 10) + (c >= 100)
  if op == "/":
    return 1 + (a >= 100)
  raise ValueError(f"unknown operation {op!r}")


def equation_text(a: int, op: str, b: int, c: int) -> str:
  return f"{a} {op} {b} = {c}"


def check_route(a: int, op: str, b: int, c: int) -> list[str]:
  """The step computed another way (every equation true)."""
  if op == "+" and b >= 10 and b % 10:
    tens = a + b - b % 10
    return [equation_text(a, "+", b - b % 10, tens), equation_text(tens, "+", b % 10, c)]
  if op == "*" and a >= 10 and a % 10:
    x, y = (a - a % 10) * b, (a % 10) * b
    return [equation_text(a - a % 10, "*", b, x), equation_text(a % 10, "*", b, y),
            equation_text(x, "+", y, c)]
  return alternative_route(a, op, b, c)


def alternative_route(a: int, op: str, b: int, c: int) -> list[str]:
  """The step undone: the inverse operation gives back an operand."""
  inverse = {"+": (c, "-", b, a), "-": (c, "+", b, a), "*": (c, "/", b, a), "/": (c, "*", b, a)}
  return [equation_text(*inverse[op])]


def near_miss(rng: np.random.Generator, right: int) -> int:
  """A plausible slip: off by 1, 2 or 10 (a dropped carry), never right, never outside [0, 999]."""
  options = [right + s for s in (-10, -2, -1, 1, 2, 10) if 0 <= right + s < 1000]
  return options[int(rng.integers(len(options)))]


def weighted_choice(rng: np.random.Generator, options: Sequence[tuple[str, float]]) -> str:
  """One of the (text, weight) options, drawn by weight."""
  weights = np.array([w for _, w in options])
  return options[int(rng.choice(len(options), p=weights / weights.sum()))][0]


def reflective_lines(rng: np.random.Generator, lines: Sequence[tuple[str, Equation | None]],
                     conclusion: Callable[[int], str], cfg: Reflection) -> tuple[list[str], int]:
  """The thinking's lines for solution `lines` — (text with an "{eq}" slot, its equation), or a
  remark (text, None) — ending with `conclusion(answer)` and the final re-check, if any; and the
  answer the solution ends on (the right one unless a re-check talked it out of it)."""
  eqs = [eq for _, eq in lines if eq is not None]
  last = max(k for k, (_, eq) in enumerate(lines) if eq is not None)
  texts, uncaught = [], None
  for k, (text, eq) in enumerate(lines):
    if eq is None:
      texts.append(text)
      continue
    h, right, route = hardness(*eq), equation_text(*eq), check_route(*eq)
    p_slip = min(cfg.max_slip, cfg.slip_per_hardness * h)
    u = rng.random()
    if u < p_slip:
      wrong = near_miss(rng, eq[3])
      if k == last and rng.random() >= cfg.caught_at_step:
        uncaught = wrong
        texts.append(text.format(eq=equation_text(*eq[:3], wrong)))
        continue
      note = (f"{weighted_choice(rng, CHECK_OPENERS)} {', '.join(route)}. "
              f"So {right}, not {wrong}.")
      shown = equation_text(*eq[:3], wrong)
    elif u < p_slip + min(cfg.max_check, cfg.check_base + cfg.check_per_hardness * h):
      note = f"{weighted_choice(rng, CHECK_OPENERS)} {', '.join(route)}. Yes, {right}."
      alternative = alternative_route(*eq)
      if rng.random() < cfg.chain and alternative != route:
        note += f" Alternatively, {', '.join(alternative)}. Yes."
      shown = right
    else:
      texts.append(text.format(eq=right))
      continue
    # The reflection on the step's own line, or opening the next.
    texts += [f"{text.format(eq=shown)} {note}"] if rng.random() < 0.5 else [
        text.format(eq=shown), note]
  answer = eqs[-1][3]
  texts.append(conclusion(answer if uncaught is None else uncaught))
  total = sum(hardness(*eq) for eq in eqs)
  if uncaught is not None or rng.random() < min(cfg.max_recheck, cfg.recheck_per_hardness * total):
    redone = [equation_text(*eq) for eq in eqs]
    # Drawn only when talking out is on, so solutions without it keep their random stream.
    if (uncaught is None and cfg.talk_out_per_hardness > 0 and rng.random()
        < min(cfg.max_slip, cfg.talk_out_per_hardness * hardness(*eqs[-1]))):
      final = near_miss(rng, answer)
      redone[-1] = equation_text(*eqs[-1][:3], final)
      texts.append(f"{weighted_choice(rng, RECHECK_OPENERS)} {', '.join(redone)}. "
                   f"That gives {final}, not {answer}. So the answer is {final}.")
      return texts, final
    recompute = f"{weighted_choice(rng, RECHECK_OPENERS)} {', '.join(redone)}."
    if uncaught is None:
      texts.append(f"{recompute} Yes, the answer is {answer}.")
    else:
      texts.append(f"{recompute} That gives {answer}, not {uncaught}. So the answer is {answer}.")
  return texts, answer
