"""The shared cache engine: FORA, ToCa, DuCa, TaylorSeer (and any registered method) for any transformer with a
list of blocks. Methods are one module each under ``methods/``; ``register_method`` adds one from outside.

Public API::

    from duca_common.cache import CacheConfig, BlockLayout, FeatureCache, residual, get_preset, build_plan
"""

from .accounting import (
    TransformerDims,
    full_run_flops,
    measured_flops,
    reference_flops,
    speedup,
)
from .config import (
    DIT_TOCA_SCHEDULE,
    OPENSORA_TOCA_SCHEDULE,
    PIXART_TOCA_SCHEDULE,
    CacheConfig,
    RatioSchedule,
)
from .engine import BlockView, CacheRun, EngineTimers, FeatureCache, StepView, residual
from .methods import (
    CacheMethod,
    TrunkState,
    available_methods,
    get_method,
    register_method,
    unregister_method,
)
from .model import CachedModel, SupportsCache
from .plan import Action, BlockLayout, Plan, build_plan
from .presets import PRESETS, Preset, get_preset, presets_for
from .state import ModuleState
from .trace import Trace

__all__ = [
    "DIT_TOCA_SCHEDULE",
    "OPENSORA_TOCA_SCHEDULE",
    "PIXART_TOCA_SCHEDULE",
    "PRESETS",
    "Action",
    "BlockLayout",
    "BlockView",
    "CacheConfig",
    "CacheMethod",
    "CacheRun",
    "CachedModel",
    "EngineTimers",
    "FeatureCache",
    "ModuleState",
    "Plan",
    "Preset",
    "RatioSchedule",
    "StepView",
    "SupportsCache",
    "Trace",
    "TransformerDims",
    "TrunkState",
    "available_methods",
    "build_plan",
    "full_run_flops",
    "get_method",
    "get_preset",
    "measured_flops",
    "presets_for",
    "reference_flops",
    "register_method",
    "residual",
    "speedup",
    "unregister_method",
]
