"""The tiny model's synthetic task and tokenizer, checked against independent evaluations:
Python-int arithmetic parsed from the solution text, a recomputation from the structured problem,
and transformers' own AutoTokenizer loading the saved directory."""

import json
import operator
import re

import pytest
from transformers import AutoTokenizer

from jaxthink.data.markers import load_markers
from jaxthink.models.tokenizer import reasoning_prompt
from jaxthink.tiny import (DIFFICULTIES, REFLECTIONS, Reflection, corpus_texts, generate_problems,
                           hardness, train_tokenizer, write_jsonl)

EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
SOLUTION = re.compile(r"<think>\n(.+)\n</think>\n\nThe answer is \\boxed\{(\d+)\}\.", re.DOTALL)
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def true_equation(a: int, op: str, b: int, c: int) -> bool:
  if op == "/":
    return b != 0 and a == b * c  # exact division only
  return OPS[op](a, b) == c


def expected_steps(start, ops):
  """The solution's equations recomputed from the structured problem, with Python ints."""
  value, steps = start, []
  for op in ops:
    if op.groups > 1:
      total = op.groups * op.amount
      steps.append((op.groups, "*", op.amount, total))
      new = OPS[op.kind](value, total)
    elif op.kind == "/":
      total, new = op.amount, value // op.amount
      assert value % op.amount == 0, f"inexact division {value} / {op.amount}"
    else:
      total, new = op.amount, OPS[op.kind](value, op.amount)
    steps.append((value, op.kind, total, new))
    value = new
  return steps, value


def parse_solution(solution: str):
  """(main steps, check kind, boxed answer). A false equation is allowed only as the
  deliberately wrong step: then it is restated at once as "<it> is wrong", and the next equation
  is the right one for the same operands. An equation followed by ". Yes." is a confirming
  repeat of the one before it."""
  match = SOLUTION.fullmatch(solution)
  assert match, f"not in the reasoning format:\n{solution}"
  body = match.group(1)
  found = [(m, tuple(int(g) if g.isdigit() else g for g in m.groups()))
           for m in EQUATION.finditer(body)]
  main, check, k = [], "none", 0
  while k < len(found):
    m, eq = found[k]
    if true_equation(*eq):
      if body[m.end():].startswith(". Yes."):
        assert main and main[-1] == eq, f"confirmation of a step that isn't the last: {eq}"
        assert check == "none"
        check = "confirm"
      else:
        main.append(eq)
      k += 1
      continue
    # The deliberately wrong step.
    assert check == "none", f"second check in\n{solution}"
    restated, fixed = found[k + 1], found[k + 2]
    assert restated[1] == eq and body[restated[0].end():].startswith(" is wrong."), solution
    assert fixed[1][:3] == eq[:3] and true_equation(*fixed[1]), solution
    main.append(fixed[1])
    check, k = "fix", k + 3
  return main, check, int(match.group(2))


def numbers(text: str) -> list[int]:
  return [int(x) for x in re.findall(r"\d+", text)]


def is_subsequence(needle, haystack) -> bool:
  it = iter(haystack)
  return all(any(x == y for y in it) for x in needle)


# --- task ---------------------------------------------------------------------------------------

def test_same_seed_same_problems_different_seed_different():
  a = generate_problems("train", 40, seed=7, difficulty=3)
  assert a == generate_problems("train", 40, seed=7, difficulty=3)
  b = generate_problems("train", 40, seed=8, difficulty=3)
  assert len({x.problem for x in a} & {x.problem for x in b}) == 0
  # A prefix does not depend on n.
  assert generate_problems("train", 10, seed=7, difficulty=3) == a[:10]


@pytest.mark.parametrize("difficulty", [1, 3])
def test_train_and_test_are_disjoint(difficulty):
  train = generate_problems("train", 3000, seed=0, difficulty=difficulty)
  test = generate_problems("test", 500, seed=0, difficulty=difficulty)
  train_texts, test_texts = {x.problem for x in train}, {x.problem for x in test}
  assert len(train_texts) == 3000 and len(test_texts) == 500  # no repeats within a split
  assert not train_texts & test_texts
  # Not even the same computation with other names and items.
  assert not {(x.start, x.ops) for x in train} & {(x.start, x.ops) for x in test}
  assert not {x.id for x in train} & {x.id for x in test}


@pytest.mark.parametrize("difficulty", sorted(DIFFICULTIES))
def test_solutions_check_out(difficulty):
  spec = DIFFICULTIES[difficulty]
  examples = generate_problems("train", 150, seed=1, difficulty=difficulty) + \
      generate_problems("test", 50, seed=1, difficulty=difficulty)
  for ex in examples:
    main, check, boxed = parse_solution(ex.solution)
    steps, answer = expected_steps(ex.start, ex.ops)
    assert main == steps, f"{ex.id}: solution steps {main} != recomputed {steps}\n{ex.solution}"
    assert boxed == answer and ex.answer == str(answer), ex.id
    assert check == ex.check, ex.id
    # Every equation but the deliberately wrong one is right; all numbers in [0, 1000).
    all_eqs = [tuple(int(g) if g.isdigit() else g for g in m.groups())
               for m in EQUATION.finditer(ex.solution)]
    assert sum(not true_equation(*e) for e in all_eqs) == (2 if check == "fix" else 0)
    assert all(0 <= n < 1000 for n in numbers(ex.solution) + numbers(ex.problem)), ex.id
    assert all(0 < s[3] <= spec.max_value for s in steps), ex.id
    # The problem states the start and every operand in order; the other numbers are distractors.
    operands = [ex.start] + [n for op in ex.ops
                             for n in ((op.groups, op.amount) if op.groups > 1 else (op.amount,))]
    in_problem = numbers(ex.problem)
    assert is_subsequence(operands, in_problem), ex.id
    assert len(in_problem) - len(operands) <= spec.max_distractors, ex.id
    n_operations = sum(2 if op.groups > 1 else 1 for op in ex.ops)
    assert spec.min_ops <= n_operations <= spec.max_ops and 2 <= n_operations <= 6, ex.id


def test_difficulty_knob_scales_steps_and_numbers():
  stats = {}
  for d in (1, 5):
    exs = generate_problems("train", 200, seed=2, difficulty=d)
    stats[d] = (sum(len(expected_steps(x.start, x.ops)[0]) for x in exs) / len(exs),
                max(max(numbers(x.problem)) for x in exs))
  assert stats[1][0] == 2 and stats[5][0] >= 5, stats
  assert stats[1][1] <= 20 and stats[5][1] >= 300, stats


def test_self_check_fraction_is_as_configured():
  exs = generate_problems("train", 2000, seed=3, difficulty=3, check_fraction=0.3, fix_fraction=0.5)
  checks = [parse_solution(x.solution)[1] for x in exs]
  checked = sum(c != "none" for c in checks) / len(checks)
  fixed = sum(c == "fix" for c in checks) / max(1, sum(c != "none" for c in checks))
  assert abs(checked - 0.3) < 0.04, checked
  assert abs(fixed - 0.5) < 0.08, fixed
  wait = sum("Wait" in x.solution for x in exs) / len(exs)
  assert 0.1 < wait < checked, wait  # most checks, not all, open with "Wait"
  none = generate_problems("train", 200, seed=3, difficulty=3, check_fraction=0.0)
  assert all(parse_solution(x.solution)[1] == "none" for x in none)
  every = generate_problems("train", 200, seed=3, difficulty=3, check_fraction=1.0)
  assert all(parse_solution(x.solution)[1] != "none" for x in every)


# --- reflective solutions -------------------------------------------------------------------

@pytest.mark.parametrize("a,op,b,c,h", [
    (12, "+", 3, 15, 0), (58, "+", 37, 95, 1),      # 8 + 7 carries
    (95, "+", 17, 112, 3),                          # two carries, crossing a hundred
    (112, "-", 17, 95, 3),                          # two borrows, crossing a hundred
    (45, "-", 12, 33, 0), (47, "*", 4, 188, 3),     # two digits, 7 * 4 carries, three-digit result
    (3, "*", 6, 18, 1), (2, "*", 4, 8, 0), (84, "/", 4, 21, 1), (120, "/", 3, 40, 2)])
def test_hardness_by_hand(a, op, b, c, h):
  assert hardness(a, op, b, c) == h


def reflective_claims(solution):
  """Every equation of a solution as (a, op, b, c, text after it)."""
  return [(*(int(g) if g.isdigit() else g for g in m.groups()), solution[m.end():])
          for m in EQUATION.finditer(solution)]


def test_reflective_solutions_check_out():
  """Every false equation is a slip the solution takes back ("= c, not w" for the same operands,
  or "That gives N, not w" at the final re-check); the steps are the plain solution's, in order;
  the boxed answer is right; re-checks are real computations (true equations)."""
  examples = generate_problems("train", 400, seed=5, difficulty=2, reflection=Reflection())
  n_slips = n_uncaught = n_checked = 0
  for ex in examples:
    body, boxed = SOLUTION.fullmatch(ex.solution).groups()
    assert boxed == ex.answer and ex.check == "reflect", ex.id
    claims = reflective_claims(body)
    true = [c[:4] for c in claims if true_equation(*c[:4])]
    assert is_subsequence(expected_steps(ex.start, ex.ops)[0], true), ex.solution
    for a, op, b, c, after in claims:
      if true_equation(a, op, b, c):
        continue
      n_slips += 1
      right = next(t for t in true if t[:3] == (a, op, b))[3]
      taken_back = (f"{a} {op} {b} = {right}, not {c}." in after
                    or f"That gives {ex.answer}, not {c}. So the answer is {ex.answer}." in after)
      assert taken_back, ex.solution
      n_uncaught += "That gives" in after
    n_checked += "Yes" in body
  assert n_slips > 20 and 0 < n_uncaught < n_slips and n_checked > 40, (n_slips, n_uncaught,
                                                                         n_checked)


def test_overturning_reflection_talks_some_right_answers_out():
  """With `overturning`, some final re-checks slip at the last step and the solution trusts them:
  the thinking states the right answer, re-derives it wrongly (one false equation, a near miss of
  the right result) and boxes that near miss. Every other solution boxes the right answer."""
  examples = generate_problems("train", 400, seed=5, difficulty=2,
                               reflection=REFLECTIONS["overturning"])
  overturned = 0
  for ex in examples:
    body, boxed = SOLUTION.fullmatch(ex.solution).groups()
    if boxed == ex.answer:
      continue
    overturned += 1
    assert f"So the answer is {ex.answer}." in body, ex.solution
    assert body.endswith(f"That gives {boxed}, not {ex.answer}. So the answer is {boxed}."), body
    false = [c for c in reflective_claims(body) if not true_equation(*c[:4])]
    assert [c[3] for c in false] == [int(boxed)] and abs(int(boxed) - int(ex.answer)) in (1, 2, 10)
  assert 0.01 < overturned / len(examples) < 0.1, overturned
  assert all(SOLUTION.fullmatch(ex.solution).group(2) == ex.answer for ex in generate_problems(
      "train", 400, seed=5, difficulty=2, reflection=REFLECTIONS["organism"]))


def test_reflection_rates_follow_hardness():
  """At zero rates a solution is its steps alone; with every rate at its maximum each hard step
  (hardness >= 1) is doubted and easy ones never are."""
  none = Reflection(slip_per_hardness=0, check_base=0, check_per_hardness=0,
                    recheck_per_hardness=0)
  for ex in generate_problems("train", 100, seed=6, difficulty=2, reflection=none):
    assert "Wait" not in ex.solution and "Yes" not in ex.solution, ex.solution
    body = SOLUTION.fullmatch(ex.solution).group(1)
    assert [c[:4] for c in reflective_claims(body)] == expected_steps(ex.start, ex.ops)[0]
  always = Reflection(slip_per_hardness=0, check_base=0, check_per_hardness=1, max_check=1,
                      chain=0, recheck_per_hardness=0)
  for ex in generate_problems("train", 100, seed=6, difficulty=2, reflection=always):
    steps = expected_steps(ex.start, ex.ops)[0]
    body = SOLUTION.fullmatch(ex.solution).group(1)
    assert body.count("Yes, ") == sum(hardness(*s) >= 1 for s in steps), ex.solution
  with pytest.raises(ValueError, match="Reflection.chain"):
    Reflection(chain=1.5)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="split"):
    generate_problems("validation", 1, seed=0, difficulty=1)
  with pytest.raises(ValueError, match="difficulty"):
    generate_problems("train", 1, seed=0, difficulty=9)
  with pytest.raises(ValueError, match="check_fraction"):
    generate_problems("train", 1, seed=0, difficulty=1, check_fraction=1.5)


def test_write_jsonl_has_the_benchmark_fields(tmp_path):
  exs = generate_problems("test", 5, seed=0, difficulty=2)
  path = tmp_path / "tiny" / "test.jsonl"
  write_jsonl(path, exs)
  rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
  assert rows == [dict(id=x.id, problem=x.problem, answer=x.answer, solution=x.solution)
                  for x in exs]
  assert all(isinstance(r["answer"], str) for r in rows)


# --- tokenizer ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus():
  return corpus_texts(generate_problems("train", 1500, seed=0, difficulty=3))


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("tiny_tok")
  train_tokenizer(corpus, 4096, out)
  return out


@pytest.fixture(scope="module")
def tok(tok_dir):
  return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)


def test_auto_tokenizer_loads_the_saved_dir(tok, tok_dir):
  config = json.loads((tok_dir / "tokenizer_config.json").read_text())
  assert "chat_template" in config and (tok_dir / "tokenizer.json").exists()
  assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|endoftext|>"
  assert 300 < len(tok) <= 4096
  for t in ("<|endoftext|>", "<|user|>", "<|assistant|>", "<think>", "</think>"):
    assert tok.encode(t, add_special_tokens=False) == [tok.convert_tokens_to_ids(t)], t
  # <think> is an ordinary (non-special) added token, as in R1-Distill: skipping specials keeps it.
  ids = tok.encode("<think>\nHmm.\n</think><|endoftext|>", add_special_tokens=False)
  assert tok.decode(ids, skip_special_tokens=True) == "<think>\nHmm.\n</think>"


def test_round_trip_is_exact(tok, corpus):
  texts = corpus[:200] + [
      "<|user|>\nTom has 12 apples.\n<|assistant|>\n<think>\nWait, 7 * 8 = 54 is wrong.</think>",
      "Ünïcødé ✓ 😀 — tabs\tand  double  spaces\n\n\r\n 0123456789 x²",
      "spaces before punctuation stay . , ! ? 's n't 're",  # no clean-up on decode
  ]
  for text in texts:
    assert tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=False) == text


def test_markers_are_single_vocabulary_tokens(tok):
  added = set(tok.get_added_vocab())
  for text in (" Wait", "Wait", " Hmm", "Hmm", " Actually", " But", "But"):
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, tok.convert_ids_to_tokens(ids))
    assert tok.convert_ids_to_tokens(ids)[0] not in added  # learned by BPE, not bolted on
  # Every marker's first word, in every form the decode engine looks up, is one token.
  for marker in load_markers():
    word = marker.split()[0]
    for form in {word, " " + word, word.lower(), " " + word.lower()}:
      assert len(tok.encode(form, add_special_tokens=False)) == 1, form


def test_digits_are_single_tokens(tok):
  vocab = tok.get_vocab()
  for d in "0123456789":
    assert d in vocab
  assert not [t for t in vocab if len(t) > 1 and any(c.isdigit() for c in t)]
  assert tok.encode("407", add_special_tokens=False) == [vocab["4"], vocab["0"], vocab["7"]]
  ids = tok.encode("12 + 5 = 17.", add_special_tokens=False)
  assert tok.convert_ids_to_tokens(ids) == ["1", "2", "Ġ+", "Ġ", "5", "Ġ=", "Ġ", "1", "7", "."]


def test_chat_template(tok):
  prompt = tok.apply_chat_template([{"role": "user", "content": "Tom has 3 pens."}],
                                   add_generation_prompt=True, tokenize=False)
  assert prompt == "<|user|>\nTom has 3 pens.\n<|assistant|>\n<think>\n"
  convo = tok.apply_chat_template([{"role": "user", "content": "Q"},
                                   {"role": "assistant", "content": "<think>\nA\n</think>\n\nB"}],
                                  tokenize=False)
  assert convo == "<|user|>\nQ\n<|assistant|>\n<think>\nA\n</think>\n\nB<|endoftext|>\n"
  # jaxthink's own prompt builder does not open <think> twice.
  assert reasoning_prompt(tok, "Q", instruction=None) == "<|user|>\nQ\n<|assistant|>\n<think>\n"


def test_training_is_deterministic(corpus, tok_dir, tmp_path):
  train_tokenizer(corpus, 4096, tmp_path)
  assert (tmp_path / "tokenizer.json").read_text() == (tok_dir / "tokenizer.json").read_text()
  with pytest.raises(ValueError, match="vocab_size"):
    train_tokenizer(corpus, 200, tmp_path / "small")
