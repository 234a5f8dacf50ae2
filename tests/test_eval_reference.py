"""`reference: score` and `reference: codecode` record the same responses and per-token KL."""

import json

import numpy as np
import yaml

from jaxthink.config import load_config
from jaxthink.eval import evaluate
from jaxthink.eval.config import EvalConfig


def _run(tmp_path, mode):
  cfg = {"model": {"path": "embedded", "dtype": "float32"}, "benchmarks": ["tiny"],
         "data_dir": "embedded", "limit": 6, "batch_size": 4, "reference": mode,
         "sampling": {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 96, "seed": 3},
         "output_dir": str(tmp_path / mode),
         "variants": [{"name": "w3", "quant": {"scheme": "w3a16", "method": "rtn",
                                               "group_size": 64, "kv_bits": 8}}]}
  path = tmp_path / f"{mode}.yaml"
  path.write_text(yaml.safe_dump(cfg))
  evaluate(load_config(EvalConfig, path))
  run = tmp_path / mode
  rows = {}
  for line in (run / "results.jsonl").read_text().splitlines():
    row = json.loads(line)
    rows[row["key"]] = (row, dict(np.load(run / row["token_file"])))
  return rows


def test_score_pass_records_what_codecoding_records(tmp_path):
  score, codecode = _run(tmp_path, "score"), _run(tmp_path, "codecode")
  assert score.keys() == codecode.keys() and len(score) == 6
  for key, (row, buffers) in score.items():
    want_row, want = codecode[key]
    assert row["response"] == want_row["response"]
    assert abs(row["mean_kl"] - want_row["mean_kl"]) < 1e-5
    for name in ("kl", "entropy_ref", "ref_logprobs"):
      np.testing.assert_allclose(buffers[name], want[name], atol=1e-5, err_msg=name)
