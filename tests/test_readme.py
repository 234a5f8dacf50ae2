"""The README's Python API example runs as written, on a small local model in place of the 1.5B
checkpoint (and fewer new tokens); GPTQ calibrates on the GSM8K train split shipped with jaxthink.
(`.ci/run` runs the README's demo command itself.)"""

import re
from pathlib import Path

from jaxthink.tiny.task import generate_problems
from jaxthink.tiny.tokenizer import corpus_texts, train_tokenizer
from hf_reference import make_hf_model

README = Path(__file__).resolve().parents[1] / "README.md"
CHECKPOINT = '"checkpoints/DeepSeek-R1-Distill-Qwen-1.5B"'
NEW_TOKENS = "max_new_tokens=4096"


def test_python_api_example_runs_as_written(tmp_path):
  code = re.search(r"## Python API\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
  assert code.count(CHECKPOINT) == 1 and code.count(NEW_TOKENS) == 1
  model_dir = tmp_path / "model"
  tok = train_tokenizer(corpus_texts(generate_problems("train", 200, 0, 1)), 512, model_dir)
  # Widths that groups of 128 (w4a16's default) divide.
  make_hf_model(model_dir, "qwen2", vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
  scope = {}
  exec(code.replace(CHECKPOINT, repr(str(model_dir))).replace(NEW_TOKENS, "max_new_tokens=12"),
       scope)
  result, report = scope["result"], scope["report"]
  assert result.tokens.shape == result.kl.shape == result.is_marker.shape == (1, 12)
  assert report["method"] == "gptq" and report["group_size"] == 128
  # Calibrated by default on the packaged GSM8K train solutions: 7473 documents, 128 x 512 tokens.
  assert report["calibration"]["source"] == "gsm8k"
  assert report["calibration"]["documents"] == 7473
  assert (report["calibration"]["num_samples"], report["calibration"]["seq_len"]) == (128, 512)
