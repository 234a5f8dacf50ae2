"""End to end: `python -m jaxthink.eval` on a tiny random model and a real benchmark slice."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from jaxthink.config import ConfigError, load_config
from jaxthink.data.benchmarks import PACKAGE_DATA_DIR
from jaxthink.eval import evaluate
from jaxthink.eval.config import EvalConfig
from jaxthink.tiny.task import generate_problems
from jaxthink.tiny.tokenizer import corpus_texts, train_tokenizer
from hf_reference import make_hf_model

DATA = PACKAGE_DATA_DIR  # the benchmark files shipped with jaxthink
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("model")
  texts = corpus_texts(generate_problems("train", 200, 0, 1))
  texts += [json.loads(line)["question"] for line in (DATA / "gsm8k" / "test.jsonl").open()][:50]
  tok = train_tokenizer(texts, 512, path)
  make_hf_model(path, "qwen2", vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, max_position_embeddings=1024)  # AIME prompts: 353
  return path


def _config(tmp_path, model_dir, **overrides):
  cfg = {
      "model": {"path": str(model_dir), "dtype": "float32"},
      "benchmarks": ["gsm8k", "aime24"], "data_dir": str(DATA), "limit": 3,
      "sampling": {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 24,
                   "samples_per_problem": 2, "seed": 1},
      "batch_size": 4, "output_dir": str(tmp_path / "run"),
      "variants": [
          {"name": "full"},
          {"name": "w8", "quant": {"scheme": "w8a16", "method": "rtn"}},
          {"name": "w8+penalty", "quant": {"scheme": "w8a16", "method": "rtn"},
           "penalty": {"mode": "constant", "strength": 3.0}, "compare_to": "w8"},
          {"name": "w8+control", "quant": {"scheme": "w8a16", "method": "rtn"},
           "penalty": {"mode": "constant", "strength": 3.0, "token_set": "random_matched"}},
      ],
      **overrides,
  }
  path = tmp_path / "eval.yaml"
  path.write_text(yaml.safe_dump(cfg))
  return path


def _eval(config, *extra, **kwargs):
  return subprocess.Popen([sys.executable, "-m", "jaxthink.eval", "--config", str(config), *extra],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          **kwargs)


def _rows(run):
  return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def test_killed_run_resumes_with_each_response_once(tmp_path, model_dir):
  config = _config(tmp_path, model_dir)
  run = tmp_path / "run"
  proc = _eval(config, start_new_session=True)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if (run / "results.jsonl").exists() and len(_rows(run)) >= 4:
      break
    time.sleep(0.2)
  assert proc.poll() is None, proc.stdout.read()[-3000:]
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  partial = len(_rows(run))
  assert 4 <= partial < 4 * 12

  evaluate(load_config(EvalConfig, config))  # the restart, in this process
  rows = _rows(run)
  keys = [r["key"] for r in rows]
  assert len(keys) == len(set(keys)) == 4 * 2 * 3 * 2  # variants×benchmarks×problems×samples
  for name in ["config.json", "summary.json", "report.md", "cot_length_hist.png",
               "accuracy_overthinking.png", "kl_vs_entropy.png"]:
    assert (run / name).is_file(), name
  for r in rows:
    assert (run / r["token_file"]).is_file()
    assert r["n_tokens"] <= 24 and (r["correct"] == (r["failure"] is None))
  summary = json.loads((run / "summary.json").read_text())
  assert set(summary["variants"]) == {"full", "w8", "w8+penalty", "w8+control"}
  quantized = [r for r in rows if r["variant"] != "full"]
  assert all(r["mean_kl"] is not None and r["mean_kl"] >= 0 for r in quantized)
  assert any(r["penalty_fired"] > 0 for r in rows if r["variant"] == "w8+penalty")
  report = (run / "report.md").read_text()
  assert "w8+control" in report


def test_resume_is_reproducible(tmp_path, model_dir):
  """A response depends only on (seed, problem, sample): a run resumed after losing rows draws the
  same tokens as the uninterrupted one."""
  cfg = load_config(EvalConfig, _config(tmp_path, model_dir, variants=[{"name": "full"}],
                                        benchmarks=["gsm8k"]))
  run = tmp_path / "run"
  evaluate(cfg)
  first = {r["key"]: r["response"] for r in _rows(run)}
  lines = (run / "results.jsonl").read_text().splitlines(keepends=True)
  (run / "results.jsonl").write_text("".join(lines[:3]) + lines[3][:10])  # a torn last line
  evaluate(cfg)
  again = {r["key"]: r["response"] for r in _rows(run)}
  assert again == first


def test_changed_config_is_refused(tmp_path, model_dir):
  config = _config(tmp_path, model_dir, variants=[{"name": "full"}], limit=1,
                   benchmarks=["aime24"])
  evaluate(load_config(EvalConfig, config))
  out, _ = _eval(config, "--set", "sampling.seed=2").communicate(timeout=600)
  assert "holds a run with a different config" in out and "sampling" in out


@pytest.mark.parametrize("edit, message", [
    ({"samplng": {}}, "unknown key 'samplng'"),
    ({"sampling": {"temperature": "hot"}}, "sampling.temperature: expected a number"),
    ({"variants": [{"name": "a", "quant": {"scheme": "w5a16"}}]}, "unknown quantization scheme 'w5a16'"),
    ({"variants": [{"name": "a", "penalty": {"mode": "always"}}]}, "'always' is not one of"),
    ({"benchmarks": ["gsm9k"]}, "unknown benchmark 'gsm9k'"),
    ({"data_dir": "/nonexistent"}, "/nonexistent/gsm8k/test.jsonl does not exist"),
    ({"model": {"path": "/nonexistent"}}, "model.path: /nonexistent has no config.json"),
    ({"variants": [{"name": "a", "checkpoint": "/nonexistent"}]}, "checkpoint: /nonexistent is not a directory"),
])
def test_config_errors(tmp_path, model_dir, edit, message):
  config = _config(tmp_path, model_dir, **edit)
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    load_config(EvalConfig, config).check_files()
