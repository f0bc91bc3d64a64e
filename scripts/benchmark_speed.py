"""Speed benchmark: FLOPs (two ways), wall-clock, peak memory, cache bytes and engine overhead, side by side.

    python -m duca_scripts.benchmark_speed --model DiT-XL/2 --steps 50 --methods dit-duca-n3-r95 dit-fora-n3
    python -m duca_scripts.benchmark_speed --model digits --steps 50 --images 8 --repeats 5 --methods duca:n=3

Every method runs in the same invocation as the uncached baseline (added when not listed), with the
same noise, labels and sampler (the real DDIM loop of ``dit_duca.diffusion``; DPM-Solver++ for
PixArt), VAE excluded. Per method:

* reference-formula FLOPs (``reference_flops`` on the run's trace) and measured FLOPs (torch's
  ``FlopCounterMode`` over the whole loop on the meta device), with speed-ups against the baseline;
* wall-clock: ``--warmup`` untimed runs, then ``--repeats`` timed runs; the methods are interleaved
  (round robin) so a change of machine load hits all of them alike. Median, min, max, stdev, and the
  speed-up both as ratio of medians and as median of per-repeat ratios;
* peak memory above the start of the run (CUDA allocator; CPU: sampled heap bytes in use, see ``measure.py``) and the
  bytes the cache holds at its peak (``feature_cache.last_peak_bytes``);
* the engine's own time (``session(profile=True)``: token scoring, gather/scatter, cache writes), as
  seconds and as a fraction of the run. On CPU the timed runs are the profiled runs (profiling only
  reads a clock); on CUDA profiling synchronises, so one extra profiled run per method measures it.

Writes ``<out>/benchmark.json`` and ``<out>/benchmark.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from duca_common.allocator import check_policy
from duca_common.cache import measured_flops, reference_flops, speedup
from duca_common.errors import UsageError, print_error
from duca_common.measure import MEMORY_SAMPLE_SECONDS
from duca_common.outputs import check_output_dir
from duca_common.runtime import HelpFormatter, pick_device
from duca_common.validate import GUIDANCE, SEED, check_number

from .measure import WALL_CPU_DISAGREEMENT, Case, Series, Summary, Timed, compare, interleaved, timed_run, wall_warning
from .methods import MethodSpec, MethodSpecError, parse_methods
from .report import environment, fmt, markdown_table, sig, write_json
from .reproduce_table import DEFAULT_STEPS  # the paper's DDIM-50
from .targets import CFG_SCALE_HELP, TARGET_HELP, Target, TargetError, build_target, model_family

DEFAULT_METHODS = ["dit-fora-n3", "dit-toca-n3-r93", "dit-duca-n3-r95", "dit-duca-n5-r95", "dit-taylorseer-n3-o3"]
PROFILE_MODES = ("auto", "same", "separate", "off")
# Issue 7 targets (reported, not asserted): wall-clock speed-up >= 0.9 x FLOPs speed-up, engine <= 5%.
TARGET_EFFICIENCY = 0.9
TARGET_OVERHEAD = 0.05
# Timed rounds per method: three give a median and a min-max spread (docs/benchmarks.md runs use 2-3).
DEFAULT_REPEATS = 3
DEFAULT_OUT = Path("results/benchmark")   # relative to the working directory; --out overrides


@dataclass
class BenchOptions:
    model: str = "DiT-S/2"
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    images: int = 1
    steps: int = DEFAULT_STEPS
    repeats: int = DEFAULT_REPEATS
    warmup: int = 1
    warmup_steps: int | None = None       # steps of each warm-up run (default: --steps)
    device: str = "cpu"
    compile: bool = False
    seed: int = 0
    threads: int | None = None
    profile: str = "auto"
    ckpt: str | None = None
    cfg_scale: float | None = None
    step_progress: bool = False
    skip_measured_flops: bool = False
    flops_only: bool = False              # meta-device FLOPs table only: no weights, no timing
    out: Path = DEFAULT_OUT

    def validate(self) -> None:
        checks = [(self.images >= 1, "--images", "an integer >= 1"),
                  (self.steps >= 1, "--steps", "an integer >= 1"),
                  (self.repeats >= 1, "--repeats", "an integer >= 1"),
                  (self.warmup >= 0, "--warmup", "an integer >= 0"),
                  (self.warmup_steps is None or 1 <= self.warmup_steps, "--warmup-steps", "an integer >= 1"),
                  (self.threads is None or self.threads >= 1, "--threads", "an integer >= 1"),
                  (self.profile in PROFILE_MODES, "--profile", f"one of {PROFILE_MODES}")]
        for ok, flag, allowed in checks:
            if not ok:
                raise BenchError(f"{flag}={getattr(self, flag[2:].replace('-', '_'))!r} is invalid: allowed {allowed}")
        check_number("--seed", self.seed, SEED)
        check_number("--cfg-scale", self.cfg_scale, GUIDANCE)
        self.device = str(pick_device(self.device))     # the project's one device choice (UsageError if unusable)
        if self.compile and self.device == "cpu":
            print("note: --compile on CPU needs a C++ toolchain and compiles for minutes", file=sys.stderr)


class BenchError(ValueError):
    """A bad option, reported before any model is built."""


@dataclass
class MethodResult:
    label: str
    family: str
    setting: str
    paper_row: str
    reference_flops: int | None = None
    measured_flops: int | None = None
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    peak_memory_bytes: list[int | None] = field(default_factory=list)
    cache_peak_bytes: int = 0
    engine_seconds: dict[str, float] = field(default_factory=dict)   # summed over the profiled runs
    profiled_seconds: float = 0.0                                       # wall time of those runs
    trace_table: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def time(self) -> Summary:
        return Summary.of(self.times)

    @property
    def engine_fraction(self) -> float | None:
        if not self.profiled_seconds or not self.engine_seconds:
            return None
        return sum(self.engine_seconds.values()) / self.profiled_seconds


def compile_blocks(model: torch.nn.Module, backend: str = "inductor") -> None:
    """torch.compile the heavy modules of each block (attention, MLP, cross-attention); the engine's Python
    logic stays eager, so nothing it does breaks a graph (``tests/test_compile.py`` counts zero graph breaks
    under every method). ``dynamic=True`` because partial steps change the token count."""
    for block in model.blocks:
        for name in ("attn", "mlp", "cross_attn"):
            if hasattr(block, name):
                setattr(block, name, torch.compile(getattr(block, name), dynamic=True, backend=backend))


def _add_timers(r: MethodResult, cache, seconds: float) -> None:
    """Add a profiled run's engine timers to the method's sums."""
    if cache.last_timers is None:
        return
    for k, v in asdict(cache.last_timers).items():
        r.engine_seconds[k] = r.engine_seconds.get(k, 0.0) + v
    r.profiled_seconds += seconds


def _count_flops(target: Target, spec: MethodSpec, opts: BenchOptions) -> tuple[int | None, int | None, str]:
    """Reference and measured FLOPs of the whole run, traced on the meta device (no compute)."""
    if spec.is_peer:
        return None, None, ""
    meta = target.build_meta()
    target.configure(spec.config, model=meta)
    noise = torch.empty(opts.images, *target.latent_shape, device="meta")
    labels = torch.zeros(opts.images, dtype=torch.long, device="meta")
    measured = None
    if opts.skip_measured_flops:
        target.sample(noise, labels, opts.steps, model=meta)
    else:
        measured = measured_flops(lambda: target.sample(noise, labels, opts.steps, model=meta))
    trace = meta.feature_cache.last_trace
    return reference_flops(trace, target.dims(opts.images, meta)), measured, trace.table()


def run_benchmark(opts: BenchOptions) -> dict:
    opts.validate()
    specs = parse_methods(opts.methods, model_family=model_family(opts.model))
    peers = [s for s in specs if s.is_peer]
    if peers:
        from .peers import check_peer_support
        check_peer_support(opts.model, [s.peer for s in peers])
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    if opts.flops_only and peers:
        raise BenchError("--flops-only counts on the meta device; peers decide from values: drop them")
    device = torch.device("meta" if opts.flops_only else opts.device)
    target = build_target(opts.model, device=device, ckpt=None if opts.flops_only else opts.ckpt,
                          cfg_scale=opts.cfg_scale)
    if opts.compile:
        compile_blocks(target.model)
    profile_mode = opts.profile if opts.profile != "auto" else ("separate" if device.type == "cuda" else "same")
    results = {s.label: MethodResult(s.label, s.family, s.setting, s.paper_row) for s in specs}

    for spec in tqdm(specs, desc="FLOPs (meta device)", leave=False):
        r = results[spec.label]
        r.reference_flops, r.measured_flops, r.trace_table = _count_flops(target, spec, opts)

    if opts.flops_only:
        return _summarise(opts, specs, results, target, device)
    noise = target.noise(opts.images, opts.seed)
    labels = target.labels(opts.images)

    warm_steps = opts.warmup_steps or opts.steps
    same = profile_mode == "same"

    def case(spec: MethodSpec) -> Case:
        """One method as a :class:`Case` of the interleaved measurement; the record step keeps its trace,
        cache bytes and engine timers (untimed)."""
        r = results[spec.label]
        if spec.is_peer:
            from .peers import attach_peer
            held = {}

            @contextlib.contextmanager
            def peer(timed_round: bool):
                with attach_peer(target, spec.peer, opts.steps if timed_round else warm_steps) as peer_run:
                    held["run"] = peer_run
                    yield

            def record_peer(timed: Timed, timed_round: bool) -> None:
                if timed_round:
                    r.reference_flops = held["run"].reference_flops(target.dims(opts.images))
                    r.trace_table = held["run"].table()

            return Case(spec.label, lambda: target.sample(noise, labels, opts.steps), record=record_peer,
                        warmup_fn=lambda: target.sample(noise, labels, warm_steps), context=peer)

        def record(timed: Timed, timed_round: bool) -> None:
            if not timed_round:
                return
            cache = target.cache
            r.cache_peak_bytes = max(r.cache_peak_bytes, cache.last_peak_bytes)
            if same and cache.last_timers is not None:
                _add_timers(r, cache, timed.seconds)

        return Case(spec.label,
                    lambda: target.sample(noise, labels, opts.steps, profile=same, progress=opts.step_progress),
                    setup=lambda: target.configure(spec.config), record=record,
                    warmup_fn=lambda: target.sample(noise, labels, warm_steps))

    separate = profile_mode == "separate"
    total = len(specs) * (opts.warmup + opts.repeats + (1 if separate else 0))
    with torch.inference_mode(), tqdm(total=total, desc=f"{opts.model} runs") as bar:
        series = interleaved([case(s) for s in specs], repeats=opts.repeats, warmup=opts.warmup, device=device,
                             track_memory=True, keep_results=False, progress=bar.update)
        for spec in specs:
            r = results[spec.label]
            r.times, r.cpu_times, r.peak_memory_bytes = series[spec.label].walls, series[spec.label].cpus, \
                series[spec.label].peaks
        if separate:                  # CUDA: profiling synchronises, so it gets its own run
            for spec in specs:
                if not spec.is_peer:
                    target.configure(spec.config)
                    timed = timed_run(lambda: target.sample(noise, labels, opts.steps, profile=True), device)
                    _add_timers(results[spec.label], target.cache, timed.seconds)
                bar.update()

    return _summarise(opts, specs, results, target, device)


def _summarise(opts: BenchOptions, specs: list[MethodSpec], results: dict[str, MethodResult], target: Target,
               device: torch.device) -> dict:
    base = results[specs[0].label]
    base_series = Series(base.label, base.times, base.cpu_times)
    rows, speedups = [], {}
    for spec in specs:
        r = results[spec.label]
        t = r.time if r.times else None
        sp = compare(base_series, Series(r.label, r.times, r.cpu_times)) if r.times else None
        if sp is not None and spec.label != base.label:
            speedups[spec.label] = sp
        cpu = Summary.of(r.cpu_times) if r.cpu_times else None
        flops_su = speedup(base.reference_flops, r.reference_flops) if r.reference_flops else None
        measured_su = speedup(base.measured_flops, r.measured_flops) if r.measured_flops else None
        wall_su = sp.wall if sp else None
        rows.append({
            "label": r.label, "family": r.family, "setting": r.setting, "paper_row": r.paper_row,
            "reference_flops": r.reference_flops, "measured_flops": r.measured_flops,
            "reference_tflops_per_image": r.reference_flops / opts.images / 1e12 if r.reference_flops else None,
            "measured_tflops_per_image": r.measured_flops / opts.images / 1e12 if r.measured_flops else None,
            "flops_speedup": flops_su, "measured_flops_speedup": measured_su,
            "seconds": r.times, "seconds_median": t and t.median, "seconds_min": t and t.min,
            "seconds_max": t and t.max, "seconds_stdev": t and t.stdev, "spread": t and t.spread,
            "wall_speedup": wall_su,
            "wall_speedup_median_of_repeats": sp.wall_rounds.median if sp else None,
            "wall_speedup_rounds_min": sp.wall_rounds.min if sp else None,
            "wall_speedup_rounds_max": sp.wall_rounds.max if sp else None,
            "wall_over_flops": wall_su / flops_su if flops_su and wall_su else None,
            "cpu_seconds": r.cpu_times,
            "cpu_seconds_median": cpu and cpu.median, "cpu_seconds_min": cpu and cpu.min,
            "cpu_seconds_max": cpu and cpu.max,
            "cpu_speedup": sp.cpu if sp else None,
            "cpu_speedup_rounds_min": sp.cpu_rounds.min if sp and sp.cpu_rounds else None,
            "cpu_speedup_rounds_max": sp.cpu_rounds.max if sp and sp.cpu_rounds else None,
            "wall_reliable": sp.wall_reliable if sp else None,
            "cpu_over_flops": None,
            "peak_memory_bytes": max((m for m in r.peak_memory_bytes if m is not None), default=None),
            "cache_peak_bytes": r.cache_peak_bytes,
            "engine_seconds": r.engine_seconds, "engine_fraction": r.engine_fraction,
            "trace": r.trace_table, "notes": r.notes,
        })
    for row in rows:
        if row["cpu_speedup"] and row["flops_speedup"]:
            row["cpu_over_flops"] = row["cpu_speedup"] / row["flops_speedup"]
    data = {"options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
            "environment": environment(device), "model": target.name,
            "measurement": (f"interleaved: {opts.warmup} warm-up round(s), then {opts.repeats} timed round(s), one run "
                            f"of every method per round; speed-up = ratio of medians, (min-max) = the per-round "
                            f"ratios; wall time is flagged unreliable when wall and CPU speed-ups differ by more "
                            f"than {WALL_CPU_DISAGREEMENT:.0%}"),
            "wall_warning": wall_warning(speedups),
            "targets": {"wall_over_flops_at_least": TARGET_EFFICIENCY, "engine_fraction_at_most": TARGET_OVERHEAD},
            "memory_note": ("CUDA max_memory_allocated above the start of the run" if device.type == "cuda" else
                            f"CPU: peak of RSS sampled every {MEMORY_SAMPLE_SECONDS * 1000:g} ms above the RSS at the "
                            f"start of the run (estimate)"),
            "flops_note": ("reference = hand formula of the reference code over the transformer blocks "
                           "(paper.md section 4); measured = torch FlopCounterMode over the whole sampling loop on "
                           "the meta device (embedders, final layer and all CFG rows included; VAE excluded)"),
            "rows": rows}
    return data


def render_flops_markdown(data: dict) -> str:
    o = data["options"]
    head = (f"**{data['model']}**, {o['steps']} steps, {o['images']} image(s) + CFG twin, "
            f"FLOPs counted on the meta device\n\n")
    headers = ["method", "setting", "TFLOPs/img (ref formula)", "FLOPs speed-up", "measured TFLOPs/img",
               "measured speed-up", "paper row (paper.md)"]
    rows = [[r["label"], r["setting"], sig(r["reference_tflops_per_image"]), fmt(r["flops_speedup"], 2, "x"),
             sig(r["measured_tflops_per_image"]), fmt(r["measured_flops_speedup"], 2, "x"), r["paper_row"] or "-"]
            for r in data["rows"]]
    return head + markdown_table(headers, rows)


def render_markdown(data: dict) -> str:
    o = data["options"]
    if o.get("flops_only"):
        return render_flops_markdown(data)
    head = (f"**{data['model']}**, {o['steps']} steps, {o['images']} image(s) + CFG twin, {o['repeats']} repeat(s), "
            f"device {data['environment']['device']} ({data['environment']['threads']} threads)\n\n")
    headers = ["method", "setting", "TFLOPs/img (ref)", "FLOPs speed-up", "measured FLOPs speed-up",
               "wall s median (min-max)", "wall speed-up (rounds min-max)", "wall / FLOPs",
               "CPU s median (min-max)", "CPU speed-up (rounds min-max)", "CPU / FLOPs", "engine %",
               "scoring / gather+scatter / writes s", "cache MiB", "peak mem MiB"]
    rows = []
    for r in data["rows"]:
        e = r["engine_seconds"]
        eng = "-" if not e else f"{sig(e['scoring'], 3)} / {sig(e['gather_scatter'], 3)} / {sig(e['cache_writes'], 3)}"
        rows.append([r["label"], r["setting"], sig(r["reference_tflops_per_image"]),
                     fmt(r["flops_speedup"], 2, "x"), fmt(r["measured_flops_speedup"], 2, "x"),
                     _med_range(r["seconds_median"], r["seconds_min"], r["seconds_max"]),
                     _ratio_range(r["wall_speedup"], r["wall_speedup_rounds_min"], r["wall_speedup_rounds_max"]),
                     fmt(r["wall_over_flops"], 2),
                     _med_range(r["cpu_seconds_median"], r.get("cpu_seconds_min"), r.get("cpu_seconds_max")),
                     _ratio_range(r["cpu_speedup"], r.get("cpu_speedup_rounds_min"), r.get("cpu_speedup_rounds_max")),
                     fmt(r["cpu_over_flops"], 2),
                     fmt(None if r["engine_fraction"] is None else 100 * r["engine_fraction"], 1),
                     eng, sig(r["cache_peak_bytes"] / 2 ** 20, 3),
                     fmt(None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2 ** 20, 0)])
    note = f"\n\n{o['repeats']} interleaved rounds. " + (f"Note: {data['wall_warning']}." if data.get("wall_warning")
                                                         else "Wall and CPU-time speed-ups agree.")
    return head + markdown_table(headers, rows) + note


def _med_range(median, lo, hi) -> str:
    if median is None:
        return "-"
    return sig(median, 3) if lo is None or lo == hi else f"{sig(median, 3)} ({sig(lo, 3)}-{sig(hi, 3)})"


def _ratio_range(value, lo, hi) -> str:
    if value is None:
        return "-"
    return fmt(value, 2, "x") if lo is None or lo == hi else f"{fmt(value, 2, 'x')} ({lo:.2f}-{hi:.2f})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    d = BenchOptions()
    p.add_argument("--model", default=d.model, help=TARGET_HELP)
    p.add_argument("--methods", nargs="+", default=d.methods,
                   help="presets, engine methods (duca:n=3,r=0.95) or cache-dit peers; 'none' is added first")
    p.add_argument("--images", type=int, default=d.images, help="images per run (the forward batch is twice this: CFG)")
    p.add_argument("--steps", type=int, default=d.steps, help="sampling steps")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed runs per method")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed runs per method before timing")
    p.add_argument("--warmup-steps", type=int, default=None, help="steps of each warm-up run (default --steps)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--compile", action="store_true", help="torch.compile each block's attention and MLP")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the initial noise (the same for every method)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--profile", default=d.profile, choices=PROFILE_MODES,
                   help="engine timers: in the timed runs (same), in one extra run (separate), off; "
                        "auto = same on CPU, separate on CUDA")
    p.add_argument("--ckpt", default=None, help="DiT weights (default: random weights, the official initialisation)")
    p.add_argument("--cfg-scale", type=float, default=None, help=CFG_SCALE_HELP)
    p.add_argument("--step-progress", action="store_true", help="a progress bar per sampling loop (long runs)")
    p.add_argument("--skip-measured-flops", action="store_true", help="only the hand-formula FLOPs (faster meta pass)")
    p.add_argument("--flops-only", action="store_true",
                   help="only the FLOPs columns, counted on the meta device (no weights, no timing; any model size)")
    p.add_argument("--out", type=Path, default=d.out, help="output folder for benchmark.json and benchmark.md")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    opts = BenchOptions(**{k: v for k, v in vars(args).items()})
    try:
        check_output_dir(opts.out, "--out")          # before any model: an unwritable --out loses no work
        check_policy()
        t0 = time.perf_counter()
        data = run_benchmark(opts)
    except (BenchError, MethodSpecError, TargetError, UsageError) as exc:
        raise SystemExit(print_error(exc)) from None
    data["total_seconds"] = time.perf_counter() - t0
    md = render_markdown(data)
    write_json(opts.out / "benchmark.json", data)
    (opts.out / "benchmark.md").write_text(md)
    print(md)
    print(f"wrote {opts.out / 'benchmark.json'} and {opts.out / 'benchmark.md'}")
    return data


if __name__ == "__main__":
    main()
