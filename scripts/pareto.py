"""The quality-per-FLOP frontier on an embedded model: every method and peer, same seeds, one table and plot.

    python -m duca_scripts.pareto --model digits --out docs/results/pareto_digits16
    python -m duca_scripts.pareto --model digits256 --out docs/results/pareto_digits256

Every row samples the same ``--images`` (noise seeded by ``--seed``; labels: the classes in turn, or one
fixed class for ImageNet models) with DDIM ``--steps``; each engine method runs at cycle lengths
``--intervals`` and each cache-dit peer at residual thresholds ``--thresholds``, so the rows span about
1.5x to 6x FLOPs speed-up. diffusers' own cache hooks run on the
diffusers copy of the DiT (``duca_scripts.diffusers_peers``, same sampler and seeds): FirstBlockCache at
``--thresholds`` (the same relative residual change as cache-dit's), Pyramid Attention Broadcast and
TaylorSeerCache at ``--intervals`` (attention every N-th evaluation; a full step every N steps), MagCache at
``--magcache-thresholds``, FasterCache with its unconditional half computed every N-th evaluation
(``--intervals``). Ranking the methods needs scores
against the uncached run of the same seeds (``dit_duca.digits_metrics.fidelity_scores``): PSNR, the
paired feature distance in the digits classifier's penultimate space, and the Frechet distance between
the cached set and the uncached set in that space; the class accuracy is reported next to them.

Speed-ups: the FLOPs speed-up of the reference formula (the x axis of the frontier, deterministic) and
the CPU-time speed-up, measured interleaved: the uncached run is timed again after every
``--baseline-every`` rows, and each row is divided by the mean of the uncached timings just before and
just after it, so a change of machine load tilts only the rows near it.

The frontier table interpolates each family's scores linearly in the FLOPs speed-up at 1.5x, 2x, ..., 6x
(no extrapolation: '-' outside a family's measured range), and names, at the goal speed-ups, the best
project method, the best peer and the margin. Outputs in ``--out``: ``rows.csv`` (every run),
``frontier.md`` / ``frontier.csv`` (the interpolated table), ``pareto.png`` and ``pareto.json``.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from duca_common.allocator import check_policy
from duca_common.cache import Action, Trace, get_method, reference_flops, speedup
from duca_common.cache.selectors import fresh_token_count
from duca_common.errors import UsageError, print_error
from duca_common.measure import Case, interleaved
from duca_common.outputs import check_output_dir
from duca_common.runtime import HelpFormatter

from .methods import MethodSpec, MethodSpecError, is_peer_family, parse_methods
from .peers import PeerError
from .report import environment, fmt, markdown_table, pyplot, save_figure, write_csv, write_json
from .reproduce_table import DEFAULT_STEPS, WARMUP_STEPS, Row, TableOptions, _sample_all
from .targets import TargetError, build_target

# The paper's DiT grid spans N = 2..7; N = 8 reaches about 6x FLOPs speed-up for the reuse methods.
DEFAULT_INTERVALS = (2, 3, 4, 5, 6, 8)
# cache-dit residual-diff thresholds: 0.04 gives ~1.8x on the digits model, 1.0 caches almost every
# step after the warm-up (the largest speed-up DBCache reaches with Fn=1).
DEFAULT_THRESHOLDS = (0.04, 0.08, 0.16, 0.32, 0.64, 1.0)
# Samples per row: enough for a stable mean PSNR and a 64-dim feature Frechet distance at equal sample
# counts, small enough for ~70 rows on a shared 2-core machine in ~15 minutes (docs/results.md).
DEFAULT_IMAGES = 32
# The frontier's columns (FLOPs speed-ups) and the goal speed-ups of issue 16.
FRONTIER_SPEEDUPS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0)
GOAL_SPEEDUPS = (3.0, 4.0, 5.0)
# Rows between two uncached timings: each row is then at most 3 rows from an uncached timing, and the
# ~70-row grid adds ~12 uncached runs (a sixth of the rows).
DEFAULT_BASELINE_EVERY = 6
# One torch thread: the setting of the CPU results (docs/benchmarks.md, "Threads on a shared machine").
DEFAULT_THREADS = 1
DEFAULT_OUT = Path("results/pareto")      # relative to the working directory; --out overrides
# Slack of the range check in interpolate(): a speed-up equal to a family's end point up to float rounding
# of the FLOPs ratio still counts as inside the measured range.
SPEEDUP_RANGE_SLACK = 1e-9

# Engine method families in the grid: (family, method string with {n}). The paper's methods at the
# published settings (ToCa R=93%, DuCa R=95%, TaylorSeer O=3), TaylorSeer also at O=1 (the best order on
# the digits models), then the methods of issue 16 when the engine has them.
PAPER_FAMILIES = (("fora", "fora:n={n}"), ("toca", "toca:n={n},r=0.93"), ("duca", "duca:n={n},r=0.95"),
                  ("taylorseer", "taylorseer:n={n},o=3"), ("taylorseer-o1", "taylorseer:n={n},o=1"))
NEW_FAMILIES = (("foca", "foca:n={n}"), ("hicache", "hicache:n={n}"), ("dualca", "dualca:n={n},r=0.95"))
PEER_FAMILIES = (("cachedit-dbcache", "cachedit-dbcache:fn=1,bn=0,rdt={t:g}"),
                 ("cachedit-taylorseer", "cachedit-taylorseer:fn=1,bn=0,rdt={t:g},o=1"),
                 ("cachedit-foca", "cachedit-foca:fn=1,bn=0,rdt={t:g}"),
                 ("cachedit-dmd", "cachedit-dmd:fn=1,bn=0,rdt={t:g}"))
# diffusers' hooks (duca_scripts.diffusers_peers): (family, method string, the option its {x} runs over).
# PAB may reuse attention at every timestep of the 1000-step schedule (-1 < t < 1000; diffusers' default
# (100, 800) keeps a third of the steps full), since even then it stops at ~1.5x (it skips attention only).
# TaylorSeerCache at diffusers' defaults (O=1, 3 warm-up steps). MagCache with at most 10 consecutive skipped
# steps and 2 retained first steps (r=0.04): at diffusers' K=3 and r=0.2 it cannot pass 2.5x (10 full
# first steps, then at most 3 of every 4 skipped); its threshold is then the knob, as MagCache intends.
# FasterCache at diffusers' defaults, its unconditional half computed every N-th evaluation (N = --intervals);
# it approximates the unconditional half only below timestep 641, so it stays below ~2x.
DIFFUSERS_FAMILIES = (("diffusers-fbcache", "diffusers-fbcache:t={x:g}", "thresholds"),
                      ("diffusers-pab", "diffusers-pab:skip={x},lo=-1,hi=1000", "intervals"),
                      ("diffusers-taylorseer", "diffusers-taylorseer:interval={x},o=1", "intervals"),
                      ("diffusers-magcache", "diffusers-magcache:t={x:g},k=10,r=0.04", "magcache_thresholds"),
                      ("diffusers-fastercache", "diffusers-fastercache:uncond={x}", "intervals"))
# MagCache thresholds (accumulated magnitude-ratio error): ~1.4x to ~6x on the digits model.
DEFAULT_MAGCACHE_THRESHOLDS = (0.01, 0.03, 0.06, 0.12, 0.25, 0.5)
# Case labels of the repeated uncached timings (a method label never starts with '#').
BASELINE_CASE = "#uncached-"
SCORES = ("psnr", "feature_distance", "frechet_to_uncached")
# Higher is better for PSNR, lower for the two distances.
HIGHER_IS_BETTER = {"psnr": True, "feature_distance": False, "frechet_to_uncached": False}


class ParetoError(ValueError):
    """A bad option, reported before any sampling."""


def engine_methods() -> tuple[str, ...]:
    """The engine's method names (the registry's when it exists)."""
    from duca_common import cache

    if hasattr(cache, "available_methods"):
        return tuple(cache.available_methods())
    from duca_common.cache.config import METHODS
    return METHODS


def grid(intervals: tuple[int, ...], thresholds: tuple[float, ...], peers: bool, cachedit: bool = True,
         magcache_thresholds: tuple[float, ...] = DEFAULT_MAGCACHE_THRESHOLDS,
         engine_warmup: int = 0) -> list[tuple[str, str]]:
    """(family, method string) of every row; the new methods only when the engine provides them; the peers
    unless ``peers`` is False (cache-dit's unless ``cachedit`` is False). ``engine_warmup`` > 0 makes the
    first that many steps of every engine method full (``warmup=``), the families keeping their names."""
    have = set(engine_methods())
    families = list(PAPER_FAMILIES) + [f for f in NEW_FAMILIES if f[1].split(":")[0] in have]
    warm = f",warmup={engine_warmup}" if engine_warmup else ""
    rows = [("none", "none")] + [(fam, text.format(n=n) + warm) for fam, text in families for n in intervals]
    if peers and cachedit:
        rows += [(fam, text.format(t=t)) for fam, text in PEER_FAMILIES for t in thresholds]
    if peers:
        values = {"thresholds": thresholds, "intervals": intervals, "magcache_thresholds": magcache_thresholds}
        rows += [(fam, text.format(x=x)) for fam, text, option in DIFFUSERS_FAMILIES for x in values[option]]
    return rows


@dataclass
class ParetoOptions:
    model: str = "digits"
    ckpt: str | None = None
    images: int = DEFAULT_IMAGES
    steps: int = DEFAULT_STEPS
    seed: int = 0
    intervals: tuple[int, ...] = DEFAULT_INTERVALS
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    magcache_thresholds: tuple[float, ...] = DEFAULT_MAGCACHE_THRESHOLDS
    peers: bool = True
    cachedit: bool = True
    baseline_every: int = DEFAULT_BASELINE_EVERY
    engine_warmup: int = 0              # first steps always full for every engine method (0: none, the paper's)
    threads: int | None = DEFAULT_THREADS
    out: Path = DEFAULT_OUT

    def validate(self) -> None:
        from dit_duca.embedded import EMBEDDED_MODELS
        if self.model not in EMBEDDED_MODELS:
            raise ParetoError(f"--model {self.model!r}: the frontier needs the digits classifier; use --model "
                              f"{' or '.join(EMBEDDED_MODELS)} (--ckpt for another export of the trainer)")
        for name in ("images", "steps", "baseline_every"):
            if getattr(self, name) < 1:
                raise ParetoError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.engine_warmup < 0:
            raise ParetoError(f"--engine-warmup must be >= 0, got {self.engine_warmup}")
        if self.images < 2:
            raise ParetoError("--images must be >= 2 (the Frechet distance needs a covariance)")
        if not self.intervals or min(self.intervals) < 1:
            raise ParetoError(f"--intervals must be integers >= 1, got {self.intervals}")
        if self.peers and (not self.thresholds or min(self.thresholds) <= 0):
            raise ParetoError(f"--thresholds must be > 0, got {self.thresholds}")
        if self.peers and (not self.magcache_thresholds or min(self.magcache_thresholds) <= 0):
            raise ParetoError(f"--magcache-thresholds must be > 0, got {self.magcache_thresholds}")
        if self.ckpt is not None and not Path(self.ckpt).is_file():
            raise ParetoError(f"--ckpt {self.ckpt} does not exist")
        if self.threads is not None and self.threads < 1:
            raise ParetoError(f"--threads must be >= 1, got {self.threads}")
        check_output_dir(self.out, "--out")       # before any model: an unwritable --out loses no work


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of (speed-up, score) points at ``x``; None outside their range. Points at equal
    speed-ups are averaged first."""
    pts = [(s, v) for s, v in points if s is not None and v is not None and math.isfinite(v)]
    if not pts:
        return None
    xs = sorted({s for s, _ in pts})
    ys = [float(np.mean([v for s, v in pts if s == u])) for u in xs]
    if not xs[0] - SPEEDUP_RANGE_SLACK <= x <= xs[-1] + SPEEDUP_RANGE_SLACK:
        return None
    return float(np.interp(x, xs, ys))


def frontier(rows: list[dict], score: str = "psnr") -> dict[str, dict[float, float | None]]:
    """Per family: the score interpolated at every FRONTIER_SPEEDUPS value."""
    out: dict[str, dict[float, float | None]] = {}
    for fam in dict.fromkeys(r["family"] for r in rows if r["family"] != "none"):
        pts = [(r["flops_speedup"], r[score]) for r in rows if r["family"] == fam]
        out[fam] = {x: interpolate(pts, x) for x in FRONTIER_SPEEDUPS}
    return out


def goal_verdicts(front: dict[str, dict[float, float | None]], score: str = "psnr") -> list[dict]:
    """At each goal speed-up: the best project method, the best peer, and whether the first is strictly better."""
    sign = 1.0 if HIGHER_IS_BETTER[score] else -1.0
    verdicts = []
    for x in GOAL_SPEEDUPS:
        ours = {f: v[x] for f, v in front.items() if not is_peer_family(f) and v[x] is not None}
        peers = {f: v[x] for f, v in front.items() if is_peer_family(f) and v[x] is not None}
        best_ours = max(ours, key=lambda f: sign * ours[f]) if ours else None
        best_peer = max(peers, key=lambda f: sign * peers[f]) if peers else None
        met = (best_ours is not None and (best_peer is None or sign * ours[best_ours] > sign * peers[best_peer]))
        verdicts.append({"speedup": x, "best_project": best_ours, "project_score": ours.get(best_ours),
                         "best_peer": best_peer, "peer_score": peers.get(best_peer), "met": met,
                         "peer_measured": best_peer is not None})
    return verdicts


def trace_of_plan(plan, tokens: int) -> Trace:
    """The trace the engine records for ``plan`` (what a run computes is decided by the plan alone): a
    partial module computes ``selectors.fresh_token_count`` tokens (0: reused, all: full), as ``BlockView.run``
    does; a block whose modules are all skipped never calls them. ``tests/test_scripts_pareto.py`` checks
    it against a recorded run for every method family."""
    trace = Trace.empty(plan)
    n = tokens
    reuse_as = get_method(plan.config.method).reuse_as
    for p in range(plan.num_steps):
        for b in range(plan.layout.depth):
            acts = plan.actions[p][b]
            if all(a == Action.SKIP for a in acts):
                continue
            for m, a in enumerate(acts):
                tokens = n if a == Action.FULL else 0
                if a == Action.PARTIAL:
                    tokens = fresh_token_count(plan.ratios[p][b][m], n)
                    a = Action.REUSE if tokens == 0 else Action.FULL if tokens >= n else a
                if a == Action.REUSE:
                    a = reuse_as                   # e.g. dualca forecasts what DuCa reuses
                trace.record(p, b, m, a, tokens)
        trace.trunk_reused[p] = plan.trunk_reused[p]
    return trace


def reference_flops_per_image(target, spec: MethodSpec, steps: int) -> tuple[float, Trace]:
    """Reference-formula FLOPs per image and the trace of one image's run, from the plan (no model run)."""
    target.configure(spec.config)
    plan = target.cache.plan(steps)
    dims = target.dims(1)
    trace = trace_of_plan(plan, dims.tokens)
    return float(reference_flops(trace, dims)), trace


def run_pareto(opts: ParetoOptions) -> dict:
    from dit_duca.digits_metrics import (
        classify,
        fidelity_scores,
        load_default_classifier,
    )

    opts.validate()
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    plan = grid(opts.intervals, opts.thresholds, opts.peers, opts.cachedit, opts.magcache_thresholds,
                opts.engine_warmup)
    specs = parse_methods([text for _, text in plan], model_family="dit")
    family = {text: fam for fam, text in plan}
    peers = [s.peer for s in specs if s.is_peer]
    from .peers import check_peer_support, prepare_peers
    check_peer_support(opts.model, peers)
    target = build_target(opts.model, ckpt=opts.ckpt)
    classifier = load_default_classifier()
    opts.out.mkdir(parents=True, exist_ok=True)
    table = TableOptions(model=opts.model, images=opts.images, batch_size=opts.images, steps=opts.steps,
                         seed=opts.seed, threads=opts.threads)
    base_spec = specs[0]
    noise, labels = target.noise(opts.images, opts.seed), target.labels(opts.images)

    rows: dict[str, Row] = {}
    for spec in tqdm(specs, desc="FLOPs (meta device)", leave=False):
        r = rows[spec.label] = Row(spec.label, family[spec.label], spec.setting)
        if not spec.is_peer:
            r.reference_flops_per_image, trace = reference_flops_per_image(target, spec, opts.steps)
            r.schedule = trace.table()

    # One interleaved pass (duca_common.measure.interleaved): the uncached run is a case again after every
    # --baseline-every rows, so each row has an uncached timing just before and just after it.
    order: list[tuple[str, MethodSpec, int]] = []          # (case label, spec, baseline index or -1)
    n_base = 0
    for i, spec in enumerate(specs):
        if i == 0 or (i - 1) % opts.baseline_every == 0 and i > 1:
            order.append((f"{BASELINE_CASE}{n_base}", specs[0], n_base))
            n_base += 1
        if i > 0:
            order.append((spec.label, spec, -1))
    if len(specs) > 1 and order[-1][2] < 0:
        order.append((f"{BASELINE_CASE}{n_base}", specs[0], n_base))

    def case(label: str, spec: MethodSpec) -> Case:
        setup = None if spec.is_peer else (lambda: target.configure(spec.config))
        return Case(label, lambda: _sample_all(target, spec, table, noise, labels, rows[spec.label]), setup=setup)

    with torch.inference_mode(), tqdm(total=len(order), desc=f"{opts.images} images per row") as bar:
        prepare_peers(target, peers, opts.steps)            # untimed: the diffusers copy, MagCache's calibration
        target.configure(specs[0].config)                   # untimed warm-up: first-call allocations
        target.sample(noise[:1], labels[:1], min(WARMUP_STEPS, opts.steps))
        series = interleaved([case(label, spec) for label, spec, _ in order], repeats=1, device=target.device,
                             progress=bar.update)
    baselines = [(pos, series[label].walls[0], series[label].cpus[0] if series[label].cpus else math.nan)
                 for pos, (label, _, b) in enumerate(order) if b >= 0]
    position = {label: pos for pos, (label, _, b) in enumerate(order) if b < 0}
    base = rows[base_spec.label]
    base.samples = series[f"{BASELINE_CASE}0"].result
    timings: dict[str, tuple[float, float, float, float]] = {}     # label -> (wall, CPU, base wall, base CPU)
    for spec in specs[1:]:
        s, pos = series[spec.label], position[spec.label]
        rows[spec.label].samples = s.result
        before = [b for b in baselines if b[0] < pos][-1]
        after = ([b for b in baselines if b[0] > pos] or [before])[0]
        timings[spec.label] = (s.walls[0], s.cpus[0] if s.cpus else math.nan,
                               (before[1] + after[1]) / 2, (before[2] + after[2]) / 2)
    bw, bc = float(np.mean([b[1] for b in baselines])), float(np.mean([b[2] for b in baselines]))
    timings[base_spec.label] = (bw, bc, bw, bc)
    ref = base.samples.clamp(-1, 1)
    _, ref_feats = classify(classifier, ref)
    from dit_duca.digits_metrics import class_accuracy

    out_rows = []
    for spec in specs:
        r = rows[spec.label]
        wall, cpu, bw, bc = timings[spec.label]
        samples = r.samples.clamp(-1, 1)
        fid = fidelity_scores(classifier, samples, ref, ref_feats)
        out_rows.append({
            "method": r.label, "family": r.family, "setting": r.setting,
            "gflops_per_image": r.reference_flops_per_image / 1e9,
            "flops_speedup": speedup(base.reference_flops_per_image, r.reference_flops_per_image),
            "cpu_seconds": cpu, "cpu_speedup": speedup(bc, cpu),
            "wall_seconds": wall, "wall_speedup": speedup(bw, wall),
            "accuracy": class_accuracy(classifier, samples, labels),
            "psnr": None if spec.is_baseline else fid.psnr,
            "feature_distance": fid.feature_distance, "frechet_to_uncached": fid.frechet_to_uncached,
            "schedule": r.schedule,
        })
    fronts = {s: frontier(out_rows, s) for s in SCORES}
    spec_info = target.model
    data = {"options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
            "environment": environment(target.device),
            "model": f"{opts.model} ({spec_info.input_size}x{spec_info.input_size} px, "
                     f"{spec_info.grid_size[0] * spec_info.grid_size[1]} tokens, {len(spec_info.blocks)} blocks x "
                     f"{spec_info.hidden_size})",
            "rows": out_rows, "baseline_timings": baselines,
            "frontier": {s: {f: {str(x): v for x, v in vals.items()} for f, vals in fr.items()}
                         for s, fr in fronts.items()},
            "goals": {s: goal_verdicts(fronts[s], s) for s in SCORES}}
    return data


def render(data: dict) -> str:
    o = data["options"]
    head = (f"**{data['model']}**, DDIM-{o['steps']}, {o['images']} images per row (seed {o['seed']}); "
            f"scores against the uncached samples of the same seeds, interpolated at equal FLOPs speed-up "
            f"('-': outside the family's measured range)\n\n")
    parts = [head]
    names = {"psnr": "PSNR vs uncached (dB, higher is better)",
             "feature_distance": "paired feature distance (relative, lower is better)",
             "frechet_to_uncached": "Frechet distance to the uncached set (lower is better)"}
    for score in SCORES:
        front = data["frontier"][score]
        digits = 2 if score != "feature_distance" else 4
        cells = [[fam] + [fmt(front[fam][str(x)], digits) for x in FRONTIER_SPEEDUPS] for fam in front]
        header = ["method"] + [f"{x:g}x" for x in FRONTIER_SPEEDUPS]
        parts.append(f"{names[score]}:\n\n" + markdown_table(header, cells))
        goals = data["goals"][score]
        lines = [f"- {g['speedup']:g}x: best project method {g['best_project']} ({fmt(g['project_score'], digits)}), "
                 f"best peer {g['best_peer'] or 'none measured'} ({fmt(g['peer_score'], digits)}): "
                 + ("not measured (no project method reaches it)" if g["best_project"] is None
                    else "**met**" if g["met"] and g["peer_measured"] else "met (no peer reaches it)" if g["met"]
                    else "**missed**") for g in goals]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


ROW_KEYS = ["method", "family", "setting", "gflops_per_image", "flops_speedup", "cpu_seconds", "cpu_speedup",
            "wall_seconds", "wall_speedup", "accuracy", "psnr", "feature_distance", "frechet_to_uncached"]


def pareto_plot(data: dict, path: Path) -> Path:
    plt = pyplot()

    rows = data["rows"]
    panels = [("flops_speedup", "psnr", "PSNR vs uncached (dB)"),
              ("flops_speedup", "feature_distance", "paired feature distance (lower better)"),
              ("cpu_speedup", "psnr", "PSNR vs uncached (dB)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.8))
    families = list(dict.fromkeys(r["family"] for r in rows if r["family"] != "none"))
    # 20 distinct colours: the default cycle of 10 repeats once the peers are in the plot
    colours = plt.get_cmap("tab20").colors
    for ax, (xkey, ykey, ylabel) in zip(axes, panels, strict=True):
        for i, fam in enumerate(families):
            pts = sorted((r[xkey], r[ykey]) for r in rows if r["family"] == fam and r[ykey] is not None
                         and r[xkey] is not None and math.isfinite(r[ykey]))
            style = ":" if fam.startswith("diffusers") else "--" if is_peer_family(fam) else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", markersize=3, label=fam,
                    color=colours[i % len(colours)])
        ax.set_xlabel("FLOPs speed-up (reference formula)" if xkey == "flops_speedup"
                      else "CPU-time speed-up (interleaved uncached timings)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(1.3, 7.0)
        for g in GOAL_SPEEDUPS:
            ax.axvline(g, color="grey", alpha=0.25)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    o = data["options"]
    fig.suptitle(f"{data['model']}: fidelity to the uncached run against speed-up ({o['images']} images, "
                 f"DDIM-{o['steps']}); dashed: cache-dit, dotted: diffusers hooks", fontsize=10)
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                formatter_class=HelpFormatter)
    d = ParetoOptions()
    p.add_argument("--model", default=d.model,
                   help="digits or digits256 (the embedded models, 64 / 256 tokens; --ckpt for another export)")
    p.add_argument("--ckpt", default=None,
                   help="a dit_duca.train export (.safetensors) to run as --model (default: the shipped weights of "
                        "--model)")
    p.add_argument("--images", type=int, default=d.images,
                   help="images per row, >= 2 (the same noise and labels for every row)")
    p.add_argument("--steps", type=int, default=d.steps, help="DDIM sampling steps")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the initial noise")
    p.add_argument("--intervals", type=int, nargs="+", default=list(d.intervals),
                   help="cycle lengths N of every engine method, and of diffusers' PAB, TaylorSeerCache and "
                        "FasterCache")
    p.add_argument("--thresholds", type=float, nargs="+", default=list(d.thresholds),
                   help="residual-change thresholds of the cache-dit peers and of diffusers' FirstBlockCache")
    p.add_argument("--magcache-thresholds", type=float, nargs="+", default=list(d.magcache_thresholds),
                   help="diffusers MagCache thresholds (accumulated magnitude-ratio error)")
    p.add_argument("--no-peers", action="store_true", help="engine methods only (no cache-dit, no diffusers hooks)")
    p.add_argument("--no-cachedit", action="store_true",
                   help="drop the cache-dit peers (they need the 'peers' extra; the diffusers hooks need nothing)")
    p.add_argument("--baseline-every", type=int, default=d.baseline_every,
                   help="rows between two uncached timings (each row's CPU speed-up is taken against the "
                        "uncached timings just before and after it)")
    p.add_argument("--engine-warmup", type=int, default=d.engine_warmup,
                   help="first steps always full for every engine method (diffusers' TaylorSeerCache uses 3)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=d.out,
                   help="output folder for rows.csv, frontier.md / .csv, pareto.png and pareto.json")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    opts = ParetoOptions(model=args.model, ckpt=args.ckpt, images=args.images, steps=args.steps, seed=args.seed,
                         intervals=tuple(args.intervals), thresholds=tuple(args.thresholds),
                         magcache_thresholds=tuple(args.magcache_thresholds), peers=not args.no_peers,
                         cachedit=not args.no_cachedit,
                         baseline_every=args.baseline_every, engine_warmup=args.engine_warmup,
                         threads=args.threads, out=args.out)
    t0 = time.perf_counter()
    try:
        check_policy()
        data = run_pareto(opts)
    except (ParetoError, MethodSpecError, TargetError, PeerError, UsageError) as exc:
        raise SystemExit(print_error(exc)) from None
    data["total_seconds"] = time.perf_counter() - t0
    write_json(opts.out / "pareto.json", data)
    write_csv(opts.out / "rows.csv", ROW_KEYS, [[r.get(k) for k in ROW_KEYS] for r in data["rows"]])
    fr = data["frontier"]["psnr"]
    write_csv(opts.out / "frontier.csv", ["family"] + [f"psnr_at_{x:g}x" for x in FRONTIER_SPEEDUPS],
              [[fam] + [fr[fam][str(x)] for x in FRONTIER_SPEEDUPS] for fam in fr])
    md = render(data)
    (opts.out / "frontier.md").write_text(md)
    pareto_plot(data, opts.out / "pareto.png")
    print(md)
    print(f"wrote {opts.out}/frontier.md, frontier.csv, rows.csv, pareto.json, pareto.png "
          f"({data['total_seconds'] / 60:.1f} min)")
    return data


if __name__ == "__main__":
    main()
