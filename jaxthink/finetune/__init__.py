"""Low-rank adapters on frozen quantized weights, trained on step-annotated solutions."""

from jaxthink.finetune.adapters import (AdapterConfigError, AdapterRule, AdapterSpec, LoraRules,
                                        adapted, init_adapters, merge_adapters, split_adapters,
                                        with_adapters)
from jaxthink.finetune.steps import Step, StepFormat, StepSolution, synthetic_step_solutions
from jaxthink.finetune.train import TrainSpec, finetune

__all__ = ["AdapterConfigError", "AdapterRule", "AdapterSpec", "LoraRules", "adapted",
           "init_adapters", "merge_adapters", "split_adapters", "with_adapters", "Step", "StepFormat",
           "StepSolution", "synthetic_step_solutions", "TrainSpec", "finetune"]
