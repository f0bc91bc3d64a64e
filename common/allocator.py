"""The CPU allocator under the timings: count the bytes in use, and keep freed memory (the default for timings).

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults, memory freed at the top
of the heap is given back to the kernel (``M_TRIM_THRESHOLD``) and large blocks get their own mapping that
is unmapped on free (``M_MMAP_THRESHOLD``), so the next allocation of the same size faults every page in
again. A cached run holds its cache while each step's activations come and go, and faults differently
from an uncached one: at DiT-XL/2 with the defaults each full step of a DuCa run faulted 22-38 thousand
pages (90-150 MB) in where an uncached step faulted none, and none with freed memory kept
(docs/benchmarks.md, "The CPU allocator").
PyTorch's CUDA allocator keeps freed blocks for reuse, and so do jemalloc and tcmalloc, which PyTorch's CPU
tuning guide recommends; ``retain_freed_memory`` asks glibc to do the same.

Timings keep freed memory by default (``DUCA_CPU_ALLOCATOR=retain``): ``measure.interleaved`` and
``profile_steps`` call ``retain_freed_memory``. Under glibc's defaults the faults are a cost of the cached run
alone that grows with the batch: DuCa N=3 at DiT-XL/2 measured 0.906 of its FLOPs speed-up in CPU time at
4 images + CFG with the defaults and 0.955 with freed memory kept, the uncached run equally fast under both
(205-209 s); at 1 image + CFG the two policies measured 0.932 and 0.935. ``DUCA_CPU_ALLOCATOR=system``
leaves glibc untouched, for A/B runs.

Whatever the allocator keeps, ``bytes_in_use`` (glibc's ``mallinfo2``: bytes handed out and not freed)
measures a run's peak memory, like ``torch.cuda.max_memory_allocated`` on a GPU; the resident set size
does not once freed memory is kept (a run that reuses it does not grow the resident set).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from .errors import UsageError

__all__ = ["ALLOCATOR_ENV", "DEFAULT_POLICY", "POLICIES", "bytes_in_use", "check_policy", "retain_freed_memory",
           "retention_state"]

ALLOCATOR_ENV = "DUCA_CPU_ALLOCATOR"
POLICIES = ("retain", "system")           # keep freed memory for reuse / leave glibc untouched
DEFAULT_POLICY = "retain"

# mallopt parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# mallopt takes a C int, so the largest settable value is INT_MAX. Give the top of the heap back only when
# 2 GiB of it are free (a sampling run never frees that much at once), and serve blocks below 1 GiB from
# the heap: the largest DiT-XL/2 activation at 512 px is ~38 MB (2 x 1024 x 4608 fp32), far below.
RETAIN_TRIM_BYTES = 2**31 - 1
RETAIN_MMAP_BYTES = 1 << 30


class _MallInfo2(ctypes.Structure):
    # struct mallinfo2 (glibc >= 2.33), every field a size_t.
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "mallinfo2")):    # not glibc, or glibc < 2.33
        return None
    libc.mallinfo2.restype = _MallInfo2
    return libc


_LIBC = _glibc()
_retained = False


def _mode() -> str:
    return os.environ.get(ALLOCATOR_ENV, DEFAULT_POLICY)


def check_policy() -> str:
    """The policy ``DUCA_CPU_ALLOCATOR`` asks for; a ``UsageError`` naming the fix for any other value. Timing
    entry points call it with their other input checks, before a model is built."""
    mode = _mode()
    if mode not in POLICIES:
        raise UsageError(f"{ALLOCATOR_ENV}={mode!r}: use 'retain' (keep freed memory for reuse, the default) or "
                         f"'system' (the C library's defaults), or unset it")
    return mode


def retain_freed_memory() -> bool:
    """Unless ``DUCA_CPU_ALLOCATOR=system``, ask glibc to keep freed memory for reuse (see the module text).
    True when the process now keeps it (also under ``system`` once an earlier call turned it on: it cannot
    be undone); False under ``system`` otherwise, or where the C library is not glibc >= 2.33."""
    global _retained
    mode = check_policy()
    if _retained:
        return True
    if mode == "system" or _LIBC is None:
        return False
    ok = _LIBC.mallopt(ctypes.c_int(_M_TRIM_THRESHOLD), ctypes.c_int(RETAIN_TRIM_BYTES)) == 1
    ok = _LIBC.mallopt(ctypes.c_int(_M_MMAP_THRESHOLD), ctypes.c_int(RETAIN_MMAP_BYTES)) == 1 and ok
    _retained = ok
    return ok


def retention_state() -> str:
    """The allocator policy CPU timings of this process run under, for the environment block of a report."""
    if _LIBC is None:
        return "not glibc: the C library's allocator, untouched"
    if _mode() == "retain":
        return f"glibc, freed memory retained ({ALLOCATOR_ENV}=retain, the default)"
    if _retained:   # turned on earlier in this process; mallopt's thresholds cannot be given back to glibc
        return f"glibc, freed memory retained (turned on earlier in this process; {ALLOCATOR_ENV}=system came later)"
    return f"glibc defaults ({ALLOCATOR_ENV}=system)"


def bytes_in_use() -> int | None:
    """Bytes the C library has handed out and not yet freed (heap and mapped blocks), or None off glibc."""
    if _LIBC is None:
        return None
    info = _LIBC.mallinfo2()
    return int(info.uordblks + info.hblkhd)
