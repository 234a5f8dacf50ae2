"""What a compiled program does per decode step, read off its optimized HLO text
(`compiled.as_text()`): the copies and collectives inside the step's loop body.

The step is the body of the program's outermost `while` (the decode loop, `jax.lax.while_loop`),
with every computation it reaches (fusions, conditionals' branches, nested loops). Sizes are each
instruction's result per device: the HLO of a partitioned program has per-device shapes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable, Mapping, Sequence

# Bytes of an element per HLO type name (int4 and other sub-byte types count fractionally).
_ELEMENT_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
                  "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
                  "f8e4m3fn": 1, "f8e5m2": 1}
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_CALLED = re.compile(r"(?:calls|body|condition|to_apply|branch_computations)=\{?([^}]*?)\}?(?:,|$)")
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute",
               "all-gather-start", "all-reduce-start", "collective-permute-start")


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  result: str  # the result type, e.g. `bf16[32,1,1536,128]{3,2,1,0:T(8,128)(2,1)}`
  opcode: str
  rest: str  # operands and attributes

  @property
  def dims(self) -> tuple[int, ...]:
    """Dimensions of the (first) array of the result."""
    m = _ARRAY.search(self.result)
    return tuple(int(d) for d in m.group(2).split(",") if d) if m else ()

  @property
  def bytes(self) -> int:
    """Bytes of the (first) array of the result: an async copy's result is a tuple of the source,
    the destination and a context."""
    m = _ARRAY.search(self.result)
    if not m or m.group(1) not in _ELEMENT_BYTES:
      return 0
    return int(math.prod(self.dims) * _ELEMENT_BYTES[m.group(1)])


@dataclasses.dataclass(frozen=True)
class StepReport:
  """Inside one decode step (per device).

  Attributes:
    copies: `copy` / `copy-start` instructions, largest first.
    collectives: count per collective opcode.
    all_gathers: the all-gathers, largest first.
  """

  copies: tuple[Instruction, ...]
  collectives: Mapping[str, int]
  all_gathers: tuple[Instruction, ...]

  def copies_at_least(self, size: int) -> list[Instruction]:
    return [c for c in self.copies if c.bytes >= size]

  def gathers_of(self, shapes: Iterable[Sequence[int]]) -> list[Instruction]:
    """All-gathers whose result has one of `shapes` (e.g. the weights' global shapes): a weight
    gathered whole on every step."""
    wanted = {tuple(s) for s in shapes}
    return [g for g in self.all_gathers if g.dims in wanted]


def computations(hlo_text: str) -> dict[str, list[Instruction]]:
  """Instructions per computation name; the entry computation is also under `"ENTRY"`."""
  found: dict[str, list[Instruction]] = {}
  current: list[Instruction] | None = None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = found.setdefault(header.group(1), [])
      if line.startswith("ENTRY"):
        found["ENTRY"] = current
      continue
    m = _INSTRUCTION.match(line)
    if m and current is not None:
      current.append(Instruction(*m.groups()))
  return found


def _called(instruction: Instruction) -> list[str]:
  names = []
  for group in _CALLED.findall(instruction.rest):
    names += [n.strip().lstrip("%") for n in group.split(",") if n.strip()]
  return names


def reachable(comps: Mapping[str, list[Instruction]], root: str) -> list[Instruction]:
  """Every instruction of `root` and of the computations it calls, transitively."""
  seen, todo, out = {root}, [root], []
  while todo:
    for instruction in comps.get(todo.pop(), []):
      out.append(instruction)
      for name in _called(instruction):
        if name not in seen:
          seen.add(name)
          todo.append(name)
  return out


def decode_step(hlo_text: str) -> StepReport:
  """The copies and collectives of the body of the entry computation's outermost `while` (the
  decode loop); raises ValueError when the program has no loop."""
  comps = computations(hlo_text)
  loops = [i for i in comps.get("ENTRY", []) if i.opcode == "while"]
  if not loops:
    raise ValueError("the program has no while loop in its entry computation.")
  # The decode loop carries the state: the largest loop by its carried bytes.
  loop = max(loops, key=lambda i: sum(math.prod(int(d) for d in m.group(2).split(",") if d)
                                      for m in _ARRAY.finditer(i.result)))
  body = re.search(r"body=%?([\w.\-]+)", loop.rest).group(1)
  step = reachable(comps, body)
  by_size = lambda xs: tuple(sorted(xs, key=lambda i: -i.bytes))
  counts: dict[str, int] = {}
  for i in step:
    if i.opcode in COLLECTIVES:
      counts[i.opcode.removesuffix("-start")] = counts.get(i.opcode.removesuffix("-start"), 0) + 1
  return StepReport(
      copies=by_size(i for i in step if i.opcode in ("copy", "copy-start")),
      collectives=counts,
      all_gathers=by_size(i for i in step if i.opcode in ("all-gather", "all-gather-start")))
