"""Memory sizing against hand-computed byte counts and published model sizes."""

import json

import pytest

from jaxthink import sizing

R1_1_5B = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
GIB = 2 ** 30

# Parameter counts the model cards / hub pages publish (billions, embeddings included).
PUBLISHED_PARAMS = {
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": 1.78,
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": 7.62,
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": 14.8,
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": 32.8,
    "Qwen/QwQ-32B": 32.8,
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": 8.03,
    "Qwen/Qwen3-8B": 8.19,
    "meta-llama/Llama-3.2-3B": 3.21,
    "meta-llama/Llama-3.2-3B-Instruct": 3.21,
    "meta-llama/Llama-3.1-8B": 8.03,
    "meta-llama/Llama-3.1-8B-Instruct": 8.03,
}

# R1-Distill-Qwen-1.5B by hand: hidden 1536, 28 layers, 12 heads, 2 kv heads of 128, MLP 8960,
# vocab 151936, untied embeddings, q/k/v biases.
LINEAR_PER_LAYER = 1536 * 1536 * 2 + 1536 * 256 * 2 + 3 * 1536 * 8960  # q, o; k, v; gate, up, down
BIAS_PER_LAYER = 1536 + 2 * 256
NORMS_PER_LAYER = 2 * 1536
EMBEDDINGS = 2 * 151936 * 1536 + 1536  # embed_tokens, lm_head, final norm
PARAMS_1_5B = 28 * (LINEAR_PER_LAYER + BIAS_PER_LAYER + NORMS_PER_LAYER) + EMBEDDINGS


@pytest.mark.parametrize("hub_id", sorted(PUBLISHED_PARAMS))
def test_study_models_match_published_sizes(hub_id):
  published = PUBLISHED_PARAMS[hub_id] * 1e9
  assert abs(sizing.STUDY_MODELS[hub_id].num_params - published) / published < 0.01


def test_r1_1_5b_byte_counts_by_hand():
  config = sizing.STUDY_MODELS[R1_1_5B]
  assert PARAMS_1_5B == 1_777_088_000 == config.num_params
  assert sizing.weight_bytes_per_chip(config, "bf16") == 2 * PARAMS_1_5B
  # 28 KiB per token in bf16 (DESIGN.md); kv8 / kv4: values + a float32 scale per token and head.
  assert sizing.kv_bytes_per_token(config) == 28 * 1024
  assert sizing.kv_bytes_per_token(config, 8) == 2 * 28 * 2 * (128 + 4)
  assert sizing.kv_bytes_per_token(config, 4) == 2 * 28 * 2 * (64 + 4)
  # w4a16 g128: half a byte per weight + a float32 scale per 128 inputs; the rest stays bf16.
  w4 = 28 * (LINEAR_PER_LAYER / 2 + LINEAR_PER_LAYER / 128 * 4
             + 2 * (BIAS_PER_LAYER + NORMS_PER_LAYER)) + 2 * EMBEDDINGS
  assert sizing.weight_bytes_per_chip(config, "w4a16") == w4 == 1_629_826_048
  # 3-bit values take int4 storage too; int8 per channel: 1 byte + a scale per output column.
  assert sizing.weight_bytes_per_chip(config, "w3a16") == w4
  outputs = 1536 + 2 * 256 + 1536 + 2 * 8960 + 1536
  w8 = 28 * (LINEAR_PER_LAYER + outputs * 4 + 2 * (BIAS_PER_LAYER + NORMS_PER_LAYER)) + 2 * EMBEDDINGS
  assert sizing.weight_bytes_per_chip(config, "w8a16") == w8
  # 'model' = 2 divides every split dimension: all but the norms are halved.
  assert sizing.weight_bytes_per_chip(config, "bf16", 2) == 2 * (
      28 * ((LINEAR_PER_LAYER + BIAS_PER_LAYER) / 2 + NORMS_PER_LAYER) + (EMBEDDINGS - 1536) / 2 + 1536)


def test_kv_cache_split_over_data_and_kv_heads():
  config = sizing.STUDY_MODELS[R1_1_5B]  # 2 kv heads
  shape = dict(batch=8, prompt_len=512, max_new_tokens=1024)
  tp2 = sizing.check_fit(config, "v4-8", model_parallel=2, **shape)  # data 2: 4 rows, heads / 2
  assert tp2.cache_bytes == 4 * 1536 * 28 * 1024 / 2
  tp4 = sizing.check_fit(config, "v4-8", model_parallel=4, **shape)  # data 1; 4 doesn't divide 2
  assert tp4.cache_bytes == 8 * 1536 * 28 * 1024
  odd = sizing.check_fit(config, "v4-8", batch=5, prompt_len=512, max_new_tokens=1024)
  assert odd.cache_bytes == 2 * 1536 * 28 * 1024  # 5 rows padded to 8 over 4 chips


def test_fits_single_host():
  config = sizing.STUDY_MODELS[R1_1_5B]
  report = sizing.check_fit(config, "v4-8", batch=64, prompt_len=512, max_new_tokens=32768)
  rows = 64 // 4
  assert (report.data, report.model) == (4, 1)
  assert report.weight_bytes == 2 * PARAMS_1_5B
  assert report.cache_bytes == rows * (512 + 32768) * 28 * 1024
  assert report.activation_bytes == rows * 512 * 151936 * 4  # prompt logits > attention scores
  assert report.capacity_bytes == 32 * GIB
  assert report.total_bytes == 23_800_081_408 <= 0.9 * 32 * GIB
  assert report.fits and report.suggestions == ()
  assert "fits." in report.summary()
  print(report.summary())


def test_does_not_fit_and_says_what_to_change():
  config = sizing.STUDY_MODELS["Qwen/QwQ-32B"]  # 64 layers, 8 kv heads: 256 KiB per token
  report = sizing.check_fit(config, "v5p-8", batch=32, prompt_len=512, max_new_tokens=32768)
  print(report.summary())
  usable = 0.9 * 95 * GIB
  weights = 2 * config.num_params
  per_row = (512 + 32768) * 256 * 1024 + 512 * 152064 * 4  # cache + prompt logits of one row
  assert not report.fits
  assert report.total_bytes == weights + 8 * per_row
  rows = int((usable - weights) // per_row)  # 2 rows per chip: batch 8 over data 4
  new_tokens = int((usable - weights - 8 * 512 * 152064 * 4) // (8 * 256 * 1024)) - 512
  assert (rows, new_tokens) == (2, 10829)
  text = "\n".join(report.suggestions)
  assert "more 'model' parallelism: mesh data=1 model=4 on v5p-8" in text
  assert "a smaller batch: at most 8 (from 32) with this mesh." in text
  assert "fewer new tokens: max_new_tokens at most 10829 (from 32768)." in text
  assert "a lower-bit scheme or KV-cache quantization on v5p-8: " in text
  assert "w4a4kv4 (model=1)" in text
  assert "a larger slice: v5p-16 (8 chips)" in text
  assert "does NOT fit." in report.summary() and "To make it fit:" in report.summary()


def test_each_suggestion_really_fits():
  config = sizing.STUDY_MODELS["Qwen/QwQ-32B"]
  shape = dict(prompt_len=512, max_new_tokens=32768)
  smaller = sizing.check_fit(config, "v5p-8", batch=8, **shape)
  assert smaller.fits and not sizing.check_fit(config, "v5p-8", batch=12, **shape).fits
  assert sizing.check_fit(config, "v5p-8", batch=32, model_parallel=4, **shape).fits
  assert sizing.check_fit(config, "v5p-8", batch=32, prompt_len=512, max_new_tokens=10829).fits
  assert not sizing.check_fit(config, "v5p-8", batch=32, prompt_len=512, max_new_tokens=10830).fits


def test_topologies():
  expected = {"v4-8": (4, 32), "v4-32": (16, 32), "v5litepod-8": (8, 16), "v5e-8": (8, 16),
              "v5p-8": (4, 95), "v6e-8": (8, 32)}
  for name, (chips, gib) in expected.items():
    topology = sizing.parse_topology(name)
    assert (topology.chips, topology.hbm_bytes_per_chip) == (chips, gib * GIB), name
  assert [t.name for t in sizing.larger_topologies(sizing.parse_topology("v5litepod-64"))] == [
      "v5litepod-128", "v5litepod-256"]


@pytest.mark.parametrize("name, message", [
    ("v4-6", "in multiples of 8"), ("v5litepod-3", r"have \[1, 4, 8"), ("v7-8", "not understood"),
    ("tpu", "not understood")])
def test_bad_topology(name, message):
  with pytest.raises(sizing.SizingError, match=message):
    sizing.parse_topology(name)


def test_schemes():
  assert sizing.parse_scheme("w4a16") == sizing.MemoryScheme("w4a16", 4, 128, None)
  assert sizing.parse_scheme("w3a16-g64") == sizing.MemoryScheme("w3a16-g64", 3, 64, None)
  assert sizing.parse_scheme("w8a16") == sizing.MemoryScheme("w8a16", 8, None, None)
  assert sizing.parse_scheme("w4a4kv4") == sizing.MemoryScheme("w4a4kv4", 4, None, 4)
  assert sizing.parse_scheme("bf16-kv8") == sizing.MemoryScheme("bf16-kv8", 16, None, 8)
  for bad in ("w5a16", "fp8", "w4a16kv2", "bf16-g128"):
    with pytest.raises(sizing.SizingError, match="is not understood"):
      sizing.parse_scheme(bad)


@pytest.mark.parametrize("kwargs, message", [
    (dict(model_parallel=3), "model_parallel=3 must be a positive divisor of the 4 chips of v4-8"),
    (dict(model_parallel=2, data_parallel=4), "needs 8 chips; v4-8 has 4"),
    (dict(batch=0), "batch must be a positive integer"),
    (dict(headroom=1.0), "headroom 1.0 must be a fraction"),
])
def test_bad_run_shape(kwargs, message):
  config = sizing.STUDY_MODELS[R1_1_5B]
  args = dict(batch=8, prompt_len=512, max_new_tokens=1024) | kwargs
  with pytest.raises(sizing.SizingError, match=message):
    sizing.check_fit(config, "v4-8", **args)


def test_model_config_from_local_checkpoint_or_hub_id(tmp_path):
  config = sizing.STUDY_MODELS["meta-llama/Llama-3.1-8B"]
  (tmp_path / "config.json").write_text(json.dumps(config.to_hf_dict()))
  assert sizing.model_config(tmp_path) == config
  assert sizing.model_config("Qwen/Qwen3-8B").qk_norm
  with pytest.raises(sizing.SizingError, match="download its config.json"):
    sizing.model_config("someone/unknown-model")


def test_fit_table_renders():
  table = sizing.fit_table(batch=32, prompt_len=512, max_new_tokens=32768)
  print(table)
  lines = table.splitlines()
  assert lines[0] == "| model | slice (chips) | bf16 | w8a16 | w4a16 | w3a16 | w8a8kv8 | w4a4kv4 |"
  assert len(lines) == 2 + 9 * 5
  assert all(line.count("|") == 9 for line in lines)
  rows = {}
  model = None
  for line in lines[2:]:
    cells = [c.strip() for c in line.strip("|").split("|")]
    model = cells[0] or model
    rows[model, cells[1]] = cells[2:]
  # 1.5B bf16 on one v4 chip: 3.3 GiB weights + 8 rows x 33280 x 28 KiB + logits, under 28.8 GiB.
  assert rows["DeepSeek-R1-Distill-Qwen-1.5B", "v4-8 (4)"][0] == "1"
  # QwQ-32B bf16 on v4-8: the KV cache alone is 32 x 33280 x 256 KiB = 260 GiB > 4 x 28.8 GiB.
  assert rows["QwQ-32B", "v4-8 (4)"][0] == "-"
