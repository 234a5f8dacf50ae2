"""Strict loading of typed configs from YAML: frozen dataclasses, checked before anything runs.

`load_config(EvalConfig, "configs/x.yaml", ["sampling.temperature=0"])` reads the file, applies
`--set`-style overrides, and builds the dataclass tree. Unknown keys, wrong types and bad choices
fail with the key's full name and the valid options. Fields declared with `path_field` that a YAML
file sets to a relative path are taken relative to that file's folder (so a config works from any
working directory); `--set` values stay relative to the working directory, as a shell user expects.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar

import yaml

T = TypeVar("T")
_PATH = "jaxthink.path"  # dataclass field metadata: the field is a path (value: non-path keywords)


class ConfigError(ValueError):
  """A config file or override is invalid; the message names the key and the fix."""


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
  """Builds the dataclass `cls` from plain data (as parsed from YAML), checking every key."""
  return _convert(cls, data, where or cls.__name__)


def path_field(default: Any = dataclasses.MISSING, keywords: tuple[str, ...] = ()) -> Any:
  """A dataclass field holding a file or folder path (no default: required); `keywords` are
  values that are not paths (e.g. `embedded`)."""
  return dataclasses.field(default=default, metadata={_PATH: keywords})


def load_config(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
  """Reads a YAML file (optionally composed from a base, see `read_yaml`) into `cls`; relative
  `path_field`s resolve against the folder of the file that sets them."""
  data = read_yaml(path, paths_of=cls)
  return from_dict(cls, apply_overrides(data, overrides), where="")


def read_yaml(path: str | Path, paths_of: type | None = None) -> dict[str, Any]:
  """Parses a YAML mapping. A top-level `base: other.yaml` (relative to this file) is read first
  and this file's keys are merged over it, recursively, so a config can be a small override.
  With `paths_of` (a dataclass), its relative `path_field`s in each file become absolute paths
  under that file's folder."""
  path = Path(path)
  if not path.is_file():
    raise ConfigError(f"config file {path} not found.")
  try:
    data = yaml.safe_load(path.read_text()) or {}
  except yaml.YAMLError as e:
    raise ConfigError(f"{path} is not valid YAML: {e}") from e
  if not isinstance(data, dict):
    raise ConfigError(f"{path} must hold a mapping of keys to values, not {type(data).__name__}.")
  base = data.pop("base", None)
  if paths_of is not None:
    data = _resolve_paths(paths_of, data, path.resolve().parent)
  if base is None:
    return data
  return merge(read_yaml(path.parent / base, paths_of), data)


def _resolve_paths(tp: Any, value: Any, folder: Path) -> Any:
  """`value` (raw YAML data for type `tp`) with relative `path_field`s joined to `folder`; builds
  new containers (YAML aliases share objects between keys)."""
  if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
    hints = typing.get_type_hints(tp)
    out = dict(value)
    for field in dataclasses.fields(tp):
      if field.name not in value:
        continue
      keywords = field.metadata.get(_PATH)
      item = value[field.name]
      if keywords is None:
        out[field.name] = _resolve_paths(hints[field.name], item, folder)
      elif (isinstance(item, str) and item not in keywords
            and not Path(item).expanduser().is_absolute()):
        out[field.name] = os.path.normpath(folder / item)
    return out
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin in (typing.Union, types.UnionType):
    for arg in args:
      if dataclasses.is_dataclass(arg):
        return _resolve_paths(arg, value, folder)
  if origin in (tuple, list, Sequence, typing.Sequence) and args and isinstance(value, list):
    return [_resolve_paths(args[0], v, folder) for v in value]
  return value


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
  """`update` over `base`, merging nested mappings key by key."""
  out = dict(base)
  for key, value in update.items():
    if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
      out[key] = merge(dict(out[key]), value)
    else:
      out[key] = value
  return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
  """Applies `key.sub=value` strings; values are parsed as YAML (`3`, `0.5`, `[a, b]`, `null`)."""
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep or not key:
      raise ConfigError(f"override {item!r} must look like key.sub=value.")
    value = yaml.safe_load(raw)
    *parents, leaf = key.split(".")
    update: dict[str, Any] = {leaf: value}
    for parent in reversed(parents):
      update = {parent: update}
    data = merge(data, update)
  return data


def _convert(tp: Any, value: Any, where: str) -> Any:
  origin = typing.get_origin(tp)
  if dataclasses.is_dataclass(tp):
    return _dataclass(tp, value, where)
  if origin in (typing.Union, types.UnionType):
    args = typing.get_args(tp)
    if value is None and type(None) in args:
      return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
      try:
        return _convert(arg, value, where)
      except ConfigError as e:
        errors.append(str(e))
    raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of "
                      f"{[getattr(a, '__name__', str(a)) for a in args]}.")
  if origin is Literal:
    choices = typing.get_args(tp)
    if value not in choices:
      raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}.")
    return value
  if origin in (tuple, list, Sequence, typing.Sequence):
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"{where}: expected a list, got {value!r}.")
    item_tp = typing.get_args(tp)[0] if typing.get_args(tp) else Any
    return tuple(_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
  if origin in (dict, Mapping, typing.Mapping):
    if not isinstance(value, Mapping):
      raise ConfigError(f"{where}: expected a mapping, got {value!r}.")
    _, value_tp = typing.get_args(tp) or (str, Any)
    return {str(k): _convert(value_tp, v, f"{where}.{k}") for k, v in value.items()}
  if tp is Any:
    return value
  if tp is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f"{where}: expected a number, got {value!r}.")
    return float(value)
  if tp in (int, str, bool):
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
      raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}.")
    return value
  if tp is Path:
    if not isinstance(value, (str, Path)):
      raise ConfigError(f"{where}: expected a path, got {value!r}.")
    return Path(value)
  raise TypeError(f"{where}: the config schema uses an unsupported type {tp!r}.")


def _dataclass(cls: Any, value: Any, where: str) -> Any:
  if isinstance(value, cls):
    return value
  if not isinstance(value, Mapping):
    raise ConfigError(f"{where}: expected a mapping of {cls.__name__} keys, got {value!r}.")
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  unknown = sorted(set(value) - set(fields))
  if unknown:
    raise ConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                      f"{', '.join(map(repr, unknown))}; valid keys are {sorted(fields)}.")
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for name, field in fields.items():
    key = f"{where}.{name}" if where else name
    if name in value:
      kwargs[name] = _convert(hints[name], value[name], key)
    elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
      raise ConfigError(f"{key} is required but missing.")
  try:
    return cls(**kwargs)
  except (ValueError, TypeError) as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"{where or cls.__name__}: {e}") from e
