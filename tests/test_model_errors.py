"""Bad checkpoints and configs fail with a message naming the problem and the fix."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jaxthink
from jaxthink.models import CheckpointError, ModelConfig, UnsupportedModelError
from hf_reference import make_hf_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  path = tmp_path_factory.mktemp("qwen2")
  make_hf_model(path, "qwen2")
  return path


def _copy(src, dst, edit_config=None, edit_tensors=None):
  config = json.loads((src / "config.json").read_text())
  if edit_config:
    edit_config(config)
  dst.mkdir(exist_ok=True)
  (dst / "config.json").write_text(json.dumps(config))
  tensors = load_file(src / "model.safetensors")
  if edit_tensors:
    edit_tensors(tensors)
  save_file(tensors, dst / "model.safetensors")
  return dst


def _load(path):
  return jaxthink.load_pretrained(path, dtype=jnp.float32, tokenizer=False)


@pytest.mark.parametrize("edit, error, message", [
    (lambda c: c.update(model_type="mistral"), UnsupportedModelError, "model_type 'mistral' is not supported"),
    (lambda c: c.update(use_sliding_window=True, sliding_window=16), UnsupportedModelError, "use_sliding_window=true"),
    (lambda c: c.update(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}), UnsupportedModelError, "rope type 'yarn'"),
    (lambda c: c.update(hidden_act="gelu"), UnsupportedModelError, "hidden_act 'gelu'"),
    (lambda c: c.pop("hidden_size"), CheckpointError, "lacks the required key 'hidden_size'"),
    (lambda c: c.update(num_key_value_heads=3), UnsupportedModelError, "multiple of num_key_value_heads"),
])
def test_bad_config(checkpoint, tmp_path, edit, error, message):
  with pytest.raises(error, match=message):
    _load(_copy(checkpoint, tmp_path / "bad", edit_config=edit))


def test_old_top_level_rope_keys_are_read():
  config = ModelConfig.from_hf_dict(dict(
      model_type="llama", vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
      num_attention_heads=2, rope_theta=500000.0,
      rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                        original_max_position_embeddings=8192)))
  assert config.rope_theta == 500000.0 and config.rope_scaling.factor == 8.0


def test_missing_tensor(checkpoint, tmp_path):
  path = _copy(checkpoint, tmp_path / "bad",
               edit_tensors=lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(CheckpointError, match=r"lacks tensors \['model.layers.1.mlp.up_proj.weight'\]"):
    _load(path)


def test_unexpected_tensor(checkpoint, tmp_path):
  path = _copy(checkpoint, tmp_path / "bad",
               edit_tensors=lambda t: t.update({"model.layers.2.mlp.up_proj.weight": np.zeros((2, 2), np.float32)}))
  with pytest.raises(CheckpointError, match=r"has tensors \['model.layers.2.mlp.up_proj.weight'\]"):
    _load(path)


def test_shape_mismatch(checkpoint, tmp_path):
  path = _copy(checkpoint, tmp_path / "bad", edit_config=lambda c: c.update(intermediate_size=80))
  with pytest.raises(CheckpointError, match=r"mlp\.\w+_proj\.weight in model.safetensors has shape"):
    _load(path)


def test_missing_directory_and_weights(checkpoint, tmp_path):
  with pytest.raises(CheckpointError, match="config.json not found"):
    _load(tmp_path / "nowhere")
  (tmp_path / "bin").mkdir()
  (tmp_path / "bin" / "config.json").write_text((checkpoint / "config.json").read_text())
  (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"x")
  with pytest.raises(CheckpointError, match="convert PyTorch .bin weights to safetensors"):
    _load(tmp_path / "bin")


def test_corrupt_files(checkpoint, tmp_path):
  path = _copy(checkpoint, tmp_path / "bad")
  (path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
  with pytest.raises(CheckpointError, match="not a readable safetensors file"):
    _load(path)
  (path / "config.json").write_text("{not json")
  with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
    _load(path)


def test_sharded_index_names_missing_file(checkpoint, tmp_path):
  path = _copy(checkpoint, tmp_path / "bad")
  (path / "model.safetensors").rename(path / "model-00001-of-00002.safetensors")
  weight_map = {n: "model-00001-of-00002.safetensors" for n in load_file(path / "model-00001-of-00002.safetensors")}
  weight_map["model.norm.weight"] = "model-00002-of-00002.safetensors"
  (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  with pytest.raises(CheckpointError, match="names model-00002-of-00002.safetensors, which is missing"):
    _load(path)
