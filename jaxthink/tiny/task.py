"""Synthetic multi-step arithmetic word problems with worked solutions in the reasoning format.

A problem is a start quantity and a chain of 2–6 operations on it (add, subtract, multiply, exact
divide; an add or subtract may come as "k bags of m", which is two operations), with distractor
sentences about quantities that don't matter. The worked solution thinks one operation per line
inside `<think>` … `</think>`, sometimes checks one step — confirming it, or catching a
deliberately wrong result and going on with the right one — and ends with
"The answer is \\boxed{N}.".

Train and test are drawn from different seed streams, and a problem goes to the test split only
when a hash of its arithmetic (start and operations, not the wording) says so, so the splits share
neither a problem text nor a computation whatever their sizes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from jaxthink.tiny.reflection import (Reflection, equation_text as _eq, near_miss, reflective_lines,
                                      weighted_choice as _weighted)

SPLITS = {"train": 0, "test": 1}
# One computation in TEST_SHARE goes to the test split.
TEST_SHARE = 5


@dataclasses.dataclass(frozen=True)
class Difficulty:
  """Knobs of one difficulty level; every intermediate value stays in [1, max_value]."""
  min_ops: int
  max_ops: int
  max_start: int
  max_amount: int        # largest number added or subtracted in one go
  max_factor: int        # largest multiplier / divisor / number of bags
  max_value: int
  max_distractors: int
  groups: bool           # "k bags of m" steps (two operations each)


DIFFICULTIES = {
    1: Difficulty(2, 2, 20, 10, 3, 99, 1, False),
    2: Difficulty(2, 3, 50, 20, 4, 199, 1, True),
    3: Difficulty(3, 4, 100, 50, 5, 499, 2, True),
    4: Difficulty(4, 5, 200, 100, 6, 999, 2, True),
    5: Difficulty(5, 6, 500, 200, 9, 999, 3, True),
}


@dataclasses.dataclass(frozen=True)
class Op:
  """One event on the running quantity: value <kind>= groups * amount.

  `kind` is "+", "-", "*" or "/" (exact); `groups` > 1 only for "+" and "-" ("buys 3 bags with
  6 in each" is Op("+", 6, groups=3)); for "*" and "/" `amount` is the factor.
  """
  kind: str
  amount: int
  groups: int = 1

  @property
  def n_operations(self) -> int:
    return 2 if self.groups > 1 else 1


@dataclasses.dataclass(frozen=True)
class Example:
  """One problem. id/problem/answer/solution are the benchmark fields (as in
  jaxthink/data/benchmark_files); start/ops are the computation itself, and check says which
  self-check the solution holds: "none", "confirm" or "fix" ("reflect": a reflective solution)."""
  id: str
  problem: str
  answer: str
  solution: str
  start: int
  ops: tuple[Op, ...]
  check: str


PEOPLE = (("Tom", "he"), ("Ann", "she"), ("Sam", "he"), ("Mia", "she"), ("Ben", "he"),
          ("Lily", "she"), ("Max", "he"), ("Emma", "she"), ("Leo", "he"), ("Zoe", "she"),
          ("Jack", "he"), ("Lucy", "she"), ("Noah", "he"), ("Ella", "she"), ("Adam", "he"),
          ("Rosa", "she"), ("Paul", "he"), ("Nina", "she"), ("Omar", "he"), ("Kate", "she"))
ITEMS = ("apples", "marbles", "stickers", "coins", "books", "pencils", "cookies", "cards",
         "shells", "stamps", "eggs", "toys", "balloons", "candies", "flowers", "beads", "rocks",
         "blocks", "buttons", "pens")
OBJECT = {"he": "him", "she": "her"}
POSSESSIVE = {"he": "his", "she": "her"}

# Problem sentence and solution line per event; {eq} is where "a op b = c" goes.
ADD = (("{N} buys {n} more {item}.", "{P} buys {n} more: {eq}."),
       ("{M} gives {N} {n} more {item}.", "{M} gives {o} {n} more: {eq}."),
       ("{N} finds {n} more {item}.", "{P} finds {n} more: {eq}."))
SUB = (("{N} gives {n} {item} to {M}.", "{P} gives {n} to {M}: {eq}."),
       ("{N} loses {n} {item}.", "{P} loses {n}: {eq}."),
       ("{N} sells {n} {item}.", "{P} sells {n}: {eq}."))
MUL = (("Then {N} has {n} times as many {item} as before.", "{P} has {n} times as many: {eq}."),)
DIV = (("{N} splits the {item} into {n} equal groups and keeps one group.",
        "{P} keeps one of {n} equal groups: {eq}."),)
GROUP_ADD = (("{N} buys {k} bags with {n} {item} in each bag.", "{k} bags of {n} are {eq}.",
              "{P} now has {eq}."),)
GROUP_SUB = (("{N} gives {k} friends {n} {item} each.", "{k} friends get {n} each: {eq}.",
              "{P} has {eq} left."),)
# Distractors: problem sentence, and an optional remark in the solution.
DISTRACTORS = (("{M} has {n} {other}.", "Hmm, the {other} of {M} do not matter here."),
               ("{N} also has {n} {other}.", "But the {n} {other} are not {item}."),
               ("{M} is {n} years old.", "Hmm, the age of {M} does not matter here."),
               ("The shop is {n} miles away.", "Hmm, the {n} miles do not matter here."))
CONFIRM = (("Wait, let me check: {eq}. Yes.", 0.6), ("Let me double-check: {eq}. Yes.", 0.2),
           ("Hmm, let me verify: {eq}. Yes.", 0.2))
FIX = (("Wait, {bad} is wrong. {eq}.", 0.6), ("Hmm, {bad} is wrong. Actually, {eq}.", 0.2),
       ("Hold on, {bad} is wrong. {eq}.", 0.2))
OP_WEIGHTS = {"+": 3.0, "-": 3.0, "*": 2.0, "/": 2.0, "g+": 1.0, "g-": 1.0}


def apply_op(value: int, op: Op) -> int:
  """The running value after `op`; exact integer arithmetic."""
  if op.kind == "+":
    return value + op.groups * op.amount
  if op.kind == "-":
    return value - op.groups * op.amount
  if op.kind == "*":
    return value * op.amount
  if op.kind == "/":
    if value % op.amount:
      raise ValueError(f"{value} / {op.amount} is not exact")
    return value // op.amount
  raise ValueError(f"unknown operation {op.kind!r}; expected one of + - * /")


def _pick(rng: np.random.Generator, seq: Sequence):
  return seq[int(rng.integers(len(seq)))]


def _next_op(rng: np.random.Generator, value: int, budget: int, d: Difficulty) -> Op:
  """A random operation valid at `value` using at most `budget` operations."""
  headroom = d.max_value - value
  divisors = [f for f in range(2, d.max_factor + 1) if value % f == 0]
  max_bags = min(d.max_factor, 5)
  per_bag = min(d.max_amount, 12)
  # Amounts start at 2 so that every item count is plural ("buys 2 more apples").
  valid = {"+": headroom >= 2, "-": value >= 3, "*": value * 2 <= d.max_value, "/": bool(divisors),
           "g+": d.groups and budget >= 2 and headroom >= 4,
           "g-": d.groups and budget >= 2 and value >= 5}
  kind = _weighted(rng, [(k, w) for k, w in OP_WEIGHTS.items() if valid[k]])
  if kind == "+":
    return Op("+", int(rng.integers(2, min(d.max_amount, headroom) + 1)))
  if kind == "-":
    return Op("-", int(rng.integers(2, min(d.max_amount, value - 1) + 1)))
  if kind == "*":
    return Op("*", int(rng.integers(2, min(d.max_factor, d.max_value // value) + 1)))
  if kind == "/":
    return Op("/", _pick(rng, divisors))
  room = headroom if kind == "g+" else value - 1
  bags = int(rng.integers(2, min(max_bags, room // 2) + 1))
  each = int(rng.integers(2, min(per_bag, room // bags) + 1))
  return Op(kind[1], each, groups=bags)


def _computation(rng: np.random.Generator, d: Difficulty) -> tuple[int, tuple[Op, ...]]:
  budget = int(rng.integers(d.min_ops, d.max_ops + 1))
  start = int(rng.integers(2, d.max_start + 1))
  value, ops = start, []
  while budget > 0:
    op = _next_op(rng, value, budget, d)
    value = apply_op(value, op)
    ops.append(op)
    budget -= op.n_operations
  return start, tuple(ops)


def _split_of(start: int, ops: Sequence[Op]) -> str:
  key = f"{start}|" + ";".join(f"{op.kind}{op.groups}x{op.amount}" for op in ops)
  digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
  return "test" if digest % TEST_SHARE == 0 else "train"


def _checked_lines(rng: np.random.Generator, lines, check: str) -> list[str]:
  """The thinking's lines with at most one self-check ("none", "confirm" or "fix")."""
  checked = _pick(rng, [k for k, (_, eq) in enumerate(lines) if eq]) if check != "none" else -1
  inline = rng.random() < 0.5  # " Wait" on the step's own line, or "Wait" opening the next
  texts = []
  for k, (text, eq) in enumerate(lines):
    if eq is None:
      texts.append(text)
      continue
    right = _eq(*eq)
    if k != checked:
      texts.append(text.format(eq=right))
      continue
    if check == "confirm":
      shown, note = right, _weighted(rng, CONFIRM).format(eq=right)
    else:
      shown = _eq(*eq[:3], near_miss(rng, eq[3]))
      note = _weighted(rng, FIX).format(bad=shown, eq=right)
    texts += [f"{text.format(eq=shown)} {note}"] if inline else [text.format(eq=shown), note]
  return texts


def _render(rng: np.random.Generator, start: int, ops: tuple[Op, ...], d: Difficulty,
            check: str, remark_fraction: float,
            reflection: Reflection | None = None) -> tuple[str, str]:
  """(problem, solution) for one computation; with `reflection`, the solution reflects as
  `jaxthink.tiny.reflection` describes (and `check` is not used)."""
  i, j = rng.choice(len(PEOPLE), size=2, replace=False)
  (name, pronoun), other_name = PEOPLE[i], PEOPLE[j][0]
  i, j = rng.choice(len(ITEMS), size=2, replace=False)
  item, other = ITEMS[i], ITEMS[j]
  # eq stays a slot, filled once the line's (possibly wrong) equation is known.
  fill = dict(N=name, M=other_name, P=pronoun.capitalize(), o=OBJECT[pronoun], item=item,
              other=other, eq="{eq}")
  sentences = [f"{name} has {start} {item}."]
  # Solution lines: (text with an {eq} slot, (a, kind, b, c)), or a remark (text, None).
  lines: list[tuple[str, tuple[int, str, int, int] | None]] = []
  first_line_of_op = []
  value = start
  for op in ops:
    result = apply_op(value, op)
    first_line_of_op.append(len(lines))
    if op.groups > 1:
      problem_t, bags_t, total_t = _pick(rng, GROUP_ADD if op.kind == "+" else GROUP_SUB)
      f = dict(fill, k=op.groups, n=op.amount)
      total = op.groups * op.amount
      lines.append((bags_t.format(**f), (op.groups, "*", op.amount, total)))
      lines.append((total_t.format(**f), (value, op.kind, total, result)))
    else:
      problem_t, line_t = _pick(rng, {"+": ADD, "-": SUB, "*": MUL, "/": DIV}[op.kind])
      f = dict(fill, n=op.amount)
      lines.append((line_t.format(**f), (value, op.kind, op.amount, result)))
    sentences.append(problem_t.format(**f))
    value = result
  first_line_of_op.append(len(lines))

  # Distractors go after an event (sentence k >= 1 is ops[k - 1]); a remark about one goes
  # where the solution reaches that point. Inserting from the back keeps the indices valid.
  n_distractors = int(rng.integers(0, d.max_distractors + 1))
  places = sorted((int(rng.integers(1, len(ops) + 1)) for _ in range(n_distractors)), reverse=True)
  kinds = rng.choice(len(DISTRACTORS), size=n_distractors, replace=False)  # no contradictions
  for after, kind in zip(places, kinds):
    sentence_t, remark_t = DISTRACTORS[kind]
    f = dict(fill, n=int(rng.integers(2, d.max_amount + 1)))
    sentences.insert(after + 1, sentence_t.format(**f))
    if rng.random() < remark_fraction:
      lines.insert(first_line_of_op[after], (remark_t.format(**f), None))
  sentences.append(f"How many {item} does {name} have now?")

  # A concluding sentence that states the answer inside the thinking, as reasoning models do:
  # the overthinking analysis sees it as an intermediate candidate answer.
  conclusion = lambda v: f"So {name} has {v} {item} now. So the answer is {v}."
  if reflection is None:
    texts, final = _checked_lines(rng, lines, check) + [conclusion(value)], value
  else:
    texts, final = reflective_lines(rng, lines, conclusion, reflection)
  texts[0] = f"{name} has {start} {item}. {texts[0]}"
  solution = ("<think>\n" + "\n".join(texts) + "\n</think>\n\n"
              + f"The answer is \\boxed{{{final}}}.")
  return " ".join(sentences), solution


def generate_problems(split: str, n: int, seed: int, difficulty: int, *,
                      check_fraction: float = 0.3, fix_fraction: float = 0.5,
                      remark_fraction: float = 0.3,
                      reflection: Reflection | None = None) -> list[Example]:
  """`n` distinct problems of `split` ("train" or "test"), reproducible from `seed`.

  `difficulty` (1–5, see DIFFICULTIES) sets the number of operations and the size of numbers.
  A share `check_fraction` of solutions holds one self-check, of which a share `fix_fraction`
  catches a deliberately wrong step (the others confirm a right one); a share `remark_fraction`
  of distractors gets a remark in the solution. With `reflection`, solutions instead hesitate,
  re-check and re-derive as `jaxthink.tiny.reflection` describes (`check` is then "reflect").
  The first k problems don't depend on n.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLITS)}")
  if difficulty not in DIFFICULTIES:
    raise ValueError(f"unknown difficulty {difficulty!r}; use one of {sorted(DIFFICULTIES)}")
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  for label, x in (("check_fraction", check_fraction), ("fix_fraction", fix_fraction),
                   ("remark_fraction", remark_fraction)):
    if not 0.0 <= x <= 1.0:
      raise ValueError(f"{label} must be in [0, 1], got {x}")
  d = DIFFICULTIES[difficulty]
  rng = np.random.default_rng([seed, SPLITS[split], difficulty])
  examples: list[Example] = []
  seen: set[str] = set()
  while len(examples) < n:
    start, ops = _computation(rng, d)
    if _split_of(start, ops) != split:
      continue
    check = "none" if reflection is None else "reflect"
    if reflection is None and rng.random() < check_fraction:
      check = "fix" if rng.random() < fix_fraction else "confirm"
    problem, solution = _render(rng, start, ops, d, check, remark_fraction, reflection)
    if problem in seen:
      continue
    seen.add(problem)
    answer = start
    for op in ops:
      answer = apply_op(answer, op)
    examples.append(Example(id=f"tiny-d{difficulty}-{split}-s{seed}-{len(examples):05d}",
                            problem=problem, answer=str(answer), solution=solution,
                            start=start, ops=ops, check=check))
  return examples


BENCHMARK_FIELDS = ("id", "problem", "answer", "solution")


def write_jsonl(path: str | Path, examples: Iterable[Example]) -> None:
  """One JSON object per line with the benchmark fields (id, problem, answer, solution)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("w", encoding="utf-8") as f:
    for ex in examples:
      f.write(json.dumps({k: getattr(ex, k) for k in BENCHMARK_FIELDS}, ensure_ascii=False) + "\n")
