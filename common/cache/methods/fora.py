"""``fora``: FORA (arXiv 2407.01425). Between full steps every module reuses its last computed output
(under the current step's gate)."""

from __future__ import annotations

from .base import CacheMethod


class Fora(CacheMethod):
    name = "fora"

    def non_full_letter(self, r: int) -> str:
        return "R"
