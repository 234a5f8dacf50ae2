"""`python -m jaxthink.finetune` end to end on the embedded model, then an eval variant that loads
the adapters; adapters trained on another recipe are refused before any model loads."""

import json
from pathlib import Path

import pytest
import yaml

from jaxthink.config import ConfigError, load_config
from jaxthink.eval.config import EvalConfig
from jaxthink.eval.runner import evaluate
from jaxthink.finetune.__main__ import main
from jaxthink.finetune.checkpoint import load_adapters
from jaxthink.quant import QuantSpec

REPO = Path(__file__).resolve().parents[1]
W3 = {"scheme": "w3a16", "method": "rtn", "group_size": 64}


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("lora") / "w3-lora"
  code = main(["--config", str(REPO / "configs" / "finetune_demo.yaml"),
               "--set", f"output={out}", "--set", "train.steps=3", "--set", "train.batch_size=4",
               "--set", "train.warmup_steps=1", "--set", "data.problems=12",
               "--set", "adapter.rank=2"])
  assert code == 0
  return out


def test_adapter_json_records_the_recipe(adapter_dir):
  meta = json.loads((adapter_dir / "adapter.json").read_text())
  assert meta["base_model"] == "embedded"
  assert {k: meta["quant"][k] for k in W3} == W3
  assert meta["adapter"]["rank"] == 2 and meta["adapter"]["rules"] == [
      {"pattern": ".*", "adapt": True, "rank": None}]
  assert meta["step_format"] == {"separator": "\n"}
  assert meta["data"]["source"] == "synthetic" and meta["record"]["steps_run"] == 3
  adapters, loaded = load_adapters(adapter_dir, QuantSpec(**W3))
  assert loaded.adapter.rank == 2 and loaded.quant == QuantSpec(**W3)
  assert adapters["layers_2"]["mlp"]["down_proj"]["lora_a"].shape == (512, 2)


def _eval_config(tmp_path, adapter_dir, quant):
  cfg = {"model": {"path": "embedded", "dtype": "float32"}, "benchmarks": ["tiny"],
         "data_dir": "embedded", "limit": 2, "batch_size": 2, "reference": False,
         "sampling": {"temperature": 0.0, "max_new_tokens": 24},
         "output_dir": str(tmp_path / "run"),
         "variants": [{"name": "w3a16-rtn", "quant": W3},
                      {"name": "w3a16-rtn+lora", "quant": quant, "adapter": str(adapter_dir)}]}
  path = tmp_path / "eval.yaml"
  path.write_text(yaml.safe_dump(cfg))
  return load_config(EvalConfig, path)


def test_eval_variant_loads_the_adapters(adapter_dir, tmp_path):
  cfg = _eval_config(tmp_path, adapter_dir, W3)
  cfg.check_files()
  evaluate(cfg)
  rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").open()]
  assert sorted({r["variant"] for r in rows}) == ["w3a16-rtn", "w3a16-rtn+lora"]
  assert all(r["n_tokens"] > 0 for r in rows)


def test_adapters_of_another_recipe_are_refused(adapter_dir, tmp_path):
  cfg = _eval_config(tmp_path, adapter_dir, {**W3, "scheme": "w4a16"})
  with pytest.raises(ConfigError, match=r"w3a16-rtn\+lora.adapter: .*trained on base "
                                        r"w3a16-rtn \(group 64\).*onto w4a16-rtn"):
    cfg.check_files()


def test_an_existing_output_is_not_overwritten(adapter_dir, capsys):
  code = main(["--config", str(REPO / "configs" / "finetune_demo.yaml"),
               "--set", f"output={adapter_dir}"])
  assert code == 2 and "already holds adapters" in capsys.readouterr().err
