"""`python -m jaxthink.finetune --config configs/<x>.yaml [--set key=value ...]`

Quantizes the model with the config's recipe (or keeps it in float: `quant: null`, the baseline),
trains low-rank adapters on step-annotated solutions with the integers frozen, and writes them
with orbax beside `adapter.json`; an eval variant loads them with `adapter: <dir>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Literal, Sequence

import jax.numpy as jnp

from jaxthink.config import ConfigError, load_config, path_field
from jaxthink.eval.config import ModelSpec
from jaxthink.finetune.adapters import AdapterConfigError, AdapterSpec
from jaxthink.data.download import DownloadError
from jaxthink.finetune.checkpoint import AdapterCheckpointError, describe_base, save_adapters
from jaxthink.finetune.prm800k import PRM800K_FILES, PRM800KError, read_prm800k
from jaxthink.finetune.steps import StepFormat, encode, synthetic_step_solutions
from jaxthink.finetune.train import TrainSpec, finetune
from jaxthink.quant import QuantConfigError, QuantSpec, quantize


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Step-annotated training data.

  source: `synthetic` (the embedded task's generator, train split) or `prm800k` (`file`, read from
    `data_dir`, else downloaded on first use into ~/.cache/jaxthink/downloads/prm800k).
  problems: solutions used (the first ones; PRM800K: None for all).
  """

  source: Literal["synthetic", "prm800k"] = "synthetic"
  problems: int | None = 4800
  seed: int = 1  # synthetic: the generator's seed stream
  difficulty: int = 1
  check_fraction: float = 0.3
  fix_fraction: float = 0.5
  file: str = "phase2_train"
  data_dir: str | None = path_field(None)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  model: ModelSpec
  output: str  # adapter directory (relative to the working directory)
  quant: QuantSpec | None = None  # None: adapters on the float model (the baseline)
  adapter: AdapterSpec = AdapterSpec()
  data: DataSpec = DataSpec()
  step_format: StepFormat = StepFormat()
  train: TrainSpec = TrainSpec()
  overwrite: bool = False

  def __post_init__(self):
    if self.data.source == "synthetic" and self.data.problems is None:
      raise ConfigError("data.problems: the synthetic generator needs a number of problems.")
    if self.data.source == "prm800k" and self.data.file not in PRM800K_FILES:
      raise ConfigError(f"data.file: {self.data.file!r} is not a PRM800K file; use one of "
                        f"{sorted(PRM800K_FILES)}.")


def solutions(data: DataSpec):
  if data.source == "synthetic":
    return synthetic_step_solutions("train", data.problems, data.seed, data.difficulty,
                                    check_fraction=data.check_fraction,
                                    fix_fraction=data.fix_fraction)
  rows = read_prm800k(data.file, data.data_dir)
  return rows if data.problems is None else rows[:data.problems]


def run(cfg: FinetuneConfig, log=print) -> Path:
  """Trains and saves the adapters of `cfg`; returns their directory."""
  from jaxthink.models import load_pretrained  # noqa: PLC0415 (after the cheap checks)
  if (Path(cfg.output) / "adapters").exists() and not cfg.overwrite:
    raise AdapterCheckpointError(f"{cfg.output} already holds adapters; choose another output or "
                                 "set overwrite: true.")
  data = solutions(cfg.data)
  pretrained = load_pretrained(cfg.model.directory, dtype=jnp.dtype(cfg.model.dtype))
  model, params = pretrained.model, pretrained.params
  if cfg.quant is not None:
    tokenizer = None if cfg.quant.method == "rtn" else pretrained.tokenizer
    model, params, _ = quantize(pretrained.config, params, cfg.quant, tokenizer=tokenizer)
  tokens, token_mask, loss_mask = encode(pretrained.tokenizer, data, cfg.step_format,
                                         cfg.train.max_len)
  log(f"{len(data)} step solutions ({sum(d.complete for d in data)} complete), "
      f"{int(loss_mask.sum())} solution tokens; base {describe_base(cfg.quant)}")
  adapters, record = finetune(model, params, cfg.adapter, tokens, token_mask, loss_mask,
                              cfg.train, log=log)
  out = save_adapters(cfg.output, adapters, base_model=str(cfg.model.path), quant=cfg.quant,
                      adapter=cfg.adapter, step_format=cfg.step_format, overwrite=cfg.overwrite,
                      data=dataclasses.asdict(cfg.data), train=dataclasses.asdict(cfg.train),
                      record=record)
  log(json.dumps({"output": str(out), "steps": record["steps_run"], "seconds": record["seconds"],
                  "final_loss": record["losses"][-1][1]}))
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxthink.finetune", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="YAML file with a FinetuneConfig")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key, e.g. --set train.steps=100 (repeatable)")
  args = parser.parse_args(argv)
  try:
    cfg = load_config(FinetuneConfig, args.config, args.set)
    run(cfg)
  except (ConfigError, QuantConfigError, AdapterConfigError, AdapterCheckpointError,
          PRM800KError, DownloadError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
