"""PRM800K (openai/prm800k, MIT): MATH solutions split into steps, each rated -1 / 0 / +1.

One JSON object per line (phase1/phase2 `*_train.jsonl` / `*_test.jsonl`): `question.problem`,
`question.ground_truth_answer`, and `label.steps[]`, each with `completions[]` (`text`, `rating`),
`human_completion` (phase 1: a labeler's own step when every completion was rated -1) and
`chosen_completion` (the index the trajectory continued with, or null), plus `label.finish_reason`
("solution", "found_error", "give_up", "bad_problem"). A step of the trajectory is, as the
dataset's README reconstructs it, the chosen completion, else the human completion (rated +1),
else (labeling stopped at this step) the first completion, the one the solution itself wrote.
`StepSolution.kept_steps` then keeps the steps rated >= 0 up to the first -1; the last step's
"# Answer\\n\\n<answer>" becomes the final answer.

The files live in Git LFS (phase2_train is 456 MB), so they are downloaded on first use into
`~/.cache/jaxthink/downloads/prm800k/` and checked against their LFS pointer's sha256; offline,
the error names the file to place by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxthink.data.benchmarks import DEFAULT_CACHE_DIR
from jaxthink.data.download import RemoteFile, fetch
from jaxthink.finetune.steps import RATINGS, Step, StepSolution

# Size and sha256 of each file are its Git LFS pointer's at this commit of openai/prm800k.
_COMMIT = "00811d6de065642a6967b9017d4cee59550c0ef4"
_URL = f"https://media.githubusercontent.com/media/openai/prm800k/{_COMMIT}/prm800k/data/"
PRM800K_FILES = {
    "phase1_train": RemoteFile(_URL + "phase1_train.jsonl", 7900236,
                               "e9da6a73f827ffb9a8c0dc644c541d34ed76b3d4d1e4896ff5f7b37ddf5ae34d"),
    "phase1_test": RemoteFile(_URL + "phase1_test.jsonl", 829105,
                              "f4b3bc5b095e45c816453dc4d748b755c680d61d55f9895d929a335b487c727d"),
    "phase2_train": RemoteFile(_URL + "phase2_train.jsonl", 456135365,
                               "1110237feeb51d1bc200cb37b8f965cfdc1036eac7d506094049366fe7dc1089"),
    "phase2_test": RemoteFile(_URL + "phase2_test.jsonl", 12240719,
                              "6b172efa884ac8341a946dd82e06947c135b7254109fb3f7aa907c715d98aaad"),
}
ANSWER_MARK = "# Answer"


class PRM800KError(ValueError):
  """A PRM800K row is malformed; the message names the file, the line and the field."""


def prm800k_path(name: str, data_dir: str | Path | None = None) -> Path:
  """The JSONL file `name` (e.g. "phase2_train"): `<data_dir>/<name>.jsonl` when a folder is
  given, else the download cache (fetched, resumed and checksummed on first use)."""
  if name not in PRM800K_FILES:
    raise PRM800KError(f"unknown PRM800K file {name!r}; valid: {sorted(PRM800K_FILES)}")
  if data_dir is not None:
    path = Path(data_dir).expanduser() / f"{name}.jsonl"
    if not path.is_file():
      remote = PRM800K_FILES[name]
      raise PRM800KError(f"{path} does not exist: place PRM800K's {name}.jsonl there ("
                         f"{remote.size} bytes, sha256 {remote.sha256}, from {remote.url}), or "
                         "leave data_dir unset to download it on first use.")
    return path
  return fetch(PRM800K_FILES[name], DEFAULT_CACHE_DIR / "downloads" / "prm800k" / f"{name}.jsonl")


def read_prm800k(name: str, data_dir: str | Path | None = None) -> list[StepSolution]:
  """Every row of PRM800K file `name` as a `StepSolution` (see `prm800k_path`)."""
  return read_prm800k_file(prm800k_path(name, data_dir))


def read_prm800k_file(path: str | Path) -> list[StepSolution]:
  out = []
  with Path(path).open(encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        out.append(parse_row(line, f"{path}:{number}"))
  return out


def parse_row(line: str, where: str = "row") -> StepSolution:
  """One JSONL line -> `StepSolution`; `PRM800KError` naming what is wrong."""
  try:
    row = json.loads(line)
  except json.JSONDecodeError as e:
    raise PRM800KError(f"{where}: not valid JSON ({e.msg} at column {e.colno}).") from None
  question = _get(row, "question", dict, where)
  problem = _get(question, "problem", str, f"{where}: question")
  label = _get(row, "label", dict, where)
  finish_reason = _get(label, "finish_reason", str, f"{where}: label")
  raw_steps = _get(label, "steps", list, f"{where}: label")
  steps = [_step(s, f"{where}: label.steps[{i}]") for i, s in enumerate(raw_steps)]
  answer = None
  if steps and finish_reason == "solution" and ANSWER_MARK in steps[-1].text:
    text, answer = steps[-1].text.split(ANSWER_MARK, 1)
    steps[-1] = Step(text.rstrip(), steps[-1].rating)
    answer = answer.strip()
  return StepSolution(problem, tuple(steps), answer or None, finish_reason)


def _step(step: Any, where: str) -> Step:
  if not isinstance(step, dict):
    raise PRM800KError(f"{where}: a step must be an object, got {type(step).__name__}.")
  completions = _get(step, "completions", list, where)
  chosen, human = step.get("chosen_completion"), step.get("human_completion")
  if chosen is not None:
    if not isinstance(chosen, int) or not 0 <= chosen < len(completions):
      raise PRM800KError(f"{where}: chosen_completion {chosen!r} is not an index of its "
                         f"{len(completions)} completions.")
    return _completion(completions[chosen], f"{where}.completions[{chosen}]")
  if human is not None:  # a labeler's own step (phase 1): right by construction
    text = human.get("text") if isinstance(human, dict) else human
    if not isinstance(text, str):
      raise PRM800KError(f"{where}: human_completion must be text, got {human!r}.")
    return Step(text, 1)
  if not completions:
    raise PRM800KError(f"{where}: no completions, no chosen or human completion.")
  return _completion(completions[0], f"{where}.completions[0]")


def _completion(completion: Any, where: str) -> Step:
  if not isinstance(completion, dict):
    raise PRM800KError(f"{where}: a completion must be an object, got {completion!r}.")
  text = _get(completion, "text", str, where)
  rating = completion.get("rating")
  if rating is not None and (isinstance(rating, bool) or rating not in RATINGS):
    raise PRM800KError(f"{where}: rating {rating!r} is not one of -1, 0, 1 (or null).")
  return Step(text, rating)


def _get(row: dict, key: str, kind: type, where: str) -> Any:
  if key not in row:
    raise PRM800KError(f"{where}: missing field {key!r} (fields present: {sorted(row)}).")
  if not isinstance(row[key], kind):
    raise PRM800KError(f"{where}: field {key!r} must be {kind.__name__}, got "
                       f"{type(row[key]).__name__}.")
  return row[key]
