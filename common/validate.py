"""Numeric flags checked in one place, and NaN detection while sampling.

Every CLI states its numeric flags as ``(flag, value, Bound)`` and calls :func:`check_numbers` before
any work: a value that is NaN, infinite, fractional where an integer is needed, or out of range is a
:class:`~duca_common.errors.UsageError` naming the flag, the value and the allowed range. The bounds
below are the project's, shared by DiT, PixArt, OpenSora and the scripts.

:class:`FiniteWatch` follows a sampling loop without a device synchronisation per step and raises
:class:`~duca_common.errors.NonFiniteError` (which step, which method) at the end, so a NaN never
reaches the disk as a black image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .errors import NonFiniteError, UsageError

# The largest seed torch.Generator.manual_seed and numpy's SeedSequence accept without wrapping.
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Bound:
    """An allowed range: ``low <= value <= high`` (``low_open``: ``low < value``), optionally an integer."""

    what: str
    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False

    def with_high(self, high: float, why: str = "") -> Bound:
        return Bound(self.what + (f"; {why}" if why else ""), self.low, high, self.integer, self.low_open)

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_fmt(self.low)}")
        if self.high is not None:
            parts.append(f"<= {_fmt(self.high)}")
        return f"{kind} {' and '.join(parts)}".strip()


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# Guidance (classifier-free) scale: 1 means no guidance; below 1 pushes away from the prompt/class.
GUIDANCE = Bound("guidance scale (1 = no guidance)", low=1.0)
STEPS = Bound("number of sampling steps", low=1, integer=True)
SEED = Bound("seed", low=0, high=MAX_SEED, integer=True)
SIZE = Bound("size in pixels", low=1, integer=True)
COUNT = Bound("count", low=1, integer=True)
NON_NEGATIVE_INT = Bound("non-negative integer", low=0, integer=True)
NON_NEGATIVE = Bound("non-negative number", low=0.0)
FRACTION = Bound("fraction of tokens", low=0.0, high=1.0)
# Cycle length N: at most the 1000 steps of DiT's base schedule (models.md A.5), longer cycles never refresh;
# CacheConfig (common/cache/config.py) checks the same bounds.
MAX_INTERVAL = 1000
# TaylorSeer expansion order O: a project sanity bound (docs/failure-modes.md); the presets use 1 to 3.
MAX_TAYLOR_ORDER = 8
INTERVAL = Bound("cycle length N", low=1, high=MAX_INTERVAL, integer=True)
TAYLOR_ORDER = Bound("Taylor order", low=0, high=MAX_TAYLOR_ORDER, integer=True)


def check_number(flag: str, value: object, bound: Bound) -> None:
    """Raise ``UsageError`` unless ``value`` is a finite number within ``bound``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{flag} {value!r} is invalid: pass {bound.describe()} ({bound.what})")
    if not math.isfinite(value):
        raise UsageError(f"{flag} {value} is invalid: pass {bound.describe()} ({bound.what})")
    ok = not bound.integer or float(value).is_integer()
    if bound.low is not None:
        ok = ok and (value > bound.low if bound.low_open else value >= bound.low)
    if bound.high is not None:
        ok = ok and value <= bound.high
    if not ok:
        raise UsageError(f"{flag} {_fmt(value) if float(value).is_integer() else value} is invalid: "
                         f"pass {bound.describe()} ({bound.what})")


# A Hugging Face repo id: owner/name of letters, digits, '-', '_', '.', neither part starting with '-' or '.' nor
# ending with them, so a missing local folder written with a trailing slash ('OpenSora-STDiT-v3/') is not one.
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"{_HUB_PART}/{_HUB_PART}")


def looks_like_hub_id(value: str) -> bool:
    """``value`` can be a hub repo id (``owner/name``): a weights flag whose path does not exist is an error
    before any work unless this holds."""
    return (_HUB_ID.fullmatch(value) is not None and ".." not in value and "--" not in value
            and not value.endswith((".safetensors", ".pth", ".pt", ".bin")))


def check_numbers(checks: Iterable[tuple[str, object, Bound]]) -> None:
    """Check every ``(flag, value, bound)``; the first bad one raises ``UsageError``."""
    for flag, value, bound in checks:
        check_number(flag, value, bound)


class FiniteWatch:
    """Follows the state of a sampling loop and remembers the first step at which it was not finite.

    ``observe(x, step)`` costs one reduction and no host synchronisation; ``check()`` (once, after the
    loop) raises :class:`NonFiniteError` naming the step, the total and ``what`` (the method and the
    settings worth checking)."""

    def __init__(self, what: str, total_steps: int, hint: str = "") -> None:
        self.what, self.total_steps, self.hint = what, total_steps, hint
        self._first: torch.Tensor | None = None

    def observe(self, x: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(x).all()
        if self._first is None:
            self._first = torch.full((), -1, dtype=torch.long, device=x.device)
        self._first = torch.where(bad & (self._first < 0), step, self._first)

    @property
    def first_bad_step(self) -> int | None:
        if self._first is None:
            return None
        step = int(self._first)
        return None if step < 0 else step

    def check(self) -> None:
        step = self.first_bad_step
        if step is not None:
            raise NonFiniteError(f"the sample became NaN/inf at step {step + 1} of {self.total_steps} ({self.what}); "
                                 f"nothing was written. "
                                 f"{self.hint or 'Check the checkpoint for NaN weights and the guidance scale'}")
