"""`python -m jaxthink.compile --config <eval config>`: compiles the run's programs for its TPU
slice on this machine (no TPU, no weights: the architecture from config.json, or a study model's
known one) and says whether each compiles and fits. Exits 1 when one does not, 2 on a config
error."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from jaxthink.config import ConfigError, load_config
from jaxthink.eval.config import EvalConfig
from jaxthink.sizing import STUDY_MODELS, SizingError, model_config


def _architecture(path: str):
  """config.json of the model directory, else the study model of the same name."""
  if (Path(path) / "config.json").is_file():
    return model_config(path)
  by_name = {hub_id.rsplit("/", 1)[-1]: hub_id for hub_id in STUDY_MODELS}
  if Path(path).name in by_name:
    return STUDY_MODELS[by_name[Path(path).name]]
  raise ConfigError(f"model.path: {path} has no config.json and is not a study model "
                    f"({', '.join(sorted(by_name))}); download its config.json there.")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxthink.compile", description=__doc__)
  parser.add_argument("--config", required=True, help="an eval YAML (see configs/)")
  parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--topology", help="e.g. v5e:2x2 (default: the config's `tpu`)")
  parser.add_argument("--prompt-len", type=int, default=512,
                      help="prompt slots per row (the bucket the longest prompt pads to)")
  parser.add_argument("--decode-attention", default="chunked", choices=("chunked", "pallas"))
  args = parser.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for TPU; run nothing
  try:
    cfg = load_config(EvalConfig, args.config, args.overrides)
    config = _architecture(cfg.model.path)
    from jaxthink.compile.programs import (hbm_bytes_per_chip, topology_mesh,  # noqa: PLC0415
                                           topology_name)
    if args.topology is None and cfg.tpu is None:
      raise ConfigError("tpu: the config names no TPU slice; pass --topology (e.g. v5e:2x2).")
    topology = args.topology or topology_name(cfg.tpu)
    chips = math.prod(int(n) for n in topology.split(":")[1].split("x"))
    model = cfg.mesh.model
    data = chips // model if cfg.mesh.data == -1 else cfg.mesh.data
    if data * model != chips:
      raise ConfigError(f"mesh: data {data} x model {model} != the {chips} chips of {topology}.")
    mesh = topology_mesh(topology, data, model)
  except (ConfigError, SizingError, ValueError) as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  from jaxthink.compile.check import check_programs, table  # noqa: PLC0415
  from jaxthink.decode.sampling import Sampling  # noqa: PLC0415
  s = cfg.sampling
  print(f"{cfg.model.path}: {config.num_layers} layers, {config.num_heads} heads / "
        f"{config.num_kv_heads} kv heads; {topology} ({chips} chips), mesh data {data} x model "
        f"{model}; {cfg.batch_size} slots x ({args.prompt_len} + {s.max_new_tokens}) tokens")
  reports = check_programs(
      config, mesh, hbm_bytes_per_chip(topology),
      variants={v.name: cfg.quant_spec(v) for v in cfg.variants}, reference=cfg.reference,
      slots=cfg.batch_size, prompt_len=args.prompt_len, max_new_tokens=s.max_new_tokens,
      sampling=Sampling(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p),
      decode_attention=args.decode_attention)
  print(table(reports))
  for r in reports:
    for finding in r.weight_gathers + r.cache_copies:
      print(f"{r.name}: per step: {finding}")
  failed = [r.name for r in reports if not r.ok]
  print("verdict: " + ("every program compiles and fits" if not failed
                       else f"{len(failed)} of {len(reports)} programs fail: {', '.join(failed)}"))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
