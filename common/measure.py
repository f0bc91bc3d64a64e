"""Timing, memory and summary statistics: the one measurement every speed-up table of the project uses.

``interleaved(cases, repeats=...)`` runs the cases round robin (A B C A B C ...; warm-up rounds first),
so a change of machine load during the measurement hits every case alike, and records wall time and CPU
time of every call. ``compare(base, other)`` gives the speed-ups (ratio of medians, and the spread of the
per-round ratios) in wall time and in CPU time, and says when wall time is unreliable: when the wall and
CPU speed-ups disagree by more than ``WALL_CPU_DISAGREEMENT``. ``benchmark_speed``, ``reproduce_table``,
the demo and the GPU script all measure this way, so their speed-up columns mean the same thing.

It lives in ``duca_common`` (and ``duca_scripts.measure`` re-exports it) because the demo in ``dit_duca``
uses it too, and ``duca_scripts`` depends on ``dit_duca``: importing from ``duca_scripts`` there would make
the packages import each other.

* Time: on CUDA, CUDA events around the sampling loop (after a synchronize); on CPU,
  ``time.perf_counter``.
* Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated
  before the run (so the model's weights are not counted). On CPU there is no allocator counter to
  reset, so a background thread samples every ``MEMORY_SAMPLE_SECONDS`` the bytes the C library has handed
  out and not freed (``duca_common.allocator.bytes_in_use``, glibc's ``mallinfo2``: the CPU analogue of
  ``memory_allocated``), and the peak minus the value at the start is reported. Off glibc it samples the
  resident set size (``/proc/self/statm``, Linux) instead, which also counts memory the allocator keeps
  after freeing. Either misses spikes shorter than the sampling period, so read it as an estimate; the
  cache's own bytes come exactly from the engine (``feature_cache.last_peak_bytes``).
* The CPU allocator: ``interleaved`` first asks glibc to keep freed memory in the process
  (``duca_common.allocator``), unless ``DUCA_CPU_ALLOCATOR=system``: with glibc's defaults a cached run
  faults its activations in again every full step while its cache is held, a cost the uncached run does
  not pay and that grows with the batch (docs/benchmarks.md, "Images per step").
* CPU time: on CPU each run also records the process's CPU seconds (``time.process_time``, less the
  memory poller's own CPU time). On a machine shared with other jobs, wall-clock time stretches with
  the load but CPU time barely does, so ratios of CPU seconds are the steadier comparison; with
  ``--threads 1`` they estimate the wall-clock ratio of a quiet single-core machine.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .allocator import bytes_in_use, retain_freed_memory, retention_state

__all__ = ["MEMORY_SAMPLE_SECONDS", "WALL_CPU_DISAGREEMENT", "Case", "MemoryPeak", "Series", "Speedup", "Summary",
           "Timed", "compare", "cpu_model", "environment", "interleaved", "timed_run", "wall_warning"]

# Sampling period of the CPU peak-memory estimate: short enough to see one DiT-XL/2 forward
# (~4 s on CPU, environment.md) many times over, long enough to cost nothing.
MEMORY_SAMPLE_SECONDS = 0.002
STATM = "/proc/self/statm"


def _rss_bytes() -> int:
    with open(STATM) as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cpu_memory_probe() -> tuple[Callable[[], int], str] | None:
    """How CPU memory is read: the C library's bytes in use (glibc), else the resident set (Linux), else None."""
    if bytes_in_use() is not None:
        return lambda: bytes_in_use() or 0, "heap bytes in use (glibc mallinfo2)"
    if os.path.exists(STATM):
        return _rss_bytes, "resident set size"
    return None


class MemoryPeak:
    """Peak growth of CPU memory in use while the ``with`` body runs (see the module text for what is
    read; ``source`` names it). ``delta`` is None where neither probe exists."""

    def __init__(self) -> None:
        probe = _cpu_memory_probe()
        self.available = probe is not None
        self._read, self.source = probe if probe is not None else (lambda: 0, "none")
        self.delta: int | None = None
        self._peak = 0
        self._stop = threading.Event()
        self.poller_cpu_seconds = 0.0     # CPU time of the polling thread itself (to subtract)

    def _poll(self) -> None:
        t0 = time.thread_time()
        while not self._stop.is_set():
            self._peak = max(self._peak, self._read())
            time.sleep(MEMORY_SAMPLE_SECONDS)
        self.poller_cpu_seconds = time.thread_time() - t0

    def __enter__(self) -> MemoryPeak:
        if self.available:
            self._start = self._read()
            self._peak = self._start
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.available:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._read())
            self.delta = self._peak - self._start


@dataclass
class Timed:
    seconds: float
    peak_bytes: int | None          # peak memory above the start of the run
    result: object = None
    cpu_seconds: float | None = None   # CPU runs: process CPU time of the run


def timed_run(fn: Callable[[], object], device: torch.device, track_memory: bool = True) -> Timed:
    """Run ``fn`` once; wall-clock seconds and peak memory growth."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        end.record()
        torch.cuda.synchronize(device)
        return Timed(start.elapsed_time(end) / 1000.0, torch.cuda.max_memory_allocated(device) - base, result)
    if not track_memory:
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        return Timed(time.perf_counter() - t0, None, result, time.process_time() - c0)
    with MemoryPeak() as peak:
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return Timed(seconds, peak.delta, result, cpu - peak.poller_cpu_seconds)


@dataclass(frozen=True)
class Summary:
    """Median and spread of repeated timings (or of per-round ratios)."""

    median: float
    min: float
    max: float
    stdev: float
    n: int
    q1: float = 0.0        # lower and upper quartiles (the IQR); equal to the median for n < 2
    q3: float = 0.0

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        values = list(values)
        if not values:
            raise ValueError("no timings to summarise")
        if len(values) > 1:
            q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        else:
            q1 = q3 = values[0]
        return cls(statistics.median(values), min(values), max(values),
                   statistics.stdev(values) if len(values) > 1 else 0.0, len(values), q1, q3)

    @property
    def spread(self) -> float:
        """(max - min) / median: the relative range of the repeats."""
        return (self.max - self.min) / self.median if self.median else 0.0

    def text(self, digits: int = 3, suffix: str = "") -> str:
        """``median (min-max)``, or just the median for a single value."""
        if self.n == 1:
            return f"{self.median:.{digits}g}{suffix}"
        return f"{self.median:.{digits}g}{suffix} ({self.min:.{digits}g}-{self.max:.{digits}g})"


# --------------------------------------------------------------------------------------------------------
# Interleaved repeats
# --------------------------------------------------------------------------------------------------------

# Wall time is called unreliable when the wall-clock and CPU-time speed-ups of a case differ by more than
# this fraction: on an idle machine they agree to a few percent (single-threaded runs: wall = CPU), so a
# larger gap means other jobs took cores from some runs more than from others (the project's machine: 2
# cores shared by several jobs; wall speed-ups of 7-14x for 1.9-6.1x FLOPs were seen there, issue 14).
WALL_CPU_DISAGREEMENT = 0.10


@dataclass
class Case:
    """One thing to time. ``fn`` is timed; ``setup`` (untimed) runs before every call of it, ``record``
    (untimed) after, with the :class:`Timed` and whether the call was a timed one (not a warm-up)."""

    label: str
    fn: Callable[[], object]
    setup: Callable[[], None] | None = None
    record: Callable[[Timed, bool], None] | None = None
    warmup_fn: Callable[[], object] | None = None     # a shorter untimed call for warm-up rounds
    # a context the call runs inside (entered untimed; e.g. a peer's hooks), given whether the round is timed
    context: Callable[[bool], contextlib.AbstractContextManager] | None = None


@dataclass
class Series:
    """The timed calls of one case: wall and CPU seconds and peak memory per round, and the first result."""

    label: str
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)          # empty on CUDA (CPU time says nothing there)
    peaks: list[int | None] = field(default_factory=list)
    result: object = None

    @property
    def wall(self) -> Summary:
        return Summary.of(self.walls)

    @property
    def cpu(self) -> Summary | None:
        return Summary.of(self.cpus) if self.cpus else None

    @property
    def peak_bytes(self) -> int | None:
        return max((p for p in self.peaks if p is not None), default=None)


def interleaved(cases: Sequence[Case], *, repeats: int, warmup: int = 0, device: torch.device | str = "cpu",
                track_memory: bool = False, keep_results: bool = True,
                progress: Callable[[], None] | None = None) -> dict[str, Series]:
    """Time every case ``repeats`` times, round robin (one call of each case per round), after ``warmup``
    untimed rounds. Returns one :class:`Series` per label, in the order given. ``keep_results`` keeps the
    result of each case's first timed call (``Series.result``); ``progress`` is called after every call."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    labels = [c.label for c in cases]
    if len(set(labels)) != len(labels):
        raise ValueError(f"case labels must be unique, got {labels}")
    device = torch.device(device)
    if device.type == "cpu":
        retain_freed_memory()
    series = {c.label: Series(c.label) for c in cases}

    def call(case: Case, timed_round: bool) -> None:
        if case.setup is not None:
            case.setup()
        fn = case.fn if timed_round or case.warmup_fn is None else case.warmup_fn
        with case.context(timed_round) if case.context is not None else contextlib.nullcontext():
            timed = timed_run(fn, device, track_memory=track_memory and timed_round)
        if timed_round:
            s = series[case.label]
            s.walls.append(timed.seconds)
            if timed.cpu_seconds is not None:
                s.cpus.append(timed.cpu_seconds)
            s.peaks.append(timed.peak_bytes)
            if keep_results and len(s.walls) == 1:
                s.result = timed.result
        if case.record is not None:
            case.record(timed, timed_round)
        if progress is not None:
            progress()

    for _ in range(warmup):
        for case in cases:
            call(case, False)
    for _ in range(repeats):
        for case in cases:            # interleaved: a change of machine load affects every case alike
            call(case, True)
    return series


@dataclass(frozen=True)
class Speedup:
    """Speed-up of ``other`` over ``base`` from the same interleaved measurement."""

    wall: float                      # ratio of the median wall times
    wall_rounds: Summary             # the per-round ratios base[r] / other[r] (their spread)
    cpu: float | None                # ratio of the median CPU times (None on CUDA)
    cpu_rounds: Summary | None

    @property
    def wall_cpu_gap(self) -> float | None:
        """|wall / CPU speed-up - 1|: how far wall time strays from CPU time."""
        return None if self.cpu is None or not self.cpu else abs(self.wall / self.cpu - 1.0)

    @property
    def wall_reliable(self) -> bool:
        gap = self.wall_cpu_gap
        return gap is None or gap <= WALL_CPU_DISAGREEMENT

    @property
    def best(self) -> float:
        """The speed-up to report: CPU time when it is measured (CPU runs), else wall time."""
        return self.cpu if self.cpu is not None else self.wall


def compare(base: Series, other: Series) -> Speedup:
    """Speed-ups of ``other`` against ``base`` (both from one :func:`interleaved` call)."""
    if len(base.walls) != len(other.walls):
        raise ValueError(f"{base.label!r} and {other.label!r} have {len(base.walls)} and {len(other.walls)} "
                         f"rounds; compare series of the same interleaved measurement")
    wall_rounds = Summary.of([b / o for b, o in zip(base.walls, other.walls, strict=True) if o > 0] or [math.nan])
    cpu = cpu_rounds = None
    if base.cpus and other.cpus:
        cpu = base.cpu.median / other.cpu.median if other.cpu.median > 0 else math.nan
        cpu_rounds = Summary.of([b / o for b, o in zip(base.cpus, other.cpus, strict=True) if o > 0] or [math.nan])
    wall = base.wall.median / other.wall.median if other.wall.median > 0 else math.nan
    return Speedup(wall, wall_rounds, cpu, cpu_rounds)


def wall_warning(speedups: dict[str, Speedup]) -> str | None:
    """One sentence naming the cases whose wall-clock speed-up strays from the CPU-time one, or None."""
    bad = {label: s for label, s in speedups.items() if not s.wall_reliable}
    if not bad:
        return None
    worst = ", ".join(f"{label} {s.wall:.2f}x wall vs {s.cpu:.2f}x CPU" for label, s in bad.items())
    return (f"wall time is unreliable in this run (other jobs shared the CPU): wall and CPU-time speed-ups differ "
            f"by more than {WALL_CPU_DISAGREEMENT:.0%} for {worst}; read the CPU-time speed-ups")


# ---------------------------------------------------------------------------------------------------
# What a measurement ran on: every report's environment block (the scripts' and the demo's)
# ---------------------------------------------------------------------------------------------------

def _load_average() -> float | None:
    """The 1-minute load average of the machine (None where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


# Read when a script first imports this module, i.e. when it starts and before any model is built or timed: the
# report is assembled after the run, so reading the load only then would label the end as the start.
LOAD_AVERAGE_AT_IMPORT = _load_average()


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's model name (Linux's ``/proc/cpuinfo``; else what ``platform`` knows, or None). Timings and
    float32 rounding follow the CPU: the BLAS picks its kernels by vendor and instruction set, and the project's
    2-core machines have been more than one kind (docs/benchmarks.md)."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def environment(device: torch.device) -> dict:
    """What the numbers were measured on (device, CPU model and instruction set, threads, load) so tables can be
    compared honestly.

    The load average is given twice: when the script started (``LOAD_AVERAGE_AT_IMPORT``) and now, when
    the report is assembled after the run."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if LOAD_AVERAGE_AT_IMPORT is not None:
        env["load_average_1m_at_start"] = LOAD_AVERAGE_AT_IMPORT
        env["load_average_1m_at_end"] = _load_average()
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu_model"] = cpu_model()
        env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # the ISA ATen's CPU kernels dispatch to
        env["cpu_allocator"] = retention_state()
    return env
