"""The run directory: the resolved config, results appended as they finish, per-token side files.

    <output_dir>/lock                   an OS lock (flock) held for the run's life; holds its pid
    <output_dir>/config.json            the resolved EvalConfig, written once the run has started
    <output_dir>/results.jsonl          one graded response per line, fsynced as each batch ends
    <output_dir>/results.rejected.jsonl lines taken out of results.jsonl (bad, or side file lost)
    <output_dir>/tokens/<variant>/<benchmark>-<index>-s<sample>.npz   per-token buffers

A response is finished once its line is in results.jsonl (its side file is written and synced
first), so a run killed at any point resumes with each response exactly once. A resumed run must
have the same config, except that `limit` and `sampling.samples_per_problem` may grow (the new
responses are appended).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from jaxthink.config import ConfigError

# Config keys a resumed run may raise (None, for limit, means every problem).
GROWABLE = ("limit", "sampling.samples_per_problem")
# Fields every results.jsonl row has (what resume and the report read).
_ROW_FIELDS = {"key": str, "variant": str, "token_file": str}


def response_key(variant: str, benchmark: str, index: int, sample: int) -> str:
  return f"{variant}/{benchmark}/{index}/{sample}"


class RunDir:
  """Results of one run, read back on resume. Use as a context manager: it holds the lock."""

  def __init__(self, path: str | Path, config: Any, writer: bool = True, repair: bool = False):
    """Opens (or creates) the run directory for `config` and checks what it holds; `writer=False`
    on non-zero processes (they neither lock nor write). `repair` moves unreadable lines of
    results.jsonl to results.rejected.jsonl (they are generated again) instead of stopping."""
    self.path = Path(path)
    self.writer = writer
    self.results_file = self.path / "results.jsonl"
    self.rejected_file = self.path / "results.rejected.jsonl"
    self.config_file = self.path / "config.json"
    self._resolved = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    self._lock_fd = None
    if writer:
      self._lock()
    try:
      if self.config_file.exists():
        _check_resumable(self.config_file, self._resolved)
      if writer:
        self._check_results(repair)
    except BaseException:
      self.close()
      raise

  def __enter__(self) -> "RunDir":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Releases the lock (the OS also releases it when the process dies)."""
    if self._lock_fd is not None:
      os.close(self._lock_fd)
      self._lock_fd = None

  def start(self) -> None:
    """Records the config: call once the run has started (validated, model loaded), so a run that
    failed before it leaves nothing that would refuse the fixed config."""
    if self.writer:
      _write_atomic(self.config_file, (json.dumps(self._resolved, indent=1) + "\n").encode())

  def rows(self) -> list[dict[str, Any]]:
    """Finished responses, each once (the first line of a key wins); [] on non-writers."""
    if not self.writer or not self.results_file.exists():
      return []
    rows, seen = [], set()
    for line in self.results_file.read_text(encoding="utf-8").splitlines():
      row = json.loads(line)
      if row["key"] not in seen:
        seen.add(row["key"])
        rows.append(row)
    return rows

  def token_file(self, variant: str, benchmark: str, index: int, sample: int) -> Path:
    return self.path / "tokens" / variant / f"{benchmark}-{index:05d}-s{sample}.npz"

  def append(self, rows: Iterable[dict[str, Any]], buffers: Iterable[dict[str, np.ndarray]]) -> None:
    """Writes and syncs each row's side file, then its line (one complete line per write, so
    nothing can interleave within a line); synced before returning."""
    if not self.writer:
      return
    rows = list(rows)
    for row, arrays in zip(rows, buffers, strict=True):
      file = self.path / row["token_file"]
      file.parent.mkdir(parents=True, exist_ok=True)
      with file.open("wb") as f:
        np.savez_compressed(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(self.results_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      for row in rows:
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        if os.write(fd, line) != len(line):
          raise OSError(f"short write to {self.results_file} (disk full?)")
      os.fsync(fd)
    finally:
      os.close(fd)

  def _lock(self) -> None:
    self.path.mkdir(parents=True, exist_ok=True)
    lock_file = self.path / "lock"
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      raise ConfigError(f"output_dir: {self.path} is in use by another run (pid {holder}, which "
                        "holds its lock); wait for it to finish, or set a new output_dir."
                        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    self._lock_fd = fd

  def _check_results(self, repair: bool) -> None:
    """Reads results.jsonl line by line. A torn last line (a killed write) is cut; a line whose side
    file is gone is set aside (it is generated again); any other bad line stops the run, or with
    `repair` is set aside too."""
    if not self.results_file.exists():
      return
    data = self.results_file.read_bytes()
    if data and not data.endswith(b"\n"):
      data = data[:data.rfind(b"\n") + 1]
      _write_atomic(self.results_file, data)
    kept, rejected = [], []
    for number, line in enumerate((line + b"\n" for line in data.split(b"\n")[:-1]), 1):
      problem = _bad_row(line)
      if problem is not None and not repair:
        raise ConfigError(
            f"output_dir: {self.results_file}, line {number}: {problem}. Rerun with --repair "
            f"(evaluate(cfg, repair=True)) to move bad lines to {self.rejected_file.name} and "
            "generate those responses again.")
      if problem is None and not (self.path / json.loads(line)["token_file"]).is_file():
        problem = "its per-token file is missing"
      if problem is None:
        kept.append(line)
      else:
        rejected.append((number, line, problem))
    if not rejected:
      return
    with self.rejected_file.open("ab") as f:
      f.writelines(line for _, line, _ in rejected)
      f.flush()
      os.fsync(f.fileno())
    _write_atomic(self.results_file, b"".join(kept))
    for number, _, problem in rejected:
      print(f"{self.results_file}, line {number}: {problem}; moved to {self.rejected_file.name}, "
            "will be generated again.")


def _bad_row(line: bytes) -> str | None:
  """Why `line` is not a results row, or None if it is one."""
  try:
    row = json.loads(line.decode("utf-8"))
  except UnicodeDecodeError as e:
    return f"not valid UTF-8 (at byte {e.start})"
  except json.JSONDecodeError as e:
    return f"not valid JSON ({e.msg} at column {e.colno})"
  if not isinstance(row, dict):
    return f"expected a JSON object, got {type(row).__name__}"
  for field, kind in _ROW_FIELDS.items():
    if not isinstance(row.get(field), kind):
      return f"field {field!r} is missing or not a {kind.__name__}"
  return None


def _check_resumable(config_file: Path, resolved: dict[str, Any]) -> None:
  """The run at `config_file` may resume under `resolved`: same config, or a grown GROWABLE key."""
  previous, current = _flatten(json.loads(config_file.read_text())), _flatten(resolved)
  changed = sorted(k for k in previous.keys() | current.keys() if previous.get(k) != current.get(k))
  shrunk = [k for k in changed if k not in GROWABLE or not _grows(previous.get(k), current.get(k))]
  if shrunk:
    raise ConfigError(f"output_dir: {config_file.parent} holds a run with a different config "
                      f"(differs in {shrunk}; only {' and '.join(GROWABLE)} may grow on a resumed "
                      "run); set a new output_dir (e.g. --set output_dir=runs/new) or delete it.")


def _grows(old: int | None, new: int | None) -> bool:
  return new is None or (old is not None and new >= old)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _write_atomic(path: Path, data: bytes) -> None:
  """Replaces `path` with `data` so that a kill leaves either the old or the new file."""
  tmp = path.with_name(path.name + ".tmp")
  with tmp.open("wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
