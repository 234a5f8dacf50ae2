"""Where parameters live on a `('data', 'model')` device mesh.

Tensor parallelism over 'model': attention heads and the MLP hidden dimension are split, as are the
vocabulary rows of the embedding and the output head; the data axis replicates parameters. An axis
whose size the mesh does not divide is replicated instead (small models on big meshes).
"""

from __future__ import annotations

from typing import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Leaf rules keyed by (module name, parameter name); everything else is replicated.
_RULES = {
    ("q_proj", "kernel"): (None, "model"),
    ("k_proj", "kernel"): (None, "model"),
    ("v_proj", "kernel"): (None, "model"),
    ("gate_proj", "kernel"): (None, "model"),
    ("up_proj", "kernel"): (None, "model"),
    ("o_proj", "kernel"): ("model", None),
    ("down_proj", "kernel"): ("model", None),
    ("q_proj", "bias"): ("model",),
    ("k_proj", "bias"): ("model",),
    ("v_proj", "bias"): ("model",),
    ("gate_proj", "bias"): ("model",),
    ("up_proj", "bias"): ("model",),
    ("embed_tokens", "embedding"): ("model", None),
    ("lm_head", "kernel"): (None, "model"),
}


def param_spec(path: Sequence[str], shape: Sequence[int], mesh: Mesh) -> P:
  """PartitionSpec of the parameter at `path` (e.g. `('layers_0', 'mlp', 'up_proj', 'kernel')`)."""
  axes = _RULES.get(tuple(path[-2:]), (None,) * len(shape))
  axes = tuple(a if a is None or shape[i] % mesh.shape[a] == 0 else None
               for i, a in enumerate(axes[:len(shape)]))
  return P(*axes)


def param_sharding(path: Sequence[str], shape: Sequence[int], mesh: Mesh | None) -> jax.sharding.Sharding:
  if mesh is None:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # this process's own device
  return NamedSharding(mesh, param_spec(path, shape, mesh))


def make_mesh(data: int, model: int, devices=None) -> Mesh:
  """A `('data', 'model')` mesh over the first `data * model` devices."""
  devices = jax.devices() if devices is None else devices
  if data * model > len(devices):
    raise ValueError(f"mesh ({data}, {model}) needs {data * model} devices, only {len(devices)} "
                     "are visible; shrink the mesh or run on more devices.")
  # Auto axes: XLA propagates shardings from the parameters (explicit sharding-in-types would
  # need an out_sharding on every gather).
  auto = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh((data, model), ("data", "model"), axis_types=auto,
                       devices=devices[:data * model])
