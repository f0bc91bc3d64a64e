"""Fidelity to a reference run: PSNR, SSIM and LPIPS between a cached run and the uncached run of
the same seeds, per image (or video frame) and averaged.

In memory (tensors in [0, 1] float or uint8, shape (C, H, W) or (N, C, H, W))::

    from duca_eval.fidelity import psnr, ssim, lpips_distance, load_lpips
    psnr(a, b)                      # tensor (N,) in dB; +inf where a == b
    ssim(a, b)                      # tensor (N,)
    lpips_distance(a, b, load_lpips())

On files::

    python -m duca_eval.fidelity --ref runs/uncached --sample runs/duca [--video] [--out fidelity.json]

Images are paired by file name (``000123.png`` with ``000123.png``); with ``--video`` each
sub-folder is one video of frame images, videos are paired by folder name and frames by file name.
A name present on one side only is an error, never a silent skip. Means: over images; in video
mode each video's frames are averaged first, then the videos (every video weighs the same).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from duca_common.runtime import HelpFormatter

from .errors import InputError
from .images import list_images, load_rgb
from .lpips import BACKBONES, DEFAULT_NET, LPIPS, resolve_lpips_weights
from .report import EvalResult, add_common_args, check_outputs, finish, resolve_device, run_cli

PROTOCOL = "fidelity"
DEFAULT_OUT = "fidelity_eval.json"
METRICS = ("psnr", "ssim", "lpips")

# SSIM of Wang et al. (2004): 11 x 11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
# statistics per channel, averaged over the window positions fully inside the image.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03

# Tolerance on the [0, 1] range of float inputs (resampling can overshoot by rounding).
RANGE_TOL = 1e-3

VIDEO_FILE_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")


# ---------------------------------------------------------------- in-memory metrics


def to_unit_float(x, name: str = "image") -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 (N, C, H, W) in [0, 1]."""
    tensor = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4:
        raise InputError(f"{name} must be (C, H, W) or (N, C, H, W), got shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    tensor = tensor.float()
    low, high = float(tensor.min()), float(tensor.max())
    if low < -RANGE_TOL or high > 1.0 + RANGE_TOL:
        raise InputError(
            f"{name} values span [{low:.3f}, {high:.3f}]; expected [0, 1] floats or uint8. "
            f"Images in [-1, 1] convert with (x + 1) / 2."
        )
    return tensor.clamp(0.0, 1.0)


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor, bool]:
    single = (a.ndim if hasattr(a, "ndim") else np.ndim(a)) == 3
    ta, tb = to_unit_float(a, "a"), to_unit_float(b, "b")
    if ta.shape != tb.shape:
        raise InputError(f"shapes differ: {tuple(ta.shape)} vs {tuple(tb.shape)}")
    return ta, tb.to(ta.device), single


def psnr(a, b) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB (data range 1) per image; +inf for identical images."""
    ta, tb, single = _pair(a, b)
    mse = (ta.double() - tb.double()).pow(2).flatten(1).mean(dim=1)
    value = 10.0 * torch.log10(1.0 / mse)  # mse == 0 -> +inf
    return value[0] if single else value


def _gaussian_window(device, dtype) -> torch.Tensor:
    coords = torch.arange(SSIM_WINDOW, device=device, dtype=dtype) - (SSIM_WINDOW - 1) / 2.0
    kernel = torch.exp(-(coords**2) / (2.0 * SSIM_SIGMA**2))
    kernel = kernel / kernel.sum()
    return kernel


def ssim(a, b) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004, Gaussian window) per image, channels averaged.

    Matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)``.
    """
    ta, tb, single = _pair(a, b)
    if min(ta.shape[-2:]) < SSIM_WINDOW:
        raise InputError(f"SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW}, got {tuple(ta.shape[-2:])}")
    x, y = ta.double(), tb.double()
    channels = x.shape[1]
    kernel = _gaussian_window(x.device, x.dtype)
    kx = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    ky = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid positions only
        return F.conv2d(F.conv2d(t, kx, groups=channels), ky, groups=channels)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    value = ssim_map.flatten(1).mean(dim=1).float()
    return value[0] if single else value


def load_lpips(net: str = DEFAULT_NET, backbone: str | Path | None = None, heads: str | Path | None = None,
               device: str = "cpu") -> LPIPS:
    """An :class:`LPIPS` model from local weight files (or the torch hub cache / a download)."""
    return LPIPS(resolve_lpips_weights(net, backbone, heads)).to(device)


def lpips_distance(a, b, model: LPIPS) -> torch.Tensor:
    """LPIPS distance per image (lower is closer); grayscale inputs are repeated to RGB."""
    ta, tb, single = _pair(a, b)
    if ta.shape[1] == 1:
        ta, tb = ta.repeat(1, 3, 1, 1), tb.repeat(1, 3, 1, 1)
    device = next(model.buffers()).device
    value = model(ta.to(device), tb.to(device)).cpu()
    return value[0] if single else value


# ---------------------------------------------------------------- pairing files


@dataclass
class ImagePair:
    name: str  # file name, or "video/frame" in video mode
    ref: Path
    sample: Path
    video: str | None = None


def _mismatch_message(what: str, only_ref: Sequence[str], only_sample: Sequence[str], ref: Path, sample: Path) -> str:
    shown = 5
    parts = []
    if only_ref:
        parts.append(f"{len(only_ref)} only in {ref} (e.g. {', '.join(sorted(only_ref)[:shown])})")
    if only_sample:
        parts.append(f"{len(only_sample)} only in {sample} (e.g. {', '.join(sorted(only_sample)[:shown])})")
    return (
        f"{what} do not pair up by name: " + "; ".join(parts) + ". Both runs must use the same seeds and "
        "file names; regenerate the missing ones or compare matching subsets."
    )


def pair_by_name(ref_dir: Path, sample_dir: Path, video: str | None = None) -> list[ImagePair]:
    """Pairs of image files with the same name in both folders; unpaired names raise InputError."""
    ref_files = {p.name: p for p in list_images(ref_dir, "reference folder")}
    sample_files = {p.name: p for p in list_images(sample_dir, "sample folder")}
    only_ref, only_sample = set(ref_files) - set(sample_files), set(sample_files) - set(ref_files)
    if only_ref or only_sample:
        raise InputError(_mismatch_message("images", list(only_ref), list(only_sample), ref_dir, sample_dir))
    prefix = f"{video}/" if video else ""
    return [ImagePair(prefix + name, ref_files[name], sample_files[name], video) for name in sorted(ref_files)]


def _video_dirs(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"{what} {folder} does not exist or is not a folder.")
    videos = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_FILE_EXTENSIONS]
    if videos:
        raise InputError(
            f"{what} {folder} holds video files ({videos[0].name}, ...); this torchvision has no video decoder, "
            f"so pass folders of frames: e.g. ffmpeg -i {videos[0].name} {videos[0].stem}/%05d.png"
        )
    dirs = {p.name: p for p in folder.iterdir() if p.is_dir()}
    if not dirs:
        raise InputError(f"{what} {folder} has no sub-folders; with --video, each sub-folder holds one video's frames.")
    return dirs


def pair_videos(ref_dir: Path, sample_dir: Path) -> list[ImagePair]:
    """Frame pairs of videos stored as sub-folders of frames, paired by folder and file name."""
    ref_videos, sample_videos = _video_dirs(ref_dir, "reference folder"), _video_dirs(sample_dir, "sample folder")
    only_ref, only_sample = set(ref_videos) - set(sample_videos), set(sample_videos) - set(ref_videos)
    if only_ref or only_sample:
        raise InputError(_mismatch_message("videos", list(only_ref), list(only_sample), ref_dir, sample_dir))
    pairs: list[ImagePair] = []
    for name in sorted(ref_videos):
        pairs += pair_by_name(ref_videos[name], sample_videos[name], video=name)
    return pairs


# ---------------------------------------------------------------- evaluation


@dataclass
class FidelityOptions:
    ref: Path
    sample: Path
    video: bool = False
    metrics: tuple[str, ...] = METRICS
    lpips_net: str = DEFAULT_NET
    lpips_backbone: Path | None = None
    lpips_heads: Path | None = None
    device: str = "auto"
    batch_size: int = 16
    progress: bool = True
    extra_notes: list[str] = field(default_factory=list)


def _batches(pairs: list[ImagePair], batch_size: int) -> Iterator[tuple[list[ImagePair], np.ndarray, np.ndarray]]:
    group: list[ImagePair] = []
    refs: list[np.ndarray] = []
    samples: list[np.ndarray] = []
    for pair in pairs:
        ref, sample = load_rgb(pair.ref), load_rgb(pair.sample)
        if ref.shape != sample.shape:
            raise InputError(f"{pair.name}: reference is {ref.shape[:2]} but sample is {sample.shape[:2]} (H, W)")
        if group and (ref.shape != refs[0].shape or len(group) == batch_size):
            yield group, np.stack(refs), np.stack(samples)
            group, refs, samples = [], [], []
        group.append(pair)
        refs.append(ref)
        samples.append(sample)
    if group:
        yield group, np.stack(refs), np.stack(samples)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def evaluate_fidelity(options: FidelityOptions) -> EvalResult:
    unknown = set(options.metrics) - set(METRICS)
    if unknown or not options.metrics:
        raise InputError(f"unknown metrics {sorted(unknown)}; choose from {list(METRICS)}")
    ref, sample = Path(options.ref).expanduser(), Path(options.sample).expanduser()
    pairs = pair_videos(ref, sample) if options.video else pair_by_name(ref, sample)
    device = resolve_device(options.device)
    model = None
    weights: dict[str, str] = {}
    if "lpips" in options.metrics:
        lpips_weights = resolve_lpips_weights(options.lpips_net, options.lpips_backbone, options.lpips_heads)
        weights = {"lpips_net": options.lpips_net, "lpips_backbone": str(lpips_weights.backbone),
                   "lpips_heads": str(lpips_weights.heads)}
        model = LPIPS(lpips_weights).to(device)

    from tqdm.auto import tqdm

    rows: list[dict] = []
    with tqdm(total=len(pairs), desc="fidelity", unit="img", disable=not options.progress) as bar:
        for group, refs, samples in _batches(pairs, options.batch_size):
            a = torch.from_numpy(refs).permute(0, 3, 1, 2).to(device)
            b = torch.from_numpy(samples).permute(0, 3, 1, 2).to(device)
            values = {}
            if "psnr" in options.metrics:
                values["psnr"] = psnr(a, b).tolist()
            if "ssim" in options.metrics:
                values["ssim"] = ssim(a, b).tolist()
            if model is not None:
                values["lpips"] = lpips_distance(a, b, model).tolist()
            for i, pair in enumerate(group):
                row = {"name": pair.name}
                if pair.video is not None:
                    row["video"] = pair.video
                row.update({metric: values[metric][i] for metric in options.metrics})
                rows.append(row)
            bar.update(len(group))

    extra: dict = {"per_item": rows}
    if options.video:
        per_video = {}
        for video in sorted({row["video"] for row in rows}):
            frames = [row for row in rows if row["video"] == video]
            per_video[video] = {m: _mean([r[m] for r in frames]) for m in options.metrics}
            per_video[video]["num_frames"] = len(frames)
        extra["per_video"] = per_video
        metrics = {m: _mean([v[m] for v in per_video.values()]) for m in options.metrics}
    else:
        metrics = {m: _mean([r[m] for r in rows]) for m in options.metrics}
    notes = list(options.extra_notes)
    if "psnr" in metrics and math.isinf(metrics["psnr"]):
        notes.append("PSNR is inf: at least one pair is pixel-identical.")
    return EvalResult(
        protocol=PROTOCOL,
        metrics=metrics,
        num_samples=len(rows),
        inputs={"ref": str(ref), "sample": str(sample), "video": options.video,
                "num_videos": len(extra.get("per_video", {})) if options.video else None},
        weights=weights,
        notes=notes,
        extra=extra,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m duca_eval.fidelity", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--ref", required=True, help="folder of the reference (uncached) run")
    parser.add_argument("--sample", required=True, help="folder of the run to compare (same file names)")
    parser.add_argument("--video", action="store_true", help="folders hold one sub-folder of frames per video")
    parser.add_argument("--metrics", default=",".join(METRICS), help=f"comma-separated subset of {','.join(METRICS)}")
    parser.add_argument("--lpips-net", default=DEFAULT_NET, choices=sorted(BACKBONES), help="LPIPS backbone")
    parser.add_argument("--lpips-backbone", default=None, help="torchvision backbone weights (.pth)")
    parser.add_argument("--lpips-heads", default=None, help="LPIPS v0.1 linear heads (alex.pth / vgg.pth)")
    add_common_args(parser, DEFAULT_OUT)
    parser.set_defaults(batch_size=16)
    return parser


def main(argv: list[str] | None = None) -> EvalResult:
    args = build_parser().parse_args(argv)
    check_outputs(args)
    options = FidelityOptions(
        ref=Path(args.ref),
        sample=Path(args.sample),
        video=args.video,
        metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()),
        lpips_net=args.lpips_net,
        lpips_backbone=None if args.lpips_backbone is None else Path(args.lpips_backbone),
        lpips_heads=None if args.lpips_heads is None else Path(args.lpips_heads),
        device=args.device,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    return finish(evaluate_fidelity(options), args.out)


if __name__ == "__main__":
    sys.exit(run_cli(main))
