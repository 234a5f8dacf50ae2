"""Does a model fit a TPU slice? Weights, KV cache and prefill activations per chip, against HBM.

`check_fit(config, "v4-32", "w4a16", batch=64, prompt_len=512, max_new_tokens=32768)` returns a
`FitReport` (bytes per chip, capacity, `fits`, and what to change when it doesn't);
`fit_table(...)` renders the README's table of which model fits which slice with which scheme.

TPU accelerator types (`<generation>-<N>`, as `gcloud compute tpus tpu-vm create` takes them):

| generation          | N counts    | chips  | HBM per chip | examples                               |
|---------------------|-------------|--------|--------------|----------------------------------------|
| v4                  | TensorCores | N / 2  | 32 GiB       | v4-8 = 4 chips (1 host), v4-32 = 16    |
| v5p                 | TensorCores | N / 2  | 95 GiB       | v5p-8 = 4 chips (1 host)               |
| v5litepod (v5e)     | chips       | N      | 16 GiB       | v5litepod-8 = 8 chips (1 host)         |
| v6e (Trillium)      | chips       | N      | 32 GiB       | v6e-8 = 8 chips (1 host)               |

v4 and v5p chips have two TensorCores run as one "megacore" device, so JAX sees one device per chip
on every generation above, and the `('data', 'model')` mesh spans the chips.

What is counted, per chip, on a `('data', 'model')` mesh (`jaxthink.models.sharding`,
`jaxthink.decode.mesh`):
- weights: split over 'model' (attention heads, MLP hidden, vocabulary rows; a dimension 'model'
  does not divide stays replicated), replicated over 'data'. Float weights are bf16. A quantized
  scheme stores the decoder blocks' linear layers as 8- or 4-bit integers (3-bit values occupy int4
  storage: XLA has no 3-bit type) plus one float32 scale per (group of `group_size` input rows,
  output column), or per output column without groups, and a float32 zero point per group when
  asymmetric; embeddings, lm_head, norms and biases stay bf16.
- KV cache: `batch` rows padded to a multiple of 'data' and split over it, `prompt_len +
  max_new_tokens` slots each, kv heads split over 'model' when it divides them. bf16, or int8 / int4
  values plus a float32 scale per token and kv head (`jaxthink.models.kv_cache`).
- reference co-decoding (KL to the float model) adds the bf16 weights and a bf16 KV cache.
- prefill activations, the largest transient: logits in float32 for every prompt position (the
  decoder computes them all, then keeps the last) or one layer's attention scores (float32) and
  probabilities (bf16), whichever is larger.
The total must stay under `(1 - headroom)` of HBM; the headroom (default 10%) covers what is not
modelled (XLA scratch buffers, fragmentation, the per-step logits and token buffers).
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from jaxthink.models.config import ModelConfig

GiB = 1 << 30
FLOAT_BYTES = 2  # bf16 weights, cache and probabilities
SCALE_BYTES = 4  # float32 scales and zero points

# generation -> (units of N per chip, HBM GiB per chip, the valid N; None: multiples of 8)
_GENERATIONS = {
    "v4": (2, 32, None),
    "v5p": (2, 95, None),
    "v5litepod": (1, 16, (1, 4, 8, 16, 32, 64, 128, 256)),
    "v6e": (1, 32, (1, 4, 8, 16, 32, 64, 128, 256)),
}
_MAX_CORES = {"v4": 4096, "v5p": 12288}
_ALIASES = {"v5e": "v5litepod"}


class SizingError(ValueError):
  """A topology, scheme or run shape that cannot be sized; the message says the fix."""


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU slice: `name` is its accelerator type, e.g. `v4-32`."""

  name: str
  generation: str
  chips: int
  hbm_bytes_per_chip: int


def parse_topology(name: str) -> Topology:
  """The slice named by a Cloud TPU accelerator type (`v4-8`, `v4-32`, `v5litepod-8`, `v5p-8`,
  `v6e-8`; `v5e-N` is read as `v5litepod-N`)."""
  m = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip())
  generation = _ALIASES.get(m.group(1), m.group(1)) if m else None
  if generation not in _GENERATIONS:
    raise SizingError(f"TPU topology {name!r} is not understood; use an accelerator type "
                      f"<generation>-<N> with generation one of {sorted(_GENERATIONS)}, "
                      "e.g. v4-8, v4-32, v5litepod-8, v5p-8, v6e-8.")
  cores_per_chip, hbm_gib, sizes = _GENERATIONS[generation]
  n = int(m.group(2))
  if sizes is not None and n not in sizes:
    raise SizingError(f"{name}: {generation} slices have {list(sizes)} chips.")
  if sizes is None and (n < 8 or n % 8 or n > _MAX_CORES[generation]):
    raise SizingError(f"{name}: {generation}-N counts TensorCores (2 per chip) in multiples of 8, "
                      f"from {generation}-8 (4 chips, one host) to {generation}-"
                      f"{_MAX_CORES[generation]}.")
  return Topology(f"{generation}-{n}", generation, n // cores_per_chip, hbm_gib * GiB)


def larger_topologies(topology: Topology) -> list[Topology]:
  """The same generation's slices with more chips, smallest first (doubling)."""
  _, _, sizes = _GENERATIONS[topology.generation]
  n = int(topology.name.rsplit("-", 1)[1])
  counts = ([s for s in sizes if s > n] if sizes is not None else
            [n << k for k in range(1, 12) if n << k <= _MAX_CORES[topology.generation]])
  return [parse_topology(f"{topology.generation}-{c}") for c in counts]


@dataclasses.dataclass(frozen=True)
class MemoryScheme:
  """How weights and KV cache are stored; activation bits (w8a8, w4a4) don't change memory.

  Attributes:
    name: the scheme's name in configs, e.g. `w4a16` or `w4a4kv4`.
    weight_bits: 16 for bf16 weights, else 8, 4 or 3 for the decoder blocks' linear layers.
    group_size: input rows per scale, or None for one scale per output column.
    kv_bits: None for a bf16 KV cache, 8 or 4 for an integer one.
  """

  name: str
  weight_bits: int = 16
  group_size: int | None = None
  kv_bits: int | None = None

  def __post_init__(self):
    if self.weight_bits not in (16, 8, 4, 3):
      raise SizingError(f"scheme {self.name!r}: weight_bits {self.weight_bits} must be 16, 8, 4 or 3.")
    if self.kv_bits not in (None, 8, 4):
      raise SizingError(f"scheme {self.name!r}: kv_bits {self.kv_bits} must be None, 8 or 4.")
    if self.group_size is not None and self.group_size < 1:
      raise SizingError(f"scheme {self.name!r}: group_size must be positive (or None).")


_SCHEME_RE = re.compile(r"(?:bf16|w(?P<w>[348])a(?:16|8|4))(?:-?g(?P<g>\d+))?(?:-?kv(?P<kv>[48]))?")

# The schemes of the study grid, highest precision first.
STUDY_SCHEMES = ("bf16", "w8a16", "w4a16", "w3a16", "w8a8kv8", "w4a4kv4")


def parse_scheme(name: str | MemoryScheme) -> MemoryScheme:
  """The storage of a scheme named `bf16` or `w{8,4,3}a{16,8,4}`, optionally with a group size
  `-g64` and a KV cache `kv8` / `kv4` (e.g. `w4a16-g64`, `w4a4kv4`, `bf16-kv8`).

  Groups default to 128 input rows for weight-only 4- and 3-bit schemes (the studies' GPTQ / AWQ
  setting) and to one scale per output column otherwise.
  """
  if isinstance(name, MemoryScheme):
    return name
  m = _SCHEME_RE.fullmatch(name)
  if m is None or (name.startswith("bf16") and m["g"]):
    raise SizingError(f"scheme {name!r} is not understood; use bf16 or w<8|4|3>a<16|8|4>, with an "
                      "optional -g<group size> and kv8 / kv4, e.g. " + ", ".join(STUDY_SCHEMES) + ".")
  bits = int(m["w"]) if m["w"] else 16
  weight_only = name.startswith(f"w{bits}a16")
  group = int(m["g"]) if m["g"] else (128 if weight_only and bits < 8 else None)
  return MemoryScheme(name, bits, group if bits < 16 else None, int(m["kv"]) if m["kv"] else None)


def _split(n: int, model: int) -> int:
  """Shards of a dimension of size `n` over 'model' (1 when 'model' does not divide it)."""
  return model if n % model == 0 else 1


def _linear_bytes(n_in: int, n_out: int, scheme: MemoryScheme) -> float:
  if scheme.weight_bits == 16:
    return n_in * n_out * FLOAT_BYTES
  storage_bits = 8 if scheme.weight_bits == 8 else 4
  groups = 1 if scheme.group_size is None else math.ceil(n_in / scheme.group_size)
  scales = groups * n_out * SCALE_BYTES
  return n_in * n_out * storage_bits / 8 + scales


def weight_bytes_per_chip(config: ModelConfig, scheme: str | MemoryScheme = "bf16",
                          model: int = 1) -> float:
  """Bytes of the parameters one chip holds when 'model' has `model` devices."""
  s = parse_scheme(scheme)
  h, d, inter, vocab = config.hidden_size, config.head_dim, config.intermediate_size, config.vocab_size
  q, kv = config.num_heads * d, config.num_kv_heads * d
  # Column-parallel layers split their output, row-parallel ones their input.
  linears = (_linear_bytes(h, q, s) / _split(q, model)
             + 2 * _linear_bytes(h, kv, s) / _split(kv, model)
             + _linear_bytes(q, h, s) / _split(q, model)
             + 2 * _linear_bytes(h, inter, s) / _split(inter, model)
             + _linear_bytes(inter, h, s) / _split(inter, model))
  small = 2 * h + (2 * d if config.qk_norm else 0)  # norms, replicated
  if config.qkv_bias:
    small += q / _split(q, model) + 2 * kv / _split(kv, model)
  if config.o_bias:
    small += h
  if config.mlp_bias:
    small += 2 * inter / _split(inter, model) + h
  embeddings = vocab * h / _split(vocab, model) * (1 if config.tie_word_embeddings else 2)
  return config.num_layers * (linears + small * FLOAT_BYTES) + (embeddings + h) * FLOAT_BYTES


def kv_bytes_per_token(config: ModelConfig, kv_bits: int | None = None) -> float:
  """Cache bytes of one token of one sequence (all layers, keys and values, scales included)."""
  if kv_bits is None:
    return config.kv_cache_bytes_per_token(FLOAT_BYTES)
  scales = 2 * config.num_layers * config.num_kv_heads * SCALE_BYTES
  return config.kv_cache_bytes_per_token(kv_bits / 8) + scales


def prefill_activation_bytes(config: ModelConfig, rows: int, prompt_len: int, model: int = 1) -> float:
  """The largest transient of prefill on one chip holding `rows` sequences: float32 logits
  `[rows, prompt_len, vocab]` or one layer's scores + probabilities `[rows, heads, prompt, prompt]`."""
  logits = rows * prompt_len * config.vocab_size * 4 / _split(config.vocab_size, model)
  scores = rows * config.num_heads * prompt_len ** 2 * (4 + FLOAT_BYTES) / _split(config.num_heads, model)
  return max(logits, scores)


@dataclasses.dataclass(frozen=True)
class FitReport:
  """Per-chip memory of one run on one slice. Byte counts are per chip."""

  topology: Topology
  scheme: MemoryScheme
  data: int
  model: int
  batch: int
  prompt_len: int
  max_new_tokens: int
  reference: bool
  weight_bytes: float
  cache_bytes: float
  activation_bytes: float
  headroom: float
  suggestions: tuple[str, ...] = ()

  @property
  def total_bytes(self) -> float:
    return self.weight_bytes + self.cache_bytes + self.activation_bytes

  @property
  def capacity_bytes(self) -> int:
    return self.topology.hbm_bytes_per_chip

  @property
  def usable_bytes(self) -> float:
    return (1 - self.headroom) * self.capacity_bytes

  @property
  def fits(self) -> bool:
    return self.total_bytes <= self.usable_bytes

  def summary(self) -> str:
    g = lambda b: f"{b / GiB:.2f} GiB"
    lines = [
        f"{self.scheme.name} on {self.topology.name} ({self.topology.chips} chips), mesh "
        f"data={self.data} model={self.model}, batch {self.batch} x ({self.prompt_len} + "
        f"{self.max_new_tokens}) tokens{', with bf16 reference' if self.reference else ''}:",
        f"  weights {g(self.weight_bytes)} + KV cache {g(self.cache_bytes)} + prefill activations "
        f"{g(self.activation_bytes)} = {g(self.total_bytes)} per chip; usable "
        f"{g(self.usable_bytes)} of {g(self.capacity_bytes)} HBM ({self.headroom:.0%} headroom): "
        + ("fits." if self.fits else "does NOT fit."),
    ]
    if self.suggestions:
      lines.append("  To make it fit:")
      lines += [f"  - {s}" for s in self.suggestions]
    return "\n".join(lines)


def _estimate(config: ModelConfig, topology: Topology, scheme: MemoryScheme, batch: int,
              prompt_len: int, max_new_tokens: int, data: int, model: int, reference: bool,
              headroom: float) -> FitReport:
  rows = math.ceil(batch / data)  # the batch is padded to a multiple of 'data'
  kv_split = _split(config.num_kv_heads, model)
  tokens = rows * (prompt_len + max_new_tokens)
  cache = tokens * kv_bytes_per_token(config, scheme.kv_bits) / kv_split
  weights = weight_bytes_per_chip(config, scheme, model)
  if reference:
    cache += tokens * kv_bytes_per_token(config) / kv_split
    weights += weight_bytes_per_chip(config, "bf16", model)
  activations = prefill_activation_bytes(config, rows, prompt_len, model)
  return FitReport(topology, scheme, data, model, batch, prompt_len, max_new_tokens, reference,
                   weights, cache, activations, headroom)


def _check_args(topology: Topology, batch: int, prompt_len: int, max_new_tokens: int, data: int,
                model: int, headroom: float) -> None:
  for key, value in (("batch", batch), ("prompt_len", prompt_len), ("max_new_tokens", max_new_tokens),
                     ("model_parallel", model), ("data_parallel", data)):
    if not isinstance(value, int) or value < 1:
      raise SizingError(f"{key} must be a positive integer, got {value!r}.")
  if data * model > topology.chips:
    raise SizingError(f"mesh data={data} x model={model} needs {data * model} chips; "
                      f"{topology.name} has {topology.chips}.")
  if not 0 <= headroom < 1:
    raise SizingError(f"headroom {headroom} must be a fraction in [0, 1).")


def _data_axis(topology: Topology, model: int, data: int | None) -> int:
  if data is not None:
    return data
  if not isinstance(model, int) or model < 1 or topology.chips % model:
    raise SizingError(f"model_parallel={model!r} must be a positive divisor of the "
                      f"{topology.chips} chips of {topology.name} (or pass data_parallel).")
  return topology.chips // model


def _mesh_sizes(chips: int) -> list[int]:
  return [m for m in range(1, chips + 1) if chips % m == 0]


def best_mesh(config: ModelConfig, topology: str | Topology, scheme: str | MemoryScheme = "bf16",
              *, batch: int, prompt_len: int, max_new_tokens: int, reference: bool = False,
              headroom: float = 0.10) -> FitReport | None:
  """The fitting report with the least 'model' parallelism (data = chips / model) on the slice, or
  None when no mesh fits."""
  topo = topology if isinstance(topology, Topology) else parse_topology(topology)
  for model in _mesh_sizes(topo.chips):
    report = check_fit(config, topo, scheme, batch=batch, prompt_len=prompt_len,
                       max_new_tokens=max_new_tokens, model_parallel=model, reference=reference,
                       headroom=headroom, suggest=False)
    if report.fits:
      return report
  return None


def check_fit(config: ModelConfig, topology: str | Topology, scheme: str | MemoryScheme = "bf16",
              *, batch: int, prompt_len: int, max_new_tokens: int, model_parallel: int = 1,
              data_parallel: int | None = None, reference: bool = False, headroom: float = 0.10,
              suggest: bool = True) -> FitReport:
  """Per-chip memory of generating `batch` sequences of `prompt_len + max_new_tokens` tokens.

  Args:
    topology: an accelerator type (`v4-32`) or a `Topology`.
    scheme: a scheme name (`parse_scheme`) or a `MemoryScheme`.
    prompt_len: the padded prompt length the run compiles for (the generator pads to a power of two).
    model_parallel, data_parallel: the mesh; data defaults to the chips 'model' leaves.
    reference: the bf16 model is co-decoded beside the quantized one (KL statistics).
    headroom: fraction of HBM kept free for what is not modelled.
    suggest: when it doesn't fit, list changes that would make it fit.
  """
  topo = topology if isinstance(topology, Topology) else parse_topology(topology)
  s = parse_scheme(scheme)
  data = _data_axis(topo, model_parallel, data_parallel)
  _check_args(topo, batch, prompt_len, max_new_tokens, data, model_parallel, headroom)
  report = _estimate(config, topo, s, batch, prompt_len, max_new_tokens, data, model_parallel,
                     reference, headroom)
  if report.fits or not suggest:
    return report
  return dataclasses.replace(report, suggestions=tuple(_suggestions(config, report)))


def _suggestions(config: ModelConfig, r: FitReport) -> Iterable[str]:
  """What would make `r` fit, each checked with the same estimate."""
  kw = dict(batch=r.batch, prompt_len=r.prompt_len, max_new_tokens=r.max_new_tokens,
            reference=r.reference, headroom=r.headroom)
  mesh = best_mesh(config, r.topology, r.scheme, **kw)
  if mesh is not None and mesh.model != r.model:
    more = "more" if mesh.model > r.model else "less"
    yield (f"{more} 'model' parallelism: mesh data={mesh.data} model={mesh.model} on "
           f"{r.topology.name} needs {mesh.total_bytes / GiB:.2f} GiB per chip.")
  per_row = _estimate(config, r.topology, r.scheme, r.data, r.prompt_len, r.max_new_tokens, r.data,
                      r.model, r.reference, r.headroom)  # one row per chip
  fixed = per_row.weight_bytes
  rows = math.floor((r.usable_bytes - fixed) / (per_row.total_bytes - fixed))
  if 1 <= rows * r.data < r.batch:
    yield f"a smaller batch: at most {rows * r.data} (from {r.batch}) with this mesh."
  rows_now = math.ceil(r.batch / r.data)
  per_token = r.cache_bytes / (rows_now * (r.prompt_len + r.max_new_tokens))
  room = r.usable_bytes - r.weight_bytes - r.activation_bytes
  new_tokens = math.floor(room / (rows_now * per_token)) - r.prompt_len
  if 1 <= new_tokens < r.max_new_tokens:
    yield f"fewer new tokens: max_new_tokens at most {new_tokens} (from {r.max_new_tokens})."
  lighter = [fit for fit in (best_mesh(config, r.topology, n, **kw) for n in _lighter_schemes(r.scheme))
             if fit is not None]
  if lighter:
    yield (f"a lower-bit scheme or KV-cache quantization on {r.topology.name}: "
           + ", ".join(f"{fit.scheme.name} (model={fit.model})" for fit in lighter) + ".")
  for bigger in larger_topologies(r.topology):
    fit = best_mesh(config, bigger, r.scheme, **kw)
    if fit is not None:
      yield (f"a larger slice: {bigger.name} ({bigger.chips} chips) with mesh data={fit.data} "
             f"model={fit.model} ({fit.total_bytes / GiB:.2f} GiB per chip).")
      break


def _lighter_schemes(scheme: MemoryScheme) -> list[str]:
  """Study schemes and KV-cache variants of `scheme` that store less than it."""
  names = [n for n in STUDY_SCHEMES if parse_scheme(n).weight_bits <= scheme.weight_bits]
  if scheme.kv_bits is None:
    names += [f"{scheme.name}-kv8", f"{scheme.name}-kv4"]
  elif scheme.kv_bits == 8:
    names.append(re.sub(r"kv8$", "kv4", scheme.name))
  return [n for n in dict.fromkeys(names) if n != scheme.name]


# --- The study's models, from the values of their published config.json files ---

def _qwen2(hidden, inter, layers, heads, kv_heads, vocab, rope_theta, rms_eps, max_pos=131072,
           bos=151646, eos=151643):
  return {"model_type": "qwen2", "hidden_act": "silu", "hidden_size": hidden,
          "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
          "num_key_value_heads": kv_heads, "vocab_size": vocab, "rope_theta": rope_theta,
          "rms_norm_eps": rms_eps, "max_position_embeddings": max_pos, "tie_word_embeddings": False,
          "use_sliding_window": False, "bos_token_id": bos, "eos_token_id": eos}


def _llama(hidden, inter, layers, heads, kv_heads, rope_factor, tie, eos=128001):
  return {"model_type": "llama", "hidden_act": "silu", "hidden_size": hidden,
          "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
          "num_key_value_heads": kv_heads, "head_dim": hidden // heads, "vocab_size": 128256,
          "rope_theta": 500000.0, "rope_scaling": {
              "rope_type": "llama3", "factor": rope_factor, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
          "rms_norm_eps": 1e-5, "max_position_embeddings": 131072, "tie_word_embeddings": tie,
          "attention_bias": False, "mlp_bias": False, "bos_token_id": 128000, "eos_token_id": eos}


_LLAMA_INSTRUCT_EOS = [128001, 128008, 128009]
_QWEN3_8B = {"model_type": "qwen3", "hidden_act": "silu", "hidden_size": 4096,
             "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
             "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
             "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 40960,
             "tie_word_embeddings": False, "attention_bias": False, "use_sliding_window": False,
             "bos_token_id": 151643, "eos_token_id": 151645}

# Hub id -> architecture; configs may name these ids and be sized without downloading anything.
STUDY_MODELS: dict[str, ModelConfig] = {k: ModelConfig.from_hf_dict(v) for k, v in {
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": _qwen2(1536, 8960, 28, 12, 2, 151936, 10000.0, 1e-6),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": _qwen2(3584, 18944, 28, 28, 4, 152064, 10000.0, 1e-6),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": _qwen2(5120, 13824, 48, 40, 8, 152064, 1e6, 1e-5),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": _qwen2(5120, 27648, 64, 40, 8, 152064, 1e6, 1e-5),
    "Qwen/QwQ-32B": _qwen2(5120, 27648, 64, 40, 8, 152064, 1e6, 1e-5, max_pos=40960, bos=151643,
                           eos=151645),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": _llama(4096, 14336, 32, 32, 8, 8.0, False),
    "Qwen/Qwen3-8B": _QWEN3_8B,
    "meta-llama/Llama-3.2-3B": _llama(3072, 8192, 28, 24, 8, 32.0, True),
    "meta-llama/Llama-3.2-3B-Instruct": _llama(3072, 8192, 28, 24, 8, 32.0, True, _LLAMA_INSTRUCT_EOS),
    "meta-llama/Llama-3.1-8B": _llama(4096, 14336, 32, 32, 8, 8.0, False),
    "meta-llama/Llama-3.1-8B-Instruct": _llama(4096, 14336, 32, 32, 8, 8.0, False, _LLAMA_INSTRUCT_EOS),
}.items()}

# One row per architecture in the README table (the Instruct variants share their base's).
TABLE_MODELS = tuple(k for k in STUDY_MODELS if not k.endswith("-Instruct"))
TABLE_TOPOLOGIES = ("v4-8", "v4-32", "v5litepod-8", "v5p-8", "v6e-8")


def model_config(name_or_path: str | Path) -> ModelConfig:
  """The architecture of a local HF checkpoint directory, or of a study model by hub id."""
  path = Path(name_or_path)
  if path.is_dir():
    return ModelConfig.from_pretrained(path)
  if str(name_or_path) in STUDY_MODELS:
    return STUDY_MODELS[str(name_or_path)]
  raise SizingError(f"{name_or_path!r} is neither a local model directory nor a known hub id "
                    f"({', '.join(STUDY_MODELS)}); download its config.json and pass the directory.")


def fit_table(models: Sequence[str] | Mapping[str, ModelConfig] = TABLE_MODELS,
              topologies: Sequence[str] = TABLE_TOPOLOGIES, schemes: Sequence[str] = STUDY_SCHEMES,
              *, batch: int, prompt_len: int, max_new_tokens: int, reference: bool = False,
              headroom: float = 0.10) -> str:
  """Markdown table, one row per (model, slice), one column per scheme: a cell holds the least
  'model' parallelism of a mesh that fits (data = chips / model), or `-` when none does."""
  configs = models if isinstance(models, Mapping) else {m: model_config(m) for m in models}
  lines = ["| model | slice (chips) | " + " | ".join(schemes) + " |",
           "|---|---|" + "---:|" * len(schemes)]
  for name, config in configs.items():
    for i, topology in enumerate(topologies):
      cells = [name.rsplit("/", 1)[-1] if i == 0 else "",
               f"{topology} ({parse_topology(topology).chips})"]
      for scheme in schemes:
        fit = best_mesh(config, topology, scheme, batch=batch, prompt_len=prompt_len,
                        max_new_tokens=max_new_tokens, reference=reference, headroom=headroom)
        cells.append("-" if fit is None else str(fit.model))
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
