"""The run directory: the resolved config, results appended as they finish, per-token side files.

    <output_dir>/config.json           the resolved EvalConfig; a different config is refused
    <output_dir>/results.jsonl         one graded response per line, flushed as each batch ends
    <output_dir>/tokens/<variant>/<benchmark>-<index>-s<sample>.npz   per-token buffers

A response is finished once its line is in results.jsonl (its side file is written first), so a
run killed at any point resumes with each response exactly once.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from jaxthink.config import ConfigError


def response_key(variant: str, benchmark: str, index: int, sample: int) -> str:
  return f"{variant}/{benchmark}/{index}/{sample}"


class RunDir:
  """Results of one run, read back on resume."""

  def __init__(self, path: str | Path, config: Any, writer: bool = True):
    """Opens (or creates) the run directory for `config`; `writer=False` on non-zero processes."""
    self.path = Path(path)
    self.writer = writer
    self.results_file = self.path / "results.jsonl"
    resolved = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    config_file = self.path / "config.json"
    if config_file.exists():
      previous = json.loads(config_file.read_text())
      if previous != resolved:
        changed = sorted(k for k in resolved.keys() | previous.keys()
                         if resolved.get(k) != previous.get(k))
        raise ConfigError(f"{self.path} holds a run with a different config (differs in {changed});"
                          " set a new output_dir (e.g. --set output_dir=runs/new) or delete it.")
    if writer:
      self.path.mkdir(parents=True, exist_ok=True)
      config_file.write_text(json.dumps(resolved, indent=1) + "\n")
      _drop_partial_last_line(self.results_file)

  def rows(self) -> list[dict[str, Any]]:
    """Finished responses, each once (the first line of a key wins)."""
    if not self.results_file.exists():
      return []
    rows, seen = [], set()
    with self.results_file.open(encoding="utf-8") as f:
      for line in f:
        if not line.endswith("\n"):
          break  # a line still being written by a copy-back
        row = json.loads(line)
        if row["key"] not in seen:
          seen.add(row["key"])
          rows.append(row)
    return rows

  def token_file(self, variant: str, benchmark: str, index: int, sample: int) -> Path:
    return self.path / "tokens" / variant / f"{benchmark}-{index:05d}-s{sample}.npz"

  def append(self, rows: Iterable[dict[str, Any]], buffers: Iterable[dict[str, np.ndarray]]) -> None:
    """Writes each row's side file, then its line; flushed and synced before returning."""
    if not self.writer:
      return
    rows = list(rows)
    for row, arrays in zip(rows, buffers, strict=True):
      file = self.path / row["token_file"]
      file.parent.mkdir(parents=True, exist_ok=True)
      np.savez_compressed(file, **arrays)
    with self.results_file.open("a", encoding="utf-8") as f:
      for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
      f.flush()
      os.fsync(f.fileno())


def _drop_partial_last_line(path: Path) -> None:
  """A run killed mid-write leaves a line without its newline: cut it so appends start clean."""
  if not path.exists():
    return
  data = path.read_bytes()
  if data and not data.endswith(b"\n"):
    path.write_bytes(data[:data.rfind(b"\n") + 1])
