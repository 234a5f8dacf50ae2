"""The request engine: a queue of requests served by a fixed number of decode slots.

Reasoning traces have long-tailed lengths (R1-Distill-Qwen-1.5B on MATH-500: mean 5.2K tokens, cap
32K). A static batch runs until its longest row ends, so most of its rows idle; here a finished
row's slot is refilled. The host prefills waiting requests in groups (bucketed), inserts them into
the free slots (`jaxthink.decode.loop.insert`) and resumes the compiled loop, which returns only
when a group's worth of slots has finished while requests wait (or every `sync_every` steps),
never once per token.
When the queue is empty the remaining rows are compacted into a smaller slot count as they finish
(the drain), so the tail does not pay for empty slots either.

A request's tokens depend only on its prompt, budget and seed, not on its slot or neighbours:
sampling keys are per request and folded with the request's own step count.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxthink.decode.generate import (DecodeResult, _prompt_rows, bucket_length, loop_setup,
                                      right_padded)
from jaxthink.decode.loop import decode, init_state, insert, prefill, select
from jaxthink.decode.mesh import padded_batch_size, put_batch, to_numpy
from jaxthink.decode.penalty import MarkerPenalty
from jaxthink.decode.sampling import Sampling
from jaxthink.decode.state import DecodeState


@dataclasses.dataclass(frozen=True)
class Request:
  """One generation: `prompt` token ids, at most `max_new_tokens`, sampled with `seed`."""

  prompt: Sequence[int]
  max_new_tokens: int
  seed: int = 0


@dataclasses.dataclass
class EngineStats:
  """Work done by one `Engine.stream` call (decode steps only; prefill emits each first token).

  Slot utilisation = useful tokens / slot-steps computed; "waiting" counts the steps taken while
  requests were queued, "drain" the steps after the queue emptied.
  """

  steps_waiting: int = 0
  slot_steps_waiting: int = 0
  tokens_waiting: int = 0
  steps_drain: int = 0
  slot_steps_drain: int = 0
  tokens_drain: int = 0
  host_returns: int = 0
  seconds: float = 0.0

  def count(self, steps: int, width: int, tokens: int, waiting: bool) -> None:
    """Adds one run of the loop: `steps` steps over `width` rows that generated `tokens`."""
    if waiting:
      self.steps_waiting += steps
      self.slot_steps_waiting += steps * width
      self.tokens_waiting += tokens
    else:
      self.steps_drain += steps
      self.slot_steps_drain += steps * width
      self.tokens_drain += tokens
    self.host_returns += 1

  @property
  def utilisation_waiting(self) -> float:
    return self.tokens_waiting / max(self.slot_steps_waiting, 1)

  @property
  def utilisation_overall(self) -> float:
    return ((self.tokens_waiting + self.tokens_drain)
            / max(self.slot_steps_waiting + self.slot_steps_drain, 1))


# Each batch shape is one more compiled program (prefill, insert, decode), and a narrow batch
# saves little: a prefill of 8 short prompts or a decode step of 32 rows reads the weights once,
# about what one row costs on an accelerator (finished rows visit no KV). So entering requests are
# prefilled in groups of PREFILL_ROWS, all padded to the stream's prompt bucket, and the drain
# halves the rows down to slots / DRAIN_SHARE (default: two halvings, two more decode programs).
# While requests wait, the loop returns when slots / REFILL_SHARE rows are done (at least one, at
# most a group): returning at every row prefills a padded group per request (3.5x the prompt
# tokens on the demo), waiting for a whole group of 8 idles 3.5 rows on average (11% of 32 slots);
# at slots / 16 the idle rows are ~3% of the slots and a group holds two or more requests.
PREFILL_ROWS = 8
REFILL_SHARE = 16
DRAIN_SHARE = 4


class Engine:
  """Serves requests with `slots` decode rows of one compiled loop.

  Args (the rest as in `jaxthink.decode.generate`):
    slots: decode rows (a multiple of the mesh's 'data' axis).
    max_new_tokens: the largest budget a request may have (sizes the per-row buffers).
    sync_every: the loop also returns to the host after this many steps (None: only when enough
      rows are done, see `_return_at_done`).
    shrink_drain: once the queue is empty, halve the slot count whenever half the rows are done
      (down to `drain_floor` rows; None: slots / DRAIN_SHARE).
  """

  def __init__(self, policy, *, slots: int, max_new_tokens: int, sampling: Sampling = Sampling(),
               penalty: MarkerPenalty = MarkerPenalty(), reference=None,
               eos_ids: Sequence[int] | None = None, pad_id: int | None = None,
               kv_bits: int | None = None, cache_dtype: Any = None, mesh: Mesh | None = None,
               sync_every: int | None = None, shrink_drain: bool = True,
               drain_floor: int | None = None):
    if slots < 1 or slots != padded_batch_size(slots, mesh):
      raise ValueError(f"slots={slots} must be a positive multiple of the mesh's 'data' axis.")
    self.spec, self.params, self.ref_params = loop_setup(
        policy, reference, max_new_tokens=max_new_tokens, sampling=sampling, penalty=penalty,
        eos_ids=eos_ids, pad_id=pad_id, kv_bits=kv_bits, cache_dtype=cache_dtype, mesh=mesh)
    config = self.spec.policy.config
    self.slots, self.mesh = slots, mesh
    self.shrink_drain = shrink_drain
    self.drain_floor = max(slots // DRAIN_SHARE if drain_floor is None else drain_floor, 1)
    self.sync_every = int(sync_every or max_new_tokens)
    self.vocab_size = config.vocab_size
    self.penalty = penalty.arrays(config.vocab_size)
    self.stats = EngineStats()

  def run(self, requests: Sequence[Request]) -> list[DecodeResult]:
    """Every request's result (batch of one, buffers cut to its length), in request order."""
    results: list[DecodeResult | None] = [None] * len(requests)
    for i, result in self.stream(requests):
      results[i] = result
    return results

  def stream(self, requests: Sequence[Request],
             on_step: Callable[[EngineStats], None] | None = None
             ) -> Iterator[tuple[int, DecodeResult]]:
    """Yields `(request index, result)` as requests finish."""
    spec = self.spec
    prompts = _prompt_rows([list(r.prompt) for r in requests], None, self.vocab_size)
    for i, r in enumerate(requests):
      if not 1 <= r.max_new_tokens <= spec.max_new_tokens:
        raise ValueError(f"request {i}: max_new_tokens={r.max_new_tokens} must be in "
                         f"[1, {spec.max_new_tokens}] (the engine's max_new_tokens).")
    bucket = bucket_length(max(map(len, prompts)))
    self.stats = stats = EngineStats()
    started = time.perf_counter()
    queue = collections.deque(range(len(requests)))
    occupant = [None] * self.slots  # request index held by each row, None when free
    generated = np.zeros(self.slots, np.int64)  # host copy of state.generated
    state = init_state(spec, self.slots, bucket + spec.max_new_tokens)
    finished: list[tuple[int, DecodeResult]] = []
    while queue or any(o is not None for o in occupant):
      free = [row for row, o in enumerate(occupant) if o is None]
      if queue and free:
        entering = [queue.popleft() for _ in range(min(len(free), len(queue)))]
        state = self._insert(state, free, entering, prompts, requests, bucket)
        for row, i in zip(free, entering):
          occupant[row], generated[row] = i, 1
      elif not queue and self.shrink_drain:
        state, kept = self._shrink(state, occupant)
        occupant, generated = [occupant[row] for row in kept], generated[kept]
      waiting = bool(queue)
      state, steps = decode(spec, self.params, self.ref_params, state, self.penalty,
                            self._return_at_done(len(occupant), len(queue)), self.sync_every)
      yield from finished  # the caller handles them (grading, writing) while the loop runs
      before = generated
      generated, done, steps = to_numpy((state.generated, state.done, steps))
      generated = generated.astype(np.int64)  # a writable copy
      stats.count(int(steps), len(occupant), int((generated - before).sum()), waiting)
      rows = [row for row, o in enumerate(occupant) if o is not None and done[row]]
      finished = []
      if rows:
        batch = _collect(state, rows, int(generated[rows].max()))
        finished = [(occupant[row], _one(batch, j, bucket)) for j, row in enumerate(rows)]
        for row in rows:
          occupant[row] = None
      stats.seconds = time.perf_counter() - started
      if on_step is not None:
        on_step(stats)
    yield from finished

  def _insert(self, state: DecodeState, free: list[int], entering: list[int], prompts,
              requests, bucket: int) -> DecodeState:
    """Prefills `entering` requests (prompts padded to `bucket` tokens) and puts them into rows
    `free[:len(entering)]`."""
    width = self._group_width()
    for start in range(0, len(entering), width):
      group = entering[start:start + width]
      pad = width - len(group)  # padding repeats the group's first request and row
      fill = group + group[:1] * pad
      rows = free[start:start + len(group)]
      rows = np.asarray(rows + rows[:1] * pad, np.int32)
      tokens, lengths = right_padded([prompts[i] for i in fill], self.spec.pad_id, bucket)
      seeds = np.asarray([requests[i].seed for i in fill], np.uint32)
      new = prefill(self.spec, self.params, self.ref_params, put_batch(tokens, self.mesh),
                    put_batch(lengths, self.mesh), put_batch(seeds, self.mesh), self.penalty)
      budgets = np.asarray([requests[i].max_new_tokens for i in fill], np.int32)
      state = insert(self.spec, state, new, jnp.asarray(rows), jnp.asarray(budgets))
    return state

  def _group_width(self) -> int:
    return padded_batch_size(min(PREFILL_ROWS, self.slots), self.mesh)

  def _return_at_done(self, width: int, queued: int) -> int:
    """How many done rows bring the loop back to the host: slots / REFILL_SHARE (1 to a prefill
    group) while requests wait (fewer when fewer wait), enough to halve the rows in the drain,
    else all of them."""
    if queued:
      return min(max(self.slots // REFILL_SHARE, 1), self._group_width(), queued)
    half = width // 2
    if self.shrink_drain and self._can_shrink_to(half):
      return width - half
    return width

  def _can_shrink_to(self, width: int) -> bool:
    return width >= self.drain_floor and width == padded_batch_size(width, self.mesh)

  def _shrink(self, state: DecodeState, occupant: list) -> tuple[DecodeState, list[int]]:
    """With the queue empty: the state cut to half its rows while half or more are free, and
    which old rows it kept."""
    kept = list(range(len(occupant)))
    while True:
      width = len(kept) // 2
      busy = [i for i, row in enumerate(kept) if occupant[row] is not None]
      if len(busy) > width or not self._can_shrink_to(width):
        if len(kept) < len(occupant):
          state = select(self.spec, state, jnp.asarray(kept, jnp.int32))
        return state, kept
      idle = [i for i, row in enumerate(kept) if occupant[row] is None]
      kept = [kept[i] for i in busy + idle[:width - len(busy)]]


@functools.partial(jax.jit, static_argnums=2)
def _gather(state: DecodeState, rows: jax.Array, width: int):
  take = lambda x: None if x is None else x[rows, :width]
  return (take(state.tokens), state.generated[rows], state.ended[rows],
          jax.tree.map(take, state.records))


def _collect(state: DecodeState, rows: list[int], longest: int) -> DecodeResult:
  """The finished `rows`' results in one transfer, their buffers cut on device to a power of two
  >= `longest` (a 32K-token budget does not copy 32K columns for a short answer)."""
  width = min(bucket_length(longest, 1), state.tokens.shape[1])
  padded = rows + rows[:1] * ((1 << (len(rows) - 1).bit_length()) - len(rows))  # few programs
  return DecodeResult.from_records(*to_numpy(_gather(state, jnp.asarray(padded), width)))


def _one(batch: DecodeResult, j: int, bucket: int) -> DecodeResult:
  """Row `j` of `batch` as a batch of one, buffers cut to its length."""
  n = int(batch.lengths[j])
  cut = lambda x: x if x is None else x[j:j + 1, :n] if x.ndim == 2 else x[j:j + 1]
  return DecodeResult(**{f.name: cut(getattr(batch, f.name)) for f in dataclasses.fields(batch)
                         if f.name != "prompt_bucket"}, prompt_bucket=bucket)
