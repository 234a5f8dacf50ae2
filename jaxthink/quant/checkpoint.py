"""A quantized model on disk: orbax params + `config.json` + `quant.json` (+ tokenizer files).

```
out/
  params/        orbax StandardCheckpointer: int8 / int4 values, float32 scales, float leaves
  config.json    the architecture (HF layout, `ModelConfig.to_hf_dict`)
  quant.json     {"dtype", "spec": QuantSpec, "report": scheme, method, calibration hash, per-layer
                 errors, bytes, held-out KL}
  tokenizer*     copied from the float model's directory, when given
```
On several hosts every process writes its own shards into `params/`, so the directory must be on
storage all of them see (`check_shared_directory`); the small files are written by process 0.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxthink.config import from_dict
from jaxthink.models.config import CheckpointError, ModelConfig
from jaxthink.models.decoder import Decoder
from jaxthink.models.hf_io import abstract_params
from jaxthink.models.pretrained import Pretrained
from jaxthink.models.tokenizer import load_tokenizer
from jaxthink.quant.aqt_linear import QuantRules
from jaxthink.quant.sharding import param_shardings
from jaxthink.quant.spec import QuantSpec

FORMAT = 1
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja",
                    "generation_config.json")


def save_quantized(directory: str | Path, config: ModelConfig, spec: QuantSpec, params: Any,
                   report: dict[str, Any] | None = None, *, dtype=None,
                   tokenizer_dir: str | Path | None = None, overwrite: bool = False) -> Path:
  """Writes the quantized `params` of `config` (as made by `quantize(..., spec)`)."""
  directory = Path(directory).expanduser().absolute()
  if (directory / "params").exists() and not overwrite:
    raise CheckpointError(f"{directory} already holds a quantized checkpoint; choose another "
                          "output directory or pass overwrite=True.")
  directory.mkdir(parents=True, exist_ok=True)
  dtype = jnp.dtype(dtype or params["embed_tokens"]["embedding"].dtype)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / "params", params, force=overwrite)
  checkpointer.wait_until_finished()
  if jax.process_index() != 0:
    return directory
  (directory / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
  meta = {"format": FORMAT, "dtype": dtype.name, "spec": dataclasses.asdict(spec),
          "report": report or {}}
  (directory / "quant.json").write_text(json.dumps(meta, indent=2, default=_json) + "\n")
  if tokenizer_dir is not None:
    for name in _TOKENIZER_FILES:
      if (Path(tokenizer_dir) / name).is_file():
        shutil.copy(Path(tokenizer_dir) / name, directory / name)
  return directory


def check_shared_directory(directory: str | Path) -> None:
  """With several processes (hosts): every one sees what process 0 writes into `directory`, else
  a `CheckpointError` (a checkpoint split over the hosts' own disks would load nowhere)."""
  if jax.process_count() == 1:
    return
  directory = Path(directory).expanduser().absolute()
  name = int(multihost_utils.broadcast_one_to_all(np.random.randint(0, 2**31 - 1, dtype=np.int32)))
  probe = directory / f".jaxthink-shared-probe-{name}"
  if jax.process_index() == 0:
    directory.mkdir(parents=True, exist_ok=True)
    probe.touch()
  multihost_utils.sync_global_devices("jaxthink: shared directory probe written")
  seen = np.asarray(multihost_utils.process_allgather(np.asarray(probe.exists())))
  multihost_utils.sync_global_devices("jaxthink: shared directory probe read")
  if jax.process_index() == 0:
    probe.unlink()
  if not seen.all():
    blind = [i for i, s in enumerate(seen.tolist()) if not s]
    raise CheckpointError(
        f"{directory} is not one storage for all {jax.process_count()} processes: processes "
        f"{blind} do not see what process 0 writes there (each host's own disk?). Every host "
        "writes its shards into the checkpoint, so give an output path that all hosts mount, "
        "e.g. a GCS bucket mounted with gcsfuse at the same path on every worker, or an NFS / "
        "Filestore share.")


def read_quantized_meta(directory: str | Path) -> tuple[QuantSpec, ModelConfig, dict[str, Any]]:
  """`(spec, config, quant.json)` of a `save_quantized` directory, without reading its params."""
  directory = Path(directory).expanduser().absolute()
  meta_file = directory / "quant.json"
  if not meta_file.is_file() or not (directory / "params").is_dir():
    raise CheckpointError(f"{directory} is not a quantized checkpoint (quant.json and params/ "
                          "expected, as written by python -m jaxthink.quantize).")
  meta = json.loads(meta_file.read_text())
  if meta.get("format") != FORMAT:
    raise CheckpointError(f"{meta_file} has format {meta.get('format')!r}; this jaxthink reads "
                          f"format {FORMAT}.")
  # Checkpoints written before zero-point grids existed are symmetric.
  spec = from_dict(QuantSpec, {"symmetric": True, **meta["spec"]})
  return spec, ModelConfig.from_pretrained(directory), meta


def load_quantized(directory: str | Path, mesh: jax.sharding.Mesh | None = None,
                   tokenizer: bool = True) -> tuple[Pretrained, QuantSpec, dict[str, Any]]:
  """Restores a `save_quantized` directory: `(Pretrained(config, decoder, params, tokenizer),
  spec, report)`; with a `mesh` the params are placed sharded like their float kernels."""
  directory = Path(directory).expanduser().absolute()
  spec, config, meta = read_quantized_meta(directory)
  dtype = jnp.dtype(meta["dtype"])
  model = Decoder(config, dtype=dtype, param_dtype=dtype, quant=QuantRules.from_spec(spec))
  abstract = abstract_params(model)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, param_shardings(abstract, mesh))
  params = ocp.StandardCheckpointer().restore(directory / "params", target)
  tok = load_tokenizer(directory) if tokenizer else None
  return Pretrained(config, model, params, tok), spec, meta.get("report", {})


def _json(value: Any) -> Any:
  if hasattr(value, "item"):
    return value.item()
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"cannot write {type(value).__name__} to JSON")
