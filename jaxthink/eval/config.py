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

from jaxthink.config import ConfigError, path_field
from jaxthink.decode.mesh import MeshConfig
from jaxthink.eval.variants import expand_strength_grids, resolve_control_sources
from jaxthink.models.tokenizer import DEFAULT_INSTRUCTION
from jaxthink.quant.spec import CALIBRATION_KEYWORDS, QuantSpec

EMBEDDED = "embedded"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
EMBEDDED_MODEL_DIR = PACKAGE_DIR / "tiny" / "model"
EMBEDDED_DATA_DIR = PACKAGE_DIR / "tiny" / "data"
# The committed models by keyword, each a (model directory, task data directory): `embedded`, the
# small tiny model; `organism`, the model organism of reflection (`jaxthink.tiny.reflection`).
COMMITTED = {EMBEDDED: (EMBEDDED_MODEL_DIR, EMBEDDED_DATA_DIR),
             "organism": (PACKAGE_DIR / "tiny" / "organism" / "model",
                          PACKAGE_DIR / "tiny" / "organism" / "data")}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """`path`: a local HF model directory, or a committed model (`embedded`: the tiny model).
  `dtype`: parameter and compute dtype of the full-precision model."""

  path: str = path_field(EMBEDDED, keywords=tuple(COMMITTED))
  dtype: Literal["bfloat16", "float32"] = "bfloat16"

  @property
  def directory(self) -> Path:
    if self.path in COMMITTED:
      return COMMITTED[self.path][0]
    return Path(self.path).expanduser()


@dataclasses.dataclass(frozen=True)
class PenaltySpec:
  """The logit penalty of a variant (applied to raw logits, before temperature).

  token_set: `markers` (the marker file's single-token spellings) or a control set chosen from
    the token-level run `source` (jaxthink.eval.controls): `high_kl` / `low_kl` (highest / lowest
    mean KL over tokens sampled >= `min_count` times), `random_neither` (random such tokens in
    neither list), `random_matched` (each marker token matched in frequency in the generated text).
  strength: λ; `.inf` bans the tokens, a negative value boosts them (direction check). A list
    (`[0.5, 1.0, 2.0]`) expands into one variant per value, named `<name>@<λ>`.
  entropy_threshold: τ in nats, used by `entropy_gated`.
  markers: a marker file (one phrase per line); None uses jaxthink/data/markers.txt.
  source: the unpenalised variant a control set is chosen from; None: the one with the same model.
  set_size: tokens in a high_kl / low_kl / random_neither set; None: as many as the marker tokens.
  min_count: how often a token must be sampled in `source` to be ranked by mean KL (study: 50).
  seed: draws of the random control sets.
  """

  mode: Literal["off", "constant", "entropy_gated"] = "off"
  strength: float | tuple[float, ...] = 0.0
  entropy_threshold: float = 0.0
  token_set: Literal["markers", "high_kl", "low_kl", "random_neither", "random_matched"] = "markers"
  markers: str | None = path_field(None)
  source: str | None = None
  set_size: int | None = None
  min_count: int = 50
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Variant:
  """One model configuration to evaluate.

  quant: quantize the full-precision model on the fly with this recipe (None: full precision).
  checkpoint: instead, load a `python -m jaxthink.quantize` output directory.
  adapter: low-rank adapters from `python -m jaxthink.finetune` added on top of the variant's
    (quantized or float) weights; they must have been trained on the same recipe.
  compare_to: the variant relative changes are reported against (default: the first variant).
  strength_grid: set by a λ grid (`penalty.strength: [...]`): the grid's name, shared by its twins.
  """

  name: str
  quant: QuantSpec | None = None
  checkpoint: str | None = path_field(None)
  adapter: str | None = path_field(None)
  penalty: PenaltySpec = PenaltySpec()
  compare_to: str | None = None
  strength_grid: str | None = None

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

  def __post_init__(self):
    if self.temperature < 0:
      raise ConfigError(f"sampling.temperature: {self.temperature} must be >= 0 (0 is greedy).")
    if not 0 < self.top_p <= 1:
      raise ConfigError(f"sampling.top_p: {self.top_p} must be in (0, 1] (1 keeps every token).")
    if self.top_k < 0:
      raise ConfigError(f"sampling.top_k: {self.top_k} must be >= 0 (0 keeps every token).")
    for name in ("max_new_tokens", "samples_per_problem"):
      if getattr(self, name) < 1:
        raise ConfigError(f"sampling.{name}: {getattr(self, name)} must be >= 1.")


@dataclasses.dataclass(frozen=True)
class PromptSpec:
  """The user turn is `problem + "\\n" + instruction`, through the model's chat template."""

  instruction: str = DEFAULT_INSTRUCTION
  think: bool = True


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """One evaluation run.

  data_dir: a folder holding `<benchmark>/test.jsonl` (`embedded`: the committed tiny model's task
    data);
    None reads the copy shipped with jaxthink (benchmarks it does not ship are downloaded).
  limit: the first `limit` problems of each benchmark (None: all).
  batch_size: decode slots of the request engine (`jaxthink.decode.Engine`): a variant's
    problems x samples go through one queue, a finished response's slot taking the next request.
  reference: record per-token KL(p_ref ‖ p_quant) and the full-precision model's entropies for
    every quantized variant: `score` (or true) by a teacher-forced pass of both models over each
    batch of finished responses (the faster), `codecode` by running the full-precision model
    inside every decode step; false: not at all.
  output_dir: the run directory; a re-run with the same config resumes there (see
    `jaxthink.eval.run_dir`). Relative to the working directory; every other path in a config
    file is relative to that file.
  tpu: the accelerator type the mesh is sized for (e.g. `v4-32`), checked by `jaxthink.sizing`;
    informational at run time.
  """

  model: ModelSpec
  variants: tuple[Variant, ...]
  benchmarks: tuple[str, ...] = ("math500",)
  data_dir: str | None = path_field(None, keywords=tuple(COMMITTED))
  limit: int | None = None
  prompt: PromptSpec = PromptSpec()
  sampling: SamplingSpec = SamplingSpec()
  batch_size: int = 8
  mesh: MeshConfig = MeshConfig()
  reference: bool | Literal["score", "codecode"] = True
  output_dir: str = "runs/eval"
  tpu: str | None = None

  def __post_init__(self):
    object.__setattr__(self, "variants", expand_strength_grids(self.variants))
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
    object.__setattr__(self, "variants", resolve_control_sources(self.variants, self.reference))
    if self.batch_size < 1:
      raise ConfigError(f"batch_size: {self.batch_size} must be >= 1.")
    if self.limit is not None and self.limit < 1:
      raise ConfigError(f"limit: {self.limit} must be >= 1 (the first `limit` problems of each "
                        "benchmark), or null for all of them.")

  @property
  def data_directory(self) -> Path | None:
    if self.data_dir is None:
      return None
    if self.data_dir in COMMITTED:
      return COMMITTED[self.data_dir][1]
    return Path(self.data_dir).expanduser()

  def quant_spec(self, variant: Variant) -> QuantSpec | None:
    """The variant's on-the-fly recipe; GSM8K calibration and self traces read the run's
    data_dir unless the recipe names its own."""
    spec = variant.quant
    if (spec is None or spec.calibration.source not in CALIBRATION_KEYWORDS
        or spec.calibration.data_dir is not None):
      return spec
    return dataclasses.replace(spec, calibration=dataclasses.replace(
        spec.calibration, data_dir=str(self.data_directory)))

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
      if v.adapter is not None:
        from jaxthink.finetune.checkpoint import check_base, read_adapter_meta  # noqa: PLC0415
        try:  # a checkpoint variant's recipe is in its quant.json: checked when it loads
          if v.checkpoint is None:
            check_base(v.adapter, v.quant)
          else:
            read_adapter_meta(v.adapter)
        except ValueError as e:
          raise ConfigError(f"variants.{v.name}.adapter: {e}") from e
      if v.penalty.markers is not None and not Path(v.penalty.markers).expanduser().is_file():
        raise ConfigError(f"variants.{v.name}.penalty.markers: {v.penalty.markers} not found.")
      source = v.quant.calibration.source if v.quant is not None else None
      if (source is not None and source not in CALIBRATION_KEYWORDS
          and not Path(source).expanduser().is_file()):
        raise ConfigError(f"variants.{v.name}.quant.calibration.source: {source} not found.")
