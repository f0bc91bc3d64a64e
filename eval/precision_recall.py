"""Improved precision and recall (Kynkaanniemi et al. 2019) with the ADM evaluator's definitions.

Each set's manifold is the union of balls around its points, the radius of a point being the
(squared Euclidean) distance to its k-th nearest neighbour in the same set, the point itself
excluded. Precision: fraction of samples inside the reference manifold. Recall: fraction of
reference points inside the sample manifold. ADM uses k = 3 on the 2048-d pool features.

Distances, as ADM's ``DistanceBlock`` computes them (``distance="float16"``, the default): each block
of ``row_batch`` x ``col_batch`` pairwise squared distances is computed from the features cast to
float16 (norms, one matmul, ``max(., 0)``, all in float16) and used, cast back to float32, when every
entry of the block is finite; a block with an overflow is recomputed in float32. The radii and the
ball tests then compare those float32 values. ``distance="float32"`` computes every block in float32
(more exact, but not the number the paper's evaluator reports). The finite check is per block, so
``row_batch`` / ``col_batch`` only matter when some block overflows float16 (squared norms above
65504, i.e. features longer than 256); ADM's blocks are 10000 x 10000.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .errors import InputError

# Neighbourhood size of the ADM evaluator (``ManifoldEstimator(nhood_sizes=(3,))``).
ADM_PR_K = 3

# ADM's ManifoldEstimator row_batch_size / col_batch_size: the float16 finite check is per such block.
ADM_BLOCK = 10000

Distance = Literal["float16", "float32"]
DISTANCES: tuple[str, ...] = ("float16", "float32")
DEFAULT_DISTANCE: Distance = "float16"     # what the ADM evaluator computes


@dataclass
class PrecisionRecall:
    precision: float
    recall: float


def _squared_distances(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """max(|u|^2 - 2 u.v + |v|^2, 0) in the inputs' dtype (ADM's ``_batch_pairwise_distances``)."""
    row_norms = (rows * rows).sum(dim=1, keepdim=True)
    col_norms = (cols * cols).sum(dim=1).unsqueeze(0)
    return (row_norms - 2 * (rows @ cols.T) + col_norms).clamp_min_(0.0)


def block_distances(rows: torch.Tensor, cols: torch.Tensor, distance: Distance = DEFAULT_DISTANCE) -> torch.Tensor:
    """One block of squared distances, float32 out; float16 when finite (ADM), else float32."""
    if distance == "float16":
        d16 = _squared_distances(rows.half(), cols.half())
        if bool(torch.isfinite(d16).all()):
            return d16.float()
    return _squared_distances(rows.float(), cols.float())


def _check_distance(distance: str) -> None:
    if distance not in DISTANCES:
        raise InputError(f"distance={distance!r} is not one of {DISTANCES}: 'float16' is the ADM evaluator's "
                         f"computation, 'float32' the exact one")


def _distance_rows(rows: torch.Tensor, cols: torch.Tensor, col_batch: int, distance: Distance) -> torch.Tensor:
    return torch.cat([block_distances(rows, cols[s : s + col_batch], distance)
                      for s in range(0, cols.shape[0], col_batch)], dim=1)


def manifold_radii(features, k: int = ADM_PR_K, row_batch: int = ADM_BLOCK, device=None, *,
                   col_batch: int = ADM_BLOCK, distance: Distance = DEFAULT_DISTANCE) -> torch.Tensor:
    """Squared distance from each point to its k-th nearest neighbour in the same set (self excluded)."""
    _check_distance(distance)
    feats = _as_tensor(features, device)
    if feats.shape[0] <= k:
        raise InputError(f"k={k} nearest neighbours need more than {k} points, got {feats.shape[0]}")
    radii = []
    for start in range(0, feats.shape[0], row_batch):
        dist = _distance_rows(feats[start : start + row_batch], feats, col_batch, distance)
        # The smallest value of each row is the point itself (distance 0): take the (k+1)-th.
        radii.append(torch.kthvalue(dist, k + 1, dim=1).values)
    return torch.cat(radii)


def _coverage(points: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, row_batch: int, col_batch: int,
              distance: Distance) -> float:
    """Fraction of ``points`` that lie in at least one ball (center, radius)."""
    inside = []
    for start in range(0, points.shape[0], row_batch):
        dist = _distance_rows(points[start : start + row_batch], centers, col_batch, distance)
        inside.append((dist <= radii.unsqueeze(0)).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(reference, samples, k: int = ADM_PR_K, row_batch: int = ADM_BLOCK, device=None, *,
                     col_batch: int = ADM_BLOCK, distance: Distance = DEFAULT_DISTANCE) -> PrecisionRecall:
    """Precision and recall of ``samples`` (N, D) against ``reference`` (M, D); ``distance`` as in the
    module docstring (default: ADM's float16-where-finite)."""
    _check_distance(distance)
    if row_batch < 1 or col_batch < 1:
        raise InputError(f"row_batch={row_batch} and col_batch={col_batch} must be >= 1")
    ref = _as_tensor(reference, device)
    smp = _as_tensor(samples, device)
    if ref.shape[1] != smp.shape[1]:
        raise InputError(f"feature dimensions differ: reference {ref.shape[1]}, samples {smp.shape[1]}")
    ref_radii = manifold_radii(ref, k, row_batch, col_batch=col_batch, distance=distance)
    smp_radii = manifold_radii(smp, k, row_batch, col_batch=col_batch, distance=distance)
    return PrecisionRecall(
        precision=_coverage(smp, ref, ref_radii, row_batch, col_batch, distance),
        recall=_coverage(ref, smp, smp_radii, row_batch, col_batch, distance),
    )


def _as_tensor(features, device) -> torch.Tensor:
    tensor = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    if tensor.ndim != 2:
        raise InputError(f"features must be (N, D), got shape {tuple(tensor.shape)}")
    # float32 inputs, as the ADM evaluator's placeholders; block_distances casts to float16 when asked.
    return tensor.to(device=device if device is not None else tensor.device, dtype=torch.float32)
