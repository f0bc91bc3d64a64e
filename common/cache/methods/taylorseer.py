"""``taylorseer``: TaylorSeer (arXiv 2503.06923). Between full steps every module is forecast from finite
differences of its past computed outputs (order ``CacheConfig.taylor_order``); the last output itself is
not kept."""

from __future__ import annotations

from ..taylor import TaylorTerms
from .base import CacheMethod


class TaylorSeer(CacheMethod):
    name = "taylorseer"
    keeps_output = False
    forecaster = TaylorTerms
    default_order = 3  # the published DiT rows use O = 3 (paper.md section 2)

    def non_full_letter(self, r: int) -> str:
        return "P"
