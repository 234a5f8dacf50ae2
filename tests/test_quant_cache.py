"""Quantize once per recipe: variants sharing a recipe quantize once, a later run loads the same
params from disk, a different recipe / calibration text / checkpoint misses, round to nearest is
not stored."""

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxthink
from jaxthink.config import from_dict
from jaxthink.eval.config import EvalConfig
from jaxthink.eval.runner import _policy
from jaxthink.models import load_pretrained
from jaxthink.models.decoder import positions_from_mask
from jaxthink.quant import quantize
from jaxthink.quant import cache as cache_module
from jaxthink.quant.cache import QuantCache, default_cache_dir

TINY = Path(jaxthink.__file__).parent / "tiny"
# A GPTQ recipe on the embedded model, with little calibration text (test time).
GPTQ = {"scheme": "w4a16", "method": "gptq", "group_size": 64,
        "calibration": {"source": str(TINY / "data" / "calibration.jsonl"), "num_samples": 4,
                        "seq_len": 32, "heldout_samples": 1}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A copy of the embedded model (tests change its files' times)."""
  path = tmp_path_factory.mktemp("tiny") / "model"
  shutil.copytree(TINY / "model", path)
  return path


@pytest.fixture(scope="module")
def reference(model_dir):
  return load_pretrained(model_dir, dtype=jnp.float32)


def eval_config(model_dir, output_dir, variants):
  return from_dict(EvalConfig, {"model": {"path": str(model_dir), "dtype": "float32"},
                                "benchmarks": ["tiny"], "data_dir": "embedded",
                                "output_dir": str(output_dir), "variants": variants})


def logits(policy, tokens):
  model, params = policy
  mask = jnp.ones(tokens.shape, bool)
  out, _ = model.apply({"params": params}, tokens, positions_from_mask(mask), mask)
  return np.asarray(out)


def assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_recipe_is_quantized_once_per_run_and_loaded_by_the_next(tmp_path, model_dir,
                                                                   reference):
  cfg = eval_config(model_dir, tmp_path / "runs" / "a", [
      {"name": "w4-gptq", "quant": GPTQ},
      {"name": "w4-gptq+penalty", "quant": GPTQ, "penalty": {"mode": "constant", "strength": 2.0}},
      {"name": "w4-gptq-kv8", "quant": {**GPTQ, "kv_bits": 8}},  # same params, int8 cache
      {"name": "w4-gptq-damp", "quant": {**GPTQ, "damp": 0.05}}])
  cache_dir = default_cache_dir(cfg.output_dir)
  assert cache_dir == tmp_path / "runs" / ".quant_cache"
  cache = QuantCache(cache_dir)
  first, twin, kv8 = (_policy(v, reference, cfg, None, cache) for v in cfg.variants[:3])
  assert cache.quantize_calls == 1
  assert twin[0][1] is first[0][1] and kv8[0][1] is first[0][1]  # the same params in memory
  assert (twin[1], kv8[1]) == (None, 8)
  assert len(list(cache_dir.iterdir())) == 1

  # What quantize gives without the cache (the calibration the cache hands it is the same).
  model, params, _ = quantize(reference.config, reference.params, cfg.variants[0].quant,
                              tokenizer=reference.tokenizer)
  assert_same_params(first[0][1], params)
  assert first[0][0] == model

  # The next run (a new cache object, another output folder beside this one) reads the disk.
  later = eval_config(model_dir, tmp_path / "runs" / "b", cfg.variants)
  cache = QuantCache(default_cache_dir(later.output_dir))
  loaded, _ = _policy(later.variants[1], reference, later, None, cache)
  assert cache.quantize_calls == 0
  assert loaded[0] == model
  assert_same_params(loaded[1], params)
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 600, (2, 24)), jnp.int32)
  np.testing.assert_array_equal(logits(loaded, tokens), logits((model, params), tokens))

  # Another recipe misses, and is stored beside the first.
  damp, _ = _policy(later.variants[3], reference, later, None, cache)
  assert cache.quantize_calls == 1 and len(list(cache_dir.iterdir())) == 2
  assert any((np.asarray(a) != np.asarray(b)).any()
             for a, b in zip(jax.tree.leaves(damp[1]), jax.tree.leaves(params)))


def test_changed_calibration_text_or_checkpoint_misses(tmp_path, model_dir, reference,
                                                        monkeypatch):
  calibration = tmp_path / "calibration.jsonl"
  shutil.copy(GPTQ["calibration"]["source"], calibration)
  spec = {**GPTQ, "calibration": {**GPTQ["calibration"], "source": str(calibration)}}
  checkpoint = shutil.copytree(model_dir, tmp_path / "model")  # the files the key looks at
  cfg = eval_config(checkpoint, tmp_path / "run", [{"name": "gptq", "quant": spec},
                                                   {"name": "rtn", "quant": {"scheme": "w8a16"}}])
  gptq, rtn = cfg.variants

  def quantize_calls(variant):  # twice, as two runs: memory empty, disk shared
    calls = []
    for _ in range(2):
      cache = QuantCache(tmp_path / "cache")
      _policy(variant, reference, cfg, None, cache)
      calls.append(cache.quantize_calls)
    return calls

  assert quantize_calls(gptq) == [1, 0]
  rows = calibration.read_text().splitlines()
  calibration.write_text("\n".join(reversed(rows)) + "\n")  # same settings, other text order
  assert quantize_calls(gptq) == [1, 0]
  config = json.loads((checkpoint / "config.json").read_text())
  (checkpoint / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
  assert quantize_calls(gptq) == [1, 0]
  # Large files (weights) are known by size and mtime, not read.
  monkeypatch.setattr(cache_module, "_HASHED_FILE_BYTES", 1000)
  assert quantize_calls(gptq) == [1, 0]
  weights = checkpoint / "model.safetensors"
  os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
  assert quantize_calls(gptq) == [1, 0]
  assert quantize_calls(rtn) == [1, 1]  # round to nearest is redone, not stored
  entries = list((tmp_path / "cache").iterdir())
  assert len(entries) == 5 and not [e for e in entries if "partial" in e.name]
  assert {json.loads((e / "key.json").read_text())["spec"]["method"] for e in entries} == {"gptq"}
