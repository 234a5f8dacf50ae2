"""Files fetched from their published source on first use: cached, resumed, checksummed.

A download is written to ``<file>.part`` and takes its final name only once its size and sha256
match, so a file under its final name is always complete. An interrupted transfer resumes from the
bytes already in ``.part`` (an HTTP ``Range`` request), within the same call and across calls; a
complete ``.part`` with the wrong sha256 is deleted. Offline, the error names the file to place by
hand, with its size and sha256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import shutil
import urllib.error
import urllib.request
from pathlib import Path


class DownloadError(OSError):
  """A file could not be downloaded, or its content does not match its checksum."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """A published file: where it is, and the size and sha256 it must have."""

  url: str
  size: int  # bytes
  sha256: str  # hex digest


def sha256_of(path: Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def fetch(remote: RemoteFile, path: str | Path, attempts: int = 3, timeout: float = 60.0) -> Path:
  """``path``, downloaded from ``remote.url`` unless it is already there and intact.

  Each of ``attempts`` transfers resumes where the previous one stopped. Raises ``DownloadError``
  when the machine is offline, the transfer keeps failing, or the content does not match.
  """
  path = Path(path).expanduser()
  by_hand = (f"or place the file by hand at {path} ({remote.size} bytes, sha256 "
             f"{remote.sha256}, from {remote.url})")
  if path.is_file():
    if path.stat().st_size == remote.size and sha256_of(path) == remote.sha256:
      return path
    raise DownloadError(f"{path} does not match its checksum (expected {remote.size} bytes, "
                        f"sha256 {remote.sha256}); delete it to download it again, {by_hand}.")
  path.parent.mkdir(parents=True, exist_ok=True)
  part = path.with_name(path.name + ".part")
  failure = ""
  for _ in range(attempts):
    have = part.stat().st_size if part.exists() else 0
    if have >= remote.size:
      break
    try:
      _transfer(remote.url, part, have, timeout)
    except (OSError, http.client.HTTPException) as error:  # offline, refused, reset mid-way
      failure = str(getattr(error, "reason", error)) or type(error).__name__
  have = part.stat().st_size if part.exists() else 0
  if have < remote.size:
    kept = f"{have} of {remote.size} bytes are kept in {part}; " if have else ""
    raise DownloadError(f"could not download {remote.url} ({failure or 'connection closed early'})"
                        f"; {kept}run again to resume when online, {by_hand}.")
  digest = sha256_of(part)
  if have != remote.size or digest != remote.sha256:
    part.unlink()
    raise DownloadError(f"{remote.url} gave {have} bytes with sha256 {digest}, expected "
                        f"{remote.size} bytes with sha256 {remote.sha256} (the source changed or "
                        f"the transfer was corrupted); the download was deleted. Run again, "
                        f"{by_hand}.")
  part.replace(path)
  return path


def _transfer(url: str, part: Path, have: int, timeout: float) -> None:
  """Appends the bytes of ``url`` from offset ``have`` to ``part`` (restarts when the server
  ignores the range)."""
  headers = {"Range": f"bytes={have}-"} if have else {}
  with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                              timeout=timeout) as response:
    resumed = have and response.status == 206
    with part.open("ab" if resumed else "wb") as out:
      shutil.copyfileobj(response, out, 1 << 20)
