"""Digits metrics for the embedded model: class accuracy and the Frechet distance in classifier features.

The digits classifier (``dit_duca.digits_classifier``, trained on the train split, >= 97% held-out
accuracy) is the judge, as Inception is for FID:

* **class accuracy**: the fraction of generated images the classifier reads as the class that was asked for;
* **Frechet distance**: between Gaussians fitted to the classifier's penultimate features of the generated
  images and of the real held-out digits, computed with :func:`duca_eval.fid.frechet_distance` (the ADM
  formula). With a few hundred samples in 64 dimensions the estimate is biased upwards; compare methods
  at the same sample count, not with published FIDs.

Images are (N, 1, 16, 16) tensors in [-1, 1], as the embedded DiT produces them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import InputError
from .fid import frechet_distance, gaussian_statistics

if TYPE_CHECKING:
    from dit_duca.digits_classifier import DigitsClassifier

# Images go through the classifier in chunks of this size (memory only; results do not depend on it).
CLASSIFIER_BATCH = 512


@dataclass(frozen=True)
class DigitsScores:
    accuracy: float            # in [0, 1]
    frechet_distance: float


def _check_images(images: torch.Tensor, classifier: "DigitsClassifier", name: str) -> None:
    cfg = classifier.config
    expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != expected:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"{name} must be a (N, {', '.join(map(str, expected))}) tensor in [-1, 1], got {shape}")
    if images.shape[0] == 0:
        raise InputError(f"{name} is empty")


@torch.no_grad()
def classify(classifier: "DigitsClassifier", images: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Predicted labels (N,) and penultimate features (N, D) as float64 numpy."""
    _check_images(images, classifier, "images")
    classifier.eval()
    device = next(classifier.parameters()).device
    preds, feats = [], []
    for chunk in images.split(CLASSIFIER_BATCH):
        f = classifier.features(chunk.to(device=device, dtype=torch.float32))
        preds.append(classifier.logits(f).argmax(1).cpu())
        feats.append(f.double().cpu())
    return torch.cat(preds), torch.cat(feats).numpy()


def class_accuracy(classifier: "DigitsClassifier", images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` classified as their requested ``labels``."""
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != (images.shape[0],):
        raise InputError(f"labels must have shape ({images.shape[0]},) to match the images, got {tuple(labels.shape)}")
    preds, _ = classify(classifier, images)
    return float((preds == labels).float().mean())


def features_frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D)."""
    mu_a, sigma_a = gaussian_statistics(features_a)
    mu_b, sigma_b = gaussian_statistics(features_b)
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


def digits_frechet_distance(classifier: "DigitsClassifier", generated: torch.Tensor, real: torch.Tensor) -> float:
    """Frechet distance between classifier features of ``generated`` and ``real`` images."""
    _check_images(real, classifier, "real")
    _, gen_feats = classify(classifier, generated)
    _, real_feats = classify(classifier, real)
    return features_frechet_distance(gen_feats, real_feats)


def digits_scores(classifier: "DigitsClassifier", generated: torch.Tensor, labels: torch.Tensor,
                  real: torch.Tensor) -> DigitsScores:
    """Class accuracy of ``generated`` against the requested ``labels`` and Frechet distance to ``real``."""
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != (generated.shape[0],):
        raise InputError(f"labels must have shape ({generated.shape[0]},) to match the images, got {tuple(labels.shape)}")
    preds, gen_feats = classify(classifier, generated)
    _check_images(real, classifier, "real")
    _, real_feats = classify(classifier, real)
    return DigitsScores(float((preds == labels).float().mean()), features_frechet_distance(gen_feats, real_feats))


def load_default_classifier(device: str | torch.device = "cpu") -> "DigitsClassifier":
    """The classifier shipped with the embedded model (``dit_duca/weights/digits_classifier.safetensors``)."""
    from dit_duca.digits_classifier import load_classifier

    return load_classifier(None, device)


def real_heldout_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The real held-out digits (images in [-1, 1], labels): the reference set of the Frechet distance."""
    from dit_duca.digits import load_digits_split

    split = load_digits_split("heldout")
    return split.images, split.labels
