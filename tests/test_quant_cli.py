"""`python -m jaxthink.quantize --config x.yaml`: a Hugging Face directory in, an orbax checkpoint
and quant.json out, loadable by `load_quantized`."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import PreTrainedTokenizerFast

from jaxthink.models.hf_io import save_pretrained
from jaxthink.quant import (CalibrationSpec, QuantSpec, frozen_layers, load_quantized,
                            mean_token_kl)
from jaxthink.quantize import main
from test_quant_fixtures import DATA_DIR, gsm8k_calibration, tiny_config, tiny_params


def byte_level_model_dir(path):
  """The tiny model as a HF directory, with a byte-level tokenizer of exactly 256 tokens."""
  save_pretrained(path, tiny_config(), tiny_params(), dtype=jnp.float32)
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  tok = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="Ċ")  # the newline byte
  fast.save_pretrained(path)
  return path


def test_cli_writes_a_loadable_checkpoint_with_its_report(tmp_path, capsys):
  model_dir = byte_level_model_dir(tmp_path / "hf")
  config = tmp_path / "q.yaml"
  config.write_text(f"""
model: {model_dir}
output: {tmp_path / 'out'}
dtype: float32
quant:
  scheme: w4a16
  method: gptq
  calibration: {{source: gsm8k, data_dir: {DATA_DIR}, num_samples: 16, seq_len: 128,
                heldout_samples: 4}}
""")
  assert main(["--config", str(config), "--set", "quant.calibration.num_samples=32"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  meta = json.loads((tmp_path / "out" / "quant.json").read_text())
  report = meta["report"]
  print(f"\nCLI summary: {summary}\nlayer errors: "
        + ", ".join(f"{k}: {v['heldout_rel_error']:.2e}" for k, v in report["layers"].items()))
  assert (meta["spec"]["scheme"], meta["spec"]["method"]) == ("w4a16", "gptq")
  assert report["calibration"]["num_samples"] == 32  # the --set override
  assert report["calibration"]["source"] == "gsm8k"
  assert len(report["calibration"]["tokens_sha256"]) == 64
  assert len(report["layers"]) == 14
  assert all(0 < v["heldout_rel_error"] < 0.05 for v in report["layers"].values())
  assert summary["weight_bytes_ratio"] < 0.3 and summary["heldout_mean_kl"] > 0

  model, spec, _ = load_quantized(tmp_path / "out")
  assert spec == QuantSpec("w4a16", "gptq", calibration=CalibrationSpec(
      source="gsm8k", data_dir=str(DATA_DIR), num_samples=32, seq_len=128, heldout_samples=4))
  assert model.tokenizer is not None
  assert {str(f["value"].dtype) for f in frozen_layers(model.params).values()} == {"int4"}
  # Held-out GSM8K text in this tokenizer's ids (one byte, one token).
  texts = [bytes(w.astype(np.uint8)).decode("utf-8") for w in gsm8k_calibration().heldout]
  tokens = np.asarray(model.tokenizer(texts)["input_ids"], np.int32)
  assert tokens.shape == gsm8k_calibration().heldout.shape
  kl = mean_token_kl(model.model.clone(quant=None), tiny_params(), model.model, model.params,
                     tokens)
  print(f"restored: mean KL(float || restored w4a16 gptq) on held-out text {kl:.4f}")
  assert 0 < kl < 0.05


def test_cli_reports_bad_config_without_a_traceback(tmp_path, capsys):
  config = tmp_path / "bad.yaml"
  config.write_text("model: x\noutput: y\nquant: {scheme: w4a16, method: smoothquant}\n")
  assert main(["--config", str(config)]) == 2
  err = capsys.readouterr().err
  assert "error: QuantizeConfig.quant: method 'smoothquant' is for scheme 'w8a8'" in err
  with pytest.raises(SystemExit):
    main([])
