"""Quantize once per recipe: reuse the quantized params in memory within a run, and keep the
calibrated ones (GPTQ, AWQ, SmoothQuant) on disk (orbax, `save_quantized` layout) across runs of
the same model. Round to nearest is quicker to redo than to read back, so it is not stored.

A penalised twin or a control shares its recipe with the plain variant, so `evaluate` would
otherwise re-run GPTQ / AWQ for each of them. An entry is keyed by the sha256 of:
  model:       the float checkpoint's top-level files (files up to 16 MiB, e.g. config.json and
               the tokenizer, by content; larger ones, the weights, by name, size and mtime)
  dtype:       the compute dtype of the float params
  spec:        the full `QuantSpec`, calibration settings included, except `kv_bits` (the decode
               cache's setting: it doesn't change the params)
  calibration: the sha256 of the calibration token windows (so edited calibration text misses)
  code:        the source of `jaxthink.quant` and `jaxthink.models` and the jaxthink, jax, flax
               and aqtp versions

```
<cache dir>/<key>/   a save_quantized directory (params/, config.json, quant.json) + key.json
```
An entry is written to a temporary folder and renamed into place, so a killed run leaves no
half-written entry. Delete the folder to free the space; nothing else refers to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax

import jaxthink
from jaxthink.models.config import CheckpointError
from jaxthink.models.decoder import Decoder
from jaxthink.models.pretrained import Pretrained
from jaxthink.quant.aqt_linear import QuantRules
from jaxthink.quant.calibrate import calibration_data
from jaxthink.quant.checkpoint import load_quantized, save_quantized
from jaxthink.quant.pipeline import quantize
from jaxthink.quant.spec import QuantSpec

_HASHED_FILE_BYTES = 16 << 20
_CODE_PACKAGES = ("quant", "models")


def default_cache_dir(output_dir: str | Path) -> Path:
  """`<output_dir>/../.quant_cache`: shared by the runs kept side by side in one folder."""
  return Path(output_dir).expanduser().absolute().parent / ".quant_cache"


class QuantCache:
  """Quantized `(Decoder, params)` per recipe of one float model.

  Holds the last entry in memory (one quantized model, like a run without the cache) and, when
  `directory` is given and the run is a single process, every calibrated entry on disk.
  """

  def __init__(self, directory: str | Path | None):
    self.directory = None if directory is None else Path(directory).expanduser().absolute()
    self.quantize_calls = 0  # recipes actually quantized (not found in memory or on disk)
    self._last: tuple[str, Decoder, Any] | None = None

  def get(self, float_model: Pretrained, model_dir: str | Path, spec: QuantSpec, *,
          tokenizer: Any = None, mesh: jax.sharding.Mesh | None = None) -> tuple[Decoder, Any]:
    """`quantize(float_model.config, float_model.params, spec, tokenizer=tokenizer, mesh=mesh)`'s
    `(decoder, params)`, from memory, disk, or by quantizing (then stored)."""
    if QuantRules.from_spec(spec) is None:  # float weights: nothing to quantize or store
      model, params, _ = quantize(float_model.config, float_model.params, spec, mesh=mesh)
      return model, params
    data = calibration_data(tokenizer, spec.calibration) if tokenizer is not None else None
    dtype = float_model.params["embed_tokens"]["embedding"].dtype
    material = {"model": _model_identity(Path(model_dir)), "dtype": str(dtype),
                "spec": dataclasses.asdict(dataclasses.replace(spec, kv_bits=None)),
                "calibration": None if data is None else data.description["tokens_sha256"],
                "code": _code_identity()}
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]
    if self._last is not None and self._last[0] == key:
      return self._last[1:]
    self._last = None  # free the previous entry before making the next one
    entry = self._disk_entry(key) if spec.needs_calibration else None
    if entry is not None and entry.is_dir():
      try:
        loaded, _, _ = load_quantized(entry, mesh=mesh, tokenizer=False)
        self._last = (key, loaded.model, loaded.params)
        return self._last[1:]
      except CheckpointError:  # an entry from an older checkpoint format: replace it
        shutil.rmtree(entry, ignore_errors=True)
    model, params, report = quantize(float_model.config, float_model.params, spec,
                                     calibration_tokens=data, mesh=mesh)
    self.quantize_calls += 1
    if entry is not None:
      _write_entry(entry, float_model, spec, params, report, material)
    self._last = (key, model, params)
    return model, params

  def _disk_entry(self, key: str) -> Path | None:
    # Several processes would each write their own shards to a local folder: memory only then.
    if self.directory is None or jax.process_count() > 1:
      return None
    return self.directory / key


def _write_entry(entry: Path, float_model: Pretrained, spec: QuantSpec, params: Any,
                 report: dict[str, Any], material: dict[str, Any]) -> None:
  partial = entry.with_name(f"{entry.name}.partial-{os.getpid()}")
  shutil.rmtree(partial, ignore_errors=True)
  save_quantized(partial, float_model.config, spec, params, report)
  (partial / "key.json").write_text(json.dumps(material, indent=1, sort_keys=True) + "\n")
  try:
    partial.rename(entry)
  except OSError:  # another run stored the same entry first
    shutil.rmtree(partial, ignore_errors=True)


def _model_identity(directory: Path) -> dict[str, Any]:
  identity = {}
  for path in sorted(p for p in directory.iterdir() if p.is_file()):
    stat = path.stat()
    identity[path.name] = (hashlib.sha256(path.read_bytes()).hexdigest()
                           if stat.st_size <= _HASHED_FILE_BYTES else [stat.st_size,
                                                                       stat.st_mtime_ns])
  return identity


def _code_identity() -> dict[str, str]:
  root = Path(jaxthink.__file__).parent
  digest = hashlib.sha256()
  for package in _CODE_PACKAGES:
    for path in sorted((root / package).glob("*.py")):
      digest.update(f"{package}/{path.name}\n".encode() + path.read_bytes())
  versions = {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "flax", "aqtp")}
  return {"source_sha256": digest.hexdigest(), "jaxthink": jaxthink.__version__, **versions}
