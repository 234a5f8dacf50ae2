"""The penalty's controls and λ grids: a grid expands into named twins, the best-λ table is right on
hand-made results, and the control sets of a demo-style run (embedded model) are what the study
defines, checked with numpy against the run's own per-token files."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from jaxthink.analysis.penalty import PenaltyInfo, strength_grid_table
from jaxthink.analysis.report import summarize_variant
from jaxthink.config import ConfigError, from_dict
from jaxthink.eval.config import EMBEDDED_MODEL_DIR, EvalConfig
from jaxthink.models.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
W3 = {"scheme": "w3a16", "method": "rtn", "group_size": 64}


def _config(variants, **extra):
  return from_dict(EvalConfig, {"model": {"path": "embedded"}, "variants": variants, **extra})


def test_strength_grid_expands_into_named_twins():
  cfg = _config([{"name": "w3", "quant": W3},
                 {"name": "w3+p", "quant": W3, "compare_to": "w3",
                  "penalty": {"mode": "constant", "strength": [0.5, 2.0, -1.0, float("inf")]}}])
  twins = cfg.variants[1:]
  assert [v.name for v in twins] == ["w3+p@0.5", "w3+p@2", "w3+p@-1", "w3+p@inf"]
  assert [v.penalty.strength for v in twins] == [0.5, 2.0, -1.0, float("inf")]
  assert {v.strength_grid for v in twins} == {"w3+p"} and {v.compare_to for v in twins} == {"w3"}
  assert cfg.variants[0].strength_grid is None


@pytest.mark.parametrize("variants, message", [
    ([{"name": "a", "penalty": {"mode": "constant", "strength": [1.0, 1.0]}}], "distinct values"),
    ([{"name": "a", "quant": W3, "penalty": {"mode": "constant", "token_set": "high_kl"}}],
     "found none: add one such variant"),
    ([{"name": "full"}, {"name": "c", "penalty": {"mode": "constant", "token_set": "low_kl"}}],
     "must be quantized"),
    ([{"name": "w3", "quant": W3}, {"name": "c", "quant": W3, "penalty": {
        "mode": "constant", "token_set": "random_matched", "source": "x"}}],
     "'x' must be a variant"),
    ([{"name": "w3", "quant": W3}, {"name": "c", "quant": W3, "penalty": {
        "mode": "constant", "source": "w3"}}], "source applies to control sets"),
])
def test_bad_grids_and_control_sources_are_named(variants, message):
  with pytest.raises(ConfigError, match=message):
    _config(variants)


def _rows(name, correct, n_tokens):
  return [{"variant": name, "problem_id": f"p{i}", "correct": bool(c), "n_tokens": n,
           "failure": None if c else "other", "n_markers": 1}
          for i, (c, n) in enumerate(zip(correct, n_tokens))]


def test_best_strength_table_on_hand_made_results(tmp_path):
  # Four problems each. Grid g: λ=1 and λ=2 tie on accuracy (75%), λ=2 is shorter: best.
  # Grid h: λ=-1 and λ=0.5 tie on accuracy and length: the smaller |λ| (0.5) wins.
  results = {
      "base": _rows("base", [1, 1, 0, 0], [100, 100, 100, 100]),
      "g@0.5": _rows("g@0.5", [1, 0, 0, 0], [90, 90, 90, 90]),
      "g@1": _rows("g@1", [1, 1, 1, 0], [90, 90, 90, 90]),
      "g@2": _rows("g@2", [1, 1, 0, 1], [80, 80, 80, 80]),
      "g@4": _rows("g@4", [0, 0, 0, 1], [50, 50, 50, 50]),
      "h@-1": _rows("h@-1", [1, 1, 0, 0], [120, 120, 120, 120]),
      "h@0.5": _rows("h@0.5", [0, 1, 1, 0], [120, 120, 120, 120]),
  }
  file = tmp_path / "results.jsonl"
  file.write_text("".join(json.dumps(r) + "\n" for rows in results.values() for r in rows))
  rows = [json.loads(line) for line in file.read_text().splitlines()]
  summaries = [summarize_variant(name, [r for r in rows if r["variant"] == name])
               for name in results]
  penalties = {name: PenaltyInfo("markers", float(name.split("@")[1]), 44, "base",
                                 name.split("@")[0]) for name in results if "@" in name}
  table = strength_grid_table(summaries, penalties)
  print(table)
  cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
  assert [(c[0], c[1]) for c in cells] == [("g", "0.5"), ("g", "1"), ("g", "2"), ("g", "4"),
                                           ("h", "-1"), ("h", "0.5")]  # every λ, ordered
  best = {c[0]: c[1] for c in cells if c[7] == "**best**"}
  assert best == {"g": "2", "h": "0.5"}
  g2 = cells[2]  # accuracy 75%, +25 points and -20% CoT against base (50%, 100 tokens)
  assert g2[2:6] == ["75.0%", "+25.0", "80", "-20.0%"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """configs/controls_demo.yaml on the first 40 problems; the KL sets scaled to that run (5
  tokens, ranked over tokens sampled >= 10 times)."""
  out = tmp_path_factory.mktemp("controls")
  cfg = yaml.safe_load((REPO / "configs" / "controls_demo.yaml").read_text())
  cfg.update(limit=40, output_dir=str(out / "run"))
  for v in cfg["variants"]:
    if v.get("penalty", {}).get("token_set") in ("high_kl", "low_kl", "random_neither"):
      v["penalty"].update(set_size=5, min_count=10)
  config = out / "controls.yaml"
  config.write_text(yaml.safe_dump(cfg, allow_unicode=True))
  proc = subprocess.run([sys.executable, "-m", "jaxthink.eval", "--config", str(config)], cwd=REPO,
                        capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out / "run"


def test_control_sets_of_a_demo_run(demo_run):
  sets = {p.stem: json.loads(p.read_text()) for p in (demo_run / "token_sets").glob("*.json")}
  rows = [json.loads(line) for line in (demo_run / "results.jsonl").read_text().splitlines()]
  source = [np.load(demo_run / r["token_file"]) for r in rows if r["variant"] == "w3a16-rtn"]
  tokens = np.concatenate([s["token_ids"] for s in source])
  kl = np.concatenate([s["kl"] for s in source]).astype(np.float64)
  counts = np.bincount(tokens, minlength=1000)
  mean_kl = np.bincount(tokens, weights=kl, minlength=1000) / np.maximum(counts, 1)
  tok = load_tokenizer(EMBEDDED_MODEL_DIR)
  special = set(tok.added_tokens_decoder) | set(tok.all_special_ids)
  markers = set(sets["w3a16-rtn"]["markers"]["ids"])
  ids = {name: [t["id"] for t in sets[f"w3a16-rtn+{name}"]["penalised"]]
         for name in ("high_kl", "low_kl", "random_neither", "random_matched")}
  for name, chosen in ids.items():
    print(f"{name}: {[tok.decode([i]) for i in chosen]} counts {counts[chosen].tolist()} "
          f"mean KL {np.round(mean_kl[chosen], 5).tolist()}")
    assert not set(chosen) & (special | markers), name
  # The KL sets: 5 tokens each, each sampled >= 10 times, disjoint, the extremes of the ranking.
  eligible = np.flatnonzero(counts >= 10)
  eligible = eligible[~np.isin(eligible, list(special | markers))]
  ranked = eligible[np.argsort(-mean_kl[eligible], kind="stable")]
  assert sorted(ids["high_kl"]) == sorted(ranked[:5].tolist())
  assert sorted(ids["low_kl"]) == sorted(ranked[-5:].tolist())
  assert not set(ids["high_kl"]) & set(ids["low_kl"])
  assert (counts[ids["high_kl"] + ids["low_kl"] + ids["random_neither"]] >= 10).all()
  assert mean_kl[ids["high_kl"]].min() > mean_kl[ids["low_kl"]].max()
  assert not set(ids["random_neither"]) & set(ids["high_kl"] + ids["low_kl"])
  # Frequency-matched on the generated text: as many tokens as markers, with similar counts.
  matched, marker_counts = counts[ids["random_matched"]], counts[sorted(markers)]
  print(f"marker counts {sorted(marker_counts.tolist())}, matched {sorted(matched.tolist())}")
  assert len(matched) == len(markers)
  assert abs(int(matched.sum()) - int(marker_counts.sum())) <= 0.5 * marker_counts.sum() + 10
  for name, chosen in ids.items():
    penalised = np.concatenate([np.load(demo_run / r["token_file"])["token_ids"] for r in rows
                                if r["variant"] == f"w3a16-rtn+{name}"])
    after, before = np.isin(penalised, chosen).mean(), np.isin(tokens, chosen).mean()
    print(f"{name}: its tokens are {after:.4f} of the penalised run's tokens vs {before:.4f} of "
          f"the source run's")
    # λ = 2 lowers every chosen token's logit: never emitted more. The low-KL tokens are the
    # confident ones (e.g. a digit at p ~ 1), whose choice a penalty of 2 rarely changes.
    assert after <= before, name
    if name == "high_kl":
      assert after < before


def test_demo_report_shows_markers_controls_and_boost(demo_run):
  report = (demo_run / "report.md").read_text()
  print(report[report.index("## Penalised tokens"):report.index("## Plots")])
  for name in ("w3a16-rtn+markers@1", "w3a16-rtn+markers@2", "w3a16-rtn+markers@4",
               "w3a16-rtn+high_kl", "w3a16-rtn+low_kl", "w3a16-rtn+random_neither",
               "w3a16-rtn+random_matched", "w3a16-rtn+boost"):
    assert f"| {name} |" in report
  controls = report[report.index("## Markers vs control sets"):report.index("## λ grids")]
  assert "| -2 |" in controls  # the boost, at negative λ
  assert "**best**" in report and "## Tokens ranked by mean KL" in report
  assert "## Markers among the top-20 candidates" in report
  for plot in ("kl_rank_markers.png", "markers_top20.png"):
    assert (demo_run / plot).stat().st_size > 1000
  assert "' Wait'" in report and "' on'" not in report  # the penalised markers are listed


def test_a_resumed_run_penalises_the_recorded_set(demo_run):
  """The control set is read back from token_sets/<variant>.json: with the high_kl record replaced
  by the low_kl set and the high_kl responses dropped, the resumed run draws exactly the low_kl
  run's tokens (same λ, seeds and set). Runs last: it edits the fixture's run."""
  def responses(name):
    rows = [json.loads(line) for line in (demo_run / "results.jsonl").read_text().splitlines()]
    return {r["problem_id"]: r["response"] for r in rows if r["variant"] == name}

  assert responses("w3a16-rtn+high_kl") != responses("w3a16-rtn+low_kl")
  sets = demo_run / "token_sets"
  record = json.loads((sets / "w3a16-rtn+high_kl.json").read_text())
  record["penalised"] = json.loads((sets / "w3a16-rtn+low_kl.json").read_text())["penalised"]
  (sets / "w3a16-rtn+high_kl.json").write_text(json.dumps(record))
  lines = (demo_run / "results.jsonl").read_text().splitlines(keepends=True)
  (demo_run / "results.jsonl").write_text(
      "".join(line for line in lines if json.loads(line)["variant"] != "w3a16-rtn+high_kl"))
  proc = subprocess.run([sys.executable, "-m", "jaxthink.eval", "--config",
                         str(demo_run.parent / "controls.yaml")], cwd=REPO, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert responses("w3a16-rtn+high_kl") == responses("w3a16-rtn+low_kl")
