"""Downloads for real, from an HTTP server on 127.0.0.1: success, resume after a truncated
transfer, checksum mismatch, offline; and a benchmark the package does not ship, fetched on use."""

import dataclasses
import hashlib
import http.server
import json
import socket
import threading

import pytest

from jaxthink.data import benchmarks
from jaxthink.data.download import DownloadError, RemoteFile, fetch


class Server(http.server.ThreadingHTTPServer):
  """Serves `files` (path -> bytes), honouring `Range: bytes=N-`; the first `truncate` responses
  stop after half their bytes. Records every request's Range header in `ranges`."""

  def __init__(self, files):
    super().__init__(("127.0.0.1", 0), Handler)
    self.files, self.truncate, self.ranges = files, 0, []

  def url(self, path):
    return f"http://127.0.0.1:{self.server_address[1]}{path}"


class Handler(http.server.BaseHTTPRequestHandler):
  def do_GET(self):
    server = self.server
    if self.path not in server.files:
      self.send_error(404)
      return
    body = server.files[self.path]
    requested = self.headers.get("Range")
    server.ranges.append(requested)
    start = int(requested.removeprefix("bytes=").removesuffix("-")) if requested else 0
    self.send_response(206 if requested else 200)
    if requested:
      self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
    self.send_header("Content-Length", str(len(body) - start))
    self.end_headers()
    payload = body[start:]
    if server.truncate:
      server.truncate -= 1
      payload = payload[:len(payload) // 2]  # then the connection closes: a cut transfer
    self.wfile.write(payload)
    self.close_connection = True

  def log_message(self, *args):
    pass


@pytest.fixture
def server():
  rows = [{"problem": f"What is {i} + {i}?", "solution": f"{i} + {i} = {2 * i}", "answer": str(2 * i),
           "subject": "Algebra", "level": 1, "unique_id": f"train/algebra/{i}.json"}
          for i in range(200)]
  content = "".join(json.dumps(row) + "\n" for row in rows).encode()
  running = Server({"/train.jsonl": content, "/other.jsonl": content[::-1]})
  thread = threading.Thread(target=running.serve_forever, daemon=True)
  thread.start()
  yield running
  running.shutdown()
  running.server_close()


def remote_of(server, path="/train.jsonl"):
  body = server.files["/train.jsonl"]
  return RemoteFile(server.url(path), len(body), hashlib.sha256(body).hexdigest())


def test_download_then_cached(server, tmp_path):
  target = tmp_path / "cache" / "math" / "train.jsonl"
  assert fetch(remote_of(server), target) == target
  assert target.read_bytes() == server.files["/train.jsonl"]
  assert not target.with_name("train.jsonl.part").exists()
  server.server_close()  # the cached copy is used without asking the server again
  assert fetch(remote_of(server), target).read_bytes() == server.files["/train.jsonl"]
  assert server.ranges == [None]


def test_truncated_transfer_resumes_from_the_partial_file(server, tmp_path):
  target = tmp_path / "train.jsonl"
  body = server.files["/train.jsonl"]
  server.truncate = 1
  fetch(remote_of(server), target)
  assert target.read_bytes() == body
  # The second request asked only for the bytes the cut first transfer did not deliver.
  assert server.ranges == [None, f"bytes={len(body) // 2}-"]


def test_cut_every_time_keeps_the_partial_file_for_the_next_run(server, tmp_path):
  target = tmp_path / "train.jsonl"
  body = server.files["/train.jsonl"]
  server.truncate = 2
  with pytest.raises(DownloadError, match="run again to resume") as error:
    fetch(remote_of(server), target, attempts=2)
  assert str(target) in str(error.value) and not target.exists()
  part = target.with_name("train.jsonl.part")
  assert part.read_bytes() == body[:len(body) * 3 // 4]
  fetch(remote_of(server), target)  # a later run resumes from there
  assert target.read_bytes() == body and not part.exists()
  assert server.ranges[-1] == f"bytes={len(body) * 3 // 4}-"


def test_checksum_mismatch_deletes_the_download(server, tmp_path):
  target = tmp_path / "train.jsonl"
  wrong = remote_of(server, "/other.jsonl")  # same size, other bytes
  with pytest.raises(DownloadError, match="expected .* bytes with sha256") as error:
    fetch(wrong, target)
  assert wrong.sha256 in str(error.value) and str(target) in str(error.value)
  assert not target.exists() and not target.with_name("train.jsonl.part").exists()


def test_offline_names_the_file_to_place_by_hand(tmp_path):
  with socket.socket() as s:  # a port nothing listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  remote = RemoteFile(f"http://127.0.0.1:{port}/train.jsonl", 10, "0" * 64)
  target = tmp_path / "math" / "train.jsonl"
  with pytest.raises(DownloadError) as error:
    fetch(remote, target, attempts=1)
  message = str(error.value)
  assert f"place the file by hand at {target}" in message and "0" * 64 in message
  assert "refused" in message.lower()


def test_file_placed_by_hand_is_checked(server, tmp_path):
  remote = remote_of(server)
  target = tmp_path / "train.jsonl"
  target.write_bytes(server.files["/train.jsonl"])
  server.server_close()
  assert fetch(remote, target) == target and server.ranges == []
  target.write_bytes(b"x" * remote.size)
  with pytest.raises(DownloadError, match="does not match its checksum"):
    fetch(remote, target)


def test_benchmark_not_shipped_is_downloaded_on_first_use(server, tmp_path, monkeypatch):
  """`math` (PRM800K's MATH train split) read through tfds, its file fetched from the server."""
  spec = benchmarks.BENCHMARKS["math"]
  assert spec.packaged is None and spec.remote["train"].size == 10896985
  monkeypatch.setitem(benchmarks.BENCHMARKS, "math",
                      dataclasses.replace(spec, remote={"train": remote_of(server)}))
  problems = benchmarks.load_benchmark("math", split="train", cache_dir=tmp_path)
  assert len(problems) == 200
  assert (problems[3].id, problems[3].answer) == ("train/algebra/3.json", "6")
  downloaded = tmp_path / "downloads" / "math" / "train.jsonl"
  assert downloaded.read_bytes() == server.files["/train.jsonl"]


def test_benchmark_offline_error_names_the_cache_file(tmp_path, monkeypatch):
  spec = benchmarks.BENCHMARKS["math"]
  remote = dataclasses.replace(spec.remote["train"], url="http://127.0.0.1:9/train.jsonl")
  monkeypatch.setitem(benchmarks.BENCHMARKS, "math",
                      dataclasses.replace(spec, remote={"train": remote}))
  monkeypatch.setattr(benchmarks, "DEFAULT_CACHE_DIR", tmp_path)  # the default cache, not ~/.cache
  with pytest.raises(DownloadError) as error:
    benchmarks.read_problems("math", split="train")
  message = str(error.value)
  assert f"place the file by hand at {tmp_path / 'downloads' / 'math' / 'train.jsonl'}" in message
  assert ("10896985 bytes, sha256 "
          "90d96daeac3fe343ebb1e22ce93dd99690f75983e957f88de42f87cffe1e8076") in message
