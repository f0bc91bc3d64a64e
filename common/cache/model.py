"""The model side of the engine: what every cached transformer offers (DiT, PixArt-alpha, OpenSora STDiT3).

A model mixes in :class:`CachedModel` and sets ``self.feature_cache = FeatureCache(config, layout)`` in its
``__init__``; its forward asks ``self.feature_cache.current_step()`` (engine.py). Callers then use one API::

    model.configure_cache(get_preset("dit-duca-n3-r95").config)   # for the next sessions
    model.cache_layout                                          # the BlockLayout (depth, modules, ...)
    with model.cache_session(num_steps, grid=(16, 16), cfg_halves=True) as run:
        ...

:class:`SupportsCache` is the same contract as a Protocol, for code that takes any such model.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from .config import CacheConfig
from .engine import CacheRun, FeatureCache
from .plan import BlockLayout


@runtime_checkable
class SupportsCache(Protocol):
    feature_cache: FeatureCache

    @property
    def cache_layout(self) -> BlockLayout: ...

    def configure_cache(self, config: CacheConfig) -> None: ...

    def cache_session(
        self,
        num_steps: int,
        *,
        grid: tuple[int, int] | None = None,
        cfg_halves: bool = False,
        profile: bool | None = None,
    ) -> AbstractContextManager[CacheRun]: ...


class CachedModel:
    """Mixin implementing :class:`SupportsCache` on top of the model's ``feature_cache`` attribute."""

    feature_cache: FeatureCache

    @property
    def cache_layout(self) -> BlockLayout:
        return self.feature_cache.layout

    def configure_cache(self, config: CacheConfig) -> None:
        """Use ``config`` for the next sessions (a fresh engine with the same block layout)."""
        if self.feature_cache.active is not None:
            raise RuntimeError("cannot change the cache configuration while a sampling session is open")
        self.feature_cache = FeatureCache(config, self.feature_cache.layout)

    def cache_session(
        self,
        num_steps: int,
        *,
        grid: tuple[int, int] | None = None,
        cfg_halves: bool = False,
        profile: bool | None = None,
    ) -> AbstractContextManager[CacheRun]:
        return self.feature_cache.session(num_steps, grid=grid, cfg_halves=cfg_halves, profile=profile)
