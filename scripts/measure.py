"""The project's one timing method, re-exported for the scripts: see :mod:`duca_common.measure`
(interleaved rounds, CPU time beside wall time, the spread, the wall-time warning)."""

from duca_common.measure import *  # noqa: F401,F403
from duca_common.measure import __all__  # noqa: F401
