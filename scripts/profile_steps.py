"""Where a cached run loses time against the FLOPs model: CPU time per step kind, and an op profile.

    python -m duca_scripts.profile_steps --model DiT-XL/2 --steps 20 --method dit-duca-n3-r95 --threads 1

Runs one sampling run of ``--method`` (and, with ``--baseline-steps``, a few uncached forwards) with the
real DDIM loop, records the CPU time of every model evaluation and its reference-formula FLOPs
(``duca_common.cache.reference_flops`` on that step alone), and groups the steps by kind: full (every
module computed), conservative (some modules reused or partially recomputed), aggressive (every block
skipped). For each kind: the mean CPU seconds, the mean FLOPs, and the time per FLOP relative to the
full step (1.00 = as fast per FLOP as a full step; above 1 = time the FLOPs model does not see). With
``--profile-ops`` one typical step of each kind (CPU time nearest the kind's median) is profiled with
``torch.profiler`` and the top operators are listed. A full forward of DiT-XL/2 takes ~4-8 s on the
project's CPU, so profile a few steps, not runs. A progress bar per sampling run goes to stderr
(``--no-progress``: none). With ``--out``: ``profile.json``, ``profile.md`` and ``profile.png`` (CPU seconds and
FLOPs of every step, coloured by kind).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from duca_common.allocator import check_policy, retain_freed_memory
from duca_common.cache import reference_flops
from duca_common.cache.plan import Action
from duca_common.cache.trace import NOT_RUN
from duca_common.errors import UsageError, run_or_exit
from duca_common.runtime import HelpFormatter
from duca_common.validate import COUNT, NON_NEGATIVE_INT, STEPS, check_numbers

from .methods import MethodSpec, MethodSpecError, parse_methods
from .report import environment, markdown_table, pyplot, save_figure, write_json
from .targets import TARGET_HELP, TargetError, build_target, model_family

KINDS = ("full", "conservative", "aggressive")
# Defaults: the DiT-XL/2 CPU profile of docs/benchmarks.md (issue 14.3): DuCa N=3 R=95% at DDIM-20, one
# torch thread (the CPU results' setting, "Threads on a shared machine").
DEFAULT_MODEL = "DiT-XL/2"
DEFAULT_METHOD = "dit-duca-n3-r95"
DEFAULT_STEPS = 20
DEFAULT_THREADS = 1
DEFAULT_TOP_OPS = 15          # operators listed per profiled step (by self CPU time; a table that fits a screen)
NOISE_SEED = 0                # the benchmark's and the table's default --seed


def step_kind(trace, p: int) -> str:
    acts = trace.actions[p]
    ran = acts[acts != NOT_RUN]
    if trace.trunk_reused[p] and all(a == int(Action.SKIP) for a in ran):
        return "aggressive"
    if len(ran) and all(a == int(Action.FULL) for a in ran):
        return "full"
    return "conservative"


def step_flops(trace, p: int, dims) -> int:
    one = copy.deepcopy(trace)
    mask = np.arange(one.num_steps) != p
    one.actions[mask] = NOT_RUN
    one.tokens[mask] = 0
    return reference_flops(one, dims)


def timed_forwards(model: torch.nn.Module) -> list[float]:
    """Wrap ``model.forward`` so each call's CPU seconds are appended to the returned list."""
    times: list[float] = []
    plain = model.forward

    def forward(*args, **kwargs):
        c0 = time.process_time()
        out = plain(*args, **kwargs)
        times.append(time.process_time() - c0)
        return out

    model.forward = forward
    return times


def cached_method(opts: argparse.Namespace) -> MethodSpec:
    """--method parsed for --model's preset family; the uncached baseline is refused (nothing to profile)."""
    specs = [s for s in parse_methods([opts.method], model_family=model_family(opts.model)) if not s.is_baseline]
    if not specs:
        raise UsageError(f"--method {opts.method!r} is the uncached baseline, which every profile times anyway "
                         f"(--baseline-steps); pass a cached method such as {DEFAULT_METHOD}")
    if specs[0].is_peer:
        raise UsageError(f"--method {opts.method!r} is a peer library's cache, which hooks the blocks itself: its "
                         f"steps would all read as full here; profile an engine method such as {DEFAULT_METHOD}")
    return specs[0]


def check_options(opts: argparse.Namespace) -> MethodSpec:
    """Numbers and --method refused in one line before any model is built (an unknown --model: by build_target,
    before it builds anything); the method to profile."""
    check_numbers([("--steps", opts.steps, STEPS), ("--images", opts.images, COUNT),
                   ("--baseline-steps", opts.baseline_steps, NON_NEGATIVE_INT),
                   ("--threads", opts.threads, NON_NEGATIVE_INT), ("--top", opts.top, COUNT)])
    return cached_method(opts)


def run(opts: argparse.Namespace, spec: MethodSpec) -> dict:
    if opts.threads:
        torch.set_num_threads(opts.threads)
    retain_freed_memory()                      # as every interleaved timing does (duca_common.allocator)
    target = build_target(opts.model, device="cpu")
    model = target.model
    noise, labels = target.noise(opts.images, NOISE_SEED), target.labels(opts.images)
    dims = target.dims(opts.images)
    with torch.inference_mode():
        target.configure(parse_methods([])[0].config)
        target.sample(noise, labels, 1)                               # warm-up forward (untimed)
        times = timed_forwards(model)
        base_times = []
        if opts.baseline_steps:
            target.sample(noise, labels, opts.baseline_steps, progress=opts.progress)
            base_times = list(times)
            times.clear()
        target.configure(spec.config)
        target.sample(noise, labels, opts.steps, progress=opts.progress)
        trace = model.feature_cache.last_trace
        del model.forward
    kinds: dict[str, list[int]] = defaultdict(list)
    for p in range(trace.num_steps):
        kinds[step_kind(trace, p)].append(p)
    flops = [step_flops(trace, p, dims) for p in range(trace.num_steps)]
    full_time = statistics.mean([times[p] for p in kinds["full"]]) if kinds["full"] else None
    full_flops = statistics.mean([flops[p] for p in kinds["full"]]) if kinds["full"] else None
    rows = []
    for kind in KINDS:
        ps = kinds.get(kind, [])
        if not ps:
            continue
        t, f = statistics.mean(times[p] for p in ps), statistics.mean(flops[p] for p in ps)
        rows.append({"kind": kind, "steps": len(ps), "cpu_seconds_mean": t, "tflops_mean": f / 1e12,
                     "time_fraction_of_full": t / full_time if full_time else None,
                     "flops_fraction_of_full": f / full_flops if full_flops else None,
                     "time_per_flop_vs_full": (t / f) / (full_time / full_flops) if f and full_time else None,
                     # seconds per step the FLOPs model does not explain (the full step's rate applied to f)
                     "excess_cpu_seconds": t - f * full_time / full_flops if full_time else None})
    total_t, total_f = sum(times), sum(flops)
    base_step = statistics.mean(base_times) if base_times else full_time
    data = {"environment": environment(torch.device("cpu")), "model": opts.model, "method": spec.label,
            "steps": opts.steps, "images": opts.images, "per_step_cpu_seconds": times,
            "per_step_tflops": [f / 1e12 for f in flops],
            "per_step_kind": [step_kind(trace, p) for p in range(trace.num_steps)],
            "uncached_step_cpu_seconds": base_times, "rows": rows, "trace": trace.table(),
            "run_cpu_seconds": total_t, "run_tflops": total_f / 1e12,
            "cpu_speedup_estimate": base_step * opts.steps / total_t,
            "flops_speedup": (full_flops * opts.steps / total_f) if full_flops else None}
    data["cpu_over_flops"] = data["cpu_speedup_estimate"] / data["flops_speedup"] if data["flops_speedup"] else None
    # the cached run's full step against an uncached step: the same products plus the engine's scoring and cache
    # writes (1.0 = the full steps cost what the FLOPs model says; above = the cached run pays it 1 / N of its steps)
    data["full_over_uncached_step"] = (full_time / statistics.mean(base_times)
                                       if base_times and full_time else None)
    if opts.profile_ops:
        typical = {k: typical_step(ps, times) for k, ps in kinds.items() if ps}
        data["profiled_steps"] = typical
        data["ops"] = profile_ops(target, spec, noise, labels, trace, typical, opts)
    return data


def typical_step(steps: list[int], times: list[float]) -> int:
    """The step of ``steps`` whose CPU time is nearest the kind's median: a kind's first step can be
    atypical (DiT-XL/2 DuCa: the first conservative steps recompute 0 of 256 tokens, later ones dozens)."""
    median = statistics.median(times[p] for p in steps)
    return min(steps, key=lambda p: (abs(times[p] - median), p))


def profile_ops(target, spec, noise, labels, trace, typical: dict[str, int], opts) -> dict[str, list[dict]]:
    """torch.profiler op table of one typical step of each kind (the run is replayed up to that step)."""
    from torch.profiler import ProfilerActivity, profile

    model = target.model
    out: dict[str, list[dict]] = {}
    wanted = {typical[k]: k for k in KINDS if k in typical}
    calls = [0]
    plain = model.forward

    def forward(*args, **kwargs):
        p = calls[0]
        calls[0] += 1
        if p not in wanted:
            return plain(*args, **kwargs)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            result = plain(*args, **kwargs)
        ops = []
        for e in sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)[:opts.top]:
            ops.append({"op": e.key, "shapes": str(e.input_shapes)[:80], "calls": e.count,
                        "self_cpu_ms": e.self_cpu_time_total / 1000})
        out[wanted[p]] = ops
        return result

    model.forward = forward
    try:
        with torch.inference_mode():
            target.configure(spec.config)
            target.sample(noise, labels, opts.steps, progress=opts.progress)
    finally:
        del model.forward
    return out


def render(data: dict) -> str:
    head = (f"**{data['model']}**, {data['method']}, {data['steps']} steps, {data['images']} image(s) + CFG twin, "
            f"CPU seconds per model evaluation "
            f"({data['environment']['threads']} threads)\n\n")
    def f(v, spec):
        return "-" if v is None else format(v, spec)

    t = markdown_table(["step kind", "steps", "CPU s / step", "TFLOPs / step", "time vs full", "FLOPs vs full",
                        "time per FLOP vs full", "CPU s / step beyond the FLOPs model"],
                       [[r["kind"], str(r["steps"]), f(r["cpu_seconds_mean"], ".3f"), f(r["tflops_mean"], ".4f"),
                         f(r["time_fraction_of_full"], ".3f"), f(r["flops_fraction_of_full"], ".3f"),
                         f(r["time_per_flop_vs_full"], ".2f"), f(r["excess_cpu_seconds"], ".3f")]
                        for r in data["rows"]])
    tail = (f"\n\nrun: {data['run_cpu_seconds']:.1f} CPU s; FLOPs speed-up {data['flops_speedup']:.3f}x, CPU speed-up "
            f"(vs {'measured uncached steps' if data['uncached_step_cpu_seconds'] else 'the full steps'}) "
            f"{data['cpu_speedup_estimate']:.3f}x = {data['cpu_over_flops']:.3f} of the FLOPs speed-up\n")
    if data.get("full_over_uncached_step") is not None:
        tail += (f"\nfull step of the cached run against an uncached step: {data['full_over_uncached_step']:.3f}x the "
                 f"CPU time ({statistics.mean(data['uncached_step_cpu_seconds']):.3f} s uncached)\n")
    for kind, ops in data.get("ops", {}).items():
        tail += f"\nTop operators, {kind} step {data['profiled_steps'][kind]} (self CPU ms):\n\n" + markdown_table(
            ["op", "input shapes", "calls", "self CPU ms"],
            [[o["op"], o["shapes"].replace("|", "/"), str(o["calls"]), f"{o['self_cpu_ms']:.1f}"] for o in ops]) + "\n"
    return head + t + tail


def profile_plot(data: dict, path: Path) -> Path:
    """CPU seconds (top) and reference TFLOPs (bottom) of every model evaluation, bars coloured by step kind;
    the measured uncached step's mean (or the full steps' mean) as a line."""
    plt = pyplot()
    from matplotlib.patches import Patch

    times, flops = data["per_step_cpu_seconds"], data["per_step_tflops"]
    kinds = data["per_step_kind"]
    colours = {"full": "tab:red", "conservative": "tab:orange", "aggressive": "tab:green"}
    steps = range(len(times))
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.3 * len(times) + 2), 5.6), sharex=True)
    for ax, values, label in ((axes[0], times, "CPU s"), (axes[1], flops, "TFLOPs (reference formula)")):
        ax.bar(steps, values, color=[colours[k] for k in kinds])
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    base = data["uncached_step_cpu_seconds"]
    if base:
        axes[0].axhline(sum(base) / len(base), color="grey", linestyle="--", label="uncached step (mean)")
    handles = axes[0].get_legend_handles_labels()[0]
    handles += [Patch(color=colour, label=kind) for kind, colour in colours.items() if kind in kinds]
    axes[0].legend(handles=handles, fontsize=8)
    axes[1].set_xlabel("model evaluation (sampling order)")
    fig.suptitle(f"{data['model']}, {data['method']}: CPU time and FLOPs per step\n"
                 f"{data['images']} image(s) + CFG twin, {data['environment']['threads']} thread(s)", fontsize=9)
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help=TARGET_HELP)
    p.add_argument("--method", default=DEFAULT_METHOD,
                   help="the cached method: a preset (dit-duca-n3-r95) or an engine method string (duca:n=3,r=0.95)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="sampling steps of the cached run")
    p.add_argument("--images", type=int, default=1, help="images per step (the forward batch is twice this: CFG)")
    p.add_argument("--baseline-steps", type=int, default=0, help="uncached forwards timed first (0: none)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--profile-ops", action="store_true",
                   help="profile one typical step of each kind (full, conservative, aggressive) with "
                        "torch.profiler and list its top operators")
    p.add_argument("--top", type=int, default=DEFAULT_TOP_OPS,
                   help="operators listed per profiled step, by self CPU time (with --profile-ops)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar per sampling run")
    p.add_argument("--out", type=Path, default=None, help="folder for profile.json / profile.md / profile.png")
    return p


def main(argv: list[str] | None = None) -> dict:
    p = build_parser()
    opts = p.parse_args(argv)
    spec = run_or_exit(lambda: check_options(opts), (UsageError, MethodSpecError))
    run_or_exit(check_policy)
    data = run_or_exit(lambda: run(opts, spec), (UsageError, TargetError))
    md = render(data)
    print(md)
    if opts.out is not None:
        opts.out.mkdir(parents=True, exist_ok=True)
        write_json(opts.out / "profile.json", data)
        (opts.out / "profile.md").write_text(md)
        profile_plot(data, opts.out / "profile.png")
    return data


if __name__ == "__main__":
    main()
