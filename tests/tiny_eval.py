"""Shared by the run-directory and input tests: a load counter and a seconds-long eval config."""

from pathlib import Path

import pytest
import yaml

from jaxthink.eval import runner


@pytest.fixture
def loads(monkeypatch):
  """Every `load_pretrained` call of the runner (the real function still runs)."""
  calls = []
  real = runner.load_pretrained

  def counted(*args, **kwargs):
    calls.append(args[0])
    return real(*args, **kwargs)

  monkeypatch.setattr(runner, "load_pretrained", counted)
  return calls


def tiny_config(tmp_path: Path, **overrides) -> Path:
  """The embedded tiny model on its first problems (seconds per run on CPU), written to
  `tmp_path/eval.yaml`; `overrides` replace top-level keys."""
  cfg = {"model": {"path": "embedded", "dtype": "float32"}, "benchmarks": ["tiny"],
         "data_dir": "embedded", "limit": 2, "batch_size": 4,
         "sampling": {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 16, "seed": 0},
         "output_dir": str(tmp_path / "run"), "variants": [{"name": "full"}], **overrides}
  path = tmp_path / "eval.yaml"
  path.write_text(yaml.safe_dump(cfg))
  return path
