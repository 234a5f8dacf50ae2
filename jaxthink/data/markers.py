"""Overthinking markers: load ``markers.txt`` and count markers in text.

The list is shared with the decode engine (which maps each marker to token ids); here markers are
matched in text, case-insensitively, as whole words or phrases ("But" does not match "Butter",
"Hold on" matches "hold   on").
"""

from __future__ import annotations

import collections
import functools
import re
from pathlib import Path

MARKERS_PATH = Path(__file__).with_name("markers.txt")


def load_markers(path: str | Path | None = None) -> tuple[str, ...]:
  """Markers of ``path`` (default: the packaged ``markers.txt``), in file order, without duplicates.

  One word or phrase per line; ``#`` starts a comment; blank lines are skipped.
  """
  path = Path(path) if path is not None else MARKERS_PATH
  if not path.is_file():
    raise FileNotFoundError(
      f"marker list {path} does not exist; pass the path of a text file with one marker per line"
    )
  markers: dict[str, None] = {}
  for line in path.read_text(encoding="utf-8").splitlines():
    text = line.split("#", 1)[0].strip()
    if text:
      markers.setdefault(" ".join(text.split()), None)
  if not markers:
    raise ValueError(f"marker list {path} holds no markers")
  return tuple(markers)


@functools.lru_cache(maxsize=32)
def marker_pattern(markers: tuple[str, ...]) -> re.Pattern[str]:
  """One regex matching any marker as a whole word/phrase, case-insensitive.

  Longer markers come first so that a phrase is counted once, not also as its first word.
  """
  if not markers:
    raise ValueError("empty marker list")
  ordered = sorted(set(markers), key=len, reverse=True)
  alternatives = [r"\s+".join(re.escape(word) for word in m.split()) for m in ordered]
  return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def find_markers(text: str, markers: tuple[str, ...]) -> list[tuple[int, int, str]]:
  """Every marker occurrence in ``text``, in order: ``(char_start, char_end, marker)``."""
  canonical = {" ".join(m.lower().split()): m for m in markers}
  return [
    (m.start(), m.end(), canonical[" ".join(m.group().lower().split())])
    for m in marker_pattern(tuple(markers)).finditer(text)
  ]


def count_markers(text: str, markers: tuple[str, ...]) -> dict[str, int]:
  """Occurrences of each marker in ``text`` (markers not found are left out)."""
  return dict(collections.Counter(name for _, _, name in find_markers(text, markers)))
