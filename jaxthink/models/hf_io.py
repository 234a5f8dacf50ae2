"""Reading and writing Hugging Face safetensors checkpoints.

Loading goes tensor by tensor: each tensor is read from disk (only the slice a device needs when a
mesh is given), cast, and placed, so the float model is never held twice in host memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from jaxthink.models.config import CheckpointError, ModelConfig
from jaxthink.models.decoder import Decoder
from jaxthink.models.sharding import param_sharding

# Tensors HF checkpoints may carry that are recomputed here, not parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def hf_name(path: tuple[str, ...]) -> str:
  """`('layers_3', 'self_attn', 'q_proj', 'kernel')` -> `'model.layers.3.self_attn.q_proj.weight'`."""
  *modules, leaf = path
  modules = [m.replace("layers_", "layers.") if m.startswith("layers_") else m for m in modules]
  leaf = "bias" if leaf == "bias" else "weight"
  prefix = "" if modules[0] == "lm_head" else "model."
  return prefix + ".".join(modules + [leaf])


def is_transposed(path: tuple[str, ...]) -> bool:
  """HF linear weights are `[out, in]`; ours are `[in, out]`."""
  return path[-1] == "kernel"


def abstract_params(model: Decoder) -> Any:
  """Shapes and dtypes of `model`'s params (quantized leaves included), without allocating them."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  init = lambda: model.init(jax.random.key(0), tokens, tokens, tokens > -1)
  return jax.eval_shape(init)["params"]


def param_shapes(config: ModelConfig) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
  """Flat `{path: shape}` of the float decoder's parameters, without allocating them."""
  return flax.traverse_util.flatten_dict(abstract_params(Decoder(config)))


def checkpoint_files(path: str | Path) -> dict[str, Path]:
  """`{tensor name: file}` for a single-file or sharded safetensors checkpoint."""
  path = Path(path)
  index = path / "model.safetensors.index.json"
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise CheckpointError(f"{index} is malformed (expected JSON with a 'weight_map'): {e}") from e
    files = {name: path / file for name, file in weight_map.items()}
    for file in set(files.values()):
      if not file.is_file():
        raise CheckpointError(f"{index} names {file.name}, which is missing from {path}.")
    return files
  single = path / "model.safetensors"
  if not single.is_file():
    found = sorted(p.name for p in path.glob("*.bin")) if path.is_dir() else []
    hint = (f" Found {found}: convert PyTorch .bin weights to safetensors first "
            "(transformers: model.save_pretrained(dir, safe_serialization=True)).") if found else ""
    raise CheckpointError(f"no model.safetensors or model.safetensors.index.json in {path}.{hint}")
  return {name: single for name in _header_shapes(single)}


def _header_shapes(file: Path) -> dict[str, tuple[int, ...]]:
  """`{tensor name: shape}` from a safetensors file's header (no tensor data is read)."""
  try:
    with safe_open(file, framework="numpy") as f:
      return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
  except SafetensorError as e:
    raise CheckpointError(f"{file} is not a readable safetensors file ({e}): truncated or corrupt; "
                          "download it again.") from e


def check_checkpoint(path: str | Path, config: ModelConfig) -> dict[str, Path]:
  """`checkpoint_files(path)` after checking, from the safetensors headers only, that every file is
  whole and holds exactly the tensors (names and shapes) that `config` needs."""
  files = checkpoint_files(path)
  shapes = {}
  for file in sorted(set(files.values())):
    shapes.update(_header_shapes(file))
  expected = param_shapes(config)
  names = {hf_name(p): p for p in expected}
  missing = sorted(n for n in names if n not in files)
  if missing:
    raise CheckpointError(f"checkpoint {path} lacks tensors {missing[:5]}"
                          f"{' and more' if len(missing) > 5 else ''} that a {config.model_type} "
                          "model with this config.json needs.")
  unexpected = sorted(n for n in files if n not in names and not n.endswith(_IGNORED_SUFFIXES)
                      and not (config.tie_word_embeddings and n == "lm_head.weight"))
  if unexpected:
    raise CheckpointError(f"checkpoint {path} has tensors {unexpected[:5]} that a "
                          f"{config.model_type} model with this config.json does not use; "
                          "is config.json from the same model?")
  for name, p in names.items():
    disk_shape, shape = shapes[name], tuple(expected[p].shape)
    if (disk_shape[::-1] if is_transposed(p) else disk_shape) != shape:
      want = shape[::-1] if is_transposed(p) else shape
      raise CheckpointError(f"tensor {name} in {files[name].name} has shape {disk_shape}, but "
                            f"config.json implies {want}.")
  return files


def load_params(path: str | Path, config: ModelConfig, dtype=jnp.bfloat16,
                mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """Loads the float parameters of `config` from the HF checkpoint at `path`, cast to `dtype`.

  With a `mesh`, each parameter is created with its `sharding.param_spec` and each device reads only
  its slice from disk.
  """
  files = check_checkpoint(path, config)
  expected = param_shapes(config)
  names = {hf_name(p): p for p in expected}
  params = {}
  for name, p in names.items():
    params[p] = _load_tensor(files[name], name, p, expected[p].shape, dtype, mesh)
  return flax.traverse_util.unflatten_dict(params)


def _load_tensor(file: Path, name: str, path: tuple[str, ...], shape: tuple[int, ...], dtype,
                 mesh) -> jax.Array:
  """One tensor, shape already checked by `check_checkpoint`. One short-lived handle per read:
  the file's mapped pages are released as soon as it is read."""
  transposed = is_transposed(path)
  np_dtype = np.dtype(jnp.dtype(dtype))

  def read(index: tuple[slice, ...]) -> np.ndarray:
    with safe_open(file, framework="numpy") as f:
      tensor = f.get_slice(name)
      block = tensor[index[::-1]].T if transposed else tensor[index]
      return np.ascontiguousarray(block, dtype=np_dtype)

  return jax.make_array_from_callback(tuple(shape), param_sharding(path, shape, mesh), read)


def save_pretrained(out_dir: str | Path, config: ModelConfig, params: dict[str, Any],
                    dtype=jnp.bfloat16) -> Path:
  """Writes `config.json` and `model.safetensors` in HF layout (transformers loads them back)."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  np_dtype = np.dtype(jnp.dtype(dtype))
  tensors = {}
  for p, value in flax.traverse_util.flatten_dict(params).items():
    value = np.asarray(jax.device_get(value)).astype(np_dtype)
    tensors[hf_name(p)] = np.ascontiguousarray(value.T if is_transposed(p) else value)
  save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
  hf_config = {**config.to_hf_dict(), "dtype": str(np_dtype) if np_dtype != np.dtype(jnp.bfloat16)
               else "bfloat16"}
  (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
  return out_dir


def init_params(config: ModelConfig, seed: int = 0, dtype=jnp.float32) -> dict[str, Any]:
  """Random float parameters (for training from scratch and for synthetic benchmarks)."""
  model = Decoder(config, param_dtype=dtype)
  tokens = jnp.zeros((1, 1), jnp.int32)
  return model.init(jax.random.key(seed), tokens, tokens, tokens > -1)["params"]


