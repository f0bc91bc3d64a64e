"""TaylorSeer forecasting (arXiv 2503.06923): predict a module's output from its past computed outputs.

At each full computation at step ``p`` the derivative estimates are refreshed by recursive finite
differences over the distance to the previous full computation:
``d_0 = y``, ``d_{i+1} = (d_i - d_i^old) / (p - p_old)``, up to the order O (so order O uses the last
O+1 computed features). A forecast ``dt`` steps later is the Taylor polynomial
``sum_i d_i * dt^i / i!``. Order 0 is plain reuse (FORA); order 1 is exact on features that change
linearly with the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class TaylorTerms:
    step: int = -1
    terms: list[torch.Tensor] = field(default_factory=list)

    def update(self, y: torch.Tensor, step: int, order: int) -> None:
        new = [y]
        if self.terms:
            dist = step - self.step
            for i in range(min(order, len(self.terms))):
                new.append((new[i] - self.terms[i]) / dist)
        self.terms, self.step = new, step

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor this forecaster holds (for the cache's byte count); subclasses add theirs."""
        return list(self.terms)

    def forecast(self, step: int) -> torch.Tensor:
        if not self.terms:
            raise RuntimeError("TaylorSeer forecast requested before any full computation of this module")
        dt = step - self.step
        out = self.terms[0]
        for i in range(1, len(self.terms)):
            out = out + self.terms[i] * (dt**i / math.factorial(i))
        return out
