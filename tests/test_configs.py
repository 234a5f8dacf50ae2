"""Every YAML under configs/ loads through the strict schema, and every study config fits the TPU
slice it names.

A file that another names as its `base:` is a fragment (configs/study/base.yaml, the study's
`<model>/model.yaml`); the others are runnable configs. The study grid is checked against the issue's
list (9 models x 5 benchmarks x 10 quantization recipes x penalty off/on), and each run's memory per
chip against `jaxthink.sizing` for every variant (the quantized ones carry the bf16 reference). Run
with `-s` to see the fit tables for the README.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from jaxthink import sizing
from jaxthink.config import load_config, read_yaml
from jaxthink.data.benchmarks import PACKAGE_DATA_DIR
from jaxthink.eval.config import COMMITTED, EvalConfig, Variant
from jaxthink.models.tokenizer import DEFAULT_INSTRUCTION
from jaxthink.finetune.__main__ import FinetuneConfig
from jaxthink.quantize import QuantizeConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
STUDY = CONFIGS / "study"
DATA = PACKAGE_DATA_DIR  # the benchmark files shipped with jaxthink
QUANTIZE_CONFIGS = {"quantize_example.yaml"}  # `python -m jaxthink.quantize` configs
FINETUNE_CONFIGS = {"finetune_demo.yaml"}  # `python -m jaxthink.finetune` configs

STUDY_MODEL_DIRS = ("DeepSeek-R1-Distill-Qwen-1.5B", "DeepSeek-R1-Distill-Qwen-7B",
                    "DeepSeek-R1-Distill-Qwen-14B", "DeepSeek-R1-Distill-Qwen-32B", "QwQ-32B",
                    "DeepSeek-R1-Distill-Llama-8B", "Qwen3-8B", "Llama-3.2-3B", "Llama-3.1-8B")
BENCHMARKS = ("gsm8k", "math500", "aime24", "aime25", "amc23")
# (scheme, method, kv_bits) of the grid's quantized recipes; each also with the penalty on.
RECIPES = {None, ("w8a16", "rtn", None), ("w4a16", "rtn", None), ("w4a16", "gptq", None),
           ("w4a16", "awq", None), ("w3a16", "rtn", None), ("w3a16", "gptq", None),
           ("w3a16", "awq", None), ("w8a8", "smoothquant", 8), ("w4a4", "flatquant", 4)}
# The padded prompt length sized for: the generator pads a batch's prompts to the next power of two
# of the longest; the benchmarks' longest prompt stays under 1024 tokens (checked below).
PROMPT_LEN = 1024
# Hosts per slice, for the multi-host switch (v4 / v5p: 4 chips a host; v5e / v6e: 8).
CHIPS_PER_HOST = {"v4": 4, "v5p": 4, "v5litepod": 8, "v6e": 8}


def _base_of(path: Path) -> Path | None:
  base = (yaml.safe_load(path.read_text()) or {}).get("base")
  return None if base is None else (path.parent / base).resolve()


ALL_YAML = sorted(p.resolve() for p in CONFIGS.rglob("*.yaml"))
FRAGMENTS = {b for b in map(_base_of, ALL_YAML) if b is not None}
RUNNABLE = [p for p in ALL_YAML if p not in FRAGMENTS]
STUDY_RUNS = [p for p in RUNNABLE if STUDY in p.parents]


def _id(path: Path) -> str:
  return str(path.relative_to(CONFIGS))


def _chain(path: Path) -> list[Path]:
  """The file and its bases, nearest first."""
  chain = [path]
  while (base := _base_of(chain[-1])) is not None:
    chain.append(base)
  return chain


def named_topology(path: Path) -> str:
  """The TPU accelerator type a config is sized for (its `tpu` key)."""
  tpu = load_config(EvalConfig, path).tpu
  assert tpu is not None, f"{_id(path)}: no `tpu: <accelerator type>` key in it or its bases."
  return tpu


def architecture(directory: Path):
  """A model's architecture: the local directory's config.json, or the study model whose hub name
  ends with the placeholder directory's name (`checkpoints/<name>`)."""
  if directory.is_dir():
    return sizing.model_config(directory)
  by_name = {hub.rsplit("/", 1)[-1]: hub for hub in sizing.STUDY_MODELS}
  assert directory.name in by_name, f"{directory} is neither a model directory nor a study model"
  return sizing.STUDY_MODELS[by_name[directory.name]]


def memory_scheme(variant: Variant) -> str:
  """The `jaxthink.sizing` scheme name of how a variant stores weights and KV cache."""
  q = variant.quant
  if q is None:
    return "bf16"
  name = "bf16" if q.scheme == "none" else q.scheme
  group, default = q.resolved_group_size(), sizing.parse_scheme(name).group_size
  if group != default:
    assert group is not None, f"{variant.name}: sizing has no name for per-channel {name}"
    name += f"-g{group}"
  return name + (f"kv{q.kv_bits}" if q.kv_bits else "")


def fit_reports(path: Path) -> list[sizing.FitReport]:
  """One report per variant of the run at `path`, on its named slice and mesh."""
  cfg = load_config(EvalConfig, path)
  config = architecture(cfg.model.directory)
  return [sizing.check_fit(config, named_topology(path), memory_scheme(v), batch=cfg.batch_size,
                           prompt_len=PROMPT_LEN, max_new_tokens=cfg.sampling.max_new_tokens,
                           model_parallel=cfg.mesh.model, data_parallel=cfg.mesh.data,
                           reference=cfg.reference and v.quantized)
          for v in cfg.variants]


# --- every file loads ---

@pytest.mark.parametrize("path", RUNNABLE, ids=_id)
def test_runnable_config_loads_and_validates(path, monkeypatch):
  monkeypatch.chdir(REPO)  # configs name files relative to the repository root
  if path.name in QUANTIZE_CONFIGS:
    cfg = load_config(QuantizeConfig, path)
    cfg.quant.check_fits(architecture(Path(cfg.model)))
    return
  if path.name in FINETUNE_CONFIGS:
    cfg = load_config(FinetuneConfig, path)
    cfg.quant.check_fits(architecture(cfg.model.directory))
    cfg.adapter.targets(architecture(cfg.model.directory))
    return
  cfg = load_config(EvalConfig, path)
  config = architecture(cfg.model.directory)
  for v in cfg.variants:
    if v.quant is not None:  # group sizes divide every quantized layer's input width
      v.quant.check_fits(config)
  if cfg.model.path in COMMITTED:  # the demos read only committed files: they must all exist
    cfg.check_files()


def test_every_fragment_is_used_and_parses():
  assert RUNNABLE and FRAGMENTS
  used = {b for p in RUNNABLE for b in _chain(p)[1:]}
  assert FRAGMENTS <= used  # no dead base files
  for fragment in FRAGMENTS:
    assert isinstance(read_yaml(fragment), dict)


def test_an_unknown_key_in_a_study_file_is_refused(tmp_path):
  """The study files are read by the strict loader: a typo in a run file fails, naming the key."""
  run = tmp_path / "run.yaml"
  model = STUDY / "DeepSeek-R1-Distill-Qwen-1.5B" / "model.yaml"
  run.write_text(f"base: {model}\nbenchmarks: [math500]\nsampling: {{temprature: 0.7}}\n")
  with pytest.raises(ValueError, match="sampling: unknown key 'temprature'"):
    load_config(EvalConfig, run)


# --- the study grid ---

def test_study_grid_is_complete():
  runs = {(p.parent.name, p.stem) for p in STUDY_RUNS}
  assert runs == {(m, b) for m in STUDY_MODEL_DIRS for b in BENCHMARKS}
  out_dirs = set()
  for path in STUDY_RUNS:
    cfg = load_config(EvalConfig, path)
    assert cfg.benchmarks == (path.stem,)
    assert cfg.model.directory == REPO / "checkpoints" / path.parent.name  # relative to the file
    s = cfg.sampling
    assert (s.temperature, s.top_p) == (0.6, 0.95)
    assert s.samples_per_problem == (4 if path.stem in ("aime24", "aime25", "amc23") else 1)
    assert s.max_new_tokens == (4096 if path.parent.name.startswith("Llama-3") else 32768)
    assert cfg.reference and cfg.model.dtype == "bfloat16"
    out_dirs.add(cfg.output_dir)
    grid = {}
    for v in cfg.variants:
      recipe = None if v.quant is None else (v.quant.scheme, v.quant.method, v.quant.kv_bits)
      penalty = (v.penalty.mode, v.penalty.strength, v.penalty.token_set)
      assert penalty in {("off", 0.0, "markers"), ("constant", 2.0, "markers")}, v.name
      grid[recipe, penalty[0] == "constant"] = v
    assert set(grid) == {(r, on) for r in RECIPES for on in (False, True)}
    assert len(cfg.variants) == len(grid)  # no duplicates
    for (recipe, on), v in grid.items():  # a penalised variant is compared to its twin without
      assert v.compare_to == (grid[recipe, False].name if on else None)
      if recipe is not None and recipe[1] != "rtn":
        # the bf16 model's own reasoning on GSM8K train problems, as the studies calibrate
        assert (v.quant.calibration.source, v.quant.calibration.traces_from) == (
            "self_traces", "gsm8k")
        assert (v.quant.calibration.num_samples, v.quant.calibration.seq_len) == (128, 2048)
  assert len(out_dirs) == len(STUDY_RUNS)  # runs never share (and refuse) a run directory


def test_prompt_length_bound():
  """PROMPT_LEN covers the longest prompt of the five benchmarks, at a conservative 2.5 characters
  per token (byte-level BPE on English and LaTeX averages 3-4) plus 100 tokens of chat template."""
  longest = 0
  for name in BENCHMARKS:
    for line in (DATA / name / "test.jsonl").read_text().splitlines():
      row = json.loads(line)
      longest = max(longest, len(row.get("problem") or row["question"]))
  chars = longest + 1 + len(DEFAULT_INSTRUCTION)
  assert 1500 < longest and math.ceil(chars / 2.5) + 100 <= PROMPT_LEN


@pytest.mark.parametrize("path", STUDY_RUNS, ids=_id)
def test_study_config_fits_its_topology(path):
  cfg = load_config(EvalConfig, path)
  topology = sizing.parse_topology(named_topology(path))
  assert cfg.mesh.data * cfg.mesh.model == topology.chips, "the mesh should use the whole slice"
  hosts = math.ceil(topology.chips / CHIPS_PER_HOST[topology.generation])
  assert cfg.mesh.distributed == (hosts > 1), f"{topology.name} has {hosts} host(s)"
  reports = fit_reports(path)
  for v, r in zip(cfg.variants, reports):
    assert r.fits, f"{_id(path)}, variant {v.name}:\n{r.summary()}"
  heaviest = max(reports, key=lambda r: r.total_bytes)
  assert heaviest.reference and heaviest.scheme.weight_bits == 8  # int8 weights + bf16 reference


def test_sizing_check_refuses_a_mesh_that_does_not_fit():
  """The same check rejects a 32B run squeezed onto a v4-8 and says what to change."""
  cfg = load_config(EvalConfig, STUDY / "QwQ-32B" / "math500.yaml")
  report = sizing.check_fit(architecture(cfg.model.directory), "v4-8", "w8a16", batch=cfg.batch_size,
                            prompt_len=PROMPT_LEN, max_new_tokens=cfg.sampling.max_new_tokens,
                            model_parallel=4, reference=True)
  assert not report.fits and any("larger slice" in s for s in report.suggestions)


# --- the README's tables ---

def study_fit_table() -> str:
  """Markdown: per study model, its slice, mesh, batch and the heaviest variant's memory per chip."""
  lines = ["| model | slice (chips) | mesh data x model | batch | new tokens | heaviest variant "
           "| GiB per chip (usable) |", "|---|---|---|---:|---:|---|---:|"]
  for model in STUDY_MODEL_DIRS:
    path = STUDY / model / "math500.yaml"
    cfg = load_config(EvalConfig, path)
    reports = fit_reports(path)
    r = max(reports, key=lambda r: r.total_bytes)
    v = cfg.variants[reports.index(r)]
    lines.append(f"| {model} | {r.topology.name} ({r.topology.chips}) | {r.data} x {r.model} | "
                 f"{r.batch} | {r.max_new_tokens} | {v.name}{' + bf16 ref' if r.reference else ''}"
                 f" | {r.total_bytes / sizing.GiB:.1f} ({r.usable_bytes / sizing.GiB:.1f}) |")
  return "\n".join(lines)


def test_render_fit_tables():
  shape = dict(batch=16, prompt_len=PROMPT_LEN, max_new_tokens=32768)
  plain = sizing.fit_table(**shape)
  # bf16 variants run without a reference, so that table has only the quantized schemes.
  with_reference = sizing.fit_table(**shape, schemes=sizing.STUDY_SCHEMES[1:], reference=True)
  study = study_fit_table()
  print("\nWhich model fits which slice (least 'model' parallelism that fits; '-': none), "
        f"batch {shape['batch']} x ({PROMPT_LEN} + 32768) tokens, generation alone:\n\n" + plain)
  print("\nThe same with the bf16 reference co-decoded (KL statistics):\n\n" + with_reference)
  print("\nThe study configs (configs/study/<model>/*.yaml):\n\n" + study)
  # 9 models x 5 slices; the first rows (R1-Distill-Qwen-1.5B) fit every slice in bf16.
  assert len(plain.splitlines()) == 2 + 9 * 5 and len(study.splitlines()) == 2 + 9
  assert all(row.split("|")[3].strip() != "-" for row in plain.splitlines()[2:7])
