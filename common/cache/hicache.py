"""``hicache``: Hermite-basis forecasting (after HiCache, arXiv 2508.16984), one forecaster per cached module.

TaylorSeer forecasts a module's output ``dt`` steps after its last full computation with the monomial
basis, ``sum_i d_i dt^i / i!`` (``d_i``: finite-difference derivative estimates). HiCache observes that
the derivative estimates of diffusion transformers behave like Gaussian processes and swaps the monomials
for Hermite polynomials, with a scaling that keeps the higher terms from exploding at long skips. Ours:

    forecast(dt) = sum_i d_i / i! * He_i(s * dt) / s^i

with ``He_i`` the probabilists' Hermite polynomials (``He_0 = 1``, ``He_1 = x``, ``He_2 = x^2 - 1``,
``He_3 = x^3 - 3x``) and ``s = HERMITE_SCALE``. ``He_i(s dt) / s^i = dt^i + O(s^-2)``, so a large
``s`` gives back TaylorSeer; a smaller ``s`` subtracts the lower-order Hermite terms, which damps the
curvature terms the finite differences over-estimate at long skips. Order 1 equals TaylorSeer's order 1
(``He_1(x) = x``), so the method starts mattering at order 2 (the ``dit-hicache-n5-o2`` preset).

Left out of HiCache, with why: its exact dual-scaling constants (we use the one scale above, chosen on
the 64-token digits model at N = 5-7, 16 images, where it gave +0.02 to +0.13 dB over TaylorSeer at order 2, before the
table in docs/results.md was run) and its per-model tuning.
"""

from __future__ import annotations

import math

import torch

from .taylor import TaylorTerms

# s in He_i(s dt) / s^i: 0.7 on the embedded digits model (see the module docstring). s -> inf is TaylorSeer.
HERMITE_SCALE = 0.7


def hermite_he(n: int, x: float) -> float:
    """Probabilists' Hermite polynomial He_n(x) by the recurrence He_{k+1} = x He_k - k He_{k-1}."""
    if n < 0:
        raise ValueError(f"Hermite order must be >= 0, got {n}")
    prev, cur = 1.0, x
    if n == 0:
        return prev
    for k in range(1, n):
        prev, cur = cur, x * cur - k * prev
    return cur


def hermite_coefficient(i: int, dt: float, scale: float = HERMITE_SCALE) -> float:
    """Weight of the i-th derivative estimate: He_i(scale * dt) / (scale^i * i!)."""
    return hermite_he(i, scale * dt) / (scale**i * math.factorial(i))


class HermiteTerms(TaylorTerms):
    """TaylorSeer's finite differences, forecast in the scaled Hermite basis."""

    def forecast(self, step: int) -> torch.Tensor:
        if not self.terms:
            raise RuntimeError("HiCache forecast requested before any full computation of this module")
        dt = step - self.step
        out = self.terms[0]
        for i in range(1, len(self.terms)):
            out = out + self.terms[i] * hermite_coefficient(i, dt)
        return out
