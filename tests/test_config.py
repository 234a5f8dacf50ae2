"""The strict config loader: every mistake is named, overrides and base files compose."""

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from jaxthink.config import ConfigError, from_dict, load_config


@dataclasses.dataclass(frozen=True)
class Sampling:
  temperature: float = 0.6
  top_p: float = 0.95
  mode: Literal["greedy", "sample"] = "sample"


@dataclasses.dataclass(frozen=True)
class Run:
  model: str
  sampling: Sampling = Sampling()
  benchmarks: tuple[str, ...] = ("gsm8k",)
  seed: int = 0
  limit: int | None = None


def test_builds_nested_dataclasses_with_defaults():
  run = from_dict(Run, {"model": "m", "sampling": {"temperature": 0}, "benchmarks": ["a", "b"]})
  assert run == Run(model="m", sampling=Sampling(temperature=0.0), benchmarks=("a", "b"))
  assert isinstance(run.sampling.temperature, float)


@pytest.mark.parametrize("data, message", [
    ({"model": "m", "sampling": {"temprature": 1}}, "sampling: unknown key 'temprature'; valid keys are ['mode', 'temperature', 'top_p']"),
    ({"model": "m", "seed": "zero"}, "seed: expected int, got 'zero'"),
    ({"model": "m", "seed": True}, "seed: expected int, got True"),
    ({"model": "m", "sampling": {"mode": "beam"}}, "sampling.mode: 'beam' is not one of ['greedy', 'sample']"),
    ({"model": "m", "benchmarks": "gsm8k"}, "benchmarks: expected a list"),
    ({"sampling": {}}, "model is required but missing"),
])
def test_errors_name_the_key(data, message):
  with pytest.raises(ConfigError) as e:
    from_dict(Run, data)
  assert message in str(e.value)


def test_yaml_base_and_overrides(tmp_path: Path):
  (tmp_path / "base.yaml").write_text("model: m\nsampling:\n  temperature: 0.6\n  top_p: 0.9\n")
  (tmp_path / "run.yaml").write_text("base: base.yaml\nsampling:\n  top_p: 0.5\n")
  run = load_config(Run, tmp_path / "run.yaml", ["sampling.temperature=0", "limit=3",
                                                 "benchmarks=[math500, aime24]"])
  assert run.sampling == Sampling(temperature=0.0, top_p=0.5)
  assert run.limit == 3 and run.benchmarks == ("math500", "aime24")
  with pytest.raises(ConfigError, match="not found"):
    load_config(Run, tmp_path / "missing.yaml")
  with pytest.raises(ConfigError, match="key.sub=value"):
    load_config(Run, tmp_path / "run.yaml", ["limit"])
