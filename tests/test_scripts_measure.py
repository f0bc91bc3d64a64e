"""The one timing method (duca_scripts.measure): interleaved rounds, CPU beside wall, spread, wall warning."""

from __future__ import annotations

import math

import pytest

from duca_scripts.measure import WALL_CPU_DISAGREEMENT, Case, Series, Summary, compare, interleaved, wall_warning


def test_rounds_are_interleaved_after_untimed_warmup():
    calls, setups, records = [], [], []
    cases = [Case(label, fn=(lambda label=label: calls.append(label) or label),
                  setup=(lambda label=label: setups.append(label)),
                  record=(lambda timed, timed_round, label=label: records.append((label, timed_round))),
                  warmup_fn=(lambda label=label: calls.append(label.lower())))
             for label in ("A", "B", "C")]
    series = interleaved(cases, repeats=3, warmup=1)
    assert calls == ["a", "b", "c"] + ["A", "B", "C"] * 3                 # warm-up round, then A B C A B C ...
    assert setups == ["A", "B", "C"] * 4
    assert records == [(x, False) for x in "ABC"] + [(x, True) for x in "ABC"] * 3
    for label in "ABC":
        s = series[label]
        assert len(s.walls) == len(s.cpus) == 3 and s.result == label    # CPU time beside wall time
        assert all(w >= 0 for w in s.walls) and all(c >= 0 for c in s.cpus)
    assert list(series) == ["A", "B", "C"]


def test_context_wraps_every_call_and_bad_arguments_are_refused():
    entered = []

    class Ctx:
        def __init__(self, timed_round):
            self.timed_round = timed_round

        def __enter__(self):
            entered.append(self.timed_round)

        def __exit__(self, *exc):
            return False

    interleaved([Case("A", fn=lambda: None, context=Ctx)], repeats=2, warmup=1)
    assert entered == [False, True, True]
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        interleaved([Case("A", fn=lambda: None)], repeats=0)
    with pytest.raises(ValueError, match="unique"):
        interleaved([Case("A", fn=lambda: None), Case("A", fn=lambda: None)], repeats=1)


def test_summary_median_range_and_quartiles():
    s = Summary.of([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s.median, s.min, s.max, s.n) == (3.0, 1.0, 5.0, 5)
    assert (s.q1, s.q3) == (2.0, 4.0)
    assert s.text() == "3 (1-5)" and Summary.of([2.5]).text() == "2.5"
    with pytest.raises(ValueError, match="no timings"):
        Summary.of([])


def test_speedups_are_ratios_of_medians_with_per_round_spread():
    base = Series("none", walls=[10.0, 12.0, 11.0], cpus=[10.0, 10.0, 10.0])
    fast = Series("duca", walls=[5.0, 4.0, 5.5], cpus=[4.0, 4.0, 4.0])
    sp = compare(base, fast)
    assert sp.wall == pytest.approx(11.0 / 5.0)
    assert (sp.wall_rounds.min, sp.wall_rounds.max) == (pytest.approx(2.0), pytest.approx(3.0))
    assert sp.cpu == pytest.approx(2.5) and sp.cpu_rounds.min == sp.cpu_rounds.max == pytest.approx(2.5)
    assert sp.best == sp.cpu
    assert sp.wall_cpu_gap == pytest.approx(abs(2.2 / 2.5 - 1))          # 12% > the threshold
    assert not sp.wall_reliable and WALL_CPU_DISAGREEMENT < 0.12
    warning = wall_warning({"duca": sp})
    assert "duca 2.20x wall vs 2.50x CPU" in warning and "unreliable" in warning
    agree = compare(base, Series("fora", walls=[4.4, 4.4, 4.4], cpus=[4.0, 4.0, 4.0]))
    assert agree.wall_reliable and wall_warning({"fora": agree}) is None
    with pytest.raises(ValueError, match="same interleaved measurement"):
        compare(base, Series("x", walls=[1.0], cpus=[1.0]))


def test_cuda_style_series_without_cpu_time_report_wall():
    sp = compare(Series("none", walls=[2.0, 2.0]), Series("fora", walls=[1.0, 1.0]))
    assert sp.cpu is None and sp.best == 2.0 and sp.wall_reliable and sp.wall_cpu_gap is None
    assert math.isclose(sp.wall_rounds.median, 2.0)
