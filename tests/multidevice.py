"""Running a script on 8 simulated CPU devices, in a subprocess so the device-count flag doesn't
leak into the other tests (it must be set before JAX initialises)."""

import os
import subprocess
import sys
from pathlib import Path

TESTS_DIR = str(Path(__file__).parent)


def run_on_8_cpu_devices(script: str, *args: str, cwd=None, fast_compile: bool = False,
                         timeout: int = 600) -> subprocess.CompletedProcess:
  """`python -c script *args` with 8 CPU devices; `fast_compile` turns LLVM optimisation off
  (compiles about twice as fast; use it where every compared run shares the flag)."""
  flags = "--xla_force_host_platform_device_count=8"
  if fast_compile:
    flags += " --xla_backend_optimization_level=0"
  env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)
