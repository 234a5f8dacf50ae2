"""Shared test settings."""

import gc

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
  """Drops each module's compiled programs when it ends. XLA:CPU maps memory for every executable
  it keeps, and the whole suite in one process otherwise passes the kernel's limit on memory
  mappings (vm.max_map_count, 65,530): the next compilation then segfaults."""
  yield
  jax.clear_caches()
  gc.collect()
