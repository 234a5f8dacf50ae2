"""Placement of quantized parameters on a `('data', 'model')` mesh: like the float kernels they
replace.

A quantized linear holds `aqt/qrhs/value` (`[in, out]`, or `[groups, group_size, out]` group-wise)
and `aqt/qrhs/scale` (`[1, 1, out]`, or `[groups, 1, 1, out]`). The kernel's rule from
`jaxthink.models.sharding` (e.g. q_proj `(None, 'model')`, o_proj `('model', None)`) is carried
over: the output axis of values and scales is split where the kernel's is; a split input axis
becomes a split of the groups (values and scales), or of the input rows per channel. A zero-point
layer's `zq/value` `[groups, group_size, out]`, `zq/scale` and `zq/zero` `[groups, out]` follow
the same rule (per channel has one group, so its input axis stays whole). Every other
parameter follows `jaxthink.models.sharding.param_spec`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxthink.models.sharding import param_spec


def quant_param_spec(path: Sequence[str], shape: Sequence[int], mesh: Mesh) -> P:
  """PartitionSpec of any parameter of a (possibly) quantized decoder."""
  path = tuple(path)
  if len(path) >= 3 and path[-2] == "zq":
    in_axis, out_axis = _kernel_axes(path[-3], shape[0] * (shape[1] if len(shape) == 3 else 1),
                                     shape[-1], mesh)
    axes = (in_axis, None, out_axis) if len(shape) == 3 else (in_axis, out_axis)
    return _divisible(axes, shape, mesh)
  if len(path) < 4 or path[-3:-1] != ("aqt", "qrhs"):
    return param_spec(path, shape, mesh)
  layer, leaf = path[-4], path[-1]
  grouped = (leaf == "value" and len(shape) == 3) or (leaf == "scale" and len(shape) == 4)
  in_rows = shape[0] * shape[1] if (leaf == "value" and grouped) else shape[0]
  in_axis, out_axis = _kernel_axes(layer, in_rows, shape[-1], mesh)
  if leaf == "value" and not grouped:
    axes = (in_axis, out_axis)
  elif leaf == "value":
    axes = (in_axis, None, out_axis)
  elif grouped:
    axes = (in_axis, None, None, out_axis)
  else:  # per-channel scale [1, 1, out]
    axes = (None, None, out_axis)
  return _divisible(axes, shape, mesh)


def _kernel_axes(layer: str, in_rows: int, out: int, mesh: Mesh) -> tuple:
  """(input axis, output axis) of the float kernel `[in_rows, out]` of `layer`."""
  axes = tuple(param_spec((layer, "kernel"), (in_rows, out), mesh))
  return axes + (None,) * (2 - len(axes))


def _divisible(axes: tuple, shape: Sequence[int], mesh: Mesh) -> P:
  # A group axis the mesh does not divide is replicated (as param_spec does for other axes).
  return P(*(a if a is None or shape[i] % mesh.shape[a] == 0 else None
             for i, a in enumerate(axes)))


def shard_params(params: Any, mesh: Mesh) -> Any:
  """Places every leaf of `params` with `quant_param_spec`."""
  return jax.device_put(params, param_shardings(params, mesh))


def param_shardings(abstract_params: Any, mesh: Mesh | None) -> Any:
  """The sharding of every leaf of an abstract param tree (single device without a mesh)."""
  flat = flax.traverse_util.flatten_dict(abstract_params)
  single = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # this process's own device
  return flax.traverse_util.unflatten_dict({
      path: single if mesh is None else NamedSharding(mesh, quant_param_spec(path, x.shape, mesh))
      for path, x in flat.items()})
