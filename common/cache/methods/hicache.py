"""``hicache``: Hermite forecasting (``common/cache/hicache.py``): TaylorSeer's plan with Hermite terms."""

from __future__ import annotations

from ..hicache import HermiteTerms
from .taylorseer import TaylorSeer


class HiCache(TaylorSeer):
    name = "hicache"
    forecaster = HermiteTerms
    default_order = 2  # the order of its preset (dit-hicache-n5-o2)
