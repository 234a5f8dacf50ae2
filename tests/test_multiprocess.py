"""Two JAX processes on one machine (CPU, `jax.distributed` on 127.0.0.1), as on a two-host TPU
slice: mesh-less loading and quantizing place on each process's own device; `evaluate` gives the
same responses as one process, with process 0 alone writing the run directory; the quantize CLI
writes one complete checkpoint into a directory both see, and refuses one they do not share."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import yaml

from jaxthink.quant import QuantSpec, load_quantized

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
import jax
from jaxthink.config import load_config
from jaxthink.decode.mesh import initialize_distributed
from jaxthink.eval.config import EMBEDDED_MODEL_DIR, EvalConfig
from jaxthink.eval.runner import evaluate
from jaxthink.models import load_pretrained
from jaxthink.quant import QuantSpec, quantize
from jaxthink.quantize import QuantizeConfig, run

checkpoint, cfg = sys.argv[1], load_config(EvalConfig, sys.argv[2], sys.argv[3:])
initialize_distributed(cfg.mesh)
assert jax.process_count() == (cfg.mesh.num_processes or 1) == jax.device_count()
# Without a mesh every array goes to this process's device (jax.devices()[0] belongs to process 0).
model = load_pretrained(EMBEDDED_MODEL_DIR, mesh=None)
_, qparams, _ = quantize(model.config, model.params, QuantSpec("w4a16", "rtn", group_size=64))
for leaf in jax.tree.leaves((model.params, qparams)):
  assert leaf.devices() == {jax.local_devices()[0]}, leaf.devices()
evaluate(cfg)
# `python -m jaxthink.quantize` on the same processes, into a directory both see.
run(QuantizeConfig(str(EMBEDDED_MODEL_DIR), checkpoint, QuantSpec("w4a16", "rtn", group_size=64),
                   dtype="float32", mesh=cfg.mesh))
print("process", jax.process_index(), "done")
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _config(path: Path, output_dir: Path, distributed: bool) -> Path:
  mesh = {"data": -1, "model": 1}
  if distributed:
    mesh.update(distributed=True, coordinator_address=f"127.0.0.1:{_free_port()}", num_processes=2)
  path.write_text(yaml.safe_dump({
      "model": {"path": "embedded", "dtype": "float32"}, "benchmarks": ["tiny"], "limit": 4,
      "sampling": {"temperature": 0.0, "max_new_tokens": 40}, "batch_size": 4, "mesh": mesh,
      "output_dir": str(output_dir),
      "variants": [{"name": "full"},
                   {"name": "w4-rtn", "quant": {"scheme": "w4a16", "method": "rtn",
                                                "group_size": 64}}]}))
  return path


def _launch(checkpoint: Path, config: Path, *overrides: str) -> subprocess.Popen:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}  # one CPU device per process
  return subprocess.Popen([sys.executable, "-c", SCRIPT, str(checkpoint), str(config), *overrides],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _responses(run: Path) -> dict[str, tuple[str, bool]]:
  rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
  return {row["key"]: (row["response"], row["correct"]) for row in rows}


def test_two_processes_evaluate_like_one(tmp_path):
  two = _config(tmp_path / "two.yaml", tmp_path / "two", distributed=True)
  processes = [_launch(tmp_path / "w4", two, f"mesh.process_id={i}") for i in range(2)]
  outputs = [p.communicate(timeout=900)[0] for p in processes]
  for i, (p, out) in enumerate(zip(processes, outputs)):
    assert p.returncode == 0 and f"process {i} done" in out, out[-3000:]
  one = _config(tmp_path / "one.yaml", tmp_path / "one", distributed=False)
  single = _launch(tmp_path / "w4-one", one, "mesh.process_id=0")
  out = single.communicate(timeout=900)[0]
  assert single.returncode == 0, out[-3000:]

  both, alone = _responses(tmp_path / "two"), _responses(tmp_path / "one")
  assert len(both) == 8 and both == alone  # 2 variants x 4 problems, each once, same greedy text
  assert (tmp_path / "two" / "report.md").is_file()
  # Both processes' shards are in the checkpoint: it loads in one process, equal to one process's.
  two_hosts, spec, _ = load_quantized(tmp_path / "w4")
  one_host, _, _ = load_quantized(tmp_path / "w4-one")
  assert spec == QuantSpec("w4a16", "rtn", group_size=64)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               two_hosts.params, one_host.params)


def _quantize_config(path: Path, output: str) -> Path:
  path.write_text(yaml.safe_dump({
      "model": str(REPO / "jaxthink" / "tiny" / "model"), "output": output, "dtype": "float32",
      "mesh": {"data": -1, "model": 1, "distributed": True,
               "coordinator_address": f"127.0.0.1:{_free_port()}", "num_processes": 2},
      "quant": {"scheme": "w4a16", "method": "rtn", "group_size": 64}}))
  return path


def _quantize_on_two_processes(config: Path, cwds) -> list[tuple[int, str]]:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
         "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
  processes = [subprocess.Popen([sys.executable, "-m", "jaxthink.quantize", "--config", str(config),
                                 "--set", f"mesh.process_id={i}"], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i, cwd in enumerate(cwds)]
  logs = [p.communicate(timeout=600)[0] for p in processes]
  return [(p.returncode, log) for p, log in zip(processes, logs)]


def test_two_process_quantize_refuses_an_output_on_each_hosts_own_disk(tmp_path):
  # A relative output from two working directories: two folders, as two hosts' local disks are.
  hosts = [tmp_path / "host0", tmp_path / "host1"]
  for host in hosts:
    host.mkdir()
  results = _quantize_on_two_processes(_quantize_config(tmp_path / "q.yaml", "ckpt"), hosts)
  for rc, log in results:
    assert rc == 2 and "is not one storage for all 2 processes: processes [1]" in log, log[-3000:]
  assert not (hosts[0] / "ckpt" / "params").exists() and not any((hosts[0] / "ckpt").iterdir())
