"""`python -m jaxthink.eval --config configs/<name>.yaml [--set key=value ...] [--repair]`

Exit status 2 with `config error: <key>: ...` for any input problem, before a model loads."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jaxthink.config import ConfigError, load_config
from jaxthink.eval.config import EvalConfig


def main(argv=None, *, persistent_cache: bool = False) -> int:
  """The command; `persistent_cache` (on from the command line) keeps compiled programs on disk
  across runs. In-process callers keep their own jax settings."""
  parser = argparse.ArgumentParser(prog="python -m jaxthink.eval", description=(
      "Evaluate full-precision, quantized and penalised variants of a model on math benchmarks; "
      "writes results.jsonl, summary.json, report.md and plots to the config's output_dir. "
      "Re-running the same config resumes."))
  parser.add_argument("--config", required=True, help="YAML file (see configs/)")
  parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key, e.g. --set sampling.max_new_tokens=256")
  parser.add_argument("--repair", action="store_true", help=(
      "move unreadable lines of the run's results.jsonl to results.rejected.jsonl and generate "
      "those responses again"))
  args = parser.parse_args(argv)
  try:
    cfg = load_config(EvalConfig, args.config, args.overrides)
    cfg.check_files()
    if persistent_cache:  # a resumed or repeated run skips compilation
      import jax  # noqa: PLC0415 (after the cheap checks)
      jax.config.update("jax_compilation_cache_dir", os.environ.get(
          "JAXTHINK_COMPILATION_CACHE", str(Path.home() / ".cache" / "jaxthink" / "xla")))
    from jaxthink.eval.runner import evaluate  # noqa: PLC0415
    files = evaluate(cfg, repair=args.repair)
  except ConfigError as e:
    print(f"config error: {e}", file=sys.stderr)
    return 2
  if "report" in files:
    print(files["report"].read_text())
    print(f"wrote {', '.join(str(p) for p in files.values())}")
  return 0


if __name__ == "__main__":
  sys.exit(main(persistent_cache=True))
