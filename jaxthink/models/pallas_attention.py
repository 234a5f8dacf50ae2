"""One-token decode attention through the Pallas paged-attention kernels that ship inside jax.

`Decoder(decode_attention=...)` picks the kernel:
  pallas      jax's kernel for the platform: `jax.experimental.pallas.ops.tpu.paged_attention` on
              TPU, `jax.experimental.pallas.ops.gpu.paged_attention` (Triton) on GPU; on CPU an
              error (use `chunked`).
  pallas_tpu, pallas_gpu
              that kernel; on CPU it runs in Pallas interpret mode (TPU interpret mode simulates
              the kernel's DMAs and VMEM), which is how the tests check the wiring (slow: tests
              only).
Only one-query steps (decoding) use a kernel; prefill and teacher-forced chunks stay `chunked`.

Why these two kernels. Both take the same layout, K and V apart as `[kv_heads, pages, page_size,
head_dim]` pools with `page_indices [sequences, pages_per_sequence]` and per-sequence `lengths`, and
each sequence reads only the pages below its own length (the chunked path reads up to the batch's
highest position for every row). The others need a copy of the whole cache per layer per step:
`tpu.ragged_paged_attention` wants K and V interleaved in one `[pages, page_size, 2 * kv_heads,
head_dim]` array (token-major) and takes one scalar scale per cache, not per token;
`gpu.decode_attention` wants `[batch, slots, kv_heads, head_dim]` and `slots` split evenly into
`k_splits` blocks of a power-of-two size (it also has no scales). Scope: the GPU kernel reads
float and int8 caches (our per-token, per-head scales are exactly its `k_scales_pages`); the TPU
kernel reads float caches only (as bf16 whatever their dtype: it is written for bf16 caches),
because its int8 path wants scales broadcast over `head_dim` (a float32 copy 4x the size of the
int8 cache, made every step); int4 caches on neither (accelerators store them packed, which
neither kernel loads). Those cases raise and name `chunked`.

The layout, for free. Our cache is `[batch, kv_heads, slots, head_dim]` per layer, slot ==
position, each row contiguous. Viewing it as ONE kv head and `batch * kv_heads` sequences,
sequence `r = b * kv_heads + h` being (row b, kv head h), is a reshape, no copy:
`k_pages = k.reshape(1, batch * kv_heads * pages_per_row, page_size, head_dim)` and
`page_indices[r, i] = r * pages_per_row + i`; the queries become `[batch * kv_heads, groups,
head_dim]` (GQA: each kv head's group of query heads), the lengths repeat per head. (Paging the
batch with the kv heads kept as the kernel's head axis, `page_indices[b, i] = b * pages_per_row +
i`, would need `[kv_heads, batch, ...]`: a transpose, i.e. a copy of the whole allocated cache per
layer per step, more than dense attention reads.) The view costs nothing per step: each kernel
sequence holds one kv head's query group, as the kernels' own GQA split would. What it does not
give is what a natively page-major pool would: rows sharing one pool of pages and reserving only
the pages they have written, so a short row doesn't hold `prompt + max_new_tokens` slots and more
rows fit in HBM (2-6x for the study's lengths: `jaxthink.paging.paged_fit`); that needs the cache,
its writes and the engine's insert / evict to be page-based. Each row's slots must be a whole
number of pages: `prompt bucket + max_new_tokens` a multiple of 16 (the bucket is a power of two
>= 16, so a `max_new_tokens` multiple of 16 is enough).

Block sizes are the kernels' documented constraints, not tuned: no accelerator was lent to the
session that wrote this. The TPU kernel runs with `megacore_mode=None`; on v4 / v5p chips (two
TensorCores run as one device) `"batch"` would split the `batch * kv_heads` sequences (always even
for the study's models) over both cores, left off because the kernel's docs warn it hangs where
megacore is not enabled, and it could not be tried on hardware. On a device mesh the kernel runs
inside `shard_map` (`jaxthink.models.attention.per_shard`): GSPMD cannot partition a Pallas call,
and each device attends over its own rows and kv heads anyway. The kernel is picked for the
platform of the mesh's devices, so a CPU host compiling for a TPU slice builds the TPU program.
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp

from jaxthink.models.kv_cache import LayerKV

PALLAS_OPTIONS = ("pallas", "pallas_tpu", "pallas_gpu")
MAX_PAGE_SIZE = 64  # tokens per page: the largest power of two <= this dividing a row's slots
MIN_PAGE_SIZE = 16  # the GPU kernel's dot needs >= 16 keys per block
_GPU_BLOCK_TOKENS = 128  # keys per Triton block (pages_per_compute_block * page_size)
_TPU_PAGES_PER_BLOCK = 8  # pages per DMA'd block of the TPU kernel
_NATIVE = {"tpu": ("tpu",), "gpu": ("gpu", "cuda", "rocm")}


def select_kernel(option: str, backend: str | None = None) -> tuple[str, bool]:
  """(`"tpu"` or `"gpu"`, whether to run it in Pallas interpret mode) for a `decode_attention`
  option on `backend` (default: JAX's)."""
  backend = backend or jax.default_backend()
  if option == "pallas":
    for kernel, backends in _NATIVE.items():
      if backend in backends:
        return kernel, False
    raise ValueError(f"decode_attention='pallas' runs jax's Pallas kernels on TPU or GPU; this "
                     f"backend is {backend}: use decode_attention='chunked' (or 'pallas_gpu' / "
                     "'pallas_tpu' to run a kernel in Pallas interpret mode, for tests).")
  kernel = option.removeprefix("pallas_")
  if option not in PALLAS_OPTIONS or kernel not in _NATIVE:
    raise ValueError(f"decode_attention={option!r} is not a Pallas kernel; use one of "
                     f"{PALLAS_OPTIONS}.")
  if backend in _NATIVE[kernel]:
    return kernel, False
  if backend == "cpu":
    return kernel, True
  raise ValueError(f"decode_attention={option!r} cannot run on {backend}; use 'pallas' (the "
                   "platform's kernel) or 'chunked'.")


def page_size_for(slots: int) -> int:
  """Tokens per page for rows of `slots` slots: the largest power of two <= MAX_PAGE_SIZE that
  divides `slots`."""
  page = math.gcd(slots, MAX_PAGE_SIZE)
  if page < MIN_PAGE_SIZE:
    raise ValueError(f"the Pallas decode kernels read whole pages of >= {MIN_PAGE_SIZE} tokens, "
                     f"but the cache holds {slots} slots per row (prompt bucket + max_new_tokens): "
                     f"make max_new_tokens a multiple of {MIN_PAGE_SIZE}, or use "
                     "decode_attention='chunked'.")
  return page


def paged_view(kv: LayerKV, page_size: int):
  """The cache as one kv head's page pool, sequence `b * kv_heads + h` being (row b, head h).

  Returns `k_pages`, `v_pages` `[1, batch * kv_heads * pages_per_row, page_size, head_dim]`, the
  scales `[1, same pages, page_size]` (None for a float cache) and `page_indices`
  `[batch * kv_heads, pages_per_row]` int32. Reshapes only: no copy of the cache.
  """
  b, heads, slots, d = kv.k.shape
  pages = b * heads * slots // page_size
  pool = lambda x: x.reshape(1, pages, page_size, d)
  scales = lambda x: None if x is None else x.reshape(1, pages, page_size)
  page_indices = jnp.arange(pages, dtype=jnp.int32).reshape(b * heads, slots // page_size)
  return pool(kv.k), pool(kv.v), scales(kv.k_scale), scales(kv.v_scale), page_indices


def _largest_divisor(n: int, at_most: int, power_of_two: bool = False) -> int:
  return max(m for m in range(1, min(n, at_most) + 1)
             if n % m == 0 and (not power_of_two or m & (m - 1) == 0))


def paged_decode_attention(q: jax.Array, kv: LayerKV, lengths: jax.Array, kernel: str,
                           interpret: bool = False) -> jax.Array:
  """Attention of one query per row over its first `lengths[b]` slots, by a Pallas kernel.

  Args:
    q: `[b, 1, kv_heads, groups, head_dim]`.
    kv: the layer's cache, `[b, kv_heads, slots, head_dim]`; `slots` a multiple of 16.
    lengths: `[b]` int32, keys per row (its query's slot + 1), 1 .. slots.
    kernel: "tpu" or "gpu"; `interpret`: run it in Pallas interpret mode (CPU).

  Returns:
    `[b, kv_heads, groups, 1, head_dim]` float32, as `chunked_attention`.
  """
  b, t, heads, groups, d = q.shape
  if t != 1:
    raise ValueError(f"the Pallas decode kernels take one query per row, got {t}.")
  if kv.bits == 4 or (kv.bits is not None and kernel == "tpu"):
    raise ValueError(f"the Pallas {kernel} decode kernel cannot read a kv{kv.bits} cache (see "
                     "jaxthink.models.pallas_attention); use decode_attention='chunked'.")
  page = page_size_for(kv.k.shape[2])
  k_pages, v_pages, k_scales, v_scales, page_indices = paged_view(kv, page)
  pages_per_row = page_indices.shape[1]
  # Neither kernel scales the scores: scale the queries (in float32, rounded once).
  q_dtype = kv.k.dtype if kv.bits is None else q.dtype
  queries = (q.reshape(b * heads, groups, d).astype(jnp.float32) / math.sqrt(d)).astype(q_dtype)
  seq_lengths = jnp.repeat(jnp.clip(lengths, 1, kv.k.shape[2]).astype(jnp.int32), heads)
  # Imported here: the model path should not depend on importing both platforms' kernel stacks.
  if kernel == "gpu":
    from jax.experimental.pallas.ops.gpu import paged_attention as gpu_paged  # noqa: PLC0415
    k_splits = _largest_divisor(pages_per_row, 16)
    per_block = _largest_divisor(pages_per_row // k_splits, _GPU_BLOCK_TOKENS // page, True)
    out = gpu_paged.paged_attention(queries, k_pages, v_pages, page_indices, seq_lengths,
                                    k_scales, v_scales, pages_per_compute_block=per_block,
                                    k_splits=k_splits, interpret=interpret)
  else:
    from jax.experimental.pallas import tpu as pltpu  # noqa: PLC0415
    from jax.experimental.pallas.ops.tpu.paged_attention import (  # noqa: PLC0415
        paged_attention as tpu_paged_attention)
    with pltpu.force_tpu_interpret_mode() if interpret else contextlib.nullcontext():
      out = tpu_paged_attention(
          queries, k_pages, v_pages, seq_lengths, page_indices,
          pages_per_compute_block=_largest_divisor(pages_per_row, _TPU_PAGES_PER_BLOCK))
  return out.astype(jnp.float32).reshape(b, heads, groups, 1, d)
