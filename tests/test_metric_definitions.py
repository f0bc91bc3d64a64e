"""Metric definitions are the ones the paper's numbers came from (issue 12 item 4).

* Precision / recall: ADM's ``ManifoldEstimator`` / ``DistanceBlock`` (guided-diffusion
  ``evaluations/evaluator.py``) re-implemented here step by step, as that file does it: float16 distance
  blocks used where finite, float32 otherwise, radii from ``np.partition``, ball tests OR-ed over column
  blocks. Ours must give exactly its numbers by default, and the float32 option the exact ones.
* CLIP score: torchmetrics ``CLIPScore`` (see test_library_parity for the live comparison).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from duca_eval.errors import InputError
from duca_eval.precision_recall import manifold_radii, precision_recall

# ------------------------------------------------------------------------ ADM manifold estimator

def _adm_pairwise(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """ADM ``_batch_pairwise_distances`` in the given dtype: max(|u|^2 - 2 u v^T + |v|^2, 0)."""
    u, v = torch.from_numpy(u), torch.from_numpy(v)
    norm_u = torch.sum(torch.square(u), 1).reshape(-1, 1)
    norm_v = torch.sum(torch.square(v), 1).reshape(1, -1)
    return torch.maximum(norm_u - 2 * torch.matmul(u, v.T) + norm_v, torch.zeros((), dtype=u.dtype)).numpy()


def _adm_distance_block(u: np.ndarray, v: np.ndarray, use_float16: bool) -> np.ndarray:
    """ADM ``DistanceBlock.pairwise_distances``: the float16 block when all finite, else float32."""
    if use_float16:
        d16 = _adm_pairwise(u.astype(np.float16), v.astype(np.float16))
        if np.all(np.isfinite(d16)):
            return d16.astype(np.float32)
    return _adm_pairwise(u.astype(np.float32), v.astype(np.float32))


class AdmManifoldEstimator:
    def __init__(self, row_batch_size: int, col_batch_size: int, k: int, use_float16: bool = True):
        self.row, self.col, self.k, self.f16 = row_batch_size, col_batch_size, k, use_float16

    def manifold_radii(self, features: np.ndarray) -> np.ndarray:
        n = len(features)
        radii = np.zeros([n, 1], dtype=np.float32)
        distance_batch = np.zeros([self.row, n], dtype=np.float32)
        seq = np.arange(self.k + 1, dtype=np.int32)
        for begin1 in range(0, n, self.row):
            end1 = min(begin1 + self.row, n)
            for begin2 in range(0, n, self.col):
                end2 = min(begin2 + self.col, n)
                distance_batch[0:end1 - begin1, begin2:end2] = _adm_distance_block(
                    features[begin1:end1], features[begin2:end2], self.f16)
            radii[begin1:end1, :] = np.partition(distance_batch[0:end1 - begin1, :], seq, axis=1)[:, [self.k]]
        return radii

    def evaluate_pr(self, features_1, radii_1, features_2, radii_2) -> tuple[float, float]:
        status_1 = np.zeros([len(features_1), 1], dtype=bool)
        status_2 = np.zeros([len(features_2), 1], dtype=bool)
        for b1 in range(0, len(features_1), self.row):
            e1 = b1 + self.row
            for b2 in range(0, len(features_2), self.col):
                e2 = b2 + self.col
                dist = _adm_distance_block(features_1[b1:e1], features_2[b2:e2], self.f16)[..., None]
                status_1[b1:e1] |= np.any(dist <= radii_2[b2:e2].reshape(1, -1, 1), axis=1)
                status_2[b2:e2] |= np.any(dist <= radii_1[b1:e1].reshape(-1, 1, 1), axis=0)
        # ADM: (precision, recall) = (share of features_2 inside manifold 1, share of features_1 inside 2)
        return float(np.mean(status_2.astype(np.float64))), float(np.mean(status_1.astype(np.float64)))


def adm_precision_recall(ref: np.ndarray, smp: np.ndarray, k: int, row: int, col: int, use_float16: bool):
    est = AdmManifoldEstimator(row, col, k, use_float16)
    return est.evaluate_pr(ref, est.manifold_radii(ref), smp, est.manifold_radii(smp))


def _features(seed: int, n: int, d: int, scale: float, shift: float = 0.0) -> np.ndarray:
    """Non-negative, Inception-pool-like features (ReLU of a Gaussian), float32."""
    rng = np.random.default_rng(seed)
    return (np.maximum(rng.standard_normal((n, d)), 0) * scale + shift).astype(np.float32)


@pytest.mark.parametrize("distance", ["float16", "float32"])
@pytest.mark.parametrize("row,col", [(7, 5), (64, 64)])
def test_precision_recall_is_adm_manifold_estimator(distance, row, col):
    ref, smp = _features(1, 60, 32, 2.0), _features(2, 45, 32, 2.2, 0.1)
    expected = adm_precision_recall(ref, smp, 3, row, col, use_float16=distance == "float16")
    got = precision_recall(ref, smp, k=3, row_batch=row, col_batch=col, distance=distance)
    assert (got.precision, got.recall) == expected
    radii = manifold_radii(ref, k=3, row_batch=row, col_batch=col, distance=distance).numpy()
    reference = AdmManifoldEstimator(row, col, 3, distance == "float16").manifold_radii(ref)[:, 0]
    np.testing.assert_array_equal(radii, reference)


def test_float16_is_the_default_and_differs_from_float32_where_adm_does():
    # Features far from the origin (squared norms ~ 4.2e4, finite in float16, where its spacing is 32)
    # and close to each other (squared distances ~ 100): float16 cancellation collapses the distances, so
    # ADM's numbers differ from the exact ones; ours must follow ADM by default.
    ref, smp = _features(3, 80, 64, 1.0, 25.0), _features(13, 80, 64, 1.1, 25.0)
    default = precision_recall(ref, smp, k=3)
    adm16 = adm_precision_recall(ref, smp, 3, 10000, 10000, use_float16=True)
    adm32 = adm_precision_recall(ref, smp, 3, 10000, 10000, use_float16=False)
    exact = precision_recall(ref, smp, k=3, distance="float32")
    assert (default.precision, default.recall) == adm16
    assert (exact.precision, exact.recall) == adm32
    assert adm16 != adm32, "these features are chosen so that float16 rounding changes the result"


def test_overflowing_blocks_fall_back_to_float32_per_block():
    # Squared norms above float16's 65504 (features ~ 60 in 32 dims): those blocks overflow and ADM
    # recomputes exactly them in float32; the blocks of the short features stay float16.
    short, long = _features(5, 20, 32, 2.0), _features(6, 20, 32, 60.0)
    ref = np.concatenate([short, long])
    smp = np.concatenate([_features(7, 20, 32, 2.0), _features(8, 20, 32, 60.0)])
    for row, col in [(20, 20), (40, 40), (8, 12)]:
        got = precision_recall(ref, smp, k=3, row_batch=row, col_batch=col)
        assert (got.precision, got.recall) == adm_precision_recall(ref, smp, 3, row, col, use_float16=True)


def test_unknown_distance_is_refused():
    with pytest.raises(InputError, match="float16"):
        precision_recall(np.zeros((5, 2)), np.ones((5, 2)), distance="float64")


def test_imagenet_metrics_follow_the_chosen_distance():
    from duca_eval.fid import GaussianStats
    from duca_eval.imagenet import build_parser, metrics_from_activations
    from duca_eval.inception import InceptionActivations
    from duca_eval.reference import ReferenceStats

    ref_pool, smp_pool = _features(3, 80, 64, 1.0, 25.0), _features(13, 80, 64, 1.1, 25.0)
    logits = np.zeros((80, 10), dtype=np.float32)
    acts = InceptionActivations(smp_pool, smp_pool[:, :8], logits)
    ref = ReferenceStats(GaussianStats.from_features(ref_pool), None, ref_pool, 80, "test")
    for distance, use16 in (("float16", True), ("float32", False)):
        metrics, _ = metrics_from_activations(acts, ref, is_split_size=40, pr_distance=distance)
        assert (metrics["precision"], metrics["recall"]) == adm_precision_recall(ref_pool, smp_pool, 3, 10000, 10000,
                                                                                 use16)
    assert build_parser().parse_args(["--sample", "s", "--ref", "r"]).pr_distance == "float16"
