"""One-command demo: the embedded digits DiT sampled with no cache, FORA, ToCa, DuCa and TaylorSeer.

    python -m dit_duca.demo                    # writes outputs/demo/, prints the table

Every method samples the same seeds and class labels (balanced over the 10 digits) with classifier-free
guidance and DDIM-50 (``dit_duca.embedded_sampling``). The demo writes ``grid_<method>.png`` per method
and ``side_by_side.png`` into ``--out`` and prints a markdown table: reference-formula FLOPs per image
(transformer blocks, CFG included), FLOPs speed-up, wall-clock speed-up measured in this run, class
accuracy and Frechet distance to the real held-out digits (``dit_duca.digits_metrics``), and PSNR against the
uncached samples of the same seeds. The table is also saved as ``table.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from duca_common.runtime import atomic_path
from dit_duca.digits_metrics import digits_scores, load_default_classifier, real_heldout_digits

from .digits import to_unit_range
from .embedded import DEFAULT_EMBEDDED_PATH, load_dit_checkpoint
from .embedded_sampling import (DEFAULT_CFG_SCALE, DEFAULT_NUM_STEPS, METHOD_ORDER, SampleRun, balanced_labels,
                                psnr, run_flops_per_image, sample, uncached_flops_per_image)

DEFAULT_OUT = Path("outputs") / "demo"
# 50 samples (5 per digit) keep the demo within 3 minutes on 2 shared CPU cores (100 took 4.5 minutes
# under load); use --num-samples 100 or more for a steadier Frechet distance.
DEFAULT_NUM_SAMPLES = 50
# The Frechet distance needs a covariance: at least two samples per digit.
MIN_NUM_SAMPLES = 20
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
    wall_seconds: float
    wall_speedup: float
    class_accuracy: float
    frechet_distance: float
    psnr_vs_none: float

    def markdown(self) -> str:
        psnr_text = "inf" if math.isinf(self.psnr_vs_none) else f"{self.psnr_vs_none:.2f}"
        return (f"| {self.method} | {self.gflops_per_image:.3f} | {self.flops_speedup:.2f}x | {self.wall_speedup:.2f}x "
                f"| {100 * self.class_accuracy:.1f}% | {self.frechet_distance:.2f} | {psnr_text} |")


TABLE_HEADER = ("| method | FLOPs / image (GFLOPs) | FLOPs speed-up | wall-clock speed-up | class accuracy "
                "| Frechet distance | PSNR vs none (dB) |\n|---|---|---|---|---|---|---|")


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
    with atomic_path(path) as tmp:
        canvas.save(tmp)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Sample the embedded digits DiT with every cache method.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (created)")
    parser.add_argument("--ckpt", type=Path, default=None,
                        help=f"a DiT exported by dit_duca.train (default: the shipped {DEFAULT_EMBEDDED_PATH.name})")
    parser.add_argument("--num-samples", type=int, default=DEFAULT_NUM_SAMPLES)
    parser.add_argument("--num-sampling-steps", type=int, default=DEFAULT_NUM_STEPS)
    parser.add_argument("--cfg-scale", type=float, default=DEFAULT_CFG_SCALE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ddpm", action="store_true", help="DDPM (learned variance) instead of DDIM")
    parser.add_argument("--methods", default=",".join(METHOD_ORDER),
                        help="comma-separated subset of " + ",".join(METHOD_ORDER) + " ('none' is always run)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.num_samples < MIN_NUM_SAMPLES:
        parser.error(f"--num-samples must be >= {MIN_NUM_SAMPLES} (the Frechet distance needs a covariance), "
                     f"got {args.num_samples}")
    if args.num_sampling_steps < 1:
        parser.error(f"--num-sampling-steps must be >= 1, got {args.num_sampling_steps}")
    if args.cfg_scale < 1.0:
        parser.error(f"--cfg-scale must be >= 1 (1 is no guidance), got {args.cfg_scale}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_ORDER]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHOD_ORDER)}")
    args.methods = [m for m in METHOD_ORDER if m in methods or m == "none"]
    if args.ckpt is not None and not args.ckpt.is_file():
        parser.error(f"--ckpt {args.ckpt}: no such file; omit --ckpt to use the shipped embedded model")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    return args


def run_demo(args: argparse.Namespace) -> list[MethodRow]:
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_dit_checkpoint(args.ckpt or DEFAULT_EMBEDDED_PATH)
    classifier = load_default_classifier()
    real, _ = real_heldout_digits()
    args.out.mkdir(parents=True, exist_ok=True)
    labels = balanced_labels(args.num_samples, model.num_classes)
    common = dict(num_steps=args.num_sampling_steps, cfg_scale=args.cfg_scale, seed=args.seed, ddim=not args.ddpm)
    # Warm-up (first-call allocations and kernel selection), so the first timed method is not penalised.
    sample(model, labels, method="none", num_steps=WARMUP_STEPS, cfg_scale=args.cfg_scale)
    full = uncached_flops_per_image(model, args.num_sampling_steps)
    runs: list[SampleRun] = []
    rows: list[MethodRow] = []
    for method in args.methods:
        run = sample(model, labels, method=method, progress=True, **common)
        runs.append(run)
        base = runs[0]
        flops = run_flops_per_image(model, run)
        scores = digits_scores(classifier, run.images.clamp(-1, 1), labels, real)
        rows.append(MethodRow(method, flops / 1e9, full / flops, run.seconds, base.seconds / run.seconds,
                              scores.accuracy, scores.frechet_distance, psnr(run.images, base.images)))
        save_grid(run.images, args.out / f"grid_{method}.png", nrow=model.num_classes)
        print(rows[-1].markdown(), flush=True)
    save_side_by_side(runs, args.out / "side_by_side.png", SIDE_BY_SIDE_SAMPLES)
    table = markdown_table(rows)
    settings = (f"{args.num_samples} samples ({args.num_samples // model.num_classes} per digit), "
                f"{'DDPM' if args.ddpm else 'DDIM'}-{args.num_sampling_steps}, CFG {args.cfg_scale}, seed {args.seed}, "
                f"{model.depth} blocks x {model.hidden_size}, {model.x_embedder.num_patches} tokens")
    (args.out / "table.md").write_text(f"{settings}\n\n{table}\n")
    (args.out / "results.json").write_text(json.dumps(
        {"settings": settings, "rows": [asdict(r) | {"psnr_vs_none": None if math.isinf(r.psnr_vs_none)
                                                     else r.psnr_vs_none} for r in rows]}, indent=2))
    print(f"\n{settings}\n\n{table}\n\nwrote {args.out}/grid_<method>.png, {args.out}/side_by_side.png, "
          f"{args.out}/table.md")
    return rows


def main(argv: list[str] | None = None) -> None:
    run_demo(parse_args(argv))


if __name__ == "__main__":
    main()
