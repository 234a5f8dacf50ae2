"""Benchmarks built through tfds from the real JSONL files, checked against plain ``json`` reads."""

import hashlib
import json
import re
import shutil

import pytest

from jaxthink.data.benchmarks import (PACKAGE_DATA_DIR as DATA, BenchmarkDataError, load_benchmark,
                                      read_problems)

# Row counts and sha256 of the upstream files (openai/grade-school-math, openai/prm800k's LFS oid,
# the project's benchmark folder), as PROVENANCE.md states them.
SHA256 = {
  "gsm8k/test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
  "gsm8k/train.jsonl": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
  "math500/test.jsonl": "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
  "aime24/test.jsonl": "af2b8bd2aa911b6333ad0df32f3ca05c7ae8ed10f1731f4372c8ae26990bf7ac",
  "aime25/test.jsonl": "19a9f25a12e89abaeea9f7e214f8b6f6eae43285e9d8df7a3818ca0408df4b07",
  "amc23/test.jsonl": "43707e1ca784602d8479de24ee8ce36609dbebc46dd152b0b12a46611aa898a4",
}
COUNTS = [
  ("gsm8k", "test", 1319),
  ("gsm8k", "train", 7473),
  ("math500", "test", 500),
  ("aime24", "test", 30),
  ("aime25", "test", 30),
  ("amc23", "test", 40),
]


def expected_rows(name, split):
  """(id, problem, answer, solution) per line, following the README's rules, with plain json."""
  rows = [json.loads(line) for line in (DATA / name / f"{split}.jsonl").read_text().splitlines()]
  out = []
  for index, row in enumerate(rows):
    if name == "gsm8k":
      answer = row["answer"].split("#### ")[-1].strip().replace(",", "")
      out.append((f"{split}-{index}", row["question"], answer, row["answer"]))
    elif name == "math500":
      out.append((row["unique_id"], row["problem"], row["answer"], row["solution"]))
    elif name == "amc23":
      value = row["answer"]
      answer = str(int(value)) if float(value).is_integer() else str(value)
      out.append((str(row["id"]), row["problem"], answer, ""))
    else:
      out.append((str(row["id"]), row["problem"], row["answer"], row["solution"]))
  return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def test_packaged_files_match_provenance_note():
  """The shipped files are the upstream ones, and PROVENANCE.md says so correctly."""
  note = (DATA / "PROVENANCE.md").read_text()
  rows = re.findall(r"^\| (\S+\.jsonl) \| (\d+) \| ([0-9a-f]{64}) \|", note, re.M)
  stated = {file: (int(count), digest) for file, count, digest in rows}
  counts = {f"{name}/{split}.jsonl": count for name, split, count in COUNTS}
  assert stated == {file: (counts[file], digest) for file, digest in SHA256.items()}
  for file, digest in SHA256.items():
    data = (DATA / file).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    assert data.count(b"\n") == counts[file]
  for licensed in ("gsm8k", "math500"):
    assert (DATA / licensed / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.parametrize("name,split,count", COUNTS)
def test_tfds_build_matches_jsonl(name, split, count, cache_dir):
  problems = load_benchmark(name, split=split, cache_dir=cache_dir)  # default: the packaged copy
  assert len(problems) == count
  expected = expected_rows(name, split)
  assert len(expected) == count
  # File order survives tfds (disable_shuffling in DatasetInfo): every row, in order.
  assert [(p.id, p.answer) for p in problems] == [(e[0], e[2]) for e in expected]
  for problem, row in ((problems[0], expected[0]), (problems[-1], expected[-1])):
    assert (problem.id, problem.problem, problem.answer, problem.solution) == row


def test_known_first_and_last_rows(cache_dir):
  gsm8k = load_benchmark("gsm8k", DATA, "test", cache_dir=cache_dir)
  assert (gsm8k[0].id, gsm8k[0].answer) == ("test-0", "18")  # Janet's ducks: 9 * 2 = 18
  assert gsm8k[0].solution.endswith("#### 18")
  math500 = load_benchmark("math500", DATA, cache_dir=cache_dir)
  assert (math500[0].id, math500[0].answer) == (
    "test/precalculus/807.json",
    "\\left( 3, \\frac{\\pi}{2} \\right)",
  )
  amc = load_benchmark("amc23", DATA, cache_dir=cache_dir)
  assert (amc[0].id, amc[0].answer, amc[3].answer) == ("0", "27", "3159")
  aime = load_benchmark("aime24", DATA, cache_dir=cache_dir)
  assert aime[7].answer == "025"  # leading zero kept as written


def test_limit_and_plain_reader(cache_dir):
  first = load_benchmark("gsm8k", DATA, "train", limit=3, cache_dir=cache_dir)
  assert [p.id for p in first] == ["train-0", "train-1", "train-2"]
  assert load_benchmark("aime25", DATA, limit=0, cache_dir=cache_dir) == []
  assert read_problems("aime25", DATA) == load_benchmark("aime25", DATA, cache_dir=cache_dir)


def test_cache_follows_file_content(tmp_path):
  data = tmp_path / "data"
  (data / "aime24").mkdir(parents=True)
  source = (DATA / "aime24" / "test.jsonl").read_text().splitlines()
  (data / "aime24" / "test.jsonl").write_text("\n".join(source[:2]) + "\n")
  cache = tmp_path / "cache"
  assert [p.answer for p in load_benchmark("aime24", data, cache_dir=cache)] == ["204", "113"]
  row = json.loads(source[0])
  row["answer"] = "999"
  (data / "aime24" / "test.jsonl").write_text(json.dumps(row) + "\n" + source[1] + "\n")
  assert [p.answer for p in load_benchmark("aime24", data, cache_dir=cache)] == ["999", "113"]


def write_math500(tmp_path, lines):
  folder = tmp_path / "math500"
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
  return folder / "test.jsonl"


def good_math500_line(index):
  return json.dumps(
    {"problem": f"p{index}", "solution": "s", "answer": "1", "unique_id": f"id{index}"}
  )


def test_missing_field_names_file_line_and_field(tmp_path):
  bad = json.dumps({"problem": "p", "solution": "s", "unique_id": "x"})
  path = write_math500(tmp_path, [good_math500_line(0), bad])
  with pytest.raises(BenchmarkDataError) as error:
    load_benchmark("math500", tmp_path, cache_dir=tmp_path / "cache")
  message = str(error.value)
  assert str(path) in message and "line 2" in message and "'answer'" in message


def test_bad_json_and_wrong_type(tmp_path):
  write_math500(tmp_path, [good_math500_line(0), good_math500_line(1), "{not json"])
  with pytest.raises(BenchmarkDataError, match=r"line 3: not valid JSON"):
    read_problems("math500", tmp_path)
  wrong = json.dumps({"problem": "p", "solution": "s", "answer": 5, "unique_id": "x"})
  write_math500(tmp_path, [wrong])
  with pytest.raises(BenchmarkDataError, match=r"line 1: field 'answer' must be str"):
    read_problems("math500", tmp_path)
  (tmp_path / "gsm8k").mkdir()
  (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "4"}))
  with pytest.raises(BenchmarkDataError, match=r"line 1: field 'answer' has no final '####"):
    read_problems("gsm8k", tmp_path, "test")


def test_missing_file_says_where_and_how(tmp_path):
  shutil.copytree(DATA / "aime25", tmp_path / "aime25")
  with pytest.raises(BenchmarkDataError) as error:
    load_benchmark("aime24", tmp_path, cache_dir=tmp_path / "cache")
  message = str(error.value)
  assert str(tmp_path / "aime24" / "test.jsonl") in message
  assert "data_dir" in message and "does not exist" in message


def test_unknown_benchmark_or_split():
  with pytest.raises(ValueError, match="unknown benchmark 'gsm9k'; valid: gsm8k"):
    read_problems("gsm9k", DATA)
  with pytest.raises(ValueError, match="no split 'train'; valid: test"):
    read_problems("math500", DATA, "train")
