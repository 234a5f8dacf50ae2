"""The decode loop compiled by the real TPU compiler (libtpu, deviceless) for a v5e:2x2 slice, with
R1-Distill-Qwen-1.5B's attention shape (12 query heads, 2 kv heads of 128) at small widths: the
properties checked don't depend on size. A 'model' axis of 4, wider than the 2 kv heads: each chip
holds its quarter of the weights and half of the KV cache (one of the two kv heads), never the
whole cache; a decode step copies no layer's cache buffer and gathers no weight. The Pallas
kernel compiles (Mosaic) inside shard_map on the same mesh. The compile command reports a
config's programs."""

import json
import math

import jax
import jax.numpy as jnp
import pytest
import yaml

from jaxthink.compile.__main__ import main as compile_main
from jaxthink.compile.hlo import decode_step
from jaxthink.compile.programs import abstract_params, compile_decode, topology_mesh
from jaxthink.decode.loop import LoopSpec
from jaxthink.decode.sampling import Sampling
from jaxthink.models.config import ModelConfig
from jaxthink.models.decoder import Decoder

CONFIG = ModelConfig(model_type="qwen2", vocab_size=4096, hidden_size=512, intermediate_size=1024,
                     num_layers=2, num_heads=12, num_kv_heads=2, head_dim=128, rms_norm_eps=1e-6,
                     rope_theta=1e4, qkv_bias=True, eos_token_ids=(1,), pad_token_id=0)
SLOTS, MAX_LEN, NEW = 32, 1024, 512  # cache slots per row: 1024 (a whole number of chunks)


def _compiled(decode_attention):
  mesh = topology_mesh("v5e:2x2", data=1, model=4)
  model = Decoder(CONFIG, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                  decode_attention=decode_attention)
  spec = LoopSpec(model, None, Sampling(temperature=0.6, top_p=0.95), "constant", (1,), 0, NEW,
                  cache_dtype=jnp.bfloat16, mesh=mesh)
  params = abstract_params(model, mesh)
  return compile_decode(spec, params, None, SLOTS, MAX_LEN), params


@pytest.fixture(scope="module")
def chunked():
  return _compiled("chunked")


def test_each_chip_holds_half_the_cache_and_a_quarter_of_the_weights(chunked):
  compiled, params = chunked
  memory = compiled.memory_analysis()
  # By hand: K and V of every layer, 32 rows x 1024 slots x 128 dims in bf16, of which each chip
  # holds one of the 2 kv heads (replicated twice over the 4 chips).
  cache_global = CONFIG.num_layers * 2 * SLOTS * CONFIG.num_kv_heads * MAX_LEN * 128 * 2
  cache_per_chip = cache_global // 2
  weights_per_chip = sum(math.prod(p.sharding.shard_shape(p.shape)) * p.dtype.itemsize
                         for p in jax.tree.leaves(params))
  weights_global = sum(math.prod(p.shape) * p.dtype.itemsize for p in jax.tree.leaves(params))
  # The rest of the state: per-row counters, keys, and five [32, 512] record buffers and tokens.
  records = SLOTS * NEW * (4 + 4 + 4 + 1 + 1 + 1) + SLOTS * (4 * 5 + 8 + 4)
  vocab_masks = 2 * CONFIG.vocab_size + 4 + 4 + 4 + 4
  want = weights_per_chip + cache_per_chip + records + vocab_masks
  mib = lambda n: f"{n / 2**20:.1f}"
  print(f"\nper chip: arguments {mib(memory.argument_size_in_bytes)} MiB (hand count "
        f"{mib(want)}: weights {mib(weights_per_chip)} of {mib(weights_global)}, cache "
        f"{mib(cache_per_chip)} of {mib(cache_global)}), temporaries "
        f"{mib(memory.temp_size_in_bytes)} MiB")
  assert abs(memory.argument_size_in_bytes - want) <= 0.01 * want
  assert weights_per_chip < 0.3 * weights_global  # split over 'model' (norms stay whole)
  # Before the kv heads were replicated per chip, each chip held the whole cache.
  assert memory.argument_size_in_bytes < weights_per_chip + 0.6 * cache_global


def _cache_buffer_dims():
  """One layer's K (or V) cache on one chip: [rows, kv heads per chip, slots, head_dim]."""
  return (SLOTS, 1, MAX_LEN, 128)


def test_a_step_copies_no_cache_buffer_and_gathers_no_weight(chunked):
  compiled, params = chunked
  step = decode_step(compiled.as_text())
  print(f"\ncollectives per step: {dict(step.collectives)}; largest copies: "
        f"{[(c.result.split('{')[0], c.bytes) for c in step.copies[:4]]}")
  assert [c for c in step.copies if c.dims == _cache_buffer_dims()] == []
  assert step.gathers_of(p.shape for p in jax.tree.leaves(params) if p.ndim == 2) == []


def test_the_pallas_kernel_compiles_on_the_4_chip_mesh():
  compiled, params = _compiled("pallas")
  text = compiled.as_text()
  assert "tpu_custom_call" in text  # the Mosaic kernel is in the program
  step = decode_step(text)
  assert [c for c in step.copies if c.dims == _cache_buffer_dims()] == []
  assert step.gathers_of(p.shape for p in jax.tree.leaves(params) if p.ndim == 2) == []


def test_the_compile_command_reports_each_program(tmp_path, capsys):
  """`python -m jaxthink.compile` on an eval config whose model directory holds only config.json:
  prefill and decode of its one variant compile and fit (exit 0); without a slice it says which
  flag to pass (exit 2)."""
  (tmp_path / "model").mkdir()
  (tmp_path / "model" / "config.json").write_text(json.dumps(CONFIG.to_hf_dict()))
  config = tmp_path / "eval.yaml"
  config.write_text(yaml.safe_dump({
      "model": {"path": "model"}, "variants": [{"name": "bf16"}], "batch_size": SLOTS,
      "sampling": {"max_new_tokens": NEW}, "mesh": {"data": 1, "model": 4}}))
  assert compile_main(["--config", str(config)]) == 2
  assert "pass --topology" in capsys.readouterr().err
  assert compile_main(["--config", str(config), "--topology", "v5e:2x2",
                       "--prompt-len", str(MAX_LEN - NEW)]) == 0
  out = capsys.readouterr().out
  print(out)
  rows = [line for line in out.splitlines() if line.startswith("| prefill") or
          line.startswith("| decode")]
  assert [r.split("|")[1].strip() for r in rows] == ["prefill bf16", "decode bf16"]
  assert all(r.rstrip(" |").endswith("ok") for r in rows)
  assert "verdict: every program compiles and fits" in out
