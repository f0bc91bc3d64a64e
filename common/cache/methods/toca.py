"""``toca``: ToCa (arXiv 2410.05317). Every non-full step is conservative: token-wise modules recompute the
top-scored fraction of tokens, the others reuse. With module cycles an aggressive letter is conservative too
(ToCa never skips a block)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from .base import CacheMethod


class Toca(CacheMethod):
    name = "toca"
    module_cycles = True
    token_wise = True
    # ToCa's DiT rows (paper.md section 2): cache ratio R = 93%, tokens by the attention they receive
    paper_defaults: ClassVar[Mapping[str, float | str]] = {"fresh_ratio": 0.07, "selector": "attention_received"}

    def non_full_letter(self, r: int) -> str:
        return "T"

    def cycle_letter(self, letter: str) -> str:
        return "T" if letter == "A" else letter
