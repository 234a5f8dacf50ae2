"""`python -m jaxthink.quantize --config configs/x.yaml [--set quant.method=gptq ...]`

Loads a Hugging Face model directory, quantizes it with the config's `QuantSpec` (calibrating on
the configured text) and writes an orbax checkpoint plus `quant.json` (scheme, method, calibration
data hash, per-layer errors, bytes, held-out KL) that `jaxthink.quant.load_quantized` reads back.
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
from jaxthink.models.config import CheckpointError
from jaxthink.models.pretrained import load_pretrained
from jaxthink.decode.mesh import MeshConfig, mesh_from_config
from jaxthink.quant import QuantConfigError, QuantSpec, quantize, save_quantized
from jaxthink.quant.checkpoint import check_shared_directory
from jaxthink.quant.self_traces import resolve_self_traces


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
  """What `python -m jaxthink.quantize` reads."""

  model: str = path_field()  # local Hugging Face model directory (relative to the config file)
  output: str  # directory for the quantized checkpoint (relative to the working directory)
  quant: QuantSpec = QuantSpec()
  dtype: Literal["bfloat16", "float32"] = "bfloat16"
  mesh: MeshConfig | None = None
  overwrite: bool = False


def run(config: QuantizeConfig, log=print) -> Path:
  """Quantizes `config.model` and writes the checkpoint; returns its directory."""
  if (Path(config.output) / "params").exists() and not config.overwrite:
    raise CheckpointError(f"{config.output} already holds a quantized checkpoint; choose another "
                          "output or set overwrite: true.")
  mesh = None if config.mesh is None else mesh_from_config(config.mesh)
  check_shared_directory(config.output)  # on several hosts, before hours of quantizing
  log(f"loading {config.model} ({config.dtype})")
  pretrained = load_pretrained(config.model, dtype=jnp.dtype(config.dtype), mesh=mesh)
  # Self traces are written beside the checkpoint (kept: they are its calibration text).
  config = dataclasses.replace(config, quant=resolve_self_traces(config.quant, pretrained,
                                                                  config.output))
  log(f"quantizing: scheme {config.quant.scheme}, method {config.quant.method}, calibration "
      f"{config.quant.calibration.num_samples} x {config.quant.calibration.seq_len} tokens of "
      f"{config.quant.calibration.source}")
  _, params, report = quantize(pretrained.config, pretrained.params, config.quant,
                               tokenizer=pretrained.tokenizer, mesh=mesh, log=log)
  out = save_quantized(config.output, pretrained.config, config.quant, params, report,
                       dtype=config.dtype, tokenizer_dir=config.model, overwrite=config.overwrite)
  summary = {"output": str(out), "scheme": report["scheme"], "method": report["method"],
             "weight_bytes_ratio": report["weight_bytes"]["ratio"],
             "heldout_mean_kl": report.get("heldout_mean_kl"),
             "calibration_tokens_sha256": (report.get("calibration") or {}).get("tokens_sha256")}
  log(json.dumps(summary))
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxthink.quantize", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="YAML file with a QuantizeConfig")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key, e.g. --set quant.scheme=w3a16 (repeatable)")
  args = parser.parse_args(argv)
  try:
    run(load_config(QuantizeConfig, args.config, args.set))
  except (ConfigError, QuantConfigError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
