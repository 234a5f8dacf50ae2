"""The run directory can't be corrupted: one eval at a time, bad lines found and repaired, lost side
files regenerated, a failed start leaves nothing behind, and a finished run can grow."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxthink.config import ConfigError, load_config
from jaxthink.eval import evaluate
from jaxthink.eval.__main__ import main
from jaxthink.eval.config import EvalConfig
from jaxthink.eval.run_dir import RunDir
from tiny_eval import loads, tiny_config  # noqa: F401 (loads: a fixture)

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path, **overrides) -> Path:
  return tiny_config(tmp_path, **{"limit": 3, **overrides})


def _lines(run: Path) -> list[str]:
  return (run / "results.jsonl").read_text().splitlines()


def _keys(run: Path) -> list[str]:
  return [json.loads(line)["key"] for line in _lines(run)]


def _eval(config, *extra):
  return subprocess.Popen([sys.executable, "-m", "jaxthink.eval", "--config", str(config), *extra],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_second_eval_on_a_locked_dir_fails_at_once_then_resumes_to_nothing(tmp_path):
  config = _config(tmp_path, limit=4, variants=[
      {"name": "full"}, {"name": "w8", "quant": {"scheme": "w8a16", "method": "rtn"}}])
  run = tmp_path / "run"
  first = _eval(config)
  deadline = time.time() + 300
  while time.time() < deadline and first.poll() is None:
    if (run / "lock").exists() and (run / "lock").read_text().strip() == str(first.pid):
      break
    time.sleep(0.05)
  assert first.poll() is None, first.stdout.read()
  os.kill(first.pid, signal.SIGSTOP)  # holds the lock, mid-run, for as long as the test needs
  try:
    started = time.time()
    second = _eval(config)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 2, out
    assert f"is in use by another run (pid {first.pid}" in out and "config error: output_dir" in out
  finally:
    os.kill(first.pid, signal.SIGCONT)
  out, _ = first.communicate(timeout=600)
  assert first.returncode == 0, out[-3000:]
  print(f"second eval refused after {time.time() - started:.1f} s")
  finished = (run / "results.jsonl").read_bytes()
  keys = _keys(run)
  assert len(keys) == len(set(keys)) == 2 * 4

  again = _eval(config)
  out, _ = again.communicate(timeout=600)
  assert again.returncode == 0, out[-3000:]
  assert (run / "results.jsonl").read_bytes() == finished  # nothing left to do, nothing appended


def test_corrupt_middle_line_stops_until_repaired(tmp_path, loads):
  cfg = load_config(EvalConfig, _config(tmp_path))
  run = tmp_path / "run"
  evaluate(cfg)
  original = {json.loads(line)["key"]: json.loads(line) for line in _lines(run)}
  lines = _lines(run)
  bad = lines[1][:40]  # a torn line in the middle, e.g. two writers interleaving
  (run / "results.jsonl").write_text("\n".join([lines[0], bad, *lines[2:]]) + "\n")
  assert len(loads) == 1

  with pytest.raises(ConfigError, match=r"results.jsonl, line 2: not valid JSON .*--repair"):
    evaluate(cfg)
  assert len(loads) == 1  # stopped before the model loaded
  out = subprocess.run([sys.executable, "-m", "jaxthink.eval", "--config", str(_config(tmp_path))],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 2 and "results.jsonl, line 2" in out.stderr and "--repair" in out.stderr

  evaluate(cfg, repair=True)
  keys = _keys(run)
  assert sorted(keys) == sorted(original) and len(keys) == len(set(keys))
  assert (run / "results.rejected.jsonl").read_text() == bad + "\n"
  regenerated = {json.loads(line)["key"]: json.loads(line) for line in _lines(run)}
  assert regenerated == original  # the same tokens again: per-response seeds


def test_missing_token_file_is_regenerated(tmp_path):
  cfg = load_config(EvalConfig, _config(tmp_path))
  run = tmp_path / "run"
  evaluate(cfg)
  rows = [json.loads(line) for line in _lines(run)]
  lost = run / rows[0]["token_file"]
  before = dict(np.load(lost))
  lost.unlink()
  evaluate(cfg)  # not fatal: the response is generated again
  again = dict(np.load(lost))
  assert again.keys() == before.keys()
  for name in before:  # the same tokens; float records agree to rounding (another batch shape)
    np.testing.assert_allclose(again[name], before[name], rtol=1e-4, atol=1e-5, err_msg=name)
  keys = _keys(run)
  assert sorted(keys) == sorted(r["key"] for r in rows) and len(keys) == len(set(keys))
  assert json.loads((run / "results.rejected.jsonl").read_text())["key"] == rows[0]["key"]
  assert (run / "summary.json").is_file()


def test_failed_first_run_fixed_and_rerun_into_the_same_dir(tmp_path, capsys):
  config = _config(tmp_path)
  run = tmp_path / "run"
  assert main(["--config", str(config), "--set", "sampling.top_k=-1"]) == 2
  assert "sampling.top_k" in capsys.readouterr().err
  assert not (run / "config.json").exists()
  # A start that stops after the lock (before the model loaded) leaves no config behind either.
  bad = load_config(EvalConfig, config, ["sampling.seed=7"])
  with RunDir(run, bad):
    pass
  assert not (run / "config.json").exists()
  assert main(["--config", str(config)]) == 0
  assert len(set(_keys(run))) == 3
  assert json.loads((run / "config.json").read_text())["sampling"]["top_k"] == 0


def test_raising_limit_and_samples_appends_only_the_new_items(tmp_path):
  config = _config(tmp_path, limit=2)
  run = tmp_path / "run"
  evaluate(load_config(EvalConfig, config))
  two = (run / "results.jsonl").read_bytes()
  evaluate(load_config(EvalConfig, config, ["limit=3"]))
  three = (run / "results.jsonl").read_bytes()
  assert three.startswith(two)
  assert _keys(run)[2:] == ["full/tiny/2/0"]
  evaluate(load_config(EvalConfig, config, ["limit=3", "sampling.samples_per_problem=2"]))
  assert (run / "results.jsonl").read_bytes().startswith(three)
  assert sorted(_keys(run)[3:]) == [f"full/tiny/{i}/1" for i in range(3)]
  assert json.loads((run / "config.json").read_text())["limit"] == 3
  # The grown run holds what a fresh run of the grown config produces.
  fresh = tmp_path / "fresh"
  evaluate(load_config(EvalConfig, config, ["limit=3", "sampling.samples_per_problem=2",
                                            f"output_dir={fresh}"]))
  by_key = lambda d: {json.loads(line)["key"]: json.loads(line)["response"] for line in _lines(d)}
  assert by_key(run) == by_key(fresh)
  with pytest.raises(ConfigError, match=r"differs in \['limit'\]; only limit and "
                                        r"sampling.samples_per_problem may grow"):
    evaluate(load_config(EvalConfig, config, ["limit=2", "sampling.samples_per_problem=2"]))


def _row(run: Path, index: int) -> bytes:
  """A results line whose side file exists."""
  token_file = f"tokens/full/tiny-{index:05d}-s0.npz"
  (run / token_file).parent.mkdir(parents=True, exist_ok=True)
  np.savez(run / token_file, token_ids=np.arange(3))
  return (json.dumps({"key": f"full/tiny/{index}/0", "variant": "full",
                      "token_file": token_file}) + "\n").encode()


def test_every_kind_of_bad_line_is_named_and_set_aside(tmp_path):
  """No model: a results file with good lines, four kinds of bad ones and a torn tail."""
  cfg = load_config(EvalConfig, _config(tmp_path))
  run = tmp_path / "run"
  run.mkdir()
  good = [_row(run, i) for i in range(3)]
  bad = [b'\xff{"key": "full/tiny/9/0"}\n', b"\n", b"[1, 2]\n", b'{"key": "full/tiny/8/0"}\n']
  lines = [good[0], bad[0], good[1], bad[1], bad[2], bad[3], good[2]]
  (run / "results.jsonl").write_bytes(b"".join(lines) + b'{"key": "full/t')  # killed mid-write
  with pytest.raises(ConfigError, match=r"results.jsonl, line 2: not valid UTF-8 .*--repair"):
    RunDir(run, cfg)
  (run / "results.jsonl").write_bytes(b"".join(lines[:1] + lines[2:]))
  with pytest.raises(ConfigError, match=r"line 3: not valid JSON \(Expecting value at column 1\)"):
    RunDir(run, cfg)
  (run / "results.jsonl").write_bytes(b"".join(lines) + b'{"key": "full/t')
  with RunDir(run, cfg, repair=True) as opened:
    assert [r["key"] for r in opened.rows()] == [f"full/tiny/{i}/0" for i in range(3)]
  assert (run / "results.jsonl").read_bytes() == b"".join(good)
  assert (run / "results.rejected.jsonl").read_bytes() == b"".join(bad)  # the torn tail is dropped
  with RunDir(run, cfg):  # now clean
    pass


def test_the_lock_names_its_holder_and_is_released(tmp_path):
  cfg = load_config(EvalConfig, _config(tmp_path))
  run = tmp_path / "run"
  with RunDir(run, cfg):
    with pytest.raises(ConfigError, match=rf"output_dir: .* is in use by another run \(pid "
                                          rf"{os.getpid()}\b"):
      RunDir(run, cfg)
  with RunDir(run, cfg):  # released on exit
    pass
