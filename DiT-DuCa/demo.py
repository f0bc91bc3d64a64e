"""One-command demo: the embedded digits DiT sampled with no cache, FORA, ToCa, DuCa and TaylorSeer.

    python -m dit_duca.demo                    # quick run (under a minute on 2 CPU cores), writes outputs/demo/
    python -m dit_duca.demo --full             # 100 samples, DDIM-50, 3 timing rounds

Every method samples the same seeds and class labels (balanced over the 10 digits) with classifier-free
guidance and DDIM (25 steps, ``--full``: 50; ``dit_duca.embedded_sampling``). Speed is measured the project's one way
(``duca_common.measure``): ``--repeats`` interleaved rounds, every method sampling the whole batch once per
round; the table shows the CPU-time speed-up (ratio of medians, and the range of the per-round ratios)
and the wall-clock speed-up, and a note says when wall time is unreliable (other jobs took the CPU). The
first round's samples are scored: class accuracy and Frechet distance to the real held-out digits
(``dit_duca.digits_metrics``), PSNR against the uncached samples of the same seeds.

The demo writes ``grid_<method>.png``, ``side_by_side.png``, ``table.md`` and ``results.json`` into a fresh
folder beside ``--out`` and swaps it in only when everything is written, so an interrupted run leaves the
previous results whole. An output folder that cannot be written is refused before any sampling.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dit_duca.digits_metrics import digits_scores, load_default_classifier, real_heldout_digits
from duca_common.allocator import check_policy
from duca_common.errors import CheckpointError, UsageError, run_or_exit
from duca_common.measure import Case, Speedup, compare, environment, interleaved, wall_warning
from duca_common.outputs import check_output_dir
from duca_common.runtime import HelpFormatter
from duca_common.validate import SEED, check_number

from .digits import to_unit_range
from .embedded import DEFAULT_EMBEDDED_PATH, load_dit_checkpoint, read_spec
from .embedded_sampling import (
    DEFAULT_CFG_SCALE,
    DEFAULT_NUM_STEPS,
    METHOD_ORDER,
    SampleRun,
    balanced_labels,
    psnr,
    run_flops_per_image,
    sample,
    uncached_flops_per_image,
)

DEFAULT_OUT = Path("outputs") / "demo"
# Quick default: 20 samples (2 per digit, the fewest the Frechet distance allows) and 2 timing rounds
# (the fewest that show a spread) keep the demo under a minute on 2 shared CPU cores (README, measured).
DEFAULT_NUM_SAMPLES = 20
DEFAULT_REPEATS = 2
# and DDIM-25 (half the paper's 50 steps; the N=3 presets keep their FLOPs speed-ups within 0.05x and the
# uncached and DuCa samples score 100% class accuracy at 20 samples).
QUICK_NUM_STEPS = 25
# --full: the paper's DDIM-50, 10 samples per digit for a steadier Frechet distance, 3 rounds for a median.
FULL_NUM_SAMPLES = 100
FULL_REPEATS = 3
FULL_NUM_STEPS = DEFAULT_NUM_STEPS
# The Frechet distance needs a covariance: at least two samples per digit.
MIN_NUM_SAMPLES = 20
# One torch thread by default: on the project's 2-core machine shared with other jobs, torch's default of
# 2 threads made the 20-sample uncached run take 41 s instead of 6.4 s (OpenMP threads spin-waiting for a
# core); with one thread CPU time is also the wall time of a quiet single core. --threads 0: torch's choice.
DEFAULT_THREADS = 1
# Pixels per digit pixel in the saved grids (16x16 digits are tiny).
GRID_UPSCALE = 4
# Samples shown per method in side_by_side.png: two of each digit.
SIDE_BY_SIDE_SAMPLES = 20
WARMUP_STEPS = 2


@dataclass
class MethodRow:
    method: str
    gflops_per_image: float
    flops_speedup: float
    cpu_seconds: float | None              # median over the rounds
    cpu_speedup: float | None              # ratio of medians; None where CPU time is not measured (CUDA)
    cpu_speedup_min: float | None          # range of the per-round ratios
    cpu_speedup_max: float | None
    wall_seconds: float
    wall_speedup: float
    wall_reliable: bool
    class_accuracy: float
    frechet_distance: float
    psnr_vs_none: float

    def markdown(self) -> str:
        psnr_text = "inf" if math.isinf(self.psnr_vs_none) else f"{self.psnr_vs_none:.2f}"
        if self.cpu_speedup is None:
            cpu = "-"
        elif self.cpu_speedup_min == self.cpu_speedup_max:
            cpu = f"{self.cpu_speedup:.2f}x"
        else:
            cpu = f"{self.cpu_speedup:.2f}x ({self.cpu_speedup_min:.2f}-{self.cpu_speedup_max:.2f})"
        wall = f"{self.wall_speedup:.2f}x" + ("" if self.wall_reliable else " (unreliable)")
        return (f"| {self.method} | {self.gflops_per_image:.3f} | {self.flops_speedup:.2f}x | {cpu} | {wall} "
                f"| {100 * self.class_accuracy:.1f}% | {self.frechet_distance:.2f} | {psnr_text} |")


TABLE_HEADER = ("| method | FLOPs / image (GFLOPs) | FLOPs speed-up | CPU-time speed-up (rounds min-max) "
                "| wall-clock speed-up | class accuracy | Frechet distance | PSNR vs none (dB) |\n"
                "|---|---|---|---|---|---|---|---|")


def markdown_table(rows: list[MethodRow]) -> str:
    return "\n".join([TABLE_HEADER] + [r.markdown() for r in rows])


def save_grid(images: torch.Tensor, path: Path, nrow: int) -> None:
    from torchvision.utils import make_grid, save_image

    grid = make_grid(to_unit_range(images), nrow=nrow, padding=1, pad_value=0.5)
    grid = torch.nn.functional.interpolate(grid[None], scale_factor=GRID_UPSCALE, mode="nearest")[0]
    save_image(grid, str(path))


def save_side_by_side(runs: list[SampleRun], path: Path, count: int) -> None:
    """The first ``count`` samples of every method, one titled panel per method, left to right."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    title_h, gap = 18, 12
    panels = []
    for run in runs:
        grid = make_grid(to_unit_range(run.images[:count]), nrow=5, padding=1, pad_value=0.5)
        grid = torch.nn.functional.interpolate(grid[None], scale_factor=GRID_UPSCALE, mode="nearest")[0]
        arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        panels.append((run.method, Image.fromarray(arr).convert("RGB")))
    width = sum(p.width for _, p in panels) + gap * (len(panels) + 1)
    height = max(p.height for _, p in panels) + title_h + 2 * gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = gap
    for name, panel in panels:
        draw.text((x, gap // 2), name, fill="black")
        canvas.paste(panel, (x, gap // 2 + title_h))
        x += panel.width + gap
    canvas.save(path)          # written into the demo's fresh folder, which is swapped in whole


@contextlib.contextmanager
def fresh_folder(out: Path) -> Iterator[Path]:
    """A new empty folder beside ``out``; when the block succeeds it replaces ``out`` (the old one is
    removed after the swap), when it raises it is removed and ``out`` is left as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)                    # mkdtemp makes it private; the swapped-in folder should not be
    try:
        yield tmp
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Sample the embedded digits DiT with every cache method.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output folder (replaced as a whole when the run completes)")
    parser.add_argument("--ckpt", type=Path, default=None,
                        help=f"a DiT exported by dit_duca.train (default: the shipped {DEFAULT_EMBEDDED_PATH.name})")
    parser.add_argument("--full", action="store_true",
                        help=f"the full run: {FULL_NUM_SAMPLES} samples, {FULL_NUM_STEPS} steps, {FULL_REPEATS} timing "
                             f"rounds (default {DEFAULT_NUM_SAMPLES} samples, {QUICK_NUM_STEPS} steps, "
                             f"{DEFAULT_REPEATS} rounds)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help=f"samples per method (default {DEFAULT_NUM_SAMPLES}, --full {FULL_NUM_SAMPLES})")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"interleaved timing rounds (default {DEFAULT_REPEATS}, --full {FULL_REPEATS})")
    parser.add_argument("--num-sampling-steps", type=int, default=None,
                        help=f"DDIM/DDPM steps (default {QUICK_NUM_STEPS}, --full {FULL_NUM_STEPS})")
    parser.add_argument("--cfg-scale", type=float, default=DEFAULT_CFG_SCALE,
                        help="classifier-free guidance scale (1 = no guidance)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (the same for every method)")
    parser.add_argument("--ddpm", action="store_true", help="DDPM (learned variance) instead of DDIM")
    parser.add_argument("--methods", default=",".join(METHOD_ORDER),
                        help="comma-separated subset of " + ",".join(METHOD_ORDER) + " ('none' is always run)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="torch CPU threads (0: torch's default; 1 avoids spin-waiting on a shared machine)")
    return parser


def _validate(args: argparse.Namespace) -> argparse.Namespace:
    """Every check that needs no model, raising UsageError with one line naming the flag and the fix."""
    if args.num_samples is None:
        args.num_samples = FULL_NUM_SAMPLES if args.full else DEFAULT_NUM_SAMPLES
    if args.repeats is None:
        args.repeats = FULL_REPEATS if args.full else DEFAULT_REPEATS
    if args.num_sampling_steps is None:
        args.num_sampling_steps = FULL_NUM_STEPS if args.full else QUICK_NUM_STEPS
    if args.num_samples < MIN_NUM_SAMPLES:
        raise UsageError(f"--num-samples must be >= {MIN_NUM_SAMPLES} (the Frechet distance needs a covariance), "
                         f"got {args.num_samples}")
    if args.repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {args.repeats}")
    if args.num_sampling_steps < 1:
        raise UsageError(f"--num-sampling-steps must be >= 1, got {args.num_sampling_steps}")
    if not math.isfinite(args.cfg_scale) or args.cfg_scale < 1.0:
        raise UsageError(f"--cfg-scale must be >= 1 (1 is no guidance), got {args.cfg_scale}")
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {args.threads}")
    check_number("--seed", args.seed, SEED)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_ORDER]
    if unknown:
        raise UsageError(f"--methods: unknown {unknown}; choose from {', '.join(METHOD_ORDER)}")
    args.methods = [m for m in METHOD_ORDER if m in methods or m == "none"]
    if args.ckpt is not None and not args.ckpt.is_file():
        raise UsageError(f"--ckpt {args.ckpt}: no such file; omit --ckpt to use the shipped embedded model")
    if args.ckpt is not None:
        try:
            read_spec(args.ckpt)    # the header only: a file that is not a trainer export fails here, not later
        except CheckpointError as exc:
            raise UsageError(f"--ckpt {exc}; or omit --ckpt to use the shipped embedded model") from None
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder; pass a folder path for --out")
    check_output_dir(args.out, "--out")
    if args.out.exists():       # the new folder is made beside --out and renamed onto it: its parent too
        check_output_dir(args.out.parent, "--out")
    check_policy()              # DUCA_CPU_ALLOCATOR, read by the timing loop
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate; a bad value prints one line ``error: ...`` and exits with status 2."""
    args = build_parser().parse_args(argv)
    return run_or_exit(lambda: _validate(args))


def run_demo(args: argparse.Namespace) -> list[MethodRow]:
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_dit_checkpoint(args.ckpt or DEFAULT_EMBEDDED_PATH)
    classifier = load_default_classifier()
    real, _ = real_heldout_digits()
    labels = balanced_labels(args.num_samples, model.num_classes)
    common = dict(num_steps=args.num_sampling_steps, cfg_scale=args.cfg_scale, seed=args.seed, ddim=not args.ddpm)
    # Warm-up (first-call allocations and kernel selection), so the first timed method is not penalised.
    sample(model, labels, method="none", num_steps=WARMUP_STEPS, cfg_scale=args.cfg_scale)
    full = uncached_flops_per_image(model, args.num_sampling_steps)
    total = len(args.methods) * args.repeats
    done = [0]

    def progress() -> None:
        done[0] += 1
        print(f"\rsampling: {done[0]}/{total} runs ({len(args.methods)} methods x {args.repeats} interleaved rounds, "
              f"{args.num_samples} samples each)", end="" if done[0] < total else "\n", file=sys.stderr, flush=True)

    cases = [Case(m, fn=(lambda m=m: sample(model, labels, method=m, **common))) for m in args.methods]
    series = interleaved(cases, repeats=args.repeats, progress=progress)
    runs: list[SampleRun] = [series[m].result for m in args.methods]
    base = runs[0]
    rows: list[MethodRow] = []
    speedups: dict[str, Speedup] = {}
    for method, run in zip(args.methods, runs, strict=True):
        sp = compare(series["none"], series[method])
        if method != "none":
            speedups[method] = sp
        flops = run_flops_per_image(model, run)
        scores = digits_scores(classifier, run.images.clamp(-1, 1), labels, real)
        cpu = series[method].cpu
        rows.append(MethodRow(method, flops / 1e9, full / flops, cpu and cpu.median, sp.cpu,
                              sp.cpu_rounds and sp.cpu_rounds.min, sp.cpu_rounds and sp.cpu_rounds.max,
                              series[method].wall.median, sp.wall, sp.wall_reliable,
                              scores.accuracy, scores.frechet_distance, psnr(run.images, base.images)))
    table = markdown_table(rows)
    warning = wall_warning(speedups)
    settings = (f"{args.num_samples} samples ({args.num_samples // model.num_classes} per digit), "
                f"{'DDPM' if args.ddpm else 'DDIM'}-{args.num_sampling_steps}, CFG {args.cfg_scale}, seed {args.seed}, "
                f"{model.depth} blocks x {model.hidden_size}, {model.x_embedder.num_patches} tokens; "
                f"{args.repeats} interleaved timing rounds, {torch.get_num_threads()} torch thread(s)")
    note = warning + "." if warning else "Wall-clock and CPU-time speed-ups agree."
    with fresh_folder(args.out) as tmp:
        for run in runs:
            save_grid(run.images, tmp / f"grid_{run.method}.png", nrow=model.num_classes)
        save_side_by_side(runs, tmp / "side_by_side.png", SIDE_BY_SIDE_SAMPLES)
        (tmp / "table.md").write_text(f"{settings}\n\n{table}\n\n{note}\n")
        (tmp / "results.json").write_text(json.dumps(
            {"settings": settings, "wall_warning": warning, "environment": environment(torch.device("cpu")),
             "rows": [asdict(r) | {"psnr_vs_none": None if math.isinf(r.psnr_vs_none) else r.psnr_vs_none}
                      for r in rows]}, indent=2))
    print(f"\n{settings}\n\n{table}\n\n{note}\n\nwrote {args.out}/grid_<method>.png, {args.out}/side_by_side.png, "
          f"{args.out}/table.md")
    return rows


def main(argv: list[str] | None = None) -> None:
    run_demo(parse_args(argv))


if __name__ == "__main__":
    main()
