"""Errors raised by the evaluation harness.

Every error a user can fix (a missing folder, a wrong ``.npz`` key, weights that are not on disk)
is an :class:`EvalError`; the command-line tools print its message and exit with
:data:`EXIT_USER_ERROR` instead of a traceback.
"""

from __future__ import annotations

# Exit status of the CLIs for errors the user can fix (argparse uses the same value for bad flags).
EXIT_USER_ERROR = 2


class EvalError(Exception):
    """Base class: a problem with the inputs or the weights, with a message that says how to fix it."""


class InputError(EvalError, ValueError):
    """A bad input: missing or empty folder, wrong ``.npz`` keys, unpaired files, wrong shapes."""


class MissingWeightsError(EvalError, FileNotFoundError):
    """A weights file or model folder is not on disk and cannot be downloaded."""
