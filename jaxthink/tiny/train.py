"""Trains a committed tiny reasoning model from scratch on the synthetic task, on CPU.

  python -m jaxthink.tiny.train --preset embedded   # the committed tiny model
  python -m jaxthink.tiny.train                     # the model organism of reflection

Every TrainConfig field is also a flag (`--steps 500`), overriding the preset.

Reproducible from `--seed`: the same data, tokenizer, initialisation and batch order. The result is
an ordinary HF directory (config.json, model.safetensors, tokenizer files) written by the
project's own writer, so it loads in jaxthink and in transformers alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from jaxthink.eval.config import COMMITTED
from jaxthink.models import Decoder, ModelConfig, init_params, reasoning_prompt, save_pretrained
from jaxthink.models.decoder import positions_from_mask
from jaxthink.tiny.reflection import REFLECTIONS
from jaxthink.tiny.task import generate_problems, write_jsonl
from jaxthink.tiny.tokenizer import corpus_texts, train_tokenizer


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  seed: int = 0
  difficulty: int = 2
  # How solutions hesitate and re-check: a name in jaxthink.tiny.reflection.REFLECTIONS, or "none".
  reflection: str = "organism"
  train_problems: int = 40000
  vocab_size: int = 1024
  hidden_size: int = 256
  intermediate_size: int = 768
  num_layers: int = 4
  num_heads: int = 8
  num_kv_heads: int = 2
  max_len: int = 384
  batch_size: int = 16
  steps: int = 3000
  test_problems: int = 200
  calibration_problems: int = 400
  peak_lr: float = 3e-3
  warmup_steps: int = 150
  weight_decay: float = 0.01

  def __post_init__(self):
    if self.reflection != "none" and self.reflection not in REFLECTIONS:
      raise ValueError(f"unknown reflection {self.reflection!r}; use 'none' or one of "
                       f"{sorted(REFLECTIONS)}")


# The committed models (`jaxthink.eval.config.COMMITTED`, written where they are committed):
# `embedded`, the small model (difficulty 1, one self-check at most); `organism`, the defaults, a
# model organism of reflection (difficulty 2, reflective solutions).
PRESETS = {
    "organism": TrainConfig(),
    "embedded": TrainConfig(difficulty=1, reflection="none", train_problems=20000, hidden_size=192,
                            intermediate_size=512, num_layers=3, num_heads=6, max_len=256,
                            steps=2000),
}


def encode(tokenizer, examples, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded `[n, max_len]` token ids and a mask of the tokens the loss covers (the answer).

  The prompt is exactly what evaluation feeds the model (chat template, instruction, `<think>`
  opened), so training and evaluation see the same text.
  """
  tokens = np.full((len(examples), max_len), tokenizer.pad_token_id, np.int32)
  loss_mask = np.zeros((len(examples), max_len), bool)
  for i, ex in enumerate(examples):
    prompt = tokenizer.encode(reasoning_prompt(tokenizer, ex.problem), add_special_tokens=False)
    completion = ex.solution.removeprefix("<think>\n")
    answer = tokenizer.encode(completion, add_special_tokens=False) + [tokenizer.eos_token_id]
    ids = (prompt + answer)[:max_len]
    tokens[i, :len(ids)] = ids
    loss_mask[i, len(prompt):len(ids)] = True
  return tokens, loss_mask


def length_bucketed_batches(token_mask: np.ndarray, batch_size: int, steps: int,
                            rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
  """`steps` batches `(row indices, padded width)` of similar-length rows, in random order.

  Padding each batch only to its own longest row (rounded up to 32, to bound recompiles) saves
  about a third of the compute on this task.
  """
  lengths = token_mask.sum(1) + 1  # + the final eos, which equals pad here
  batches = []
  while len(batches) < steps:
    order = np.argsort(lengths + rng.random(len(lengths)) * 16, kind="stable")
    chunks = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    batches += [chunks[i] for i in rng.permutation(len(chunks))]
  widths = [min(int(-(-lengths[b].max() // 32) * 32), token_mask.shape[1]) for b in batches[:steps]]
  return list(zip(batches[:steps], widths))


def model_config(cfg: TrainConfig, tokenizer) -> ModelConfig:
  return ModelConfig(
      model_type="qwen2", vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
      intermediate_size=cfg.intermediate_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
      num_kv_heads=cfg.num_kv_heads, head_dim=cfg.hidden_size // cfg.num_heads, rms_norm_eps=1e-6,
      rope_theta=10000.0, tie_word_embeddings=True, qkv_bias=True,
      max_position_embeddings=2048, eos_token_ids=(tokenizer.eos_token_id,),
      pad_token_id=tokenizer.pad_token_id)


def loss_fn(params, model: Decoder, tokens, loss_mask):
  """Mean next-token cross-entropy over the answer tokens."""
  token_mask = tokens != model.config.pad_token_id
  token_mask = token_mask | loss_mask  # eos == pad for the tiny tokenizer: keep answer eos
  logits, _ = model.apply({"params": params}, tokens, positions_from_mask(token_mask), token_mask)
  targets, weights = tokens[:, 1:], loss_mask[:, 1:].astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], targets)
  return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2, 3))
def train_step(model, optimizer, params, opt_state, tokens, loss_mask):
  loss, grads = jax.value_and_grad(loss_fn)(params, model, tokens, loss_mask)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def train_problems(cfg: TrainConfig, n: int):
  """The first `n` problems of the train split, with solutions as the model learns them."""
  return generate_problems("train", n, cfg.seed, cfg.difficulty,
                           reflection=REFLECTIONS.get(cfg.reflection))


def train(cfg: TrainConfig, out_dir: Path) -> dict:
  examples = train_problems(cfg, cfg.train_problems)
  out_dir.mkdir(parents=True, exist_ok=True)
  tokenizer = train_tokenizer(corpus_texts(examples), cfg.vocab_size, out_dir)
  tokens, loss_mask = encode(tokenizer, examples, cfg.max_len)
  config = model_config(cfg, tokenizer)
  model = Decoder(config)
  params = init_params(config, seed=cfg.seed)
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.peak_lr, cfg.warmup_steps, cfg.steps,
                                                cfg.peak_lr * 0.02)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.adamw(schedule, b2=0.98, weight_decay=cfg.weight_decay))
  opt_state = optimizer.init(params)
  batches = length_bucketed_batches(tokens != tokenizer.pad_token_id, cfg.batch_size, cfg.steps,
                                    np.random.default_rng(cfg.seed))
  start, losses = time.perf_counter(), []
  bar = tqdm(batches, desc="train", unit="step")
  for step, (idx, width) in enumerate(bar):
    params, opt_state, loss = train_step(model, optimizer, params, opt_state,
                                         jnp.asarray(tokens[idx, :width]),
                                         jnp.asarray(loss_mask[idx, :width]))
    if step % 50 == 0 or step == cfg.steps - 1:
      losses.append((step, float(loss)))
      bar.set_postfix(loss=f"{float(loss):.3f}")
  save_pretrained(out_dir, config, params, dtype=jnp.bfloat16)
  tokenizer.save_pretrained(out_dir)
  log = {"train_config": dataclasses.asdict(cfg), "num_params": config.num_params,
         "seconds": round(time.perf_counter() - start, 1), "losses": losses}
  (out_dir / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
  return log


def write_task_data(cfg: TrainConfig, data_dir: Path) -> None:
  """The held-out test split as the `tiny` benchmark (`<data_dir>/tiny/test.jsonl`; for a
  reflective model, plain reference solutions: the steps a solution needs), and calibration text
  from the train split (`<data_dir>/calibration.jsonl`, field `text`), whose problems come after
  the ones trained on."""
  write_jsonl(data_dir / "tiny" / "test.jsonl",
              generate_problems("test", cfg.test_problems, cfg.seed, cfg.difficulty,
                                check_fraction=0.0 if cfg.reflection != "none" else 0.3))
  extra = train_problems(cfg, cfg.train_problems + cfg.calibration_problems)[cfg.train_problems:]
  with (data_dir / "calibration.jsonl").open("w", encoding="utf-8") as f:
    for ex in extra:
      f.write(json.dumps({"text": f"{ex.problem}\n{ex.solution}"}) + "\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="organism")
  parser.add_argument("--out", type=Path, help="model directory (default: the preset's)")
  parser.add_argument("--data-out", type=Path, help="task data directory (default: the preset's)")
  for field in dataclasses.fields(TrainConfig):
    flag = f"--{field.name.replace('_', '-')}"
    if isinstance(field.default, bool):
      parser.add_argument(flag, action=argparse.BooleanOptionalAction)
    else:
      parser.add_argument(flag, type=type(field.default))
  args = parser.parse_args()
  cfg = dataclasses.replace(PRESETS[args.preset], **{
      f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
      if getattr(args, f.name) is not None})
  model_dir, data_dir = COMMITTED[args.preset]
  write_task_data(cfg, args.data_out or data_dir)
  log = train(cfg, args.out or model_dir)
  print(f"trained {log['num_params'] / 1e6:.2f}M parameters in {log['seconds']:.0f} s, "
        f"final loss {log['losses'][-1][1]:.4f}; wrote {args.out or model_dir}")


if __name__ == "__main__":
  main()
