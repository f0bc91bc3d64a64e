"""Improved precision and recall (Kynkaanniemi et al. 2019) with the ADM evaluator's definitions.

Each set's manifold is the union of balls around its points, the radius of a point being the
(squared Euclidean) distance to its k-th nearest neighbour in the same set, the point itself
excluded. Precision: fraction of samples inside the reference manifold. Recall: fraction of
reference points inside the sample manifold. ADM uses k = 3 on the 2048-d pool features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError

# Neighbourhood size of the ADM evaluator (``ManifoldEstimator(nhood_sizes=(3,))``).
ADM_PR_K = 3

# Rows of the distance matrix computed at once; bounds memory to ROW_BATCH x N x 4 bytes.
DEFAULT_ROW_BATCH = 1024


@dataclass
class PrecisionRecall:
    precision: float
    recall: float


def _squared_distances(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """||u - v||^2 via norms and one matmul, clamped at 0 (as ADM does)."""
    row_norms = (rows * rows).sum(dim=1, keepdim=True)
    col_norms = (cols * cols).sum(dim=1).unsqueeze(0)
    return (row_norms - 2.0 * rows @ cols.T + col_norms).clamp_min_(0.0)


def manifold_radii(features, k: int = ADM_PR_K, row_batch: int = DEFAULT_ROW_BATCH, device=None) -> torch.Tensor:
    """Squared distance from each point to its k-th nearest neighbour in the same set (self excluded)."""
    feats = _as_tensor(features, device)
    if feats.shape[0] <= k:
        raise InputError(f"k={k} nearest neighbours need more than {k} points, got {feats.shape[0]}")
    radii = []
    for start in range(0, feats.shape[0], row_batch):
        dist = _squared_distances(feats[start : start + row_batch], feats)
        # The smallest value of each row is the point itself (distance 0): take the (k+1)-th.
        radii.append(torch.kthvalue(dist, k + 1, dim=1).values)
    return torch.cat(radii)


def _coverage(points: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, row_batch: int) -> float:
    """Fraction of ``points`` that lie in at least one ball (center, radius)."""
    inside = []
    for start in range(0, points.shape[0], row_batch):
        dist = _squared_distances(points[start : start + row_batch], centers)
        inside.append((dist <= radii.unsqueeze(0)).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(
    reference, samples, k: int = ADM_PR_K, row_batch: int = DEFAULT_ROW_BATCH, device=None
) -> PrecisionRecall:
    """Precision and recall of ``samples`` (N, D) against ``reference`` (M, D)."""
    ref = _as_tensor(reference, device)
    smp = _as_tensor(samples, device)
    if ref.shape[1] != smp.shape[1]:
        raise InputError(f"feature dimensions differ: reference {ref.shape[1]}, samples {smp.shape[1]}")
    ref_radii = manifold_radii(ref, k, row_batch)
    smp_radii = manifold_radii(smp, k, row_batch)
    return PrecisionRecall(
        precision=_coverage(smp, ref, ref_radii, row_batch),
        recall=_coverage(ref, smp, smp_radii, row_batch),
    )


def _as_tensor(features, device) -> torch.Tensor:
    tensor = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    if tensor.ndim != 2:
        raise InputError(f"features must be (N, D), got shape {tuple(tensor.shape)}")
    # float32 like the ADM evaluator's TensorFlow graph.
    return tensor.to(device=device if device is not None else tensor.device, dtype=torch.float32)
