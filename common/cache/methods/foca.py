"""``foca``: forecast-then-calibrate (``common/cache/foca.py``): TaylorSeer's plan, with a per-sample gain
on the forecast increment refitted at every full step."""

from __future__ import annotations

from ..foca import CalibratedTerms
from .taylorseer import TaylorSeer


class Foca(TaylorSeer):
    name = "foca"
    forecaster = CalibratedTerms
    default_order = 2  # the order of its preset (dit-foca-n5-o2)
