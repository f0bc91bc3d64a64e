r"""ImageNet protocol (DiT): FID, sFID, Inception Score, precision and recall as the ADM evaluator.

Usage::

    python -m duca_eval.imagenet --sample samples.npz --ref VIRTUAL_imagenet256_labeled.npz \
        [--inception-weights weights-inception-2015-12-05-6726825d.pth] [--out imagenet_eval.json]

``--sample`` is an ADM batch (``arr_0``, uint8 NHWC; what the DiT sampler writes) or an image
folder. ``--ref`` is an ADM reference batch, a statistics file written by ``--save-ref-stats``, or
an image folder (its statistics are cached). See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from duca_common.runtime import HelpFormatter

from .errors import InputError
from .fid import GaussianStats
from .images import open_image_set
from .inception import (
    DEFAULT_BATCH_SIZE,
    InceptionActivations,
    InceptionFeatures,
    compute_activations,
    resolve_inception_weights,
)
from .inception_score import ADM_IS_SPLIT_SIZE, inception_score
from .precision_recall import ADM_PR_K, DEFAULT_DISTANCE, DISTANCES, precision_recall
from .reference import ReferenceOptions, ReferenceStats, check_reference_path, default_cache_dir, load_reference
from .report import EvalResult, add_common_args, check_outputs, finish, resolve_device, run_cli

PROTOCOL = "imagenet"
DEFAULT_OUT = "imagenet_eval.json"

# FID-50k: the paper's protocol (ADM evaluator on 50,000 samples).
PAPER_NUM_SAMPLES = 50_000


@dataclass
class ImageNetOptions:
    sample: Path
    ref: Path
    inception_weights: Path | None = None
    device: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    save_ref_stats: Path | None = None
    is_split_size: int = ADM_IS_SPLIT_SIZE
    pr_k: int = ADM_PR_K
    pr_distance: str = DEFAULT_DISTANCE
    progress: bool = True


class LazyExtractor:
    """Builds the Inception network on first use (a reference given as statistics needs none)."""

    def __init__(self, weights_path: Path, device: str):
        self.weights_path, self.device = weights_path, device
        self._model: InceptionFeatures | None = None

    def __call__(self) -> InceptionFeatures:
        if self._model is None:
            self._model = InceptionFeatures(self.weights_path, self.device)
        return self._model


def metrics_from_activations(
    acts: InceptionActivations, ref: ReferenceStats, is_split_size: int = ADM_IS_SPLIT_SIZE, pr_k: int = ADM_PR_K,
    device: str = "cpu", pr_distance: str = DEFAULT_DISTANCE,
) -> tuple[dict[str, float | None], list[str]]:
    """The five ImageNet metrics of sample activations against reference statistics."""
    notes: list[str] = []
    metrics: dict[str, float | None] = {}
    metrics["fid"] = GaussianStats.from_features(acts.pool).frechet_distance(ref.pool)
    if ref.spatial is not None:
        metrics["sfid"] = GaussianStats.from_features(acts.spatial).frechet_distance(ref.spatial)
    else:
        metrics["sfid"] = None
        notes.append(f"sFID not computed: reference {ref.source} has no 'mu_s'/'sigma_s'.")
    metrics["inception_score"] = inception_score(acts.logits, split_size=is_split_size)
    if ref.pool_features is not None:
        pr = precision_recall(ref.pool_features, acts.pool, k=pr_k, device=device, distance=pr_distance)
        metrics["precision"], metrics["recall"] = pr.precision, pr.recall
    else:
        metrics["precision"] = metrics["recall"] = None
        notes.append(f"precision/recall not computed: reference {ref.source} has neither images nor pool features.")
    return metrics, notes


def evaluate_imagenet(options: ImageNetOptions) -> EvalResult:
    """Validate inputs and weights, then compute the metrics."""
    # Cheap checks first: inputs, then weights, before any image is decoded.
    samples = open_image_set(options.sample, what="samples")
    check_reference_path(options.ref)
    weights_path = resolve_inception_weights(options.inception_weights)
    if options.batch_size <= 0:
        raise InputError(f"--batch-size must be positive, got {options.batch_size}")
    device = resolve_device(options.device)
    extractor = LazyExtractor(weights_path, device)

    ref = load_reference(
        options.ref,
        extractor,
        ReferenceOptions(batch_size=options.batch_size, cache_dir=options.cache_dir, progress=options.progress),
    )
    if options.save_ref_stats is not None:
        ref.save(options.save_ref_stats)
    acts = compute_activations(samples, extractor(), options.batch_size, options.progress, label="samples")
    metrics, notes = metrics_from_activations(acts, ref, options.is_split_size, options.pr_k, device,
                                              options.pr_distance)
    if len(acts) != PAPER_NUM_SAMPLES:
        notes.append(f"{len(acts)} samples; the paper's FID-50k uses {PAPER_NUM_SAMPLES}.")
    return EvalResult(
        protocol=PROTOCOL,
        metrics=metrics,
        num_samples=len(acts),
        inputs={"sample": str(options.sample), "ref": ref.source, "ref_num_images": ref.num_images,
                "pr_distance": options.pr_distance},
        weights={"inception": str(weights_path)},
        notes=notes,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m duca_eval.imagenet", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--sample", required=True, help="ADM .npz (arr_0, uint8 NHWC) or image folder")
    parser.add_argument("--ref", required=True, help="ADM reference batch .npz, statistics .npz, or image folder")
    parser.add_argument("--inception-weights", default=None, help="local torch-fidelity Inception weights (.pth)")
    parser.add_argument("--cache-dir", default=str(default_cache_dir()), help="cache for reference statistics")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write cached statistics")
    parser.add_argument("--save-ref-stats", default=None, help="also write the reference statistics to this .npz")
    parser.add_argument("--is-split-size", type=int, default=ADM_IS_SPLIT_SIZE, help="Inception Score split size")
    parser.add_argument("--pr-distance", default=DEFAULT_DISTANCE, choices=DISTANCES,
                        help="precision/recall distances: float16 where finite, as the ADM evaluator (default), "
                             "or exact float32")
    add_common_args(parser, DEFAULT_OUT)
    return parser


def main(argv: list[str] | None = None) -> EvalResult:
    args = build_parser().parse_args(argv)
    check_outputs(args)
    options = ImageNetOptions(
        sample=Path(args.sample),
        ref=Path(args.ref),
        inception_weights=None if args.inception_weights is None else Path(args.inception_weights),
        device=args.device,
        batch_size=args.batch_size,
        cache_dir=None if args.no_cache else Path(args.cache_dir),
        save_ref_stats=None if args.save_ref_stats is None else Path(args.save_ref_stats),
        is_split_size=args.is_split_size,
        pr_distance=args.pr_distance,
        progress=not args.quiet,
    )
    return finish(evaluate_imagenet(options), args.out)


if __name__ == "__main__":
    sys.exit(run_cli(main))
