"""Typed, validated configuration of the cache engine.

Every field is checked at construction; a bad value raises ``ValueError`` naming the field and the
allowed values. The names follow the papers: N is the cycle length (``interval``, the reference
code's ``--fresh-threshold``), R the cache ratio (``1 - fresh_ratio``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..validate import MAX_INTERVAL, MAX_TAYLOR_ORDER
from .methods import available_methods, get_method

# The built-in methods (one module each under common/cache/methods/), as registered at import. ``CacheConfig.method``
# is checked against the live registry (``available_methods()``), which also holds methods registered later.
METHODS: tuple[str, ...] = available_methods()

# How the cycle length evolves over the steps.
#   fixed          a step is full when its (reference) index is a multiple of N, or it is the first step
#                  (PixArt, FORA, TaylorSeer; models.md B.9)
#   dit            the DiT reference rule (models.md A.7): N rescaled per step, forced to 2 in
#                  steps [0.2K, 0.4K), updated inside each full block
#   module_cycles  one repeating pattern per module after a few always-full warm-up steps
#                  (OpenSora, models.md C.11)
IntervalRule = Literal["fixed", "dit", "module_cycles"]
INTERVAL_RULES: tuple[str, ...] = ("fixed", "dit", "module_cycles")

# "reference": blocks of one step may get different types (the DiT reference updates the cycle
# length after block 0 of a full step). "per_step": all blocks of a step share block 0's type.
PlanMode = Literal["reference", "per_step"]
PLAN_MODES: tuple[str, ...] = ("reference", "per_step")

Selector = Literal["random", "value_norm", "attention_received", "cross_entropy", "similarity"]
SELECTORS: tuple[str, ...] = ("random", "value_norm", "attention_received", "cross_entropy", "similarity")

# Letters of a module cycle pattern (module_cycles rule): F full, T conservative, A aggressive.
PATTERN_LETTERS = frozenset("FTA")


def _check(cond: bool, name: str, allowed: str, value: object) -> None:
    if not cond:
        raise ValueError(f"CacheConfig.{name}={value!r} is invalid: allowed {allowed}")


@dataclass(frozen=True)
class RatioSchedule:
    """Fresh ratio per (step, layer, module): ``r = base * layer_w * step_w * module_w``, clamped to [0, 1].

    ``kind="constant"`` gives ``r = base`` for every token-wise module.
    ``kind="toca"`` is the reference 'ToCa' scheduler: ``layer_w = layer_a + layer_b * l / (depth - 1)``
    and ``step_w = step_a + step_b * s / K`` with ``s`` the step index as the reference counts it
    (down for DiT, up for PixArt and OpenSora). Module factors not listed are 1.
    """

    kind: Literal["constant", "toca"] = "constant"
    layer_a: float = 1.0
    layer_b: float = 0.0
    step_a: float = 1.0
    step_b: float = 0.0
    module_factors: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "toca"):
            raise ValueError(f"RatioSchedule.kind={self.kind!r} is invalid: allowed 'constant' or 'toca'")

    def factor(self, module: str) -> float:
        return dict(self.module_factors).get(module, 1.0)

    def ratio(self, base: float, step_index: int, num_steps: int, layer: int, depth: int, module: str) -> float:
        if self.kind == "constant":
            r = base
        else:
            layer_w = self.layer_a + self.layer_b * (layer / max(depth - 1, 1))
            step_w = self.step_a + self.step_b * (step_index / num_steps)
            r = base * layer_w * step_w * self.factor(module)
        return min(max(r, 0.0), 1.0)


# The reference 'ToCa' ratio schedules (models.md A.7, B.9, C.11). Depth enters as layer/(depth-1),
# which is the reference's layer/27 for 28 blocks. PixArt's and OpenSora's reference code never
# recomputes self-attention in a conservative step: its factor is 0 (reuse).
DIT_TOCA_SCHEDULE = RatioSchedule(
    "toca", layer_a=0.8, layer_b=0.4, step_a=3.0, step_b=-4.0, module_factors=(("mlp", 2.5), ("attn", 1.0 - 0.4 * 2.5))
)
PIXART_TOCA_SCHEDULE = RatioSchedule(
    "toca",
    layer_a=1.6,
    layer_b=-1.2,
    step_a=1.9,
    step_b=-1.8,
    module_factors=(("attn", 0.0), ("cross_attn", 0.6), ("mlp", 1.6)),
)
OPENSORA_TOCA_SCHEDULE = RatioSchedule(
    "toca", module_factors=(("attn", 0.0), ("mlp", 1.0 + 0.33 * 1.5), ("cross_attn", 1.0 - 0.67 * 1.5))
)


@dataclass(frozen=True)
class CacheConfig:
    """What the engine does. Construct directly or take a named preset (``duca_common.cache.presets``)."""

    method: str = "none"  # a registered method (available_methods())
    interval: int = 3  # N: cycle length (reference --fresh-threshold)
    fresh_ratio: float = 0.05  # base fraction of tokens recomputed in conservative steps
    ratio_schedule: RatioSchedule = field(default_factory=RatioSchedule)
    # interval_rule, plan_mode, selector: one of the IntervalRule / PlanMode / Selector names, checked when built
    interval_rule: str = "fixed"
    plan_mode: str = "reference"
    # module_cycles rule: one pattern of F/T/A letters per module, repeated after the warm-up steps
    module_cycles: tuple[tuple[str, str], ...] = ()
    warmup_full_steps: int = 0  # steps that are always full (OpenSora: 3)
    selector: str = "random"
    staleness_weight: float = 0.25  # reference --soft-fresh-weight; bonus per partial step a token waited
    spatial_bonus: float = 0.0  # bonus fraction for the best token of each grid cell (DiT 0.8, PixArt 0.4)
    spatial_cell: int = 2  # cell side in tokens (DiT 2, PixArt 4)
    taylor_order: int = 1  # TaylorSeer expansion order O
    seed: int = 0  # random selector's generator seed (per session)
    # parameters of a method beyond the fields above, as (name, value) pairs; the method declares their names
    # and defaults (``CacheMethod.params``) and reads them with ``config.param(name)``
    params: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        _check(self.method in available_methods(), "method", f"one of {available_methods()}", self.method)
        _check(
            isinstance(self.interval, int) and 1 <= self.interval <= MAX_INTERVAL,
            "interval",
            f"an integer in [1, {MAX_INTERVAL}]",
            self.interval,
        )
        _check(0.0 <= float(self.fresh_ratio) <= 1.0, "fresh_ratio", "a float in [0, 1]", self.fresh_ratio)
        _check(isinstance(self.ratio_schedule, RatioSchedule), "ratio_schedule", "a RatioSchedule", self.ratio_schedule)
        _check(self.interval_rule in INTERVAL_RULES, "interval_rule", f"one of {INTERVAL_RULES}", self.interval_rule)
        _check(self.plan_mode in PLAN_MODES, "plan_mode", f"one of {PLAN_MODES}", self.plan_mode)
        _check(self.selector in SELECTORS, "selector", f"one of {SELECTORS}", self.selector)
        _check(self.staleness_weight >= 0.0, "staleness_weight", "a float >= 0", self.staleness_weight)
        _check(self.spatial_bonus >= 0.0, "spatial_bonus", "a float >= 0", self.spatial_bonus)
        _check(
            isinstance(self.spatial_cell, int) and self.spatial_cell >= 1,
            "spatial_cell",
            "an integer >= 1",
            self.spatial_cell,
        )
        _check(
            isinstance(self.taylor_order, int) and 0 <= self.taylor_order <= MAX_TAYLOR_ORDER,
            "taylor_order",
            f"an integer in [0, {MAX_TAYLOR_ORDER}]",
            self.taylor_order,
        )
        _check(
            isinstance(self.warmup_full_steps, int) and self.warmup_full_steps >= 0,
            "warmup_full_steps",
            "an integer >= 0",
            self.warmup_full_steps,
        )
        if self.interval_rule == "module_cycles":
            _check(
                len(self.module_cycles) > 0,
                "module_cycles",
                "a non-empty tuple of (module, pattern) pairs when interval_rule='module_cycles'",
                self.module_cycles,
            )
            for module, pattern in self.module_cycles:
                _check(
                    len(pattern) >= 1 and set(pattern) <= PATTERN_LETTERS and pattern[0] == "F",
                    "module_cycles",
                    "patterns of the letters F/T/A starting with F",
                    (module, pattern),
                )
            cyclic = tuple(m for m in available_methods() if get_method(m).module_cycles)
            _check(
                get_method(self.method).module_cycles,
                "method",
                f"one of {cyclic} with interval_rule='module_cycles'",
                self.method,
            )
        method = get_method(self.method)
        _check(
            isinstance(self.params, tuple) and all(isinstance(kv, tuple) and len(kv) == 2 for kv in self.params),
            "params",
            "a tuple of (name, value) pairs",
            self.params,
        )
        unknown = sorted({k for k, _ in self.params} - set(method.params))
        _check(
            not unknown, "params", f"names of method {self.method!r}'s parameters {tuple(method.params)}", self.params
        )
        method.validate(self)

    def param(self, name: str) -> object:
        """The method parameter ``name``: its value in ``params``, else the method's default."""
        given = dict(self.params)
        if name in given:
            return given[name]
        defaults = get_method(self.method).params
        if name not in defaults:
            raise KeyError(f"method {self.method!r} has no parameter {name!r}; it has {tuple(defaults)}")
        return defaults[name]

    def replace(self, **changes: Any) -> CacheConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @property
    def caches(self) -> bool:
        return get_method(self.method).caches
