"""Math benchmarks as tensorflow-datasets builders reading the JSONL files of a manual directory.

Benchmarks (``<folder>/<split>.jsonl`` under a data directory). Without a data directory, the copy
inside the package is read (``jaxthink/data/benchmark_files``: sources, licenses, row counts and
sha256 in its PROVENANCE.md; ``tiny`` from ``jaxthink/tiny/data``); a benchmark the package does not
ship is downloaded on first use into ``~/.cache/jaxthink/downloads`` and checked against its sha256.

============  ===========  =========================================================================
name          splits       gold answer
============  ===========  =========================================================================
gsm8k         test, train  text after ``#### `` at the end of ``answer``, thousands commas removed
math500       test         ``answer`` (LaTeX)
aime24        test         ``answer`` (integer as text, leading zeros kept: ``"025"``)
aime25        test         ``answer``
amc23         test         ``answer`` (a JSON number; ``27.0`` becomes ``"27"``)
tiny          test         ``answer`` (the embedded model's synthetic task, ``jaxthink/tiny/data``)
math          train        ``answer``; downloaded: PRM800K's 12,000 MATH train problems (as math500)
============  ===========  =========================================================================

Every example holds ``id``, ``problem``, ``answer`` (gold, text) and ``solution`` (the reference
solution; for gsm8k the full step-by-step ``answer`` field with its ``<<a=b>>`` calculator notes;
empty where the benchmark has none). Ids: gsm8k ``"<split>-<row>"`` (row 0-based), math500
``unique_id`` (also math), AIME/AMC the ``id`` field as text.

tfds works here without TensorFlow because the builder writes ``array_record`` files and is read with
``as_data_source``; ``DatasetInfo(disable_shuffling=True)`` keeps the file order. Text comes back as
``bytes``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import tensorflow_datasets as tfds

from jaxthink.data.download import RemoteFile, fetch

PACKAGE_DATA_DIR = Path(__file__).resolve().parent / "benchmark_files"
TINY_DATA_DIR = Path(__file__).resolve().parents[1] / "tiny" / "data"
# tfds datasets under <cache>/tfds, downloaded benchmark files under <cache>/downloads.
DEFAULT_CACHE_DIR = Path("~/.cache/jaxthink").expanduser()


class BenchmarkDataError(ValueError):
  """A benchmark JSONL file is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class Problem:
  """One benchmark problem. ``answer`` is the gold answer as text; ``solution`` may be empty."""

  id: str
  problem: str
  answer: str
  solution: str


def _field(row: dict, key: str, kinds: tuple[type, ...], where: str) -> Any:
  if key not in row:
    raise BenchmarkDataError(f"{where}: missing field {key!r} (fields present: {sorted(row)})")
  value = row[key]
  # bool is an int subclass; a true/false answer is malformed, not the number 1/0.
  if not isinstance(value, kinds) or isinstance(value, bool):
    names = " or ".join(k.__name__ for k in kinds)
    raise BenchmarkDataError(f"{where}: field {key!r} must be {names}, got {value!r}")
  return value


def _number_text(value: int | float) -> str:
  """JSON number as gold text: integral values without ``.0`` (AMC's ``27.0`` -> ``"27"``)."""
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  return repr(value)


_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def _gsm8k(row: dict, split: str, index: int, where: str) -> Problem:
  solution = _field(row, "answer", (str,), where)
  found = _GSM8K_ANSWER.search(solution)
  if found is None:
    raise BenchmarkDataError(f"{where}: field 'answer' has no final '#### <answer>' line")
  return Problem(
    id=f"{split}-{index}",
    problem=_field(row, "question", (str,), where),
    answer=found.group(1).replace(",", ""),
    solution=solution,
  )


def _math500(row: dict, split: str, index: int, where: str) -> Problem:
  return Problem(
    id=_field(row, "unique_id", (str,), where),
    problem=_field(row, "problem", (str,), where),
    answer=_field(row, "answer", (str,), where),
    solution=_field(row, "solution", (str,), where),
  )


def _aime(row: dict, split: str, index: int, where: str) -> Problem:
  return Problem(
    id=str(_field(row, "id", (int, str), where)),
    problem=_field(row, "problem", (str,), where),
    answer=_field(row, "answer", (str,), where).strip(),
    solution=_field(row, "solution", (str,), where),
  )


def _amc(row: dict, split: str, index: int, where: str) -> Problem:
  return Problem(
    id=str(_field(row, "id", (int, str), where)),
    problem=_field(row, "problem", (str,), where),
    answer=_number_text(_field(row, "answer", (int, float), where)),
    solution="",
  )


def _tiny(row: dict, split: str, index: int, where: str) -> Problem:
  return Problem(
    id=_field(row, "id", (str,), where),
    problem=_field(row, "problem", (str,), where),
    answer=_field(row, "answer", (str,), where),
    solution=_field(row, "solution", (str,), where),
  )


@dataclasses.dataclass(frozen=True)
class BenchmarkSpec:
  """``packaged``: the data directory shipped with the package (None: not shipped); ``remote``:
  where each split of a benchmark that is not shipped is downloaded from."""

  folder: str
  splits: tuple[str, ...]
  parse_row: Callable[[dict, str, int, str], Problem]
  packaged: Path | None = PACKAGE_DATA_DIR
  remote: Mapping[str, RemoteFile] = dataclasses.field(default_factory=dict)


# PRM800K's MATH train split (the 7,500 MATH train + 4,500 MATH test problems outside MATH-500),
# a Git LFS file of openai/prm800k at a fixed commit; size and sha256 are its LFS pointer's.
_PRM800K_MATH_TRAIN = RemoteFile(
  url="https://media.githubusercontent.com/media/openai/prm800k/"
      "7ecc794703b2877f63226f2477a49b34f9b25163/prm800k/math_splits/train.jsonl",
  size=10896985, sha256="90d96daeac3fe343ebb1e22ce93dd99690f75983e957f88de42f87cffe1e8076")

BENCHMARKS: dict[str, BenchmarkSpec] = {
  "gsm8k": BenchmarkSpec("gsm8k", ("test", "train"), _gsm8k),
  "math500": BenchmarkSpec("math500", ("test",), _math500),
  "aime24": BenchmarkSpec("aime24", ("test",), _aime),
  "aime25": BenchmarkSpec("aime25", ("test",), _aime),
  "amc23": BenchmarkSpec("amc23", ("test",), _amc),
  # The embedded tiny model's held-out synthetic problems (jaxthink/tiny/data).
  "tiny": BenchmarkSpec("tiny", ("test",), _tiny, packaged=TINY_DATA_DIR),
  "math": BenchmarkSpec("math", ("train",), _math500, packaged=None,
                        remote={"train": _PRM800K_MATH_TRAIN}),
}


def _spec(name: str, split: str | None = None) -> BenchmarkSpec:
  if name not in BENCHMARKS:
    raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")
  spec = BENCHMARKS[name]
  if split is not None and split not in spec.splits:
    raise ValueError(f"benchmark {name!r} has no split {split!r}; valid: {', '.join(spec.splits)}")
  return spec


def default_data_dir(name: str, cache_dir: str | Path | None = None) -> Path:
  """The data directory of ``name`` when none is given: the packaged copy, or the download cache
  (``<cache_dir>/downloads``), fetching the splits not there yet."""
  spec = _spec(name)
  if spec.packaged is not None:
    return spec.packaged
  downloads = _cache_root(cache_dir) / "downloads"
  for split, remote in spec.remote.items():
    fetch(remote, downloads / spec.folder / f"{split}.jsonl")
  return downloads


def jsonl_path(name: str, data_dir: str | Path | None = None, split: str = "test",
               cache_dir: str | Path | None = None) -> Path:
  """Where the JSONL file of ``name``/``split`` lives under ``data_dir`` (None: the packaged or
  downloaded copy, see ``default_data_dir``); a clear error if absent."""
  spec = _spec(name, split)
  if data_dir is None:
    data_dir = default_data_dir(name, cache_dir)
  path = Path(data_dir).expanduser() / spec.folder / f"{split}.jsonl"
  if not path.is_file():
    raise BenchmarkDataError(
      f"benchmark file {path} does not exist. Point the data directory (the config's "
      f"data_dir, or load_benchmark(data_dir=...)) at a folder holding {spec.folder}/{split}.jsonl,"
      f" or leave it unset to use the copy shipped with jaxthink."
    )
  return path


def read_problems(name: str, data_dir: str | Path | None = None, split: str = "test",
                  cache_dir: str | Path | None = None) -> list[Problem]:
  """Parse one benchmark split straight from its JSONL file (no tfds), in file order.

  Blank lines are skipped; a line that is not a JSON object, lacks a field or has an empty problem
  text raises ``BenchmarkDataError`` naming the file, the 1-based line number and the field.
  """
  spec = _spec(name, split)
  path = jsonl_path(name, data_dir, split, cache_dir)
  problems = []
  with path.open(encoding="utf-8") as lines:
    for line_number, line in enumerate(lines, start=1):
      if not line.strip():
        continue
      where = f"{path}, line {line_number}"
      try:
        row = json.loads(line)
      except json.JSONDecodeError as error:
        raise BenchmarkDataError(f"{where}: not valid JSON ({error.msg})") from None
      if not isinstance(row, dict):
        raise BenchmarkDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
      problem = spec.parse_row(row, split, len(problems), where)
      if not problem.problem.strip():
        raise BenchmarkDataError(f"{where}: the problem text is empty")
      problems.append(problem)
  if len({p.id for p in problems}) != len(problems):
    raise BenchmarkDataError(f"{path}: problem ids are not unique")
  return problems


class JaxthinkMath(tfds.core.GeneratorBasedBuilder):
  """tfds builder with one config per benchmark; reads JSONL files from the manual directory."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "gsm8k, math500, aime24, aime25, amc23, tiny from JSONL."}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in BENCHMARKS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Pass download_config=tfds.download.DownloadConfig(manual_dir=DIR) where DIR holds "
    "<benchmark>/<split>.jsonl (gsm8k/test.jsonl, math500/test.jsonl, ...)."
  )

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
      builder=self,
      description="Math word problems with gold answers (jaxthink benchmarks).",
      features=tfds.features.FeaturesDict(
        {"id": text, "problem": text, "answer": text, "solution": text}
      ),
      # The class attribute alone does not keep file order; the DatasetInfo flag does.
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    name = self.builder_config.name
    return {
      split: self._generate_examples(name, dl_manager.manual_dir, split)
      for split in BENCHMARKS[name].splits
    }

  def _generate_examples(self, name: str, manual_dir, split: str) -> Iterator[tuple[int, dict]]:
    for index, problem in enumerate(read_problems(name, Path(manual_dir), split)):
      yield index, dataclasses.asdict(problem)


def _source_digest(name: str, data_dir: Path) -> str:
  """Hash of every JSONL file of a benchmark, so an edited or different copy gets its own cache."""
  digest = hashlib.sha256()
  for split in BENCHMARKS[name].splits:
    digest.update(split.encode())
    digest.update(jsonl_path(name, data_dir, split).read_bytes())
  return digest.hexdigest()[:16]


def _cache_root(cache_dir: str | Path | None) -> Path:
  return DEFAULT_CACHE_DIR if cache_dir is None else Path(cache_dir).expanduser()


def build_benchmark(
  name: str, data_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> tfds.core.DatasetBuilder:
  """Build (or reuse) the tfds dataset of ``name`` under ``<cache_dir>/tfds`` and return its
  builder (``data_dir`` None: the packaged or downloaded copy).

  Reads every split's JSONL from ``data_dir`` first, so a malformed file fails here with the
  file, line and field. The cache is keyed by the files' content hash.
  """
  _spec(name)
  data_dir = default_data_dir(name, cache_dir) if data_dir is None else Path(data_dir).expanduser()
  for split in BENCHMARKS[name].splits:
    read_problems(name, data_dir, split)  # validate before tfds wraps errors in its own machinery
  cache = _cache_root(cache_dir) / "tfds" / _source_digest(name, data_dir)
  cache.mkdir(parents=True, exist_ok=True)
  # Processes sharing a cache (two evals, parallel test workers) build a dataset one at a time:
  # tfds renames its finished build into place and fails when another process got there first.
  with open(cache / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder = JaxthinkMath(config=name, data_dir=str(cache))
    builder.download_and_prepare(
      download_dir=str(cache / "downloads"),
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=str(data_dir)),
    )
  return builder


def load_benchmark(
  name: str,
  data_dir: str | Path | None = None,
  split: str = "test",
  limit: int | None = None,
  cache_dir: str | Path | None = None,
) -> list[Problem]:
  """Problems of ``name``/``split`` in file order, built through tfds (cached in ``cache_dir``,
  default ``~/.cache/jaxthink``) from ``data_dir`` (None: the copy shipped with the package, or
  downloaded on first use); ``limit`` keeps the first ``limit`` problems."""
  _spec(name, split)
  if limit is not None and limit < 0:
    raise ValueError(f"limit must be >= 0 or None, got {limit}")
  source = build_benchmark(name, data_dir, cache_dir).as_data_source(split=split)
  count = len(source) if limit is None else min(limit, len(source))
  examples = source.__getitems__(list(range(count))) if count else []
  return [
    Problem(
      **{key: example[key].decode("utf-8") for key in ("id", "problem", "answer", "solution")}
    )
    for example in examples
  ]
