"""Caching methods, one module each, and their registry.

Built in: none, fora, toca, duca, taylorseer, foca, hicache, dualca. Add one with
:func:`register_method` (CONTRIBUTING.md, "Add a method").
"""

from __future__ import annotations

from .base import CacheMethod, TrunkState
from .dualca import DualCa
from .duca import Duca
from .foca import Foca
from .fora import Fora
from .hicache import HiCache
from .none import NoCache
from .registry import available_methods, get_method, register_method, unregister_method
from .taylorseer import TaylorSeer
from .toca import Toca

for _method in (NoCache(), Fora(), Toca(), Duca(), TaylorSeer(), Foca(), HiCache(), DualCa()):
    register_method(_method)

__all__ = ["CacheMethod", "TrunkState", "available_methods", "get_method", "register_method", "unregister_method"]
