"""Is a predicted answer equivalent to the gold answer? math-verify, plus a few normalisations.

math-verify (``parse`` + ``verify``) does the mathematics: fractions vs decimals, intervals, sets,
``\\dfrac``, thousands commas, degrees, percent, LaTeX units. This module adds what it gets wrong
in model answers: multiple-choice letters (``"(C) 12"`` vs ``\\text{(C)}``), plain-word units after
a number (``"18 dollars"``), a whole answer inside ``\\text{}``, and word answers (``\\text{Evelyn}``,
compared as text so that anagrams don't match as products of symbols).

Time limit: math-verify's own timeouts use ``signal.alarm``, which raises outside the main thread.
So its timeouts are switched off and one limit covers a whole check: in the main thread a
``signal.setitimer`` alarm; in any other thread the check runs in a spawned worker process (whose
main thread can use the alarm), and a wedged worker is terminated.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import multiprocessing
import multiprocessing.pool
import re
import signal
import threading
from typing import Any, Callable

from math_verify import parse, verify

DEFAULT_TIMEOUT_S = 5.0
# Extra wait for a worker process beyond the check's own limit before it counts as wedged.
_WORKER_GRACE_S = 10.0
_WORKER_START_LIMIT_S = 600.0


class _NoTimeoutWarning(logging.Filter):
  """math-verify warns once that its timeouts are off; this module enforces its own."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
  logging.getLogger(_name).addFilter(_NoTimeoutWarning())


# --- normalisation -----------------------------------------------------------------------------

_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_NUMBER = r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
_NUMERIC = re.compile(r"(?:\\?\$)?\s*" + _NUMBER)
_NUMBER_WITH_UNITS = re.compile(
  r"(?:\\?\$)?\s*(?P<number>" + _NUMBER + r")\s*(?P<percent>\\?%)?"
  r"(?P<rest>.*)",
  re.DOTALL,
)
# What may follow a number and still be "units": words, \text{...}, ^2 / ^3 / ^\circ, periods.
_UNITS = re.compile(
  r"(?:\s|[A-Za-z.]|\\(?:text|mbox|mathrm)\s*\{[A-Za-z.\s]*\}"
  r"|\^\s*\{?\s*(?:[23]|\\circ)\s*\}?)*"
)
_CHOICE_GOLD = re.compile(r"\(?([A-J])\)?")
_CHOICE_PREDICTED = re.compile(r"\(?([A-J])\)?(?=$|[\s:.,)])")
# A word answer: the whole gold inside \text{} (etc.), or one bare word of 3+ letters ("east").
# Not "p - q" or "xy": those are algebra.
_WORD_GOLD = re.compile(
  r"\\(?:text|textbf|mathrm|mbox)\s*\{\s*[A-Za-z][A-Za-z\s\-']*\}|[A-Za-z]{3,}"
)


def normalize_answer(text: str) -> str:
  """Light clean-up both sides get: outer ``$``/``\\(\\)``, a final period, ``\\!``/``\\,``
  spacing, ``{,}`` commas, ``\\dfrac``/``\\tfrac`` -> ``\\frac``."""
  text = text.strip()
  for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
    if len(text) > len(opener) + len(closer) and text.startswith(opener) and text.endswith(closer):
      text = text[len(opener) : -len(closer)].strip()
      break
  text = text.rstrip(".").strip()
  text = text.replace("\\!", "").replace("\\,", "").replace("{,}", ",")
  return re.sub(r"\\[dt]frac", r"\\frac", text)


def _unwrap_text(text: str) -> str:
  """``\\text{(C)} 12`` -> ``(C) 12``: drop text-style commands, keep their content."""
  previous = None
  while previous != text:
    previous, text = text, _TEXT_COMMAND.sub(r"\1", text)
  return text.strip()


def _plain(text: str) -> str:
  return re.sub(r"[^a-z0-9]", "", _unwrap_text(text).lower())


def _strip_units(predicted: str) -> str:
  """``18 dollars`` -> ``18``; ``\\text{5 apples}`` -> ``5``; anything else unchanged."""
  found = _NUMBER_WITH_UNITS.fullmatch(_unwrap_text(predicted))
  if found and found.group("rest").strip() and _UNITS.fullmatch(found.group("rest")):
    return found.group("number") + (found.group("percent") or "")
  return predicted


def check_equivalent(predicted: str, gold: str) -> bool:
  """Equivalence without a time limit (use ``answers_match`` for one)."""
  predicted, gold = normalize_answer(predicted), normalize_answer(gold)
  if not gold:
    raise ValueError("empty gold answer; every benchmark problem needs a gold answer")
  if not predicted:
    return False
  if predicted == gold:
    return True
  if letter := _CHOICE_GOLD.fullmatch(_unwrap_text(gold)):
    chosen = _CHOICE_PREDICTED.match(_unwrap_text(predicted))
    if chosen:
      return chosen.group(1) == letter.group(1)
  if _WORD_GOLD.fullmatch(gold):
    return _plain(predicted) == _plain(gold)
  if _NUMERIC.fullmatch(gold):
    predicted = _strip_units(predicted)
  return math_verify_equal(predicted, gold)


def math_verify_equal(predicted: str, gold: str) -> bool:
  """math-verify alone (no time limit): gold parsed as ``$gold$``, the prediction as
  ``\\boxed{predicted}``."""
  gold_parsed = parse(f"${gold}$", parsing_timeout=None)
  predicted_parsed = parse(f"\\boxed{{{predicted}}}", parsing_timeout=None)
  return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=None))


# --- time limit --------------------------------------------------------------------------------


class _TimeLimit(BaseException):
  # BaseException: math-verify and sympy catch ``Exception`` and would swallow the alarm.
  pass


def _raise_time_limit(signum, frame):
  raise _TimeLimit()


def _alarm_usable() -> bool:
  return (
    hasattr(signal, "setitimer")
    and threading.current_thread() is threading.main_thread()
    and signal.getitimer(signal.ITIMER_REAL)[0] == 0
  )  # don't clobber a caller's timer


def call_with_time_limit(function: Callable[..., Any], seconds: float, *args) -> tuple[bool, Any]:
  """``(True, function(*args))``, or ``(False, None)`` when it ran past ``seconds``.

  Main thread only (a ``SIGALRM`` interval timer); raises RuntimeError elsewhere.
  """
  if not _alarm_usable():
    raise RuntimeError("call_with_time_limit needs the main thread and no running ITIMER_REAL")
  previous = signal.signal(signal.SIGALRM, _raise_time_limit)
  try:
    try:
      signal.setitimer(signal.ITIMER_REAL, seconds)
      return True, function(*args)
    finally:
      signal.setitimer(signal.ITIMER_REAL, 0)
  except _TimeLimit:
    return False, None
  finally:
    signal.signal(signal.SIGALRM, previous)


def _check_in_worker(predicted: str, gold: str, seconds: float) -> tuple[bool, bool]:
  done, equal = call_with_time_limit(check_equivalent, seconds, predicted, gold)
  return bool(equal), not done


def _ready() -> bool:
  return True


_pool: multiprocessing.pool.Pool | None = None
_pool_lock = threading.Lock()


def _worker_pool() -> multiprocessing.pool.Pool:
  global _pool
  with _pool_lock:
    if _pool is None:
      # spawn, not fork: forking a process that holds JAX/XLA threads is unsafe.
      pool = multiprocessing.get_context("spawn").Pool(processes=1)
      pool.apply_async(_ready).get(timeout=_WORKER_START_LIMIT_S)
      atexit.register(pool.terminate)
      _pool = pool
    return _pool


def _discard_pool(pool: multiprocessing.pool.Pool) -> None:
  global _pool
  with _pool_lock:
    if _pool is pool:
      _pool = None
  pool.terminate()


@dataclasses.dataclass(frozen=True)
class Match:
  equal: bool
  timed_out: bool  # the check ran past its limit (``equal`` is then False)


def match_answers(
  predicted: str, gold: str, *, timeout_s: float | None = DEFAULT_TIMEOUT_S
) -> Match:
  """Equivalence with a limit of ``timeout_s`` seconds for the whole check (None: no limit)."""
  if timeout_s is None:
    return Match(check_equivalent(predicted, gold), False)
  if timeout_s <= 0:
    raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
  if _alarm_usable():
    done, equal = call_with_time_limit(check_equivalent, timeout_s, predicted, gold)
    return Match(bool(equal), not done)
  if not gold.strip():
    raise ValueError("empty gold answer; every benchmark problem needs a gold answer")
  pool = _worker_pool()
  try:
    equal, timed_out = pool.apply_async(_check_in_worker, (predicted, gold, timeout_s)).get(
      timeout=timeout_s + _WORKER_GRACE_S
    )
  except multiprocessing.TimeoutError:
    _discard_pool(pool)  # the worker ignored its alarm (stuck in C code): start afresh
    return Match(False, True)
  return Match(equal, timed_out)


def answers_match(
  predicted: str, gold: str, *, timeout_s: float | None = DEFAULT_TIMEOUT_S
) -> bool:
  """True if ``predicted`` is equivalent to ``gold`` (a check past its time limit is False)."""
  return match_answers(predicted, gold, timeout_s=timeout_s).equal
