"""``dualca``: DuCa's token-wise recompute with forecasting (ours; DuCa arXiv 2412.18911 + TaylorSeer arXiv
2503.06923).

DuCa alternates, between full steps, conservative steps (the MLP recomputes the top tokens of a score,
everything else is reused from the last full step) and aggressive steps (no block runs; the trunk output
of the previous step is reused). Both reuse a stale value. ``dualca`` keeps DuCa's plan, its selectors and
its FLOPs, and replaces every reuse by a forecast:

* full step (F): every module is computed; its output refreshes a TaylorSeer forecaster (order
  ``CacheConfig.taylor_order``, 1 in the ``dit-dualca-n5-r95`` preset) besides DuCa's cache;
* conservative step (T): the self-attention (which cannot be recomputed per token) is forecast instead of
  reused; the MLP starts from its forecast for every token and recomputes the selected tokens on top, so
  the tokens DuCa would leave stale are forecast and the ones it recomputes are exact;
* aggressive step (A): no block runs, and the trunk output (the hidden state after the last block) is
  forecast from its values at the previous full and conservative steps instead of reused.

The extra work over DuCa is elementwise (the forecasts), so the reference FLOPs are DuCa's; the cache
holds the forecasters' difference terms on top of DuCa's (order 1: one more tensor per module, plus two
trunk tensors).

What this file holds: the trunk forecaster (:class:`TrunkForecast`) and the module forecaster
(``FORECASTER``); the method itself (plan rule and step hooks) is ``methods/dualca.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .taylor import TaylorTerms

if TYPE_CHECKING:
    from .config import CacheConfig

# The module forecaster: TaylorSeer's expansion (order from CacheConfig.taylor_order).
FORECASTER = TaylorTerms


@dataclass
class TrunkForecast:
    """Forecast of the trunk output for aggressive steps, from the steps where the blocks ran."""

    terms: TaylorTerms = field(default_factory=TaylorTerms)

    def observe(self, x: torch.Tensor, step: int, order: int) -> None:
        self.terms.update(x, step, order)

    def forecast(self, step: int) -> torch.Tensor:
        return self.terms.forecast(step)

    def step(self, x: torch.Tensor, p: int, reused: bool, config: CacheConfig) -> torch.Tensor:
        """The trunk output of step ``p``: forecast when the plan reuses it, else ``x`` (observed)."""
        if reused:
            if not self.terms.terms:
                raise RuntimeError(
                    f"step {p} forecasts the trunk output but none was computed before; "
                    f"the plan must start with a full step"
                )
            return self.forecast(p)
        self.observe(x, p, config.taylor_order)
        return x

    def tensors(self) -> list[torch.Tensor]:
        return self.terms.tensors()
