"""The interface of a caching method: its plan rule and its step behaviour.

A method is one instance of a :class:`CacheMethod` subclass registered by name
(:func:`duca_common.cache.register_method`). The planner and the engine ask it, never its name:

Plan rule (pure, no tensors):
  ``caches``            False: every step is full and nothing is stored (the method "none").
  ``non_full_letter(r)`` the block type of a step ``r`` steps into a cycle (r >= 1): ``"T"`` conservative
                        (token-wise modules recompute a fraction of tokens, the others are reused), ``"A"``
                        aggressive (no module runs; if the last block is aggressive the trunk output is
                        reused or forecast), ``"R"`` reuse every module, ``"P"`` forecast every module.
  ``module_cycles``     whether ``interval_rule="module_cycles"`` (one F/T/A pattern per module) applies;
  ``cycle_letter(l)``   then maps each pattern letter (ToCa turns ``"A"`` into ``"T"``).
  ``params``            extra parameters with their defaults, read from ``CacheConfig.params``;
  ``token_wise``        its conservative steps recompute a fraction of tokens, so the fresh ratio, the selector,
                        the ratio schedule and the staleness bonus apply (the flags layer and the tables ask this);
  ``default_order``     the expansion order O used when none is given (None: the method takes no order);
  ``paper_defaults``    token-wise methods: the ``fresh_ratio`` and ``selector`` of their DiT rows in the paper,
                        the defaults of a method string such as ``duca:n=4`` in the benchmark and table scripts;
  ``validate(config)``  raises ``ValueError`` on a config the method cannot run.

Step behaviour (per block and module, tensors of shape (B, N, C)):
  ``on_full(state, out, p, config)``  a module was computed on every token: what to keep (the default keeps
                                      ``out`` when ``keeps_output`` and refreshes ``forecaster`` if set).
  ``reuse_as``                        the action a reuse becomes (``Action.FORECAST`` forecasts instead).
  ``reuse(state, p, config)``         the output of a reused module (default: the last computed output).
  ``forecast(state, p, config)``      the output of a forecast module (default: the forecaster's).
  ``before_partial(state, p, config)`` before the selected tokens are recomputed into ``state.out``: what the
                                      unselected tokens hold (default: the stale output, as ToCa/DuCa).
  ``new_trunk()``                     per-run trunk state (None: the trunk output is stored and reused in
                                      aggressive steps); its ``step(x, p, reused, config)`` returns the trunk
                                      output and ``tensors()`` what it holds.

Token selection (selectors, staleness counters, statistics) is the engine's and the same for every method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch

from ..actions import Action
from ..taylor import TaylorTerms

if TYPE_CHECKING:
    from ..config import CacheConfig
    from ..state import ModuleState


class TrunkState(Protocol):
    """Per-run state of a method that computes the trunk output of aggressive steps itself."""

    def step(self, x: torch.Tensor, p: int, reused: bool, config: CacheConfig) -> torch.Tensor: ...

    def tensors(self) -> list[torch.Tensor]: ...


class CacheMethod:
    """Base class: the defaults are DuCa/ToCa/FORA's (keep the last output, reuse it)."""

    name: ClassVar[str] = ""
    caches: ClassVar[bool] = True
    module_cycles: ClassVar[bool] = False
    keeps_output: ClassVar[bool] = True
    forecaster: ClassVar[type[TaylorTerms] | None] = None
    reuse_as: ClassVar[Action] = Action.REUSE
    params: ClassVar[Mapping[str, object]] = {}
    token_wise: ClassVar[bool] = False
    default_order: ClassVar[int | None] = None
    paper_defaults: ClassVar[Mapping[str, float | str]] = {}

    # -- plan rule -------------------------------------------------------------------------------
    def non_full_letter(self, r: int) -> str:
        raise NotImplementedError(f"method {self.name!r} must define non_full_letter(r)")

    def cycle_letter(self, letter: str) -> str:
        return letter

    def validate(self, config: CacheConfig) -> None:
        """Raise ValueError naming the field when ``config`` cannot run with this method."""

    # -- step behaviour --------------------------------------------------------------------------
    def on_full(self, state: ModuleState, out: torch.Tensor, p: int, config: CacheConfig) -> None:
        if self.forecaster is not None:
            if state.taylor is None:
                state.taylor = self.forecaster()
            state.taylor.update(out, p, config.taylor_order)
        if self.keeps_output:
            state.out = out

    def reuse(self, state: ModuleState, p: int, config: CacheConfig) -> torch.Tensor | None:
        return state.out

    def forecast(self, state: ModuleState, p: int, config: CacheConfig) -> torch.Tensor | None:
        return None if state.taylor is None else state.taylor.forecast(p)

    def before_partial(self, state: ModuleState, p: int, config: CacheConfig) -> None:
        pass

    def new_trunk(self) -> TrunkState | None:
        return None
