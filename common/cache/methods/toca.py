"""``toca``: ToCa (arXiv 2410.05317). Every non-full step is conservative: token-wise modules recompute the
top-scored fraction of tokens, the others reuse. With module cycles an aggressive letter is conservative too
(ToCa never skips a block)."""

from __future__ import annotations

from .base import CacheMethod


class Toca(CacheMethod):
    name = "toca"
    module_cycles = True

    def non_full_letter(self, r: int) -> str:
        return "T"

    def cycle_letter(self, letter: str) -> str:
        return "T" if letter == "A" else letter
