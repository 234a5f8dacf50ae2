"""Step-annotated solutions and the structured step format shared by training and evaluation.

A `StepSolution` is a question, its solution as rated steps (PRM800K's ratings: +1 right, 0
neutral, -1 wrong) and why it ended (`finish_reason`: "solution" when it reaches a final answer).
As in the study, training keeps the steps rated >= 0 up to the first -1; the final answer is
trained on only when every step is kept and the solution finished.

The completion the model learns is the reasoning format the evaluation prompts for (the prompt ends
with `<think>\\n`): the kept steps joined by `StepFormat.separator`, then `</think>` and
"The answer is \\boxed{...}.". The separator is recorded in `adapter.json`; evaluation prompts are
unchanged, so the model writes the same step structure at evaluation. For the embedded model the
separator is the newline its tokenizer already holds as one token (its steps are lines).

`synthetic_step_solutions` makes such data from the embedded model's task generator: each line of a
generated solution is a step, rated by exact arithmetic (the generator writes every step as
"a op b = c"): +1 for a right step, -1 for the deliberately wrong step of a self-check that
flags it on the next line (training stops there), 0 for a remark or for a line that flags a slip
("Wait, 18 + 9 = 29 is wrong. 18 + 9 = 27."; kept: wrong-then-flagged steps are trained on).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxthink.config import ConfigError
from jaxthink.grading.taxonomy import find_arithmetic_claims
from jaxthink.models.tokenizer import reasoning_prompt
from jaxthink.tiny.task import generate_problems

RATINGS = (-1, 0, 1)


@dataclasses.dataclass(frozen=True)
class StepFormat:
  """How steps are written: joined by `separator` inside the thinking."""

  separator: str = "\n"

  def __post_init__(self):
    if not self.separator:
      raise ConfigError("step_format.separator is empty: steps need a separator (e.g. \"\\n\").")


@dataclasses.dataclass(frozen=True)
class Step:
  text: str
  rating: int | None  # +1 / 0 / -1; None: unrated (PRM800K leaves some steps unrated)


@dataclasses.dataclass(frozen=True)
class StepSolution:
  """A question and its rated solution steps; `answer`: the final answer (None: none reached)."""

  question: str
  steps: tuple[Step, ...]
  answer: str | None
  finish_reason: str = "solution"

  def kept_steps(self) -> tuple[Step, ...]:
    """The steps rated >= 0, up to (not including) the first step that is not."""
    kept = []
    for step in self.steps:
      if step.rating is None or step.rating < 0:
        break
      kept.append(step)
    return tuple(kept)

  @property
  def complete(self) -> bool:
    """Every step kept and the solution reached its answer: the answer is trained on too."""
    return (self.finish_reason == "solution" and self.answer is not None
            and len(self.kept_steps()) == len(self.steps))

  def completion(self, fmt: StepFormat) -> str:
    """The text after the prompt's `<think>\\n` that the loss covers."""
    text = fmt.separator.join(s.text for s in self.kept_steps())
    if self.complete:
      text += f"\n</think>\n\nThe answer is \\boxed{{{self.answer}}}."
    return text


def encode(tokenizer, solutions: Sequence[StepSolution], fmt: StepFormat, max_len: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`(tokens, token_mask, loss_mask)`, each `[n, max_len]`, right-padded.

  The prompt is exactly what evaluation feeds the model (chat template, default instruction,
  `<think>` opened); the loss covers the completion's tokens, plus the end token when complete.
  """
  tokens = np.full((len(solutions), max_len), tokenizer.pad_token_id or 0, np.int32)
  token_mask = np.zeros((len(solutions), max_len), bool)
  loss_mask = np.zeros((len(solutions), max_len), bool)
  for i, sol in enumerate(solutions):
    prompt = tokenizer.encode(reasoning_prompt(tokenizer, sol.question), add_special_tokens=False)
    completion = tokenizer.encode(sol.completion(fmt), add_special_tokens=False)
    if sol.complete:
      completion.append(tokenizer.eos_token_id)
    ids = (prompt + completion)[:max_len]
    tokens[i, :len(ids)] = ids
    token_mask[i, :len(ids)] = True
    loss_mask[i, len(prompt):len(ids)] = True
  return tokens, token_mask, loss_mask


def rate_line(line: str) -> int:
  """A synthetic solution line's rating (see the module docstring): the generator writes each
  step as "a op b = c" and flags its deliberate slips with "<claim> is wrong"."""
  claims = find_arithmetic_claims(line)
  if not claims:
    return 0
  if all(c.holds for c in claims):
    return 1
  return 0 if " is wrong" in line else -1


def synthetic_step_solutions(split: str, n: int, seed: int, difficulty: int = 1, *,
                             check_fraction: float = 0.3, fix_fraction: float = 0.5,
                             skip: int = 0) -> list[StepSolution]:
  """Problems `skip .. skip + n` of the embedded task's `split` as rated step solutions."""
  out = []
  for ex in generate_problems(split, skip + n, seed, difficulty, check_fraction=check_fraction,
                              fix_fraction=fix_fraction)[skip:]:
    thinking = ex.solution.split("<think>\n", 1)[1].split("\n</think>", 1)[0]
    steps = tuple(Step(line, rate_line(line)) for line in thinking.split("\n"))
    out.append(StepSolution(ex.problem, steps, ex.answer))
  return out
