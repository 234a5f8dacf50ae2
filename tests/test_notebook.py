"""The Colab quickstart runs top to bottom on a CPU, in a fresh kernel (its time is printed, not
asserted: a loaded runner is slower; a cell that hangs fails at nbclient's per-cell limit).

nbclient executes every cell from the repository root (as a checkout user would) with JAX on the
CPU: the install cell finds jaxthink installed, the demo runs in QUICK mode on the organism,
the report's tables and plots are displayed, and the hub/TPU section skips itself.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "colab" / "jaxthink_quickstart.ipynb"
CELL_TIME_LIMIT_S = 600


def _outputs(nb, kind: str) -> list:
  """Every output of a given MIME type (e.g. `image/png`), over all cells."""
  return [o["data"][kind] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
          if kind in o.get("data", {})]


def _text(nb) -> str:
  return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []) if o.get("output_type") == "stream")


def test_notebook_is_committed_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)


def _kernel_for_this_python(root: Path) -> str:
  """A kernelspec running this interpreter (a user-wide `python3` kernel may be another Python);
  JUPYTER_PATH is searched before every other kernel directory."""
  spec = root / "kernels" / "jaxthink-test"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "jaxthink test", "language": "python"}))
  return spec.name


def test_notebook_runs_on_cpu(tmp_path, monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("JAXTHINK_RUNS", str(tmp_path / "runs"))  # keep the repository clean
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  kernel = _kernel_for_this_python(tmp_path / "jupyter")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(nb, timeout=CELL_TIME_LIMIT_S, kernel_name=kernel,
                          resources={"metadata": {"path": str(REPO)}})
  start = time.perf_counter()
  client.execute()  # raises CellExecutionError, with the cell's traceback, if any cell fails
  elapsed = time.perf_counter() - start
  print(f"notebook ran in {elapsed:.0f} s")

  text = _text(nb)
  assert "backend: cpu" in text and "QUICK = True" in text
  assert "pip install" not in text  # already installed: the install step was skipped
  # The quick demo wrote a report for its 4 variants; the notebook showed its tables and plots.
  run = tmp_path / "runs" / "demo-quick"
  report = (run / "report.md").read_text()
  for variant in ("full", "w4a16-rtn", "w3a16-rtn", "w3a16-rtn+penalty"):
    assert f"| {variant} |" in report
  markdown = "\n".join(_outputs(nb, "text/markdown"))
  assert "| w3a16-rtn+penalty | w3a16-rtn |" in markdown  # the displayed comparison table
  pngs = sorted(run.glob("*.png"))
  assert pngs and len(_outputs(nb, "image/png")) == len(pngs)
  # The sizing cell printed a fitting and a non-fitting run; the hub section skipped itself.
  assert "fits." in text and "does NOT fit." in text and "To make it fit:" in text
  assert "step 6: skipped" in text and not (tmp_path / "runs" / "r1-1.5b-math500-w4").exists()
