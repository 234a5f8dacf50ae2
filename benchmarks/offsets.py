"""`token_char_offsets` on long responses holding U+FFFD: prefix re-decoding vs the one-pass path.

A response of the embedded tokenizer (byte-level BPE, `jaxthink/tiny/model`): reasoning-like text
with CJK and emoji, with one token in 50 dropped so multi-byte characters are cut and decode
writes U+FFFD (as degenerate 3-bit output does). "before" is the code before #16 (a copy below:
byte lengths when they add up, else decoding every prefix); "after" is
`jaxthink.models.tokenizer.token_char_offsets`. Both get the decoded text, as the eval runner
passes it, and must give the same offsets. Seconds per call, best of `--repeats` for "after"; the
quadratic "before" runs once per length, and only up to `--before-max` tokens (default 32768:
about 5 minutes on a 2-core machine). The last line is one JSON object.

  python benchmarks/offsets.py [--lengths 4096,8192,16384,32768] [--before-max 32768]
"""

from __future__ import annotations

import argparse
import codecs
import json
import time
from pathlib import Path

import numpy as np

import jaxthink
from jaxthink.models.tokenizer import load_tokenizer, token_char_offsets

TINY = Path(jaxthink.__file__).parent / "tiny" / "model"
TEXT = ("Let me compute 17 × 23 step by step. 你好，先算 17 × 20 = 340，再算 17 × 3 = 51。 "
        "Wait 🤔, so the total is 340 + 51 = 391 ✅. Hmm, let me double-check: 23 × 17 = 391. ")


def before_token_char_offsets(tokenizer, ids, text):
  """`token_char_offsets` before #16: one pass only when the byte lengths add up."""
  added = tokenizer.added_tokens_decoder
  pieces = tokenizer.convert_ids_to_tokens(ids)
  byte_lengths = [len(added[i].content.encode()) if i in added else len(p)
                  for i, p in zip(ids, pieces)]
  data = text.encode()
  if sum(byte_lengths) != len(data):
    return [len(tokenizer.decode(ids[:i], skip_special_tokens=False)) for i in range(len(ids))]
  decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
  offsets, chars, position = [], 0, 0
  for n in byte_lengths:
    offsets.append(chars)
    chars += len(decoder.decode(data[position:position + n]))
    position += n
  return offsets


def response(tokenizer, length: int, seed: int = 0) -> list[int]:
  """`length` token ids of TEXT repeated, one token in 50 dropped (cut characters)."""
  ids = tokenizer.encode(TEXT, add_special_tokens=False)
  ids = ids * (length * 51 // 50 // len(ids) + 1)
  keep = np.random.default_rng(seed).random(len(ids)) >= 0.02
  return [i for i, k in zip(ids, keep) if k][:length]


def seconds(fn, repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", default="4096,8192,16384,32768")
  parser.add_argument("--before-max", type=int, default=32768)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  tok = load_tokenizer(TINY)
  print(f"embedded tokenizer ({len(tok)} tokens); after: best of {args.repeats}")
  print(f"{'tokens':>7} {'U+FFFD':>7} {'before s':>9} {'after s':>8} {'ratio':>7}")
  rows = []
  for length in map(int, args.lengths.split(",")):
    ids = response(tok, length)
    text = tok.decode(ids, skip_special_tokens=False)
    after = token_char_offsets(tok, ids, text)
    after_s = seconds(lambda: token_char_offsets(tok, ids, text), args.repeats)
    before_s = None
    if length <= args.before_max:
      t = time.perf_counter()
      before = before_token_char_offsets(tok, ids, text)
      before_s = time.perf_counter() - t
      assert before == after, "the two paths disagree"
    rows.append(dict(tokens=length, replacement_chars=text.count("\ufffd"),
                     before_s=None if before_s is None else round(before_s, 4),
                     after_s=round(after_s, 4)))
    shown = "-" if before_s is None else f"{before_s:.3f}"
    ratio = "-" if before_s is None else f"{before_s / after_s:.0f}x"
    print(f"{length:>7} {text.count(chr(0xFFFD)):>7} {shown:>9} {after_s:>8.4f} {ratio:>7}",
          flush=True)
  longest = rows[-1]
  print(json.dumps({"tokens": longest["tokens"], "offsets_before_s": longest["before_s"],
                    "offsets_after_s": longest["after_s"], "rows": rows}))


if __name__ == "__main__":
  main()
