"""Placing generation on a `('data', 'model')` device mesh, on one host or many.

The batch is split along 'data' (padded to a multiple of it); parameters follow
`jaxthink.models.sharding` (heads, MLP hidden and vocabulary along 'model'); the KV cache is split
by batch and, when they divide, by kv heads. Multi-host: every process calls `generate` with the
same global batch; each feeds only its own rows (`jax.make_array_from_process_local_data`) and
gets the full result back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from orbax.checkpoint import multihost

from jaxthink.models.config import ModelConfig
from jaxthink.models.sharding import make_mesh, param_sharding


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Attributes:
    data: devices along the batch axis; -1 uses every device the 'model' axis leaves.
    model: devices along the tensor-parallel axis.
    distributed: call `jax.distributed.initialize()` first (multi-host, e.g. a TPU pod slice; on
      TPU and Slurm the arguments below are detected and may stay None).
  """

  data: int = -1
  model: int = 1
  distributed: bool = False
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def initialize_distributed(config: MeshConfig) -> None:
  """`jax.distributed.initialize` once, when the config asks for it (before devices are used)."""
  if config.distributed and not jax.distributed.is_initialized():
    jax.distributed.initialize(coordinator_address=config.coordinator_address,
                               num_processes=config.num_processes, process_id=config.process_id)


def wait_for_every_process(name: str, timeout_s: int = 3600) -> None:
  """Blocks until every process reaches the barrier `name` (unique per call site). A barrier of
  the coordination service, not a collective: hosts that load or compile at different speeds
  arrive minutes apart, and the first collective's transport (Gloo on CPU) gives up after 30 s."""
  if jax.process_count() > 1:
    multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)


def mesh_from_config(config: MeshConfig) -> Mesh:
  initialize_distributed(config)
  n = jax.device_count()
  if config.model < 1 or n % config.model:
    raise ValueError(f"mesh model axis {config.model} must be a positive divisor of the "
                     f"{n} visible devices.")
  data = n // config.model if config.data == -1 else config.data
  return make_mesh(data, config.model)


def padded_batch_size(batch: int, mesh: Mesh | None) -> int:
  """`batch` rounded up to a multiple of the 'data' axis."""
  data = 1 if mesh is None else mesh.shape["data"]
  return -(-batch // data) * data


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, P("data", *(None,) * (ndim - 1)))


def put_batch(x: np.ndarray, mesh: Mesh | None) -> jax.Array:
  """The global array `x` `[batch, ...]` split along 'data'; this process supplies only its rows."""
  if mesh is None:
    return jax.device_put(x)
  sharding = batch_sharding(mesh, x.ndim)
  rows = [index[0] for index in sharding.addressable_devices_indices_map(x.shape).values()]
  start = min(r.start or 0 for r in rows)
  stop = max(x.shape[0] if r.stop is None else r.stop for r in rows)
  return jax.make_array_from_process_local_data(sharding, x[start:stop], x.shape)


def place_params(params: Any, mesh: Mesh | None) -> Any:
  """Parameters on `mesh` by the model sharding rules; leaves already on it stay as they are
  (e.g. quantized trees placed by their own rules)."""
  if mesh is None:
    return params

  def place(path, leaf):
    if (isinstance(leaf, jax.Array) and isinstance(leaf.sharding, NamedSharding)
        and leaf.sharding.mesh == mesh):
      return leaf
    names = tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)
    return jax.device_put(leaf, param_sharding(names, np.shape(leaf), mesh))

  return jax.tree_util.tree_map_with_path(place, params)


def kv_replicas(config: ModelConfig, mesh: Mesh | None) -> int:
  """Copies of each kv head the cache holds (`init_kv_cache`) so that the 'model' axis splits it.

  1 when the axis divides the kv heads (each device holds its share) or there is no mesh. When the
  axis is wider (1.5B's 2 kv heads on a 4-way axis), `model / kv_heads` copies: each device then
  holds one kv head, the one its query heads read, as MaxText and tpu-inference shard GQA caches;
  otherwise every device would hold the whole cache. Where neither divides, 1 (replicated).
  """
  model = 1 if mesh is None else mesh.shape["model"]
  kv = config.num_kv_heads
  if kv % model == 0 or model % kv or config.num_heads % model:
    return 1
  return model // kv


def state_sharding(shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
  """Where an array of a decode state lives: batch-leading arrays on 'data', scalars replicated,
  and cache arrays (`[batch, kv_heads, len, ...]`) also on 'model' along kv heads where it
  divides them (`kv_replicas` makes it)."""
  if len(shape) == 0:
    return NamedSharding(mesh, P())
  if len(shape) >= 3:
    heads = "model" if shape[1] % mesh.shape["model"] == 0 else None
    return NamedSharding(mesh, P("data", heads, *(None,) * (len(shape) - 2)))
  return NamedSharding(mesh, P("data", *(None,) * (len(shape) - 1)))


def constrain_state(tree: Any, mesh: Mesh | None) -> Any:
  """`tree` (a decode state, cache or prefill result) constrained to `state_sharding`."""
  if mesh is None:
    return tree
  return jax.tree.map(
      lambda x: jax.lax.with_sharding_constraint(x, state_sharding(x.shape, mesh)), tree)


def to_numpy(x: Any) -> Any:
  """The whole (global) array, or pytree of arrays, on this host, also when other hosts hold
  parts of it; one transfer."""
  if jax.process_count() > 1:
    x = multihost_utils.process_allgather(x, tiled=True)
  return jax.tree.map(np.asarray, jax.device_get(x))
