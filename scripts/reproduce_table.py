"""Paper-table reproduction: a grid of methods on one model, same seeds, FLOPs, speed-ups, quality, plots.

    python -m duca_scripts.reproduce_table --model digits --out docs/results/digits            # paper grid
    python -m duca_scripts.reproduce_table --model digits --peers --out docs/results/digits    # + cache-dit
    python -m duca_scripts.reproduce_table --model DiT-XL/2 --protocol fid50k --ckpt DiT-XL-2-256x256.pt \\
        --ref VIRTUAL_imagenet256_labeled.npz --out runs/dit_table                               # GPUs

Default grid (``--methods`` overrides): FORA, ToCa (R=93%), DuCa (R=95%) and TaylorSeer (O=3) at
N = 2..7, plus the uncached run; ``--peers`` adds cache-dit's DBCache and TaylorSeer calibrator at
residual thresholds that span the same FLOPs range.

In-memory protocol (``--protocol memory``, default): every method samples the same ``--images`` with
the same noise (seeded by ``--seed``) and labels (the classes in turn; ImageNet models: one
fixed class), in batches of ``--batch-size``, with the real DDIM loop. Then:

* FLOPs: reference formula and measured (meta device) per image, speed-ups against the uncached row;
  wall-clock and CPU-time speed-ups of the same sampling, measured by ``duca_scripts.measure``:
  ``--repeats`` interleaved rounds (every method once per round, the first round's samples are the
  ones scored), speed-up = ratio of the medians with the range of the per-round ratios, and a note
  when wall time strays from CPU time (other jobs on the machine);
* quality: for the embedded ``digits`` model, class accuracy and the Frechet distance in the digits
  classifier's features against the real held-out digits (``dit_duca.digits_metrics``); for every model,
  PSNR and SSIM against the uncached samples of the same seeds (``duca_eval.fidelity``; pixel models
  compare images in [0, 1], latent models compare latents mapped linearly to [0, 1] with one range for
  both runs);
* outputs in ``--out``: ``table.md``, ``table.csv``, ``table.json``, ``pareto.png`` (quality and PSNR
  against FLOPs speed-up) and ``heatmaps/<method>.png`` (the schedule each method ran).

FID-50k protocol (``--protocol fid50k``, official weights on GPUs; ``--model`` a DiT config): writes
``fid50k.sh`` that samples 50,000 images per method with ``torchrun dit_duca.sample_ddp --out
$OUT/samples/<method>`` (which writes ``$OUT/samples/<method>.npz``) and evaluates exactly that file with
``duca_eval.imagenet`` against the ADM reference batch (``$OUT/eval/<method>.json``). The launcher needs no
FLOPs and is written first; then the FLOPs of every method are counted here on the meta device for the
FLOPs columns of ``table.md`` (the FID columns are left to the evaluation JSONs), with a progress bar:
10-15 s per method at DiT-XL/2 with 50 steps on a 2-core CPU, 5-6 min for the default 25-method grid.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dit_duca.embedded import EMBEDDED_MODELS
from dit_duca.models import DiT_models
from dit_duca.options import DEFAULT_IMAGE_SIZE
from duca_common.allocator import check_policy
from duca_common.cache import get_method, measured_flops, reference_flops, speedup
from duca_common.errors import UsageError, print_error
from duca_common.outputs import check_output_dir
from duca_common.runtime import HelpFormatter, pick_device
from duca_common.validate import GUIDANCE, check_number

from .measure import WALL_CPU_DISAGREEMENT, Case, Series, compare, interleaved, wall_warning
from .methods import MethodSpec, MethodSpecError, paper_grid, parse_methods, peer_grid
from .report import environment, fmt, markdown_table, pyplot, save_figure, sig, write_csv, write_json
from .targets import (
    CFG_SCALE_HELP,
    TARGET_HELP,
    Target,
    TargetError,
    build_target,
    model_family,
)

PROTOCOLS = ("memory", "fid50k")
# Samples per method on CPU with the digits model: 10 per class; enough for the accuracy and a stable
# ranking of the Frechet distance (64-dim features), small enough for the whole grid in < 20 min.
DEFAULT_IMAGES = 100
DEFAULT_STEPS = 50                  # the paper's DDIM-50
FID_NUM_SAMPLES = 50_000            # the ADM FID-50k protocol (paper.md section 2)
# Per-GPU batch of the FID-50k launcher: DEFAULT_GPUS x 125 = 1000 images per global batch, which divides
# FID_NUM_SAMPLES exactly (50 batches, no padded samples).
FID_DEFAULT_BATCH = 125
# NGPU default of the generated fid50k.sh: one 8-GPU node (--gpus or $NGPU override it).
DEFAULT_GPUS = 8
DEFAULT_OUT = Path("results/table")       # relative to the working directory; --out overrides
# Timed rounds per method: two is the fewest that shows a spread; each round samples every image again.
DEFAULT_REPEATS = 2
# Steps of the untimed uncached warm-up call before the first round (first-call allocations).
WARMUP_STEPS = 2
# Image size of the FID-50k launcher: the paper's DiT-XL/2 256 px table (dit_duca.options.DEFAULT_IMAGE_SIZE).
FID_IMAGE_SIZE = DEFAULT_IMAGE_SIZE


class TableError(ValueError):
    """A bad option, reported before any sampling."""


@dataclass
class TableOptions:
    model: str = "digits"
    methods: list[str] | None = None        # None: the paper grid
    peers: bool = False
    images: int = DEFAULT_IMAGES
    batch_size: int = DEFAULT_IMAGES
    steps: int = DEFAULT_STEPS
    seed: int = 0
    repeats: int = DEFAULT_REPEATS
    device: str = "cpu"
    threads: int | None = None
    ckpt: str | None = None
    cfg_scale: float | None = None
    protocol: str = "memory"
    ref: str | None = None                  # fid50k: ADM reference batch
    gpus: int = DEFAULT_GPUS
    out: Path = DEFAULT_OUT

    def validate(self) -> None:
        if self.images < 1:
            raise TableError(f"--images {self.images} must be >= 1")
        if self.batch_size < 1:
            raise TableError(f"--batch-size {self.batch_size} must be >= 1")
        if self.steps < 1:
            raise TableError(f"--steps {self.steps} must be >= 1")
        if self.repeats < 1:
            raise TableError(f"--repeats {self.repeats} must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise TableError(f"--threads {self.threads} must be >= 1")
        check_number("--cfg-scale", self.cfg_scale, GUIDANCE)
        if self.protocol not in PROTOCOLS:
            raise TableError(f"--protocol {self.protocol!r} is invalid: allowed {PROTOCOLS}")
        if self.protocol == "fid50k":
            if self.ckpt is None:
                raise TableError("--protocol fid50k needs --ckpt (official DiT weights); "
                                 "FID of random weights means nothing")
            if self.ref is None:
                raise TableError("--protocol fid50k needs --ref "
                                 "(the ADM reference batch VIRTUAL_imagenet256_labeled.npz)")
            if self.model not in DiT_models:
                raise TableError(f"--protocol fid50k writes dit_duca.sample_ddp commands, which take a DiT config: "
                                 f"--model {self.model!r} is not one; pass --model DiT-XL/2 (or another of "
                                 f"{', '.join(DiT_models)})")
        self.device = str(pick_device(self.device))     # the project's one device choice (UsageError if unusable)

    def method_list(self) -> list[str]:
        methods = list(self.methods) if self.methods else paper_grid()
        return methods + (peer_grid() if self.peers else [])


@dataclass
class Row:
    label: str
    family: str
    setting: str
    reference_flops_per_image: float | None = None
    measured_flops_per_image: float | None = None
    series: Series | None = None            # the interleaved timings (wall and CPU seconds per round)
    samples: torch.Tensor | None = field(default=None, repr=False)
    metrics: dict[str, float | None] = field(default_factory=dict)
    heatmap: str | None = None
    schedule: str = ""


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")


def _meta_flops(target: Target, spec: MethodSpec, steps: int) -> tuple[float, float, object]:
    """Per-image reference and measured FLOPs and the trace of one image's run, on the meta device."""
    meta = target.build_meta()
    target.configure(spec.config, model=meta)
    noise = torch.empty(1, *target.latent_shape, device="meta")
    labels = torch.zeros(1, dtype=torch.long, device="meta")
    measured = measured_flops(lambda: target.sample(noise, labels, steps, model=meta))
    trace = meta.feature_cache.last_trace
    return float(reference_flops(trace, target.dims(1, meta))), float(measured), trace


def _sample_all(target: Target, spec: MethodSpec, opts: TableOptions, noise: torch.Tensor,
                labels: torch.Tensor, row: Row) -> torch.Tensor:
    """Sample every image with this method in batches; returns the samples on CPU (one timed call)."""
    outs, peer_flops = [], 0
    for start in range(0, opts.images, opts.batch_size):
        z, y = noise[start:start + opts.batch_size], labels[start:start + opts.batch_size]
        if spec.is_peer:
            from .peers import attach_peer
            with attach_peer(target, spec.peer, opts.steps) as run:
                out = target.sample(z, y, opts.steps)
            peer_flops += run.reference_flops(target.dims(z.shape[0]))
            row.schedule = run.table()
        else:
            out = target.sample(z, y, opts.steps)
        outs.append(out.float().cpu())
    if spec.is_peer:
        row.reference_flops_per_image = peer_flops / opts.images
    return torch.cat(outs)


def _unit_range(samples: torch.Tensor, reference: torch.Tensor, pixel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both tensors mapped to [0, 1]: images from [-1, 1]; latents with the reference's range (same map for both)."""
    if pixel:
        return ((samples + 1) / 2).clamp(0, 1), ((reference + 1) / 2).clamp(0, 1)
    lo, hi = float(reference.min()), float(reference.max())
    scale = hi - lo if hi > lo else 1.0
    return ((samples - lo) / scale).clamp(0, 1), ((reference - lo) / scale).clamp(0, 1)


def _fidelity(row: Row, base: Row, pixel: bool) -> None:
    from duca_eval.fidelity import SSIM_WINDOW, psnr, ssim

    a, b = _unit_range(row.samples, base.samples, pixel)
    p = psnr(a, b)
    finite = p[torch.isfinite(p)]
    row.metrics["psnr"] = float(finite.mean()) if len(finite) else math.inf
    row.metrics["ssim"] = float(ssim(a, b).mean()) if min(a.shape[-2:]) >= SSIM_WINDOW else None


class DigitsJudge:
    """The digits classifier and the real held-out set, loaded once."""

    def __init__(self) -> None:
        from dit_duca.digits_metrics import load_default_classifier, real_heldout_digits

        self.classifier = load_default_classifier()
        self.real, _ = real_heldout_digits()

    def __call__(self, row: Row, labels: torch.Tensor) -> None:
        from dit_duca.digits_metrics import digits_scores

        scores = digits_scores(self.classifier, row.samples.clamp(-1, 1), labels, self.real)
        row.metrics["accuracy"] = scores.accuracy
        row.metrics["frechet"] = scores.frechet_distance


def run_table(opts: TableOptions) -> dict:
    opts.validate()
    family = model_family(opts.model)
    specs = parse_methods(opts.method_list(), model_family=family)
    if any(s.is_peer for s in specs):
        from .peers import check_peer_support
        check_peer_support(opts.model, [s.peer for s in specs if s.is_peer])
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    # fid50k writes a launcher that loads --ckpt on the GPU machines: here the model only gives names and FLOPs
    ckpt = None if opts.protocol == "fid50k" else opts.ckpt
    target = build_target(opts.model, device=opts.device, ckpt=ckpt, cfg_scale=opts.cfg_scale)
    opts.out.mkdir(parents=True, exist_ok=True)
    if opts.protocol == "fid50k":
        return write_fid50k_plan(opts, specs, target)
    judge = DigitsJudge() if opts.model in EMBEDDED_MODELS else None

    rows = {s.label: Row(s.label, s.family, s.setting) for s in specs}
    heat_dir = opts.out / "heatmaps"
    for spec in tqdm(specs, desc="FLOPs and schedules (meta device)", leave=False):
        if spec.is_peer:
            continue
        r = rows[spec.label]
        r.reference_flops_per_image, r.measured_flops_per_image, trace = _meta_flops(target, spec, opts.steps)
        if not spec.is_baseline:
            r.heatmap = str(trace.save_heatmap(heat_dir / f"{slug(spec.label)}.png",
                                               title=f"{opts.model}: {spec.label} ({spec.setting})"))
        r.schedule = trace.table()

    noise = target.noise(opts.images, opts.seed)
    labels = target.labels(opts.images)

    def case(spec: MethodSpec) -> Case:
        setup = None if spec.is_peer else (lambda: target.configure(spec.config))
        return Case(spec.label, lambda: _sample_all(target, spec, opts, noise, labels, rows[spec.label]), setup=setup)

    with torch.inference_mode(), tqdm(total=len(specs) * opts.repeats,
                                      desc=f"sampling {opts.images} images per method, {opts.repeats} rounds") as bar:
        target.configure(specs[0].config)           # untimed warm-up: first-call allocations
        target.sample(noise[:1], labels[:1], min(WARMUP_STEPS, opts.steps))
        series = interleaved([case(s) for s in specs], repeats=opts.repeats, device=target.device,
                             progress=bar.update)
    for spec in specs:
        rows[spec.label].series = series[spec.label]
        rows[spec.label].samples = series[spec.label].result       # the first round's samples
    base = rows[specs[0].label]
    for spec in specs:
        r = rows[spec.label]
        if not spec.is_baseline:
            _fidelity(r, base, target.is_pixel_model)
        if judge is not None:
            judge(r, labels)
    return _summarise(opts, specs, rows, target)


def _summarise(opts: TableOptions, specs: list[MethodSpec], rows: dict[str, Row], target: Target) -> dict:
    base = rows[specs[0].label]
    out, speedups = [], {}
    for spec in specs:
        r = rows[spec.label]
        sp = compare(base.series, r.series)
        if spec.label != base.label:
            speedups[spec.label] = sp
        cpu = r.series.cpu
        out.append({
            "method": r.label, "family": r.family, "setting": r.setting,
            "tflops_per_image": r.reference_flops_per_image / 1e12 if r.reference_flops_per_image else None,
            "flops_speedup": speedup(base.reference_flops_per_image, r.reference_flops_per_image)
            if r.reference_flops_per_image else None,
            "measured_flops_speedup": speedup(base.measured_flops_per_image, r.measured_flops_per_image)
            if r.measured_flops_per_image else None,
            "seconds": r.series.wall.median, "seconds_rounds": r.series.walls,
            "wall_speedup": sp.wall, "wall_speedup_rounds_min": sp.wall_rounds.min,
            "wall_speedup_rounds_max": sp.wall_rounds.max,
            "cpu_seconds": cpu.median if cpu else None, "cpu_seconds_rounds": r.series.cpus,
            "cpu_speedup": sp.cpu, "cpu_speedup_rounds_min": sp.cpu_rounds.min if sp.cpu_rounds else None,
            "cpu_speedup_rounds_max": sp.cpu_rounds.max if sp.cpu_rounds else None,
            "wall_reliable": sp.wall_reliable,
            **{k: r.metrics.get(k) for k in ("accuracy", "frechet", "psnr", "ssim")},
            "heatmap": r.heatmap, "schedule": r.schedule,
        })
    return {"options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
            "environment": environment(target.device), "model": target.name, "protocol": opts.protocol,
            "quality_metrics": ("digits accuracy + Frechet distance (dit_duca.digits_metrics)"
                                if opts.model in EMBEDDED_MODELS
                                else "PSNR/SSIM against the uncached samples only (no quality judge for this model)"),
            "measurement": (f"interleaved: {opts.repeats} round(s), every method once per round; speed-up = ratio "
                            f"of medians, (min-max) = the per-round ratios; wall time flagged unreliable when wall "
                            f"and CPU speed-ups differ by more than {WALL_CPU_DISAGREEMENT:.0%}"),
            "wall_warning": wall_warning(speedups),
            "rows": out}


TABLE_HEADERS = ["method", "setting", "TFLOPs/img", "FLOPs speed-up", "measured FLOPs speed-up",
                 "CPU speed-up (rounds min-max)", "wall speed-up (rounds min-max)", "accuracy", "Frechet dist.",
                 "PSNR vs uncached", "SSIM vs uncached"]


def ratio_cell(value, lo, hi) -> str:
    """``2.31x (2.20-2.40)``: the speed-up and the range of its per-round ratios."""
    if value is None:
        return "-"
    if lo is None or hi is None or lo == hi:
        return fmt(value, 2, "x")
    return f"{fmt(value, 2, 'x')} ({lo:.2f}-{hi:.2f})"


def table_cells(row: dict) -> list[str]:
    acc = row.get("accuracy")
    return [row["method"], row["setting"], sig(row["tflops_per_image"]), fmt(row["flops_speedup"], 2, "x"),
            fmt(row["measured_flops_speedup"], 2, "x"),
            ratio_cell(row.get("cpu_speedup"), row.get("cpu_speedup_rounds_min"), row.get("cpu_speedup_rounds_max")),
            ratio_cell(row.get("wall_speedup"), row.get("wall_speedup_rounds_min"), row.get("wall_speedup_rounds_max")),
            fmt(None if acc is None else 100 * acc, 1, "%"),
            fmt(row.get("frechet"), 2), fmt(row.get("psnr"), 2), fmt(row.get("ssim"), 4)]


def render(data: dict) -> str:
    o = data["options"]
    head = (f"**{data['model']}**, {o['steps']} DDIM steps, {o['images']} images per method (seed {o['seed']}), "
            f"device {data['environment']['device']} ({data['environment']['threads']} threads), "
            f"{o['repeats']} interleaved timing round(s)\n\n")
    note = f"\n\nNote: {data['wall_warning']}." if data.get("wall_warning") else ""
    return head + markdown_table(TABLE_HEADERS, [table_cells(r) for r in data["rows"]]) + note


def write_csv_table(path: Path, data: dict) -> Path:
    keys = ["method", "family", "setting", "tflops_per_image", "flops_speedup", "measured_flops_speedup", "seconds",
            "wall_speedup", "cpu_seconds", "cpu_speedup", "accuracy", "frechet", "psnr", "ssim"]
    return write_csv(path, keys, [[r.get(k) for k in keys] for r in data["rows"]])


FAMILY_STYLE = {"fora": ("FORA", "o"), "toca": ("ToCa", "s"), "duca": ("DuCa", "D"), "taylorseer": ("TaylorSeer", "^"),
                "cachedit-dbcache": ("cache-dit DBCache", "v"),
                "cachedit-taylorseer": ("cache-dit DBCache+TaylorSeer", "P")}


def pareto_plot(data: dict, path: Path) -> Path:
    """Quality (Frechet distance when available, else PSNR) and PSNR against the FLOPs speed-up, one line per method."""
    plt = pyplot()

    rows = data["rows"]
    panels = [("psnr", "PSNR vs uncached (dB, higher is better)")]
    if any(r.get("frechet") is not None for r in rows):
        panels.insert(0, ("frechet", "Frechet distance to real digits (lower is better)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    for ax, (key, ylabel) in zip(axes[0], panels, strict=True):
        base = rows[0]
        for family, (name, marker) in FAMILY_STYLE.items():
            pts = sorted((r["flops_speedup"], r[key]) for r in rows
                         if r["family"] == family and r["flops_speedup"] and r.get(key) is not None
                         and math.isfinite(r[key]))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=name)
        if base.get(key) is not None and math.isfinite(base[key]):
            ax.scatter([1.0], [base[key]], color="black", zorder=5, label="no cache")
        ax.set_xlabel("FLOPs speed-up (reference formula)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{data['model']}: quality against FLOPs speed-up ({data['options']['images']} images, "
                 f"{data['options']['steps']} steps)", fontsize=10)
    return save_figure(fig, path, dpi=120)


# ------------------------------------------------------------------------------------------------ FID-50k

def cache_flags(spec: MethodSpec) -> str:
    """``dit_duca.sample_ddp`` flags that select ``spec`` (a preset by name, else the reference flags)."""
    cfg = spec.config
    if spec.paper_row:
        return f"--preset {spec.label}"
    rules = get_method(cfg.method)         # which flags the method takes is the method's (flags layer)
    if not rules.caches:
        return f"--cache {cfg.method}"
    flags = f"--cache {cfg.method} --fresh-threshold {cfg.interval}"
    if rules.default_order is not None:
        flags += f" --taylor-order {cfg.taylor_order}"
    if rules.token_wise:
        from dit_duca.options import CACHE_TYPES
        cache_type = {v: k for k, v in CACHE_TYPES.items()}[cfg.selector]
        flags += (f" --fresh-ratio {cfg.fresh_ratio:g} --cache-type {cache_type} --ratio-scheduler ToCa"
                  f" --soft-fresh-weight {cfg.staleness_weight:g}")
    return flags


def fid50k_paths(label: str) -> tuple[str, str, str]:
    """Shell words (``$OUT``-relative, double-quoted) of one method's sample folder, the ``.npz`` that
    ``dit_duca.sample_ddp --out <folder>`` writes next to it, and the evaluation JSON."""
    name = slug(label)
    return f'"$OUT/samples/{name}"', f'"$OUT/samples/{name}.npz"', f'"$OUT/eval/{name}.json"'


def fid50k_script(opts: TableOptions, specs: list[MethodSpec], target: Target) -> str:
    """The launcher: per method, ``torchrun dit_duca.sample_ddp --out <folder>`` (50,000 samples, written as
    ``<folder>.npz`` once complete) then ``duca_eval.imagenet --sample <folder>.npz``. Its inputs are checked
    before anything is sampled, so a wrong --ref fails in a second, not after the first method's 50k samples."""
    q = shlex.quote
    lines = ["#!/usr/bin/env bash",
             "# Generated by duca_scripts.reproduce_table --protocol fid50k: FID-50k per method.",
             "# Paths are absolute (resolved where it was generated), so it runs from any folder.",
             "# Per method: dit_duca.sample_ddp --out $OUT/samples/<method> writes $OUT/samples/<method>.npz once",
             "# every sample exists (a rerun resumes), then duca_eval.imagenet writes $OUT/eval/<method>.json.",
             "set -euo pipefail",
             f'NGPU="${{NGPU:-{opts.gpus}}}"',
             f"OUT={q(str(Path(opts.out).resolve()))}",
             f"CKPT={q(str(Path(opts.ckpt).resolve()))}",
             f"REF={q(str(Path(opts.ref).resolve()))}",
             'for input in "$CKPT" "$REF"; do',
             '    if [ ! -e "$input" ]; then',
             '        echo "error: $input does not exist; fix CKPT / REF at the top of fid50k.sh" >&2',
             "        exit 2",
             "    fi",
             "done"]
    for spec in specs:
        folder, npz, result = fid50k_paths(spec.label)
        lines += [f"# {spec.label}: {spec.setting}",
                  f'torchrun --nproc_per_node="$NGPU" -m dit_duca.sample_ddp --model {q(target.name)} --ckpt "$CKPT" '
                  f"--image-size {FID_IMAGE_SIZE} --num-sampling-steps {opts.steps} --cfg-scale {target.cfg_scale} "
                  f"--ddim-sample --num-fid-samples {FID_NUM_SAMPLES} --per-proc-batch-size {FID_DEFAULT_BATCH} "
                  f"--global-seed {opts.seed} --out {folder} {cache_flags(spec)}",
                  f'python -m duca_eval.imagenet --sample {npz} --ref "$REF" --out {result}']
    return "\n".join(lines) + "\n"


def write_fid50k_plan(opts: TableOptions, specs: list[MethodSpec], target: Target) -> dict:
    if any(s.is_peer for s in specs):
        raise TableError("--protocol fid50k runs the engine's methods through dit_duca.sample_ddp; drop --peers")
    names = [slug(s.label) for s in specs]
    if len(set(names)) < len(names):
        raise TableError(f"--methods {' '.join(s.label for s in specs)}: two methods would share a sample folder "
                         f"({', '.join(sorted({n for n in names if names.count(n) > 1}))}); list each once")
    # the launcher needs no FLOPs: it is written first (seconds), the FLOPs columns of table.md after it
    script = opts.out / "fid50k.sh"
    script.write_text(fid50k_script(opts, specs, target))
    script.chmod(0o755)
    print(f"wrote {script} ({len(specs)} methods); counting each method's FLOPs on the meta device for "
          f"table.md (10-15 s per method at DiT-XL/2 with 50 steps on a 2-core CPU)", file=sys.stderr, flush=True)
    rows = []
    with tqdm(specs, desc=f"FLOPs of {len(specs)} methods (meta device)", unit="method") as bar:
        for spec in bar:
            bar.set_postfix_str(spec.label)
            ref, measured, _ = _meta_flops(target, spec, opts.steps)
            rows.append((spec, ref, measured))
    base = rows[0][1]
    data = {"options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
            "environment": environment(target.device), "model": target.name, "protocol": "fid50k",
            "script": str(script),
            "rows": [{"method": s.label, "family": s.family, "setting": s.setting, "tflops_per_image": r / 1e12,
                      "flops_speedup": speedup(base, r), "measured_flops_speedup": speedup(rows[0][2], m),
                      "samples": str(opts.out / "samples" / f"{slug(s.label)}.npz"),
                      "eval": str(opts.out / "eval" / f"{slug(s.label)}.json")}
                     for s, r, m in rows]}
    return data


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    d = TableOptions()
    p.add_argument("--model", default=d.model, help=TARGET_HELP)
    p.add_argument("--methods", nargs="+", default=None,
                   help="default: the paper's DiT grid (FORA/ToCa/DuCa/TaylorSeer, N=2..7)")
    p.add_argument("--peers", action="store_true", help="add cache-dit DBCache and TaylorSeer-calibrator rows")
    p.add_argument("--images", type=int, default=d.images,
                   help="memory: images per method (the same noise and labels for every method)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per sampling batch")
    p.add_argument("--steps", type=int, default=d.steps,
                   help="sampling steps (DDIM; DPM-Solver++ for PixArt-XL/2)")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed of the initial noise (fid50k: the launcher's --global-seed)")
    p.add_argument("--repeats", type=int, default=d.repeats,
                   help="interleaved timing rounds (every method samples every image once per round)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--ckpt", default=None,
                   help="weights: a DiT checkpoint for a DiT config, a dit_duca.train export for digits / digits256 "
                        "(default: random weights; digits / digits256: the shipped weights); fid50k: required, "
                        "loaded by the launcher")
    p.add_argument("--cfg-scale", type=float, default=None, help=CFG_SCALE_HELP)
    p.add_argument("--protocol", default=d.protocol, choices=PROTOCOLS,
                   help="memory: sample, time and score every method here; fid50k: write OUT/fid50k.sh (torchrun "
                        "sampling + ADM evaluation per method, for GPUs) at once, then count every method's FLOPs "
                        "on the meta device for table.md with a progress bar, 10-15 s per method at DiT-XL/2 "
                        "with 50 steps on a 2-core CPU (5-6 min for the default 25-method grid)")
    p.add_argument("--ref", default=None, help="fid50k: ADM reference batch (.npz)")
    p.add_argument("--gpus", type=int, default=d.gpus, help="fid50k: default NGPU in the generated script")
    p.add_argument("--out", type=Path, default=d.out,
                   help="output folder for table.md / .csv / .json, pareto.png and heatmaps/ (fid50k: fid50k.sh, "
                        "table.md, table.json)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    opts = TableOptions(**vars(args))
    t0 = time.perf_counter()
    try:
        check_output_dir(opts.out, "--out")          # before any model: an unwritable --out loses no work
        check_policy()
        data = run_table(opts)
    except (TableError, MethodSpecError, TargetError, UsageError) as exc:
        raise SystemExit(print_error(exc)) from None
    data["total_seconds"] = time.perf_counter() - t0
    md = render(data) if opts.protocol == "memory" else markdown_table(
        ["method", "setting", "TFLOPs/img", "FLOPs speed-up", "measured FLOPs speed-up"],
        [[r["method"], r["setting"], sig(r["tflops_per_image"]), fmt(r["flops_speedup"], 2, "x"),
          fmt(r["measured_flops_speedup"], 2, "x")] for r in data["rows"]])
    write_json(opts.out / "table.json", data)
    (opts.out / "table.md").write_text(md)
    if opts.protocol == "memory":
        write_csv_table(opts.out / "table.csv", data)
        pareto_plot(data, opts.out / "pareto.png")
    print(md)
    print(f"wrote {opts.out}/table.md, table.json" + (", table.csv, pareto.png, heatmaps/" if opts.protocol == "memory"
                                                      else f", {data.get('script')}"))
    return data


if __name__ == "__main__":
    main()
