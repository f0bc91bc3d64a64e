"""Inception Score with the ADM evaluator's definition.

IS = mean over splits of exp(E_x KL(p(y|x) || p(y))), where p(y|x) is the softmax of the
Inception logits *without* the final bias (ADM multiplies pool features by ``softmax/weights``
only; torch-fidelity calls these ``logits_unbiased``), and the splits have a fixed size.
"""

from __future__ import annotations

import numpy as np
import scipy.special

from .errors import InputError

# ADM's evaluator cuts the activations into consecutive splits of 5000 samples (10 splits for
# 50k samples) and averages the per-split scores; the last split may be shorter.
ADM_IS_SPLIT_SIZE = 5000


def inception_score(
    logits: np.ndarray | None = None, *, probs: np.ndarray | None = None, split_size: int = ADM_IS_SPLIT_SIZE
) -> float:
    """Inception Score of class logits (N, C) or class probabilities (N, C).

    Exactly one of ``logits`` and ``probs`` must be given. Computed in float64 with log-softmax,
    and 0 * log 0 taken as 0, so saturated predictions give finite scores.
    """
    if (logits is None) == (probs is None):
        raise InputError("pass exactly one of logits= or probs=")
    if logits is not None:
        log_p = scipy.special.log_softmax(np.asarray(_to_numpy(logits), dtype=np.float64), axis=1)
    else:
        p = np.asarray(_to_numpy(probs), dtype=np.float64)
        if p.ndim == 2 and not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
            raise InputError("probs rows must sum to 1")
        with np.errstate(divide="ignore"):
            log_p = np.log(p)
    if log_p.ndim != 2 or log_p.shape[0] == 0:
        raise InputError(f"expected (N, C) with N > 0, got shape {log_p.shape}")
    if split_size <= 0:
        raise InputError(f"split_size must be positive, got {split_size}")
    scores = []
    for start in range(0, log_p.shape[0], split_size):
        part = log_p[start : start + split_size]
        p = np.exp(part)
        with np.errstate(divide="ignore"):
            log_marginal = np.log(p.mean(axis=0, keepdims=True))
        # xlogy-style: terms with p == 0 contribute 0 even where log p = -inf.
        kl_terms = np.zeros_like(p)
        with np.errstate(invalid="ignore"):
            np.multiply(p, part - log_marginal, out=kl_terms, where=p > 0)
        scores.append(np.exp(kl_terms.sum(axis=1).mean()))
    return float(np.mean(scores))


def _to_numpy(value):
    if hasattr(value, "detach"):
        return value.detach().cpu().double().numpy()
    return value
