"""jaxthink: what post-training quantization does to reasoning LLMs, and a fix, in JAX/Flax.

The top-level names load lazily, so `import jaxthink.grading` doesn't pull in JAX and transformers.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Decoder": "jaxthink.models",
    "ModelConfig": "jaxthink.models",
    "Pretrained": "jaxthink.models",
    "load_pretrained": "jaxthink.models",
    "reasoning_prompt": "jaxthink.models",
    "save_pretrained": "jaxthink.models",
    "generate": "jaxthink.decode",
    "quantize": "jaxthink.quant",
    "evaluate": "jaxthink.eval",
}


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'jaxthink' has no attribute {name!r}")


def __dir__():
  return sorted([*globals(), *_EXPORTS])
