"""jaxthink: what post-training quantization does to reasoning LLMs, and a fix, in JAX/Flax."""

from jaxthink.models import (Decoder, ModelConfig, Pretrained, load_pretrained, reasoning_prompt,
                             save_pretrained)

__version__ = "0.1.0"
