"""Flax ports of HF decoder models (Qwen2 / R1-Distill-Qwen, Llama 3.x, Qwen3)."""

from jaxthink.models.config import CheckpointError, ModelConfig, UnsupportedModelError
from jaxthink.models.decoder import Decoder, positions_from_mask
from jaxthink.models.hf_io import init_params, load_params, save_pretrained
from jaxthink.models.kv_cache import KVCache, init_kv_cache
from jaxthink.models.pretrained import Pretrained, load_pretrained, sequence_logits
from jaxthink.models.tokenizer import DEFAULT_INSTRUCTION, load_tokenizer, reasoning_prompt
