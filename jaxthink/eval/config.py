"""`EvalConfig`: everything one evaluation run needs, validated before any model loads.

    model: {path: embedded | <HF dir>, dtype: bfloat16}
    variants:
      - {name: bf16}
      - {name: w4-rtn, quant: {scheme: w4a16, method: rtn}}
      - {name: w4-rtn+penalty, quant: {scheme: w4a16, method: rtn},
         penalty: {mode: constant, strength: 2.0}, compare_to: w4-rtn}
    benchmarks: [gsm8k, math500]
    sampling: {temperature: 0.6, top_p: 0.95, max_new_tokens: 32768, samples_per_problem: 1}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from jaxthink.config import ConfigError
from jaxthink.decode.mesh import MeshConfig
from jaxthink.models.tokenizer import DEFAULT_INSTRUCTION
from jaxthink.quant.spec import QuantSpec

EMBEDDED = "embedded"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
EMBEDDED_MODEL_DIR = PACKAGE_DIR / "tiny" / "model"
EMBEDDED_DATA_DIR = PACKAGE_DIR / "tiny" / "data"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """`path`: a local HF model directory, or `embedded` for the committed tiny model.
  `dtype`: parameter and compute dtype of the full-precision model."""

  path: str = EMBEDDED
  dtype: Literal["bfloat16", "float32"] = "bfloat16"

  @property
  def directory(self) -> Path:
    return EMBEDDED_MODEL_DIR if self.path == EMBEDDED else Path(self.path).expanduser()


@dataclasses.dataclass(frozen=True)
class PenaltySpec:
  """The logit penalty of a variant (applied to raw logits, before temperature).

  token_set: `markers` (the marker file's tokens) or `random_matched` (a control: as many random
    non-marker tokens, each matched in corpus frequency to a marker token, drawn with `seed`).
  strength: λ; `.inf` bans the tokens, a negative value boosts them (direction check).
  entropy_threshold: τ in nats, used by `entropy_gated`.
  markers: a marker file (one phrase per line); None uses jaxthink/data/markers.txt.
  """

  mode: Literal["off", "constant", "entropy_gated"] = "off"
  strength: float = 0.0
  entropy_threshold: float = 0.0
  token_set: Literal["markers", "random_matched"] = "markers"
  markers: str | None = None
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Variant:
  """One model configuration to evaluate.

  quant: quantize the full-precision model on the fly with this recipe (None: full precision).
  checkpoint: instead, load a `python -m jaxthink.quantize` output directory.
  compare_to: the variant relative changes are reported against (default: the first variant).
  """

  name: str
  quant: QuantSpec | None = None
  checkpoint: str | None = None
  penalty: PenaltySpec = PenaltySpec()
  compare_to: str | None = None

  @property
  def quantized(self) -> bool:
    return self.quant is not None or self.checkpoint is not None


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
  """Decoding settings; the defaults are the R1-distilled models' (model cards). temperature 0 is
  greedy. Each response's seed is derived from (seed, benchmark, problem, sample), so a resumed
  run draws the same tokens."""

  temperature: float = 0.6
  top_p: float = 0.95
  top_k: int = 0
  max_new_tokens: int = 32768
  samples_per_problem: int = 1
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class PromptSpec:
  """The user turn is `problem + "\\n" + instruction`, through the model's chat template."""

  instruction: str = DEFAULT_INSTRUCTION
  think: bool = True


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """One evaluation run.

  data_dir: a folder holding `<benchmark>/test.jsonl` (`embedded` for the tiny task's data);
    None reads the copy shipped with jaxthink (benchmarks it does not ship are downloaded).
  limit: the first `limit` problems of each benchmark (None: all).
  reference: co-decode the full-precision model with every quantized variant and record
    per-token KL(p_ref ‖ p_quant) and entropies.
  output_dir: the run directory; a re-run with the same config resumes there.
  tpu: the accelerator type the mesh is sized for (e.g. `v4-32`), checked by `jaxthink.sizing`;
    informational at run time.
  """

  model: ModelSpec
  variants: tuple[Variant, ...]
  benchmarks: tuple[str, ...] = ("math500",)
  data_dir: str | None = None
  limit: int | None = None
  prompt: PromptSpec = PromptSpec()
  sampling: SamplingSpec = SamplingSpec()
  batch_size: int = 8
  mesh: MeshConfig = MeshConfig()
  reference: bool = True
  output_dir: str = "runs/eval"
  tpu: str | None = None

  def __post_init__(self):
    names = [v.name for v in self.variants]
    if not names:
      raise ConfigError("variants: give at least one variant (e.g. `- {name: bf16}`).")
    if len(set(names)) != len(names):
      raise ConfigError(f"variants: names must be unique, got {names}.")
    for v in self.variants:
      if v.compare_to is not None and v.compare_to not in names:
        raise ConfigError(f"variants.{v.name}.compare_to: {v.compare_to!r} is not a variant; "
                          f"variants are {names}.")
      if v.quant is not None and v.checkpoint is not None:
        raise ConfigError(f"variants.{v.name}: give `quant` (quantize on the fly) or `checkpoint` "
                          "(load a quantized model), not both.")
    if self.batch_size < 1 or self.sampling.max_new_tokens < 1 or self.sampling.samples_per_problem < 1:
      raise ConfigError("batch_size, sampling.max_new_tokens and sampling.samples_per_problem must "
                        "be >= 1.")

  @property
  def data_directory(self) -> Path | None:
    if self.data_dir is None:
      return None
    return EMBEDDED_DATA_DIR if self.data_dir == EMBEDDED else Path(self.data_dir).expanduser()

  def check_files(self) -> None:
    """Every file the run reads exists: fails before any model loads."""
    from jaxthink.data.benchmarks import jsonl_path  # noqa: PLC0415 (keeps config import light)
    model_dir = self.model.directory
    if not (model_dir / "config.json").is_file():
      raise ConfigError(f"model.path: {model_dir} has no config.json; point it at a local Hugging "
                        "Face model directory (or `embedded`), e.g. one downloaded with "
                        f"`hf download <hub id> --local-dir {model_dir}`.")
    for name in self.benchmarks:
      try:
        jsonl_path(name, self.data_directory)
      except (ValueError, OSError) as e:
        raise ConfigError(f"benchmarks: {e}") from e
    for v in self.variants:
      if v.checkpoint is not None and not Path(v.checkpoint).expanduser().is_dir():
        raise ConfigError(f"variants.{v.name}.checkpoint: {v.checkpoint} is not a directory; "
                          "write one with `python -m jaxthink.quantize`.")
      if v.penalty.markers is not None and not Path(v.penalty.markers).expanduser().is_file():
        raise ConfigError(f"variants.{v.name}.penalty.markers: {v.penalty.markers} not found.")
      source = v.quant.calibration.source if v.quant is not None else None
      if source is not None and source != "gsm8k" and not Path(source).expanduser().is_file():
        raise ConfigError(f"variants.{v.name}.quant.calibration.source: {source} not found.")
