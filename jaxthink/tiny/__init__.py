"""The embedded tiny reasoning model: its synthetic task, reflective solutions and tokenizer."""

from jaxthink.tiny.reflection import REFLECTIONS, Reflection, hardness
from jaxthink.tiny.task import (DIFFICULTIES, Difficulty, Example, Op, apply_op, generate_problems,
                                write_jsonl)
from jaxthink.tiny.tokenizer import CHAT_TEMPLATE, corpus_texts, marker_texts, train_tokenizer
