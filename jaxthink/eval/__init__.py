"""Evaluation: benchmarks -> generation per variant -> grading -> overthinking analysis -> report.

Command line: `python -m jaxthink.eval --config configs/<name>.yaml [--set key=value]`.
"""

from jaxthink.eval.config import EvalConfig, ModelSpec, PenaltySpec, SamplingSpec, Variant


def evaluate(cfg: EvalConfig, repair: bool = False):
  """Runs or resumes `cfg`; see `jaxthink.eval.runner.evaluate`."""
  from jaxthink.eval.runner import evaluate as run  # noqa: PLC0415 (keeps config import light)
  return run(cfg, repair=repair)
