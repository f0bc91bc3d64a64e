"""``dualca``: DuCa's plan with every reuse replaced by a forecast (``common/cache/dualca.py`` explains it):
reused modules are forecast, a conservative step starts the unselected tokens from the forecast, and the
trunk output of aggressive steps is forecast."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..actions import Action
from ..dualca import FORECASTER, TrunkForecast
from ..state import ModuleState
from .base import CacheMethod
from .duca import DUCA_PAPER_DEFAULTS, dual_letter

if TYPE_CHECKING:
    from ..config import CacheConfig


class DualCa(CacheMethod):
    name = "dualca"
    forecaster = FORECASTER
    token_wise = True
    default_order = 1  # the order of its preset (dit-dualca-n5-r95): first-order forecasts were the best on digits
    paper_defaults = DUCA_PAPER_DEFAULTS  # DuCa's token rules, with forecasts in place of reuse
    reuse_as = Action.FORECAST

    def non_full_letter(self, r: int) -> str:
        return dual_letter(r)

    def before_partial(self, state: ModuleState, p: int, config: CacheConfig) -> None:
        if state.taylor is not None:
            state.out = state.taylor.forecast(p).clone()  # unselected tokens: forecast, not the stale output

    def new_trunk(self) -> TrunkForecast:
        return TrunkForecast()
