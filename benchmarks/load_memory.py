"""Peak host memory and time to load a ~0.5B-parameter bf16 checkpoint: jaxthink vs transformers.

Makes a random checkpoint with the Qwen2.5-0.5B / R1-Distill-Qwen shape family (written by a
separate process), then loads it in fresh processes and reads their peak RSS.
Target: jaxthink peak RSS <= 1.5x the checkpoint's bytes.

  python benchmarks/load_memory.py [--out /tmp/jaxthink_load_bench]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

CONFIG = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
              num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
              max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
              rope_theta=1000000.0, torch_dtype="bfloat16", architectures=["Qwen2ForCausalLM"])

WRITE = """
import json, sys, numpy as np, ml_dtypes, jax.numpy as jnp
from safetensors.numpy import save_file
from jaxthink.models import ModelConfig
from jaxthink.models.hf_io import hf_name, is_transposed, param_shapes
out, config = sys.argv[1], json.loads(sys.argv[2])
rng = np.random.default_rng(0)
tensors = {}
for path, s in param_shapes(ModelConfig.from_hf_dict(config)).items():
  shape = s.shape[::-1] if is_transposed(path) else s.shape
  tensors[hf_name(path)] = (rng.standard_normal(shape, np.float32) * 0.02).astype(ml_dtypes.bfloat16)
save_file(tensors, f"{out}/model.safetensors", metadata={"format": "pt"})
open(f"{out}/config.json", "w").write(json.dumps(config))
"""

MEASURE = """
import resource, sys, time
t0 = time.perf_counter()
{body}
seconds = time.perf_counter() - t0
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""

JAXTHINK = """
import jax, jax.numpy as jnp, jaxthink
m = jaxthink.load_pretrained(sys.argv[1], dtype=jnp.bfloat16, tokenizer=False)
jax.block_until_ready(m.params)
"""

HF = """
import torch, transformers
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
"""

BASELINE = {"jaxthink": "import jax, jax.numpy as jnp, jaxthink; jax.devices()",
            "transformers": "import torch, transformers"}


def _run(code: str, path: Path) -> tuple[float, int]:
  out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(path)], check=True,
                       capture_output=True, text=True).stdout.split()
  return float(out[-2]), int(out[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=Path, default=Path("/tmp/jaxthink_load_bench"))
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  if not (args.out / "model.safetensors").exists():
    subprocess.run([sys.executable, "-c", WRITE, str(args.out), json.dumps(CONFIG)], check=True)
  ckpt_bytes = (args.out / "model.safetensors").stat().st_size
  rows = {}
  for name, body in [("jaxthink", JAXTHINK), ("transformers", HF)]:
    seconds, peak = _run(MEASURE.format(body=body), args.out)
    _, base = _run(MEASURE.format(body=BASELINE[name]), args.out)
    rows[name] = dict(seconds=seconds, peak_rss=peak, import_rss=base)
  gib = 2**30
  print(f"checkpoint: {ckpt_bytes / gib:.2f} GiB bf16 ({ckpt_bytes / 2 / 1e6:.0f}M parameters)")
  print(f"{'loader':<14}{'time s':>8}{'peak RSS GiB':>14}{'RSS/ckpt':>10}{'(peak-import)/ckpt':>20}")
  for name, r in rows.items():
    print(f"{name:<14}{r['seconds']:>8.2f}{r['peak_rss'] / gib:>14.2f}"
          f"{r['peak_rss'] / ckpt_bytes:>10.2f}{(r['peak_rss'] - r['import_rss']) / ckpt_bytes:>20.2f}")
  j, h = rows["jaxthink"], rows["transformers"]
  print(json.dumps({"checkpoint_bytes": ckpt_bytes, "load_s": round(j["seconds"], 2),
                    "peak_rss_bytes": j["peak_rss"], "rss_ratio": round(j["peak_rss"] / ckpt_bytes, 3),
                    "hf_load_s": round(h["seconds"], 2), "hf_peak_rss_bytes": h["peak_rss"],
                    "hf_rss_ratio": round(h["peak_rss"] / ckpt_bytes, 3)}))


if __name__ == "__main__":
  main()
