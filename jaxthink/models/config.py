"""ModelConfig: the static description of a decoder, built from a Hugging Face `config.json`.

One config type serves the three supported families; the per-family differences are a few switches:

| family  | q/k/v bias | o bias         | q/k RMSNorm | head_dim            | rope            |
|---------|------------|----------------|-------------|---------------------|-----------------|
| qwen2   | yes        | no             | no          | hidden / heads      | default         |
| llama   | attention_bias (all four)   | no          | `head_dim` or h/n   | default, llama3 |
| qwen3   | attention_bias (all four)   | yes         | explicit `head_dim` | default         |
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("qwen2", "llama", "qwen3")


class UnsupportedModelError(ValueError):
  """The checkpoint uses an architecture or option jaxthink does not implement."""


class CheckpointError(ValueError):
  """The checkpoint directory is missing, incomplete or malformed."""


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
  """Llama 3.x frequency-dependent rope scaling (`rope_type: llama3`)."""

  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static, hashable description of one decoder model."""

  model_type: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float
  rope_theta: float
  rope_scaling: Llama3RopeScaling | None = None
  tie_word_embeddings: bool = False
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False
  max_position_embeddings: int = 32768
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int | None = None

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise UnsupportedModelError(
          f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads "
          f"({self.num_kv_heads}) for grouped-query attention.")

  @property
  def num_params(self) -> int:
    """Parameter count (embeddings included once when tied)."""
    h, d = self.hidden_size, self.head_dim
    attn = h * d * (self.num_heads * 2 + self.num_kv_heads * 2)
    if self.qkv_bias:
      attn += d * (self.num_heads + 2 * self.num_kv_heads)
    if self.o_bias:
      attn += h
    if self.qk_norm:
      attn += 2 * d
    mlp = 3 * h * self.intermediate_size + (2 * self.intermediate_size + h if self.mlp_bias else 0)
    layer = attn + mlp + 2 * h
    embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
    return self.num_layers * layer + embed + h

  def kv_cache_bytes_per_token(self, bytes_per_value: float = 2) -> float:
    return 2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_value

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    """Builds the config from a parsed HF `config.json` (transformers 4.x and 5.x layouts)."""
    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise UnsupportedModelError(
          f"model_type {model_type!r} is not supported; jaxthink implements {SUPPORTED_MODEL_TYPES}.")
    if d.get("hidden_act", "silu") != "silu":
      raise UnsupportedModelError(f"hidden_act {d['hidden_act']!r} is not supported (only 'silu').")
    if d.get("use_sliding_window", False):
      raise UnsupportedModelError(
          "use_sliding_window=true is not supported: jaxthink implements full attention only. "
          "Set use_sliding_window to false if the model was trained without it.")
    layer_types = d.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
      raise UnsupportedModelError(f"layer_types {sorted(set(layer_types))} are not supported "
                                  "(only 'full_attention').")
    rope_theta, rope_scaling = _rope(d)
    num_heads = d["num_attention_heads"]
    eos = d.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
    attention_bias = bool(d.get("attention_bias", False))
    return cls(
        model_type=model_type,
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=d.get("num_key_value_heads") or num_heads,
        head_dim=d.get("head_dim") or d["hidden_size"] // num_heads,
        rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        qkv_bias=True if model_type == "qwen2" else attention_bias,
        o_bias=False if model_type == "qwen2" else attention_bias,
        mlp_bias=bool(d.get("mlp_bias", False)) if model_type == "llama" else False,
        qk_norm=model_type == "qwen3",
        max_position_embeddings=d.get("max_position_embeddings", 32768),
        bos_token_id=d.get("bos_token_id"),
        eos_token_ids=eos_ids,
        pad_token_id=d.get("pad_token_id"),
    )

  @classmethod
  def from_pretrained(cls, path: str | Path) -> "ModelConfig":
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
      raise CheckpointError(f"{config_file} not found: a Hugging Face model directory needs a "
                            "config.json (download the full checkpoint, not only the weights).")
    try:
      d = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{config_file} is not valid JSON: {e}") from e
    try:
      return cls.from_hf_dict(d)
    except KeyError as e:
      raise CheckpointError(f"{config_file} lacks the required key {e.args[0]!r}.") from e

  def to_hf_dict(self) -> dict[str, Any]:
    """The `config.json` content transformers reads back into the same architecture."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
    if self.rope_scaling is not None:
      rope = {"rope_type": "llama3", "rope_theta": self.rope_theta,
              **dataclasses.asdict(self.rope_scaling)}
    d = {
        "model_type": self.model_type,
        "architectures": [{"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM",
                           "qwen3": "Qwen3ForCausalLM"}[self.model_type]],
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers,
        "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads,
        "head_dim": self.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": self.rms_norm_eps,
        "rope_parameters": rope,
        "tie_word_embeddings": self.tie_word_embeddings,
        "max_position_embeddings": self.max_position_embeddings,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0],
        "pad_token_id": self.pad_token_id,
    }
    if self.model_type != "qwen2":
      d["attention_bias"] = self.o_bias
    if self.model_type == "llama":
      d["mlp_bias"] = self.mlp_bias
    return d


def _rope(d: dict[str, Any]) -> tuple[float, Llama3RopeScaling | None]:
  # transformers 5 nests rope settings under `rope_parameters`; hub checkpoints use top-level keys.
  params = dict(d.get("rope_parameters") or {})
  scaling = d.get("rope_scaling") or {}
  params = {**scaling, **params}
  theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type == "default":
    return float(theta), None
  if rope_type == "llama3":
    return float(theta), Llama3RopeScaling(
        factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params["original_max_position_embeddings"]))
  raise UnsupportedModelError(
      f"rope type {rope_type!r} is not supported; jaxthink implements 'default' and 'llama3'.")
