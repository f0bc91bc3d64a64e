"""Math of the evaluation metrics against closed forms and brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from duca_eval.errors import InputError
from duca_eval.fid import GaussianStats, frechet_distance, gaussian_statistics, trace_sqrt_product
from duca_eval.inception_score import inception_score
from duca_eval.precision_recall import manifold_radii, precision_recall


def _random_rotation(dim: int, rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


# ---------------------------------------------------------------- Frechet distance


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_distance_closed_form_commuting_covariances(method):
    # Same eigenvectors: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(0)
    dim = 6
    rot = _random_rotation(dim, rng)
    a, b = rng.uniform(0.1, 3.0, dim), rng.uniform(0.1, 3.0, dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    s1, s2 = rot @ np.diag(a) @ rot.T, rot @ np.diag(b) @ rot.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_one_dimensional_and_identity():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations.
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 5))
    mu, sigma = gaussian_statistics(x)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False))


def test_trace_sqrt_methods_agree_on_general_covariances():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((40, 8)), rng.standard_normal((30, 8)) @ rng.standard_normal((8, 8))
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    reference = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert trace_sqrt_product(s1, s2, "eigh") == pytest.approx(reference, rel=1e-8)
    assert trace_sqrt_product(s1, s2, "sqrtm") == pytest.approx(reference, rel=1e-8)


def test_low_rank_paths_match_full_computation():
    # Fewer samples than dimensions: the factor shortcuts must equal the dense formula.
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((5, 12)), rng.standard_normal((7, 12)) + 0.5
    a, b = GaussianStats.from_features(x), GaussianStats.from_features(y)
    assert a.factor is not None and b.factor is not None
    dense = frechet_distance(a.mu, a.sigma, b.mu, b.sigma, method="sqrtm")
    assert a.frechet_distance(b) == pytest.approx(dense, rel=1e-7)  # both factors
    assert a.frechet_distance(GaussianStats(b.mu, b.sigma)) == pytest.approx(dense, rel=1e-7)  # one factor
    assert GaussianStats(a.mu, a.sigma).frechet_distance(b) == pytest.approx(dense, rel=1e-7)


def test_frechet_distance_from_samples_approaches_closed_form():
    rng = np.random.default_rng(4)
    n, dim = 200_000, 3
    x = rng.standard_normal((n, dim)) * np.array([1.0, 2.0, 0.5])
    y = rng.standard_normal((n, dim)) * np.array([1.5, 1.0, 0.5]) + np.array([1.0, 0.0, 0.0])
    expected = 1.0 + (1.0 - 1.5) ** 2 + (2.0 - 1.0) ** 2 + 0.0
    got = GaussianStats.from_features(x).frechet_distance(GaussianStats.from_features(y))
    assert got == pytest.approx(expected, abs=0.03)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(InputError, match="different shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------- Inception Score


def test_inception_score_hand_computed():
    # p(y|x) = [.5, .5] and [1, 0]: marginal [.75, .25]; KLs = .5 ln(4/3) and ln(4/3).
    probs = np.array([[0.5, 0.5], [1.0, 0.0]])
    assert inception_score(probs=probs) == pytest.approx((4.0 / 3.0) ** 0.75, rel=1e-12)


def test_inception_score_extremes_and_splits():
    classes = 10
    confident = np.eye(classes) * 60.0  # near one-hot predictions, each class once
    assert inception_score(confident) == pytest.approx(classes, rel=1e-6)
    assert inception_score(np.zeros((7, classes))) == pytest.approx(1.0)  # uniform predictions
    # Splits are consecutive blocks of split_size; the score is the mean of per-split scores.
    logits = np.random.default_rng(5).standard_normal((9, 4)) * 3
    per_split = [inception_score(logits[i : i + 4]) for i in range(0, 9, 4)]
    assert inception_score(logits, split_size=4) == pytest.approx(np.mean(per_split))
    # Softmax of the logits, by hand.
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    marginal = probs.mean(0)
    expected = math.exp(np.mean(np.sum(probs * (np.log(probs) - np.log(marginal)), axis=1)))
    assert inception_score(logits) == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------- precision / recall


def _brute_force_precision_recall(ref: np.ndarray, smp: np.ndarray, k: int) -> tuple[float, float]:
    def radius(points, i):
        dists = sorted(float(np.sum((points[i] - points[j]) ** 2)) for j in range(len(points)) if j != i)
        return dists[k - 1]

    def inside(point, centers):
        return any(np.sum((point - c) ** 2) <= radius(centers, j) for j, c in enumerate(centers))

    precision = np.mean([inside(p, ref) for p in smp])
    recall = np.mean([inside(r, smp) for r in ref])
    return float(precision), float(recall)


@pytest.mark.parametrize("k,shift", [(3, 0.0), (3, 1.5), (1, 0.7), (2, 3.0)])
def test_precision_recall_matches_brute_force(k, shift):
    rng = np.random.default_rng(10 + k)
    ref = rng.standard_normal((23, 4))
    smp = rng.standard_normal((17, 4)) * 1.3 + shift
    got = precision_recall(ref, smp, k=k, row_batch=5, col_batch=7, distance="float32")  # small batches
    expected = _brute_force_precision_recall(ref, smp, k)
    assert (got.precision, got.recall) == pytest.approx(expected)


def test_precision_recall_hand_made_points():
    # 1-D: reference at 0,1,2,3 (k=1 radii: 1 each, squared 1); samples at 0.5 (inside), 10, 11 (outside).
    ref = np.array([[0.0], [1.0], [2.0], [3.0]])
    smp = np.array([[0.5], [10.0], [11.0]])
    radii = manifold_radii(ref, k=1, distance="float32").numpy()
    np.testing.assert_allclose(radii, [1.0, 1.0, 1.0, 1.0])
    got = precision_recall(ref, smp, k=1)
    assert got.precision == pytest.approx(1 / 3)
    # Sample radii (k=1, squared): 0.5 -> 90.25, 10 -> 1, 11 -> 1: the ball around 0.5 covers all refs.
    assert got.recall == pytest.approx(1.0)


def test_precision_recall_needs_more_points_than_k():
    with pytest.raises(InputError, match="nearest neighbours"):
        precision_recall(np.zeros((3, 2)), np.ones((10, 2)), k=3)
