"""Bad input to `python -m jaxthink.eval` stops with `config error: <key>...`, exit 2, before any
model loads; config paths resolve relative to the file that names them."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from jaxthink.config import ConfigError, load_config
from jaxthink.eval.__main__ import main
from jaxthink.eval.config import EMBEDDED_DATA_DIR, EMBEDDED_MODEL_DIR, EvalConfig
from jaxthink.eval.validate import validate
from jaxthink.models.tokenizer import load_tokenizer, reasoning_prompt
from jaxthink.quant.calibrate import read_texts
from jaxthink.quant.spec import CalibrationSpec
from tiny_eval import loads, tiny_config  # noqa: F401 (loads: a fixture)

REPO = Path(__file__).resolve().parents[1]
GPTQ = {"scheme": "w4a16", "method": "gptq", "group_size": 64,
        "calibration": {"source": "gsm8k", "num_samples": 2, "seq_len": 32, "heldout_samples": 0}}


def _config(tmp_path, **overrides) -> Path:
  return tiny_config(tmp_path, **overrides)


def _model(tmp_path, edit) -> dict:
  """A copy of the embedded model, changed by `edit(directory)`."""
  directory = tmp_path / "model"
  shutil.copytree(EMBEDDED_MODEL_DIR, directory)
  edit(directory)
  return {"model": {"path": str(directory), "dtype": "float32"}}


def _data(tmp_path, edit) -> dict:
  """A copy of the embedded benchmark data, changed by `edit(tiny/test.jsonl)`."""
  directory = tmp_path / "data"
  shutil.copytree(EMBEDDED_DATA_DIR / "tiny", directory / "tiny")
  edit(directory / "tiny" / "test.jsonl")
  return {"data_dir": str(directory)}


def _set_model_type(directory):
  config = json.loads((directory / "config.json").read_text())
  (directory / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))


def _truncate(file):
  file.write_bytes(file.read_bytes()[:-1000])


def _replace_line(number, text):
  def edit(file):
    lines = file.read_text().splitlines(keepends=True)
    lines[number - 1] = text + "\n"
    file.write_text("".join(lines))
  return edit


def _empty_problem(file):
  lines = file.read_text().splitlines(keepends=True)
  lines[1] = json.dumps({**json.loads(lines[1]), "problem": "  "}) + "\n"
  file.write_text("".join(lines))


# One row per bad input of issue 17: (config changes, what the message must name).
CASES = {
    "temperature<0": (lambda t: {"sampling": {"temperature": -0.1}}, ["sampling.temperature"]),
    "top_p=0": (lambda t: {"sampling": {"top_p": 0.0}}, ["sampling.top_p", "(0, 1]"]),
    "top_p>1": (lambda t: {"sampling": {"top_p": 1.5}}, ["sampling.top_p"]),
    "top_k<0": (lambda t: {"sampling": {"top_k": -1}}, ["sampling.top_k"]),
    "max_new_tokens=0": (lambda t: {"sampling": {"max_new_tokens": 0}},
                         ["sampling.max_new_tokens: 0 must be >= 1"]),
    "samples=0": (lambda t: {"sampling": {"samples_per_problem": 0}},
                  ["sampling.samples_per_problem: 0 must be >= 1"]),
    "limit<0": (lambda t: {"limit": -1}, ["limit: -1 must be >= 1"]),
    "limit=0": (lambda t: {"limit": 0}, ["limit: 0 must be >= 1"]),
    "mesh.model>devices": (lambda t: {"mesh": {"model": 2}}, ["mesh.model: 2", "1 visible"]),
    "mesh.data>devices": (lambda t: {"mesh": {"data": 4}}, ["mesh.data", "needs 4 devices"]),
    "model_type": (lambda t: _model(t, _set_model_type), ["model.path", "model_type 'gpt2'"]),
    "truncated safetensors": (lambda t: _model(t, lambda d: _truncate(d / "model.safetensors")),
                              ["model.path", "model.safetensors", "truncated"]),
    "malformed benchmark": (lambda t: _data(t, _replace_line(3, '{"id": "x", "problem": ')),
                            ["benchmarks[0] (tiny)", "test.jsonl, line 3", "not valid JSON"]),
    "empty benchmark": (lambda t: _data(t, lambda f: f.write_text("")),
                        ["benchmarks[0] (tiny)", "test.jsonl holds no problems"]),
    "empty problem": (lambda t: _data(t, _empty_problem),
                      ["benchmarks[0] (tiny)", "test.jsonl, line 2", "problem text is empty"]),
    # Only the tiny benchmark's data: the second variant's GSM8K calibration file is missing.
    "gsm8k calibration": (lambda t: {**_data(t, lambda f: None),
                                     "variants": [{"name": "full"}, {"name": "q", "quant": GPTQ}]},
                          ["variants.q.quant.calibration", "gsm8k/train.jsonl does not exist"]),
    "calibration file": (lambda t: {"variants": [{"name": "q", "quant": {
                             **GPTQ, "calibration": {"source": "missing.jsonl"}}}]},
                         ["variants.q.quant.calibration.source", "missing.jsonl not found"]),
    "quantized checkpoint": (lambda t: {"variants": [{"name": "full"}, {
                                 "name": "q", "checkpoint": str(t)}]},  # a folder, not a checkpoint
                             ["variants.q.checkpoint", "is not a quantized checkpoint"]),
    # The tiny model has 2048 positions; its longest prompt fills a bucket of at least 16.
    "context length": (lambda t: {"sampling": {"max_new_tokens": 2040}},
                       ["sampling.max_new_tokens: 2040", "max_position_embeddings (2048)"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_stops_before_any_model_loads(tmp_path, capsys, loads, case):
  changes, expected = CASES[case]
  config = _config(tmp_path, **changes(tmp_path))
  assert main(["--config", str(config)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("config error: "), err
  for part in expected:
    assert part in err, (part, err)
  assert loads == []
  assert not (tmp_path / "run" / "config.json").exists()


def test_context_length_is_checked_at_the_boundary(tmp_path):
  """prompt bucket + max_new_tokens may reach max_position_embeddings (2048), not pass it; the
  longest prompt of all 200 problems (limit null) decides."""
  cfg = load_config(EvalConfig, _config(tmp_path, limit=None))
  tok = load_tokenizer(EMBEDDED_MODEL_DIR)
  problems = [json.loads(line)["problem"]
              for line in (EMBEDDED_DATA_DIR / "tiny" / "test.jsonl").read_text().splitlines()]
  longest = max(len(tok.encode(reasoning_prompt(tok, p), add_special_tokens=False))
                for p in problems)
  bucket = max(16, 1 << (longest - 1).bit_length())  # generate's padding: next power of two
  at_limit = dataclasses.replace(cfg.sampling, max_new_tokens=2048 - bucket)
  validate(dataclasses.replace(cfg, sampling=at_limit))
  over = dataclasses.replace(cfg.sampling, max_new_tokens=2048 - bucket + 1)
  with pytest.raises(ConfigError, match=f"longest prompt .*{longest} tokens, padded to {bucket}"):
    validate(dataclasses.replace(cfg, sampling=over))


def test_config_paths_resolve_relative_to_their_file(tmp_path, monkeypatch):
  """Each YAML file's relative paths join its own folder (a base file's, the base's); YAML aliases
  are resolved once; `--set` values and output_dir stay relative to the working directory."""
  (tmp_path / "a" / "b").mkdir(parents=True)
  (tmp_path / "a" / "base.yaml").write_text(yaml.safe_dump({
      "data_dir": "data", "model": {"path": "embedded"},
      "variants": [{"name": "full", "penalty": {"markers": "m.txt"}}]}))
  (tmp_path / "a" / "b" / "run.yaml").write_text(
      "base: ../base.yaml\n"
      "model: {path: ../models/m}\n"
      "output_dir: runs/x\n"
      "variants:\n"
      "  - {name: q1, quant: {scheme: w4a16, method: gptq, calibration: &c {source: cal.jsonl}}}\n"
      "  - {name: q2, quant: {scheme: w4a16, method: gptq, calibration: *c}}\n"
      "  - {name: q3, quant: {scheme: w4a16, method: gptq,\n"
      "                       calibration: {source: gsm8k, data_dir: /abs}}}\n")
  monkeypatch.chdir(tmp_path)
  cfg = load_config(EvalConfig, "a/b/run.yaml")
  assert cfg.data_dir == str(tmp_path / "a" / "data")
  assert cfg.model.path == str(tmp_path / "a" / "models" / "m")
  assert cfg.output_dir == "runs/x"
  sources = [v.quant.calibration.source for v in cfg.variants]
  assert sources == [str(tmp_path / "a" / "b" / "cal.jsonl")] * 2 + ["gsm8k"]
  assert cfg.variants[2].quant.calibration.data_dir == "/abs"
  cfg = load_config(EvalConfig, "a/b/run.yaml", ["data_dir=mine", "model.path=embedded"])
  assert (cfg.data_dir, cfg.model.path) == ("mine", "embedded")
  base = load_config(EvalConfig, "a/base.yaml")
  assert base.variants[0].penalty.markers == str(tmp_path / "a" / "m.txt")


def test_demo_validates_from_any_working_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  cfg = load_config(EvalConfig, REPO / "configs" / "demo.yaml", ["limit=2"])
  validate(cfg)  # its GPTQ variants calibrate on a file named relative to configs/


def test_gsm8k_calibration_reads_only_the_train_file(tmp_path):
  (tmp_path / "gsm8k").mkdir()
  rows = [{"question": f"q{i}", "answer": f"step {i}\n#### {i}"} for i in range(3)]
  (tmp_path / "gsm8k" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  texts = read_texts(CalibrationSpec(source="gsm8k", data_dir=str(tmp_path)))
  assert texts == [f"step {i}\n#### {i}" for i in range(3)]  # no gsm8k/test.jsonl needed
