"""Timing, memory and summary statistics for the benchmarks.

* Time: on CUDA, CUDA events around the sampling loop (after a synchronize); on CPU,
  ``time.perf_counter``.
* Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated
  before the run (so the model's weights are not counted). On CPU there is no allocator counter to
  reset, and ``ru_maxrss`` is a lifetime peak, so a background thread samples the resident set size
  (``/proc/self/statm``, Linux) every ``RSS_SAMPLE_SECONDS`` and the peak minus the RSS at the start
  is reported. It misses spikes shorter than the sampling period and counts memory the allocator
  keeps after freeing, so read it as an estimate; the cache's own bytes come exactly from the engine
  (``feature_cache.last_peak_bytes``).
* CPU time: on CPU each run also records the process's CPU seconds (``time.process_time``, less the
  memory poller's own CPU time). On a machine shared with other jobs, wall-clock time stretches with
  the load but CPU time barely does, so ratios of CPU seconds are the steadier comparison; with
  ``--threads 1`` they estimate the wall-clock ratio of a quiet single-core machine.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

# RSS sampling period of the CPU peak-memory estimate: short enough to see one DiT-XL/2 forward
# (~4 s on CPU, environment.md) many times over, long enough to cost nothing.
RSS_SAMPLE_SECONDS = 0.002
STATM = "/proc/self/statm"


def _rss_bytes() -> int:
    with open(STATM) as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssPeak:
    """Peak resident-set growth while the ``with`` body runs (CPU). ``delta`` is None off Linux."""

    def __init__(self) -> None:
        self.available = os.path.exists(STATM)
        self.delta: int | None = None
        self._peak = 0
        self._stop = threading.Event()
        self.poller_cpu_seconds = 0.0     # CPU time of the polling thread itself (to subtract)

    def _poll(self) -> None:
        t0 = time.thread_time()
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(RSS_SAMPLE_SECONDS)
        self.poller_cpu_seconds = time.thread_time() - t0

    def __enter__(self) -> "RssPeak":
        if self.available:
            self._start = _rss_bytes()
            self._peak = self._start
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.available:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes())
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
    with RssPeak() as rss:
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return Timed(seconds, rss.delta, result, cpu - rss.poller_cpu_seconds)


@dataclass(frozen=True)
class Summary:
    """Median and spread of repeated timings."""

    median: float
    min: float
    max: float
    stdev: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Summary":
        if not values:
            raise ValueError("no timings to summarise")
        return cls(statistics.median(values), min(values), max(values),
                   statistics.stdev(values) if len(values) > 1 else 0.0, len(values))

    @property
    def spread(self) -> float:
        """(max - min) / median: the relative range of the repeats."""
        return (self.max - self.min) / self.median if self.median else 0.0
