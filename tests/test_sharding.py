"""Generation on ('data', 'model') meshes of 8 CPU devices gives the tokens of one device (run in a
subprocess, so the device-count flag doesn't leak into the other tests)."""

from multidevice import TESTS_DIR, run_on_8_cpu_devices

SCRIPT = r"""
import sys
import jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, sys.argv[2])
import jaxthink
from jaxthink.decode import MeshConfig, generate, mesh_from_config
from hf_reference import make_hf_model
assert jax.device_count() == 8
path = sys.argv[1]
shape = dict(num_attention_heads=8, num_key_value_heads=4, intermediate_size=128)
make_hf_model(path + "/q", "qwen2", seed=0, **shape)
make_hf_model(path + "/r", "qwen2", seed=1, **shape)
load = lambda p: jaxthink.load_pretrained(p, dtype=jnp.float32, tokenizer=False)
q, r = load(path + "/q"), load(path + "/r")
rng = np.random.default_rng(0)
prompts = [rng.integers(3, 128, n).tolist() for n in (7, 2, 12, 5, 9)]  # 5 rows: padded to 8
run = lambda mesh: generate((q.model, q.params), prompts, max_new_tokens=16, eos_ids=(),
                            reference=(r.model, r.params), mesh=mesh)
single = run(None)
for data, model in [(8, 1), (4, 2), (2, 4)]:
  mesh = mesh_from_config(MeshConfig(data=data, model=model))
  out = run(mesh)
  np.testing.assert_array_equal(out.tokens, single.tokens)
  err = max(np.abs(getattr(out, f) - getattr(single, f)).max() for f in ("kl", "entropy", "ref_entropy"))
  print(f"mesh ({data},{model}): tokens identical; max |KL/entropy diff| vs one device = {err:.1e}")
  assert err < 1e-5
assert mesh_from_config(MeshConfig(model=2)).shape == {"data": 4, "model": 2}

# Where the state lives on the last mesh (2, 4): batch on 'data', the 4 kv heads on 'model'.
from jax.sharding import PartitionSpec as P
from jaxthink.decode import MarkerPenalty, Sampling
from jaxthink.decode.loop import LoopSpec, init_state, insert, prefill
from jaxthink.decode.mesh import place_params, put_batch
spec = LoopSpec(q.model, r.model, Sampling(), "off", (), 0, 16, None, jnp.dtype("float32"), mesh)
tokens = put_batch(np.ones((8, 16), np.int32), mesh)
first = prefill(spec, place_params(q.params, mesh), place_params(r.params, mesh), tokens,
                put_batch(np.full(8, 16, np.int32), mesh), jnp.uint32(0),
                MarkerPenalty().arrays(128))
state = insert(spec, init_state(spec, 8, 32), first, jnp.arange(8), jnp.full((8,), 16, jnp.int32))
assert state.cache.layers[0].k.sharding.spec == P("data", "model"), state.cache.layers[0].k.sharding
shard = state.ref_cache.layers[1].v.addressable_shards[0].data.shape
assert shard == (4, 1, 32, 8), shard  # [batch / 2, 4 kv heads / 4, 16 + 16 slots, head_dim]
assert state.tokens.sharding.spec == P("data") and state.generated.sharding.spec == P("data")

# 2 kv heads on the 4-way 'model' axis: the cache holds each kv head twice and each device one
# copy (not the whole cache on every device); tokens and records are one device's.
make_hf_model(path + "/n", "qwen2", seed=2, num_attention_heads=8, num_key_value_heads=2,
              intermediate_size=128)
n = load(path + "/n")
narrow = lambda mesh: generate((n.model, n.params), prompts, max_new_tokens=16, eos_ids=(),
                               mesh=mesh)
want, got = narrow(None), narrow(mesh)
np.testing.assert_array_equal(got.tokens, want.tokens)
assert np.abs(got.entropy - want.entropy).max() < 1e-5
spec = LoopSpec(n.model, None, Sampling(), "off", (), 0, 16, None, jnp.dtype("float32"), mesh)
k = init_state(spec, 8, 32).cache.layers[0].k
assert k.shape == (8, 4, 32, 8) and k.sharding.spec == P("data", "model"), (k.shape, k.sharding)
assert k.addressable_shards[0].data.shape == (4, 1, 32, 8)
print("OK")
"""


def test_meshes_match_one_device(tmp_path):
  result = run_on_8_cpu_devices(SCRIPT, str(tmp_path), TESTS_DIR, fast_compile=True)
  print(result.stdout)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK" in result.stdout
