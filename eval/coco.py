r"""COCO protocol (PixArt-alpha): FID-30k against a reference folder or statistics file, and CLIP
score (ViT-L/14) of each generated image against the prompt that produced it.

Usage::

    python -m duca_eval.coco --sample samples/pixart_duca --ref coco30k_256_stats.npz \
        [--prompts samples/pixart_duca/prompts.txt] [--clip-model openai/clip-vit-large-patch14] \
        [--inception-weights weights-inception-2015-12-05-6726825d.pth] [--out coco_eval.json]

Image / prompt pairing: see :func:`pair_images_with_prompts`. FID uses every image of the sample
folder and the same Inception pool features as the ImageNet protocol. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from duca_common.runtime import HelpFormatter

from .clip_score import (
    CLIP_DEFINITIONS,
    DEFAULT_CLIP_DEFINITION,
    DEFAULT_CLIP_MODEL,
    ClipScorer,
    check_definition,
    resolve_clip_model,
)
from .errors import InputError
from .fid import GaussianStats
from .imagenet import LazyExtractor
from .images import FolderImages, list_images, load_rgb
from .inception import DEFAULT_BATCH_SIZE, compute_activations, resolve_inception_weights
from .reference import ReferenceOptions, check_reference_path, default_cache_dir, load_reference
from .report import EvalResult, add_common_args, check_outputs, finish, resolve_device, run_cli

PROTOCOL = "coco"
DEFAULT_OUT = "coco_eval.json"
PROMPTS_FILE_NAME = "prompts.txt"

# FID-30k: the paper's COCO protocol uses 30,000 generated images.
PAPER_NUM_SAMPLES = 30_000


@dataclass
class ImagePrompt:
    index: int
    path: Path
    prompt: str


def read_prompts(prompts_file: str | Path) -> list[str]:
    """Prompts, one per line (UTF-8, trailing newline stripped, empty lines kept so indices hold)."""
    path = Path(prompts_file).expanduser()
    if not path.is_file():
        raise InputError(f"prompts file {path} does not exist; "
                         f"pass --prompts or put {PROMPTS_FILE_NAME} in the folder.")
    from duca_common.text import read_text_utf8

    return read_text_utf8(path, "--prompts").splitlines()      # UTF-8 (BOM allowed); else line and byte named


def pair_images_with_prompts(folder: str | Path, prompts_file: str | Path | None = None) -> list[ImagePrompt]:
    """Pair each generated image with its prompt.

    Convention (shared with the PixArt sampling scripts): sampling writes image ``i`` as
    ``{i:06d}.png`` (any of the extensions in ``IMAGE_EXTENSIONS``), where ``i`` is the 0-based
    line index of its prompt in the prompts file, and copies that prompts file into the folder as
    ``prompts.txt``. With ``prompts_file=None`` the folder's ``prompts.txt`` is used.

    Every image name must be an integer index (leading zeros optional), within the prompts file,
    and unique; otherwise :class:`InputError` is raised. Prompts without an image are allowed
    (a partial run); the result is sorted by index.
    """
    folder = Path(folder).expanduser()
    images = list_images(folder, "sample folder")
    prompts = read_prompts(prompts_file if prompts_file is not None else folder / PROMPTS_FILE_NAME)
    pairs: dict[int, ImagePrompt] = {}
    for path in images:
        if not path.stem.isdigit():
            raise InputError(
                f"image {path.name} in {folder} is not named by its prompt index; sampling must write "
                f"'{{index:06d}}.png' where index is the prompt's line number (from 0) in {PROMPTS_FILE_NAME}."
            )
        index = int(path.stem)
        if index >= len(prompts):
            raise InputError(f"image {path.name} has index {index} but the prompts file has {len(prompts)} lines.")
        if index in pairs:
            raise InputError(f"two images for prompt {index}: {pairs[index].path.name} and {path.name}.")
        pairs[index] = ImagePrompt(index, path, prompts[index])
    return [pairs[i] for i in sorted(pairs)]


@dataclass
class CocoOptions:
    sample: Path
    ref: Path | None = None
    prompts: Path | None = None
    clip_model: str = DEFAULT_CLIP_MODEL
    clip_definition: str = DEFAULT_CLIP_DEFINITION
    inception_weights: Path | None = None
    ref_resize: int | None = None
    fid: bool = True
    clip: bool = True
    device: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    save_ref_stats: Path | None = None
    progress: bool = True


def evaluate_coco(options: CocoOptions) -> EvalResult:
    if not options.fid and not options.clip:
        raise InputError("nothing to do: both FID and CLIP score are disabled.")
    check_definition(options.clip_definition)
    # Inputs first, then weights, then work.
    sample_images = list_images(options.sample, "sample folder")
    pairs = pair_images_with_prompts(options.sample, options.prompts) if options.clip else []
    if options.fid:
        if options.ref is None:
            raise InputError("FID needs --ref (a COCO reference folder or statistics .npz); or pass --no-fid.")
        check_reference_path(options.ref)
        inception_weights = resolve_inception_weights(options.inception_weights)
    clip_dir = resolve_clip_model(options.clip_model) if options.clip else None
    device = resolve_device(options.device)

    metrics: dict[str, float | None] = {}
    weights: dict[str, str] = {}
    notes: list[str] = []
    if options.fid:
        extractor = LazyExtractor(inception_weights, device)
        ref = load_reference(
            options.ref, extractor,
            ReferenceOptions(batch_size=options.batch_size, resize=options.ref_resize, cache_dir=options.cache_dir,
                             need_pool_features=False, progress=options.progress),
        )
        if options.save_ref_stats is not None:
            ref.save(options.save_ref_stats)
        acts = compute_activations(
            FolderImages(sample_images, str(options.sample)), extractor(), options.batch_size, options.progress,
            "samples",
        )
        metrics["fid"] = GaussianStats.from_features(acts.pool).frechet_distance(ref.pool)
        weights["inception"] = str(inception_weights)
        if len(sample_images) != PAPER_NUM_SAMPLES:
            notes.append(f"FID over {len(sample_images)} images; the paper's FID-30k uses {PAPER_NUM_SAMPLES}.")
    if options.clip:
        from tqdm.auto import tqdm

        scorer = ClipScorer(clip_dir, device, definition=options.clip_definition)
        scores = []
        for start in tqdm(range(0, len(pairs), options.batch_size), desc="clip", disable=not options.progress):
            chunk = pairs[start : start + options.batch_size]
            scores.append(scorer([load_rgb(p.path) for p in chunk], [p.prompt for p in chunk]))
        metrics["clip_score"] = scorer.mean(np.concatenate(scores))
        weights["clip"] = str(options.clip_model)
        weights["clip_dir"] = str(clip_dir)
        weights["clip_definition"] = options.clip_definition
    return EvalResult(
        protocol=PROTOCOL,
        metrics=metrics,
        num_samples=len(sample_images),
        inputs={"sample": str(options.sample), "ref": None if options.ref is None else str(options.ref),
                "prompts": str(options.prompts or Path(options.sample) / PROMPTS_FILE_NAME) if options.clip else None,
                "num_pairs": len(pairs) if options.clip else None, "ref_resize": options.ref_resize},
        weights=weights,
        notes=notes,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m duca_eval.coco", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--sample", required=True, help="folder of generated {index:06d}.png images")
    parser.add_argument("--ref", default=None, help="COCO reference: statistics .npz or image folder")
    parser.add_argument("--prompts", default=None, help=f"prompts file (default: SAMPLE/{PROMPTS_FILE_NAME})")
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help="CLIP folder or hub id")
    parser.add_argument("--clip-definition", default=DEFAULT_CLIP_DEFINITION, choices=CLIP_DEFINITIONS,
                        help="torchmetrics: CLIPScore's (the reference's tool, default); clamped_pairs: the mean of "
                             "per-pair clamped scores (see duca_eval.clip_score)")
    parser.add_argument("--inception-weights", default=None, help="local torch-fidelity Inception weights (.pth)")
    parser.add_argument("--ref-resize", type=int, default=None,
                        help="centre-crop and resize reference folder images to this size (e.g. 256)")
    parser.add_argument("--no-fid", action="store_true", help="CLIP score only")
    parser.add_argument("--no-clip", action="store_true", help="FID only")
    parser.add_argument("--cache-dir", default=str(default_cache_dir()), help="cache for reference statistics")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write cached statistics")
    parser.add_argument("--save-ref-stats", default=None, help="also write the reference statistics to this .npz")
    add_common_args(parser, DEFAULT_OUT)
    return parser


def main(argv: list[str] | None = None) -> EvalResult:
    args = build_parser().parse_args(argv)
    check_outputs(args)
    options = CocoOptions(
        sample=Path(args.sample),
        ref=None if args.ref is None else Path(args.ref),
        prompts=None if args.prompts is None else Path(args.prompts),
        clip_model=args.clip_model,
        clip_definition=args.clip_definition,
        inception_weights=None if args.inception_weights is None else Path(args.inception_weights),
        ref_resize=args.ref_resize,
        fid=not args.no_fid,
        clip=not args.no_clip,
        device=args.device,
        batch_size=args.batch_size,
        cache_dir=None if args.no_cache else Path(args.cache_dir),
        save_ref_stats=None if args.save_ref_stats is None else Path(args.save_ref_stats),
        progress=not args.quiet,
    )
    return finish(evaluate_coco(options), args.out)


if __name__ == "__main__":
    sys.exit(run_cli(main))
