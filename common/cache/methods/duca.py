"""``duca``: DuCa (arXiv 2412.18911). Between full steps, conservative steps (as ToCa) and aggressive steps
(no block runs, the trunk output of the previous step is reused) alternate: the reference computes
``(step % I)`` odd -> conservative, even -> aggressive."""

from __future__ import annotations

from .base import CacheMethod

# DuCa's DiT rows (paper.md section 2, Table 3): cache ratio R = 95%, tokens by value norm (V-caching)
DUCA_PAPER_DEFAULTS: dict[str, float | str] = {"fresh_ratio": 0.05, "selector": "value_norm"}


def dual_letter(r: int) -> str:
    """DuCa's step type ``r`` steps into a cycle (also dualca's)."""
    return "T" if r % 2 == 1 else "A"


class Duca(CacheMethod):
    name = "duca"
    module_cycles = True
    token_wise = True
    paper_defaults = DUCA_PAPER_DEFAULTS

    def non_full_letter(self, r: int) -> str:
        return dual_letter(r)
