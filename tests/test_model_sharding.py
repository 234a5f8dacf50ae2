"""Loading straight onto a ('data', 'model') mesh of 8 CPU devices (in a subprocess, so the
device-count flag doesn't leak into the other tests)."""

from multidevice import TESTS_DIR, run_on_8_cpu_devices

SCRIPT = r"""
import sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, sys.argv[2])
import jaxthink
from jaxthink.models.sharding import make_mesh
from hf_reference import left_padded_batch, make_hf_model
path = sys.argv[1]
make_hf_model(path, "qwen2", num_attention_heads=8, num_key_value_heads=4, intermediate_size=128)
assert jax.device_count() == 8
tokens, mask = left_padded_batch([12, 5, 9, 12], vocab_size=128, seq=12)
single = np.asarray(jaxthink.load_pretrained(path, dtype=jnp.float32, tokenizer=False).logits(tokens, mask))
for data, model in [(2, 4), (4, 2), (1, 8)]:
  mesh = make_mesh(data, model)
  m = jaxthink.load_pretrained(path, dtype=jnp.float32, mesh=mesh, tokenizer=False)
  q = m.params["layers_0"]["self_attn"]["q_proj"]["kernel"]
  down = m.params["layers_1"]["mlp"]["down_proj"]["kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, "model"), q.sharding
  assert q.addressable_shards[0].data.shape == (64, 64 // model), q.addressable_shards[0].data.shape
  assert down.addressable_shards[0].data.shape == (128 // model, 64)
  err = np.abs(np.asarray(m.logits(tokens, mask)) - single)[mask].max()
  print(f"mesh ({data},{model}): max |logit diff| vs one device = {err:.1e}")
  assert err < 1e-5
print("OK")
"""


def test_load_onto_mesh(tmp_path):
  result = run_on_8_cpu_devices(SCRIPT, str(tmp_path), TESTS_DIR)
  print(result.stdout)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK" in result.stdout
