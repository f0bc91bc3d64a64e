"""The project's error classes for problems a user can fix, and the exit status every CLI uses for them.

* :class:`UsageError`: a bad flag, path or input file. Every entry point prints its message as one line
  (``error: ...``) and exits with :data:`EXIT_USAGE`, before any model is built where possible.
* :class:`CheckpointError` (a ``UsageError``): a checkpoint is missing, unreadable, pickled with code, or
  does not fit the model. DiT, PixArt and OpenSora raise this one class (their modules re-export it), so a
  caller catches checkpoint problems of any model the same way.
* :class:`NonFiniteError` (a ``UsageError``): a sample became NaN or infinite while sampling; the message
  names the step and the method, and nothing is written.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import TypeVar

# Exit status for every error the user can fix; argparse uses the same value for bad flags.
EXIT_USAGE = 2


class UsageError(ValueError):
    """A bad flag, path or file; the message names the problem and the fix (one line)."""


class CheckpointError(UsageError):
    """A checkpoint is missing, unreadable or does not fit the model."""


class CheckpointNotFoundError(CheckpointError):
    """No checkpoint was given and none was found in the usual places."""


class NonFiniteError(UsageError):
    """A sample became NaN or infinite during sampling (which step and method are in the message)."""


def one_line(message: object) -> str:
    """The message on one line (newlines become '; '), for ``error: ...`` output."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


# torch.load(weights_only=True)'s refusal: several paragraphs (advice to load unsafely, to file an issue);
# the cause is the "WeightsUnpickler error: ..." part.
_WEIGHTS_ONLY_CAUSE = re.compile(r"WeightsUnpickler error:\s*(.+?)\s*(?:Please use|Check the documentation|$)", re.S)


def read_failure(exc: BaseException) -> str:
    """Why a weights or data file could not be read (torch.load, safetensors, numpy), on one line and short:
    torch's weights-only refusal is cut to its cause plus what it means, so the caller can add the flag and
    the fix without torch's advice to unpickle the file unsafely."""
    text = str(exc)
    if "Weights only load failed" in text:
        match = _WEIGHTS_ONLY_CAUSE.search(text)
        cause = f" ({one_line(match.group(1))})" if match else ""
        return (f"torch.load(weights_only=True) refused it{cause}: not a file written by torch.save, or one that "
                f"pickles objects other than tensors, numbers, strings and containers of them")
    return f"{type(exc).__name__}: {one_line(text)}" if text else type(exc).__name__


def print_error(exc: BaseException | str) -> int:
    """Print ``error: <message>`` on one line to stderr; return :data:`EXIT_USAGE`."""
    print(f"error: {one_line(exc)}", file=sys.stderr)
    return EXIT_USAGE


T = TypeVar("T")


def run_or_exit(fn: Callable[[], T], errors: tuple[type[BaseException], ...] = (UsageError,)) -> T:
    """Call ``fn``; a listed error becomes one line on stderr and ``SystemExit(EXIT_USAGE)`` (no traceback)."""
    try:
        return fn()
    except errors as exc:
        raise SystemExit(print_error(exc)) from None
