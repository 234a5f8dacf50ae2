"""The decode engine's programs compiled for devices this host does not have: a TPU slice described
by its topology (libtpu compiles for it on a CPU-only machine), from shapes alone.

Arguments are `jax.ShapeDtypeStruct`s carrying the shardings the real run gives its arrays
(parameters by `jaxthink.models.sharding`, decode state by `jaxthink.decode.mesh`), so no weight is
ever read or allocated: `compile_decode(...)` returns the compiled loop, whose
`memory_analysis()`, `cost_analysis()` and `as_text()` say what fits and what a step does.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxthink.decode.loop import LoopSpec, decode, init_state, prefill
from jaxthink.decode.mesh import state_sharding
from jaxthink.decode.penalty import MarkerPenalty
from jaxthink.models.decoder import Decoder
from jaxthink.models.sharding import make_mesh
from jaxthink.quant.sharding import param_shardings
from jaxthink.sizing import SizingError, parse_topology


# Chips of a slice -> its shape in a topology name (v4 / v5p: 3-d tori; v5e / v6e: 2-d).
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8"}
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}
_GENERATION_NAMES = {"v5litepod": "v5e"}  # accelerator-type generation -> topology generation


def topology_name(accelerator_type: str) -> str:
  """The topology name of a Cloud TPU accelerator type: `v4-8` -> `v4:2x2x1`, `v5litepod-8` ->
  `v5e:2x4`."""
  slice_ = parse_topology(accelerator_type)
  generation = _GENERATION_NAMES.get(slice_.generation, slice_.generation)
  shapes = _SHAPES_3D if generation in ("v4", "v5p") else _SHAPES_2D
  if slice_.chips not in shapes:
    raise SizingError(f"{accelerator_type}: no topology shape known for {slice_.chips} chips; "
                      "pass --topology <generation>:<shape>.")
  return f"{generation}:{shapes[slice_.chips]}"


def hbm_bytes_per_chip(topology: str) -> int:
  """HBM of one chip of a slice named `<generation>:<shape>`."""
  generation, shape = topology.split(":")
  chips = math.prod(int(n) for n in shape.split("x"))
  cores = 2 * chips if generation in ("v4", "v5p") else chips
  return parse_topology(f"{generation}-{cores}").hbm_bytes_per_chip


def topology_devices(topology: str) -> list:
  """The devices of a TPU slice named `<generation>:<shape>` (`v5e:2x2`, `v6e:2x4`, `v4:2x2x1`,
  `v5p:2x2x2`), one per chip as JAX sees them on a TPU VM (v4 / v5p: megacore), for compiling
  only. Needs libtpu (`pip install 'jaxthink[tpu]'`)."""
  # Deviceless compilation shares the machine with other JAX processes: don't take libtpu's lock.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # noqa: PLC0415 (loads libtpu)
  generation = topology.split(":")[0]
  extra = {"chip_config_name": "megacore"} if generation in ("v4", "v5p") else {}
  try:
    return list(topologies.get_topology_desc(topology_name=topology, platform="tpu",
                                              **extra).devices)
  except Exception as e:  # libtpu missing or the name unknown: say which
    raise ValueError(f"cannot describe TPU topology {topology!r} ({type(e).__name__}: {e}); "
                     "names look like v5e:2x2, v6e:2x4, v4:2x2x1, and libtpu must be installed "
                     "(pip install -e '.[tpu]').") from e


def topology_mesh(topology: str, data: int, model: int) -> Mesh:
  """A `('data', 'model')` mesh over the chips of `topology`."""
  return make_mesh(data, model, topology_devices(topology))


def abstract_params(model: Decoder, mesh: Mesh) -> Any:
  """`model`'s parameters as shapes, placed as a run places them: float ones in its
  `param_dtype`; with `model.quant` (AQT serve mode) the integers and scales a quantized
  checkpoint holds."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens,
                                             jnp.ones((1, 1), bool)))["params"]
  return jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                               sharding=sharding),
                      shapes, param_shardings(shapes, mesh))


def abstract_state(spec: LoopSpec, batch: int, max_len: int) -> Any:
  """The decode state of `batch` slots with `max_len` cache slots each, as shapes."""
  shapes = jax.eval_shape(init_state, spec, batch, max_len)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                     sharding=state_sharding(x.shape, spec.mesh)),
                      shapes)


def _replicated(tree: Any, mesh: Mesh) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                                     sharding=NamedSharding(mesh, P())), tree)


def _penalty(spec: LoopSpec) -> Any:
  return _replicated(jax.eval_shape(lambda: MarkerPenalty().arrays(spec.policy.config.vocab_size)),
                     spec.mesh)


def compile_decode(spec: LoopSpec, params: Any, ref_params: Any, batch: int, max_len: int):
  """The decode loop (`jaxthink.decode.loop.decode`) for `batch` slots of `max_len` cache slots,
  compiled for `spec.mesh`'s devices; `params` / `ref_params` abstract (`abstract_params`)."""
  scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(spec.mesh, P()))
  return decode.lower(spec, params, ref_params, abstract_state(spec, batch, max_len),
                      _penalty(spec), scalar, scalar).compile()


def compile_prefill(spec: LoopSpec, params: Any, ref_params: Any, rows: int, bucket: int):
  """Prefill (`jaxthink.decode.loop.prefill`) of `rows` prompts padded to `bucket` tokens."""
  batch = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype,
                                                    sharding=state_sharding(shape, spec.mesh))
  return prefill.lower(spec, params, ref_params, batch((rows, bucket), jnp.int32),
                       batch((rows,), jnp.int32), batch((rows,), jnp.uint32),
                       _penalty(spec)).compile()
