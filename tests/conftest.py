"""Shared test settings: one persistent compilation cache for the session, compiled programs kept
until the process nears the kernel's memory-map limit, and the slowest modules at the end."""

import collections
import gc
import os
import shutil
import tempfile
from pathlib import Path

# CPU only, also where libtpu is installed (tests compile for TPU topologies without a TPU): a
# process that initialises the TPU backend takes libtpu's machine-wide lock.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest

# Every process of the session (pytest-xdist workers, the eval command and notebooks that tests
# start) finds programs another one compiled. The controller picks the directory before the
# workers start, so they inherit it; a fresh one each session, so timings never depend on an
# earlier run.
CACHE_ENV = ("JAX_COMPILATION_CACHE_DIR", "JAXTHINK_COMPILATION_CACHE")
MIN_COMPILE_SECONDS = "0.2"  # smaller programs compile faster than they load
_OWN_CACHE = pytest.StashKey[str]()


def pytest_configure(config):
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    directory = tempfile.mkdtemp(prefix="jaxthink-tests-xla-")
    config.stash[_OWN_CACHE] = directory
    for name in CACHE_ENV:
      os.environ[name] = directory
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = MIN_COMPILE_SECONDS
  # jax was imported above, before the environment was set: tell it directly too.
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                                         MIN_COMPILE_SECONDS)))


def pytest_unconfigure(config):
  directory = config.stash.get(_OWN_CACHE, None)
  if directory:
    shutil.rmtree(directory, ignore_errors=True)


def _memory_maps() -> tuple[int, int]:
  """(memory mappings this process holds, the kernel's limit vm.max_map_count)."""
  with open("/proc/self/maps", "rb") as maps:
    held = sum(1 for _ in maps)
  return held, int(Path("/proc/sys/vm/max_map_count").read_text())


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs_near_the_map_limit():
  """XLA:CPU maps memory for every executable it keeps; past the kernel's limit on memory mappings
  (vm.max_map_count, 65,530 by default) the next compilation segfaults. Programs are dropped once
  a module ends with half the limit held, not after every module: later modules reuse them."""
  yield
  held, limit = _memory_maps()
  if held > limit // 2:
    jax.clear_caches()
    gc.collect()


_MODULE_SECONDS = collections.Counter()


def pytest_runtest_logreport(report):
  _MODULE_SECONDS[report.nodeid.split("::")[0]] += report.duration


@pytest.hookimpl(trylast=True)  # after the slowest tests
def pytest_terminal_summary(terminalreporter):
  if not _MODULE_SECONDS:
    return
  terminalreporter.section("slowest modules (setup + call + teardown, seconds)")
  for module, seconds in _MODULE_SECONDS.most_common(15):
    terminalreporter.write_line(f"{seconds:8.1f}  {module}")
  terminalreporter.write_line(f"{sum(_MODULE_SECONDS.values()):8.1f}  all modules")
