"""Benchmarks (tfds builders over JSONL files) and the overthinking marker list."""

from jaxthink.data.benchmarks import (BENCHMARKS, BenchmarkDataError, Problem, build_benchmark,
                                      load_benchmark, read_problems)
from jaxthink.data.markers import count_markers, find_markers, load_markers

__all__ = ["BENCHMARKS", "BenchmarkDataError", "Problem", "build_benchmark", "load_benchmark",
           "read_problems", "count_markers", "find_markers", "load_markers"]
