"""Adapters on disk: orbax params beside `adapter.json`.

```
out/
  adapters/      orbax StandardCheckpointer: {layers_i: {self_attn|mlp: {name: {lora_a, lora_b}}}}
  adapter.json   {"format", "base_model", "quant" (QuantSpec or null: float base), "adapter"
                 (AdapterSpec: rank, alpha, rules), "step_format", "data", "train", "record"}
```
The base weights are not stored: an eval variant rebuilds them (`quant:` or `checkpoint:`) and
`load_adapters` refuses adapters trained on another base recipe.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from jaxthink.config import from_dict
from jaxthink.finetune.adapters import AdapterSpec
from jaxthink.finetune.steps import StepFormat
from jaxthink.quant.spec import QuantSpec

FORMAT = 1


class AdapterCheckpointError(ValueError):
  """An adapter directory is missing, incomplete, or does not fit the model it is loaded onto."""


@dataclasses.dataclass(frozen=True)
class AdapterMeta:
  base_model: str
  quant: QuantSpec | None
  adapter: AdapterSpec
  step_format: StepFormat
  extra: dict[str, Any]  # data, train settings, training record (informational)


def save_adapters(directory: str | Path, adapters: Any, *, base_model: str,
                  quant: QuantSpec | None, adapter: AdapterSpec, step_format: StepFormat,
                  overwrite: bool = False, **extra: Any) -> Path:
  """Writes `adapters` and their `adapter.json`; `extra` (data, train, record) is kept as given."""
  directory = Path(directory).expanduser().absolute()
  if (directory / "adapters").exists() and not overwrite:
    raise AdapterCheckpointError(f"{directory} already holds adapters; choose another output or "
                                 "set overwrite: true.")
  directory.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / "adapters", adapters, force=overwrite)
  checkpointer.wait_until_finished()
  meta = {"format": FORMAT, "base_model": base_model,
          "quant": None if quant is None else dataclasses.asdict(quant),
          "adapter": dataclasses.asdict(adapter), "step_format": dataclasses.asdict(step_format),
          **extra}
  (directory / "adapter.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
  return directory


def read_adapter_meta(directory: str | Path) -> AdapterMeta:
  directory = Path(directory).expanduser()
  path = directory / "adapter.json"
  if not path.is_file() or not (directory / "adapters").is_dir():
    raise AdapterCheckpointError(f"{directory} is not an adapter directory (it needs adapter.json "
                                 "and adapters/); write one with `python -m jaxthink.finetune`.")
  meta = json.loads(path.read_text())
  if meta.get("format") != FORMAT:
    raise AdapterCheckpointError(f"{path}: format {meta.get('format')!r} is not {FORMAT}.")
  quant = None if meta["quant"] is None else from_dict(QuantSpec, meta["quant"], "quant")
  known = {"format", "base_model", "quant", "adapter", "step_format"}
  return AdapterMeta(meta["base_model"], quant, from_dict(AdapterSpec, meta["adapter"], "adapter"),
                     from_dict(StepFormat, meta["step_format"], "step_format"),
                     {k: v for k, v in meta.items() if k not in known})


def load_adapters(directory: str | Path, quant: QuantSpec | None = None,
                  check_quant: bool = True) -> tuple[Any, AdapterMeta]:
  """`(adapters, meta)`; with `check_quant`, the base recipe they were trained on must be `quant`
  (the weights they correct)."""
  meta = check_base(directory, quant) if check_quant else read_adapter_meta(directory)
  adapters = ocp.StandardCheckpointer().restore(Path(directory).expanduser().absolute()
                                                / "adapters")
  return adapters, meta


def check_base(directory: str | Path, quant: QuantSpec | None) -> AdapterMeta:
  """The adapters' metadata, after checking they were trained on the base recipe `quant`."""
  meta = read_adapter_meta(directory)
  if _recipe(meta.quant) != _recipe(quant):
    raise AdapterCheckpointError(
        f"{directory}: the adapters were trained on base {describe_base(meta.quant)}, but the "
        f"variant loads them onto {describe_base(quant)}; use the recipe in its adapter.json.")
  return meta


def _recipe(spec: QuantSpec | None):
  """What decides the integers (calibration paths may differ between machines)."""
  if spec is None:
    return None
  return (spec.scheme, spec.method, spec.resolved_group_size(), spec.rules)


def describe_base(spec: QuantSpec | None) -> str:
  """"w3a16-rtn (group 64)", or "float weights"."""
  return "float weights" if spec is None else (
      f"{spec.scheme}-{spec.method} (group {spec.resolved_group_size()})")
