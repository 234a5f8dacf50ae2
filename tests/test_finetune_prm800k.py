"""The PRM800K reader on hand-written rows in the published format (openai/prm800k README)."""

import dataclasses
import json

import pytest

from jaxthink.data.download import DownloadError
from jaxthink.finetune import prm800k
from jaxthink.finetune.prm800k import PRM800KError, parse_row, read_prm800k, read_prm800k_file
from jaxthink.finetune.steps import StepFormat


def _row(steps, finish_reason, generation=9):
  return {
      "labeler": "340d89bc-f5b7-45e9-b272-909ba68ee363",
      "timestamp": "2023-01-22T04:34:27.052924",
      "generation": generation,
      "is_quality_control_question": False,
      "is_initial_screening_question": False,
      "question": {
          "problem": "What is $2 + 3 \\cdot 4$?",
          "ground_truth_solution": "$3 \\cdot 4 = 12$, so $2 + 12 = \\boxed{14}$.",
          "ground_truth_answer": "14",
          "pre_generated_steps": [s["completions"][0]["text"] for s in steps],
          "pre_generated_answer": "14",
          "pre_generated_verifier_score": 0.93,
      },
      "label": {"steps": steps, "total_time": 27827, "finish_reason": finish_reason},
  }


def _step(*completions, chosen=0, human=None):
  return {"completions": [{"text": t, "rating": r, "flagged": None} for t, r in completions],
          "human_completion": human, "chosen_completion": chosen}


SOLVED = _row([
    _step(("I need the product first.", 0)),
    _step(("$3 \\cdot 4 = 12$.", 1)),
    _step(("$2 + 12 = 14$.\n\n# Answer\n\n14", 1)),
], "solution")
# Phase 2: labeling stops at the first -1; the trajectory's own step is the first completion.
WRONG_MID = _row([
    _step(("$3 \\cdot 4 = 12$.", 1)),
    _step(("$2 + 12 = 15$.", -1), ("$2 + 12 = 14$.", 1), chosen=None),
    _step(("So the answer is 15.\n\n# Answer\n\n15", 0)),
], "found_error")
# Phase 1: every completion rated -1, the labeler wrote the step (human_completion).
HUMAN = _row([
    _step(("$3 + 4 = 7$ first.", -1), ("$2 + 3 = 5$ first.", -1), chosen=None,
          human="Multiplication comes first: $3 \\cdot 4 = 12$."),
    _step(("$2 + 12 = 14$.\n\n# Answer\n\n14", 1)),
], "solution", generation=None)
GIVE_UP = _row([_step(("Let me think about $3 \\cdot 4$.", 0))], "give_up")


def test_solution_keeps_every_step_and_the_answer():
  sol = parse_row(json.dumps(SOLVED))
  assert sol.question == "What is $2 + 3 \\cdot 4$?"
  assert [s.rating for s in sol.steps] == [0, 1, 1]
  assert sol.answer == "14" and sol.complete
  assert sol.completion(StepFormat()) == ("I need the product first.\n$3 \\cdot 4 = 12$.\n"
                                          "$2 + 12 = 14$.\n</think>\n\nThe answer is \\boxed{14}.")


def test_minus_one_mid_solution_cuts_there():
  sol = parse_row(json.dumps(WRONG_MID))
  assert [s.text for s in sol.steps] == ["$3 \\cdot 4 = 12$.", "$2 + 12 = 15$.",
                                         "So the answer is 15.\n\n# Answer\n\n15"]
  assert [s.text for s in sol.kept_steps()] == ["$3 \\cdot 4 = 12$."]
  assert sol.answer is None and not sol.complete  # found_error: no answer is trained on
  assert sol.completion(StepFormat(separator="\n\n")) == "$3 \\cdot 4 = 12$."


def test_human_completion_replaces_rejected_completions():
  sol = parse_row(json.dumps(HUMAN))
  assert sol.steps[0].text == "Multiplication comes first: $3 \\cdot 4 = 12$."
  assert sol.steps[0].rating == 1 and sol.complete and sol.answer == "14"


def test_finish_reason_other_than_solution_trains_no_answer():
  sol = parse_row(json.dumps(GIVE_UP))
  assert sol.finish_reason == "give_up" and sol.answer is None and not sol.complete
  assert sol.completion(StepFormat()) == "Let me think about $3 \\cdot 4$."


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("label"), "missing field 'label'"),
    (lambda r: r["question"].pop("problem"), "question: missing field 'problem'"),
    (lambda r: r["label"]["steps"][1].update(chosen_completion=3),
     r"label.steps\[1\]: chosen_completion 3 is not an index"),
    (lambda r: r["label"]["steps"][0]["completions"][0].update(rating=2),
     r"label.steps\[0\].completions\[0\]: rating 2"),
    (lambda r: r["label"].update(steps="none"), "field 'steps' must be list"),
])
def test_malformed_rows_say_what_is_wrong(tmp_path, mutate, message):
  row = json.loads(json.dumps(SOLVED))
  mutate(row)
  path = tmp_path / "phase2_train.jsonl"
  path.write_text(json.dumps(SOLVED) + "\n" + json.dumps(row) + "\n")
  with pytest.raises(PRM800KError, match=f"phase2_train.jsonl:2: .*{message}"):
    read_prm800k_file(path)


def test_not_json_names_the_line(tmp_path):
  path = tmp_path / "phase1_test.jsonl"
  path.write_text(json.dumps(SOLVED) + "\n{\"question\": \n")
  with pytest.raises(PRM800KError, match="phase1_test.jsonl:2: not valid JSON"):
    read_prm800k_file(path)


def test_reads_a_placed_file_and_names_a_missing_one(tmp_path):
  (tmp_path / "phase1_train.jsonl").write_text(
      "\n".join(json.dumps(r) for r in (SOLVED, WRONG_MID, HUMAN, GIVE_UP)) + "\n")
  rows = read_prm800k("phase1_train", tmp_path)
  assert [r.complete for r in rows] == [True, False, True, False]
  with pytest.raises(PRM800KError, match="phase2_test.jsonl does not exist: place PRM800K's "
                                         "phase2_test.jsonl there .*12240719 bytes"):
    read_prm800k("phase2_test", tmp_path)


def test_offline_download_names_the_file_to_place(tmp_path, monkeypatch):
  remote = dataclasses.replace(prm800k.PRM800K_FILES["phase2_train"],
                               url="http://127.0.0.1:9/phase2_train.jsonl")
  monkeypatch.setitem(prm800k.PRM800K_FILES, "phase2_train", remote)
  monkeypatch.setattr(prm800k, "DEFAULT_CACHE_DIR", tmp_path)
  expected = tmp_path / "downloads" / "prm800k" / "phase2_train.jsonl"
  with pytest.raises(DownloadError, match=f"place the file by hand at {expected} "
                                          r"\(456135365 bytes, sha256 1110237f"):
    read_prm800k("phase2_train")
