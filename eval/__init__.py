"""DuCa evaluation harness (import name ``duca_eval``; folder ``eval/``).

Protocols, each a CLI that writes JSON and prints a markdown table (docs/evaluation.md):

* ``python -m duca_eval.imagenet``: FID-50k, sFID, Inception Score, precision, recall (ADM evaluator).
* ``python -m duca_eval.coco``: FID-30k and CLIP score (ViT-L/14) for text-to-image samples.
* ``python -m duca_eval.fidelity``: PSNR, SSIM, LPIPS of a cached run against the uncached run.

In-memory API for other parts of the project (no files needed)::

    from duca_eval.fid import frechet_distance, gaussian_statistics, GaussianStats
    from duca_eval.inception_score import inception_score
    from duca_eval.precision_recall import precision_recall
    from duca_eval.fidelity import psnr, ssim, lpips_distance, load_lpips
    from duca_eval.coco import pair_images_with_prompts
"""

from .errors import EvalError, InputError, MissingWeightsError
from .fid import GaussianStats, frechet_distance, gaussian_statistics
from .inception_score import inception_score

__all__ = [
    "EvalError",
    "InputError",
    "MissingWeightsError",
    "GaussianStats",
    "frechet_distance",
    "gaussian_statistics",
    "inception_score",
]
