"""Digits metrics for the embedded models: class accuracy, Frechet distance, and fidelity to the uncached run.

The digits classifier (``dit_duca.digits_classifier``, trained on the train split, >= 97% held-out
accuracy) is the judge, as Inception is for FID. Two kinds of scores:

Quality against real digits (what the demo and the paper table report):

* **class accuracy**: the fraction of generated images the classifier reads as the class that was asked for;
* **Frechet distance to real digits**: between Gaussians fitted to the classifier's penultimate features
  of the generated images and of the real held-out digits, with :class:`duca_eval.fid.GaussianStats`
  (the ADM formula). With a few hundred samples in 64 dimensions the estimate is biased upwards;
  compare methods at the same sample count, not with published FIDs.

Fidelity to the uncached run of the same seeds (what ranks caching methods: on the embedded models every
method keeps 100% accuracy, and the distance to real digits is dominated by the sample size, so neither
tells a faithful cache from a drifting one; docs/results.md):

* **PSNR** (dB, images mapped to [0, 1]) of each cached image against the uncached image of the same seed;
* **feature distance**: the mean L2 distance between the penultimate features of each cached image and
  its uncached twin, divided by the mean feature norm of the uncached images (0 = identical features;
  paired, so it sees a changed digit even when the set statistics do not move);
* **Frechet distance to the uncached set**: the FD between the cached set's features and the uncached
  set's features (0 for identical sets; a distribution-level drift, the analogue of FID against the
  uncached samples).

Images are (N, 1, S, S) tensors in [-1, 1], as the embedded DiTs produce them. The classifier reads
16x16 digits; larger images whose side is a multiple of 16 are 2x2 average-pooled down first, which maps
the 32x32 digits (bilinear from 8x8) exactly onto the 16x16 digits (``to_classifier_size``).

This module lives in ``dit_duca`` next to the classifier and the data, and depends on ``duca_eval`` only
for generic formulas (Frechet distance, PSNR): ``duca_eval`` never imports a model package.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from duca_eval.errors import InputError
from duca_eval.fid import GaussianStats

from .digits import DIGITS_IMAGE_SIZE, load_digits_split
from .digits_classifier import DigitsClassifier, load_classifier

# Images go through the classifier in chunks of this size (memory only; results do not depend on it).
CLASSIFIER_BATCH = 512


@dataclass(frozen=True)
class DigitsScores:
    accuracy: float            # in [0, 1]
    frechet_distance: float


@dataclass(frozen=True)
class FidelityScores:
    """A cached run against the uncached run of the same seeds (see the module docstring)."""

    psnr: float                      # mean over images with a finite PSNR (inf when every image is identical)
    feature_distance: float          # mean paired L2 feature distance / mean uncached feature norm
    frechet_to_uncached: float       # FD(cached features, uncached features)


def to_classifier_size(images: torch.Tensor, classifier: DigitsClassifier) -> torch.Tensor:
    """``images`` at the classifier's side: unchanged when they already are, 2^k average pooling when their
    side is the classifier's times a power of two (e.g. 32 -> 16), else an error."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"images must be a (N, C, H, W) tensor in [-1, 1], got {shape}")
    side, target = images.shape[-1], classifier.config.image_size
    factor = side // target if side % target == 0 else 0
    if images.shape[-2] != side or factor < 1 or factor & (factor - 1):
        raise InputError(f"images of {tuple(images.shape[-2:])} cannot be judged by the {target}x{target} digits "
                         f"classifier: pass square images whose side is {target} times a power of two")
    while images.shape[-1] > target:
        images = F.avg_pool2d(images, 2)
    return images


def _check_images(images: torch.Tensor, classifier: DigitsClassifier, name: str) -> torch.Tensor:
    cfg = classifier.config
    if isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[1] == cfg.in_channels:
        images = to_classifier_size(images, classifier)
    expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != expected:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"{name} must be a (N, {', '.join(map(str, expected))}) tensor in [-1, 1] (or a multiple "
                         f"of that side), got {shape}")
    if images.shape[0] == 0:
        raise InputError(f"{name} is empty")
    return images


@torch.no_grad()
def classify(classifier: DigitsClassifier, images: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Predicted labels (N,) and penultimate features (N, D) as float64 numpy."""
    images = _check_images(images, classifier, "images")
    classifier.eval()
    device = next(classifier.parameters()).device
    preds, feats = [], []
    for chunk in images.split(CLASSIFIER_BATCH):
        f = classifier.features(chunk.to(device=device, dtype=torch.float32))
        preds.append(classifier.logits(f).argmax(1).cpu())
        feats.append(f.double().cpu())
    return torch.cat(preds), torch.cat(feats).numpy()


def _check_labels(labels: torch.Tensor, n: int) -> torch.Tensor:
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != (n,):
        raise InputError(f"labels must have shape ({n},) to match the images, got {tuple(labels.shape)}")
    return labels


def class_accuracy(classifier: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` classified as their requested ``labels``."""
    labels = _check_labels(labels, images.shape[0])
    preds, _ = classify(classifier, images)
    return float((preds == labels).float().mean())


def features_frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) (any N >= 2, also N < D)."""
    return GaussianStats.from_features(features_a).frechet_distance(GaussianStats.from_features(features_b))


def digits_frechet_distance(classifier: DigitsClassifier, generated: torch.Tensor, real: torch.Tensor) -> float:
    """Frechet distance between classifier features of ``generated`` and ``real`` images."""
    _, gen_feats = classify(classifier, generated)
    _, real_feats = classify(classifier, real)
    return features_frechet_distance(gen_feats, real_feats)


def digits_scores(classifier: DigitsClassifier, generated: torch.Tensor, labels: torch.Tensor,
                  real: torch.Tensor) -> DigitsScores:
    """Class accuracy of ``generated`` against the requested ``labels`` and Frechet distance to ``real``."""
    labels = _check_labels(labels, generated.shape[0])
    preds, gen_feats = classify(classifier, generated)
    _, real_feats = classify(classifier, real)
    return DigitsScores(float((preds == labels).float().mean()), features_frechet_distance(gen_feats, real_feats))


def mean_psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of images in [-1, 1] against ``reference``, both mapped to [0, 1]; images
    identical to their reference (infinite PSNR) are left out of the mean; inf when all are identical."""
    from duca_eval.fidelity import psnr

    if images.shape != reference.shape:
        raise InputError(f"images {tuple(images.shape)} and reference {tuple(reference.shape)} must have one shape "
                         f"(the same seeds, in the same order)")

    def unit(t: torch.Tensor) -> torch.Tensor:
        return ((t.double() + 1.0) / 2.0).clamp(0.0, 1.0)

    values = psnr(unit(images), unit(reference))
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("inf")


def fidelity_scores(classifier: DigitsClassifier, images: torch.Tensor, reference: torch.Tensor,
                    reference_features: np.ndarray | None = None) -> FidelityScores:
    """PSNR, paired feature distance and Frechet distance of ``images`` against the uncached ``reference``
    (same seeds, same order). ``reference_features`` skips classifying the reference again."""
    psnr = mean_psnr(images, reference)
    _, feats = classify(classifier, images)
    if reference_features is None:
        _, reference_features = classify(classifier, reference)
    if reference_features.shape != feats.shape:
        raise InputError(f"reference_features {reference_features.shape} do not match the images' {feats.shape}")
    scale = float(np.linalg.norm(reference_features, axis=1).mean())
    paired = float(np.linalg.norm(feats - reference_features, axis=1).mean()) / max(scale, np.finfo(float).tiny)
    fd = features_frechet_distance(feats, reference_features) if len(feats) >= 2 else float("nan")
    return FidelityScores(psnr, paired, max(fd, 0.0))


def load_default_classifier(device: str | torch.device = "cpu") -> DigitsClassifier:
    """The classifier shipped with the embedded model (``dit_duca/weights/digits_classifier.safetensors``)."""
    return load_classifier(None, device)


def real_heldout_digits(size: int = DIGITS_IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The real held-out digits (images in [-1, 1] at ``size``, labels): the reference set of the Frechet
    distance."""
    split = load_digits_split("heldout", size)
    return split.images, split.labels
