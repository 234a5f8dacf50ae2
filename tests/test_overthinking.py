"""Overthinking analysis on hand-written responses, with positions counted by hand."""

import pytest

from jaxthink.data.markers import count_markers, load_markers
from jaxthink.grading import analyze_response, find_candidates, grade

# A hand tokenisation; token i starts at the sum of the lengths of tokens 0..i-1.
TOKENS = [
  "<think>",
  "\n",
  "So",
  " 3",
  " +",
  " 4",
  " =",
  " 7",
  ".",
  " Wait",
  ",",
  " the",
  " problem",
  " says",
  " minus",
  ".",
  " So",
  " the",
  " answer",
  " is",
  " 1",
  ".",
  "\n",
  "</think>",
  "\n",
  "The",
  " answer",
  " is",
  " \\boxed{1}",
  ".",
]
OFFSETS = [
  0,
  7,
  8,
  10,
  12,
  14,
  16,
  18,
  20,
  21,
  26,
  27,
  31,
  39,
  44,
  50,
  51,
  54,
  58,
  65,
  68,
  70,
  71,
  72,
  80,
  81,
  84,
  91,
  94,
  104,
]
TEXT = "".join(TOKENS)


def test_hand_tokenisation_is_consistent():
  assert len(TEXT) == 105 and len(TOKENS) == len(OFFSETS) == 30
  assert [TEXT[o : o + len(t)] for o, t in zip(OFFSETS, TOKENS)] == TOKENS


def test_correct_then_abandoned_is_flagged_with_positions():
  verdict = grade(TEXT, "7", "math500")
  assert (verdict.correct, verdict.extracted) == (False, "1")
  result = analyze_response(TEXT, "7", verdict.correct, token_offsets=OFFSETS)
  assert result.overthinking_error
  kinds = [
    (c.text, c.kind, c.char_start, c.char_end, c.token_start, c.token_end, c.correct)
    for c in result.candidates
  ]
  assert kinds == [("7", "equals", 19, 20, 7, 7, True), ("1", "answer_is", 69, 70, 20, 20, False)]
  assert TEXT[19] == "7" and TEXT[69] == "1"
  assert (result.first_correct, result.first_correct_char, result.first_correct_token) == (0, 19, 7)
  assert result.tokens_after_first_correct == 30 - 1 - 7  # 22 tokens generated after " 7"
  assert result.chars_after_first_correct == 105 - 1 - 19
  assert (result.thinking_chars, result.thinking_tokens) == (72 - 7, 22)
  assert (result.marker_counts, result.n_markers) == ({"Wait": 1}, 1)


def test_correct_final_is_not_flagged():
  text = TEXT.replace("\\boxed{1}", "\\boxed{7}")
  verdict = grade(text, "7", "math500")
  assert verdict.correct
  result = analyze_response(text, "7", verdict.correct)
  assert not result.overthinking_error
  assert result.first_correct == 0 and result.candidates[0].token_start is None


def test_no_intermediate_answer_is_not_flagged():
  text = "<think>\nLet me think about the problem. Hmm.\n</think>\nThe answer is \\boxed{5}."
  result = analyze_response(text, "7", grade(text, "7").correct, token_offsets=[0, 7, 20])
  assert result.candidates == ()
  assert not result.overthinking_error
  assert (result.first_correct, result.first_correct_token, result.tokens_after_first_correct) == (
    None,
    None,
    None,
  )
  assert result.n_markers == 1


def test_only_wrong_intermediates_is_not_flagged():
  text = "<think>\nSo 3 + 4 = 8.\n</think>\n\\boxed{8}"
  result = analyze_response(text, "7", grade(text, "7").correct)
  assert [c.text for c in result.candidates] == ["8"]
  assert not result.overthinking_error


def test_truncated_after_reaching_the_answer_is_flagged():
  text = "<think>\nThat gives \\boxed{7}. But wait, maybe it is 8 instead; let me redo"
  verdict = grade(text, "7", "math500", hit_max_tokens=True)
  assert verdict.truncated and not verdict.correct
  result = analyze_response(text, "7", verdict.correct, hit_max_tokens=True)
  assert result.overthinking_error
  assert result.candidates[0].char_start == text.index("7}") == 26


def test_candidate_kinds_and_non_concluding_sentences():
  text = (
    "<think>\nWe have 2 + 2 = 4. So 12 is the answer? "
    "Thus $\\frac{1}{2}$ is the final answer. "
    "I think \\boxed{9} fits. Therefore the total is $2 \\cdot 9 = 18$ dollars.\n</think>"
  )
  found = [(s.text, s.kind, s.start) for s in find_candidates(text, 7, text.index("</think>"))]
  assert found == [
    ("12", "is_the_answer", text.index("12")),
    ("\\frac{1}{2}", "is_the_answer", text.index("\\frac")),
    ("9", "boxed", text.index("9}")),
    ("18", "equals", text.index("18")),
  ]


def test_marker_counts_whole_words_in_thinking_only():
  text = (
    "<think>Wait, but BUT... Hmm, hold   on. Butter is maybe wrong; Actually! "
    "Let me double-check.</think> Wait, but the answer"
  )
  result = analyze_response(text, "7", False)
  assert result.marker_counts == {
    "Wait": 1,
    "But": 2,
    "Hmm": 1,
    "Hold on": 1,
    "Maybe": 1,
    "Wrong": 1,
    "Actually": 1,
    "Let me double-check": 1,
  }
  assert result.n_markers == 9


def test_marker_file_loading(tmp_path):
  markers = load_markers()
  assert markers[:3] == ("Wait", "But", "Alternatively") and "So" not in markers
  path = tmp_path / "m.txt"
  path.write_text("# comment\nwait  # trailing comment\n\nlet   me see\nWait\n")
  assert load_markers(path) == ("wait", "let me see", "Wait")
  assert count_markers("Let me see. WAIT.", ("wait", "let me see")) == {"let me see": 1, "wait": 1}
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_markers(tmp_path / "none.txt")
  (tmp_path / "empty.txt").write_text("# nothing\n")
  with pytest.raises(ValueError, match="holds no markers"):
    load_markers(tmp_path / "empty.txt")


def test_bad_token_offsets():
  with pytest.raises(ValueError, match="non-decreasing"):
    analyze_response(TEXT, "7", False, token_offsets=[0, 5, 3])
  with pytest.raises(ValueError, match=r"lie in \[0, 105\]"):
    analyze_response(TEXT, "7", False, token_offsets=[0, 200])
