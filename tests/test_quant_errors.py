"""Bad quantization input fails early with an error naming the problem and the fix."""

from __future__ import annotations

import numpy as np
import pytest

from jaxthink.config import ConfigError, from_dict
from jaxthink.quant import (CalibrationData, CalibrationSpec, LayerRule, QuantConfigError,
                            QuantSpec, calibration_data, quantize)
from test_quant_fixtures import ByteTokenizer, tiny_config, tiny_params


@pytest.mark.parametrize("kwargs, message", [
    (dict(scheme="w5a16"), "unknown quantization scheme 'w5a16'; valid schemes are"),
    (dict(method="hqq"), "unknown quantization method 'hqq'; valid methods are"),
    (dict(scheme="w4a16", method="smoothquant"), "'smoothquant' is for scheme 'w8a8'"),
    (dict(kv_bits=5), "kv_bits=5 is not supported"),
    (dict(group_size=0), "group_size=0 is not valid"),
    (dict(rules=()), "rules is empty"),
    (dict(damp=1.5), "damp=1.5 must be in (0, 1)"),
    (dict(scheme="none", method="gptq"), "scheme 'none' keeps float weights"),
])
def test_bad_spec(kwargs, message):
  with pytest.raises(QuantConfigError) as e:
    QuantSpec(**kwargs)
  assert message in str(e.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(pattern="layers_(0"), "not a valid regular expression"),
    (dict(pattern=".*", weight_bits=16), "weight_bits=16 is not supported; use 2..8"),
    (dict(pattern=".*", group_size=-7), "group_size=-7 is not valid"),
])
def test_bad_rule(kwargs, message):
  with pytest.raises(QuantConfigError, match=message):
    LayerRule(**kwargs)


def test_yaml_level_errors_name_the_key():
  with pytest.raises(ConfigError, match="quant.*unknown quantization method 'gtpq'"):
    from_dict(QuantSpec, {"method": "gtpq"}, where="quant")
  with pytest.raises(ConfigError, match="unknown key 'groupsize'"):
    from_dict(QuantSpec, {"groupsize": 128})


@pytest.mark.parametrize("spec, message", [
    (QuantSpec("w4a16", group_size=96),
     "group_size 96 does not fit layer layers_0/self_attn/q_proj: its 256 input channels are not "
     "a multiple of 96"),
    (QuantSpec("w4a16", rules=(LayerRule(r".*down_proj", group_size=512), LayerRule(".*"))),
     "group_size 512 does not fit layer layers_0/mlp/down_proj"),
    (QuantSpec("w4a16", "gptq", act_order=True), "needs static_groups: true"),
])
def test_group_size_or_options_that_do_not_fit_the_model(spec, message):
  with pytest.raises(QuantConfigError, match=message):
    quantize(tiny_config(), tiny_params(), spec, np.zeros((1, 8), np.int32))


def test_calibration_data_problems(tmp_path):
  spec = QuantSpec("w4a16", "gptq")
  with pytest.raises(QuantConfigError, match="needs calibration data"):
    quantize(tiny_config(), tiny_params(), spec)
  with pytest.raises(QuantConfigError, match="token id 300 is outside the model's vocabulary"):
    quantize(tiny_config(), tiny_params(), spec, np.full((2, 8), 300))
  with pytest.raises(QuantConfigError, match="non-empty"):
    CalibrationData.from_tokens(np.zeros((0, 8), np.int32))

  tokenizer = ByteTokenizer()
  missing = CalibrationSpec(source=str(tmp_path / "nope.jsonl"))
  with pytest.raises(QuantConfigError, match="nope.jsonl not found"):
    calibration_data(tokenizer, missing)
  (tmp_path / "empty.txt").write_text("  \n\n")
  with pytest.raises(QuantConfigError, match="holds no text"):
    calibration_data(tokenizer, CalibrationSpec(source=str(tmp_path / "empty.txt")))
  (tmp_path / "rows.jsonl").write_text('{"text": "a short line"}\n{"body": "x"}\n')
  with pytest.raises(QuantConfigError, match="line 2: no text field 'text'"):
    calibration_data(tokenizer, CalibrationSpec(source=str(tmp_path / "rows.jsonl")))
  (tmp_path / "short.txt").write_text("only a few tokens of text")
  with pytest.raises(QuantConfigError, match="yields 26 tokens, but 128 \\+ 8 windows of 512"):
    calibration_data(tokenizer, CalibrationSpec(source=str(tmp_path / "short.txt")))
  # No data_dir: the GSM8K train split shipped with jaxthink (7473 solutions).
  default = calibration_data(tokenizer, CalibrationSpec(source="gsm8k", num_samples=2, seq_len=64))
  assert default.tokens.shape == (2, 64) and default.description["documents"] == 7473
  with pytest.raises(QuantConfigError, match="does not exist"):
    calibration_data(tokenizer, CalibrationSpec(source="gsm8k", data_dir=str(tmp_path)))


def test_a_text_file_and_a_jsonl_file_calibrate(tmp_path):
  (tmp_path / "notes.txt").write_text("The answer is 42.\n" * 20)
  data = calibration_data(ByteTokenizer(), CalibrationSpec(
      source=str(tmp_path / "notes.txt"), num_samples=3, seq_len=64, heldout_samples=1))
  assert data.tokens.shape == (3, 64) and data.heldout.shape == (1, 64)
  assert bytes(data.tokens[0].astype(np.uint8)).startswith(b"The answer is 42.\nThe answer")
  (tmp_path / "rows.jsonl").write_text("\n".join('{"answer": "step %d"}' % i for i in range(50)))
  data = calibration_data(ByteTokenizer(), CalibrationSpec(
      source=str(tmp_path / "rows.jsonl"), text_field="answer", num_samples=2, seq_len=32,
      heldout_samples=0))
  assert b"step" in bytes(data.tokens.ravel().astype(np.uint8))


def test_rule_list_decides_each_layer():
  """First full match wins; unmatched layers stay float (with their float kernel)."""
  import flax
  from jaxthink.models.decoder import Decoder
  from jaxthink.quant import QuantRules
  from jaxthink.quant.checkpoint import abstract_params
  spec = QuantSpec("w4a16", rules=(
      LayerRule(r"layers_1/mlp/.*", quantize=False),
      LayerRule(r".*/down_proj", weight_bits=8, group_size=-1),
      LayerRule(r"layers_\d+/self_attn/.*"),
      LayerRule(r"layers_0/mlp/.*", group_size=64)))
  shapes = flax.traverse_util.flatten_dict(abstract_params(
      Decoder(tiny_config(), quant=QuantRules.from_spec(spec))))
  leaf = lambda *p: shapes[p]
  assert leaf("layers_0", "self_attn", "q_proj", "aqt", "qrhs", "value").shape == (2, 128, 256)
  assert leaf("layers_0", "self_attn", "q_proj", "aqt", "qrhs", "value").dtype == "int4"
  assert leaf("layers_0", "mlp", "down_proj", "aqt", "qrhs", "value").shape == (256, 256)
  assert leaf("layers_0", "mlp", "down_proj", "aqt", "qrhs", "value").dtype == "int8"
  assert leaf("layers_0", "mlp", "up_proj", "aqt", "qrhs", "value").shape == (4, 64, 256)
  assert leaf("layers_1", "mlp", "down_proj", "kernel").dtype == "float32"
  assert ("layers_1", "mlp", "gate_proj", "kernel") in shapes
  assert spec.layer_setting("layers_1/mlp/up_proj") is None
  assert spec.layer_setting("layers_1/self_attn/o_proj") == (4, 128)
