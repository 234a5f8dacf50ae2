"""The embedded tiny reasoning model: its synthetic task and tokenizer (training comes later)."""

from jaxthink.tiny.task import (DIFFICULTIES, Difficulty, Example, Op, apply_op, generate_problems,
                                write_jsonl)
from jaxthink.tiny.tokenizer import CHAT_TEMPLATE, corpus_texts, marker_texts, train_tokenizer
