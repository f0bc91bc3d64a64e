"""``none``: no caching; every step computes every module and nothing is stored."""

from __future__ import annotations

from .base import CacheMethod


class NoCache(CacheMethod):
    name = "none"
    caches = False

    def non_full_letter(self, r: int) -> str:
        return "F"
