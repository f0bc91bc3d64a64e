"""The cache engine: per-run state and the few calls a transformer block makes.

A model owns one :class:`FeatureCache`. A sampler opens a session for one sampling run and tells it
the step before every model evaluation::

    with model.feature_cache.session(num_steps=50, grid=(16, 16), cfg_halves=True) as run:
        for p in range(50):               # evaluation order, 0 first
            run.set_step(p)
            out = model(x, t, y)

Inside the model, the forward asks for the current step and hands each block its view::

    step = self.feature_cache.current_step()          # None outside a session: plain forward
    for i, block in enumerate(self.blocks):
        x = block(x, c, None if step is None else step.block(i))
    if step is not None:
        x = step.trunk(x)                                # stores, or swaps in the cached trunk output

and a block wraps each cached module in :func:`residual`::

    x = residual(cache, "attn", x, lambda t, stat: self.attn(modulate(self.norm1(t), shift, scale), stat=stat), gate)

State lives only inside a session: it is created when the session opens and dropped when it closes,
also when sampling raises. Nothing is global or class-level.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import torch

from . import selectors as sel
from .accounting import tensor_bytes
from .actions import Action
from .config import CacheConfig
from .methods import CacheMethod, TrunkState, get_method
from .plan import BlockLayout, Plan, build_plan
from .state import ModuleState
from .trace import Trace

ModuleFn = Callable[[torch.Tensor, "str | None"], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]

STAT_FROM_SELF_ATTN = ("value_norm", "attention_received")
STAT_FROM_CROSS_ATTN = ("cross_entropy",)


def residual(
    cache: BlockView | None, module: str, x: torch.Tensor, fn: ModuleFn, gate: torch.Tensor | None = None
) -> torch.Tensor:
    """``x + gate * fn(x)`` with the module's output supplied by the engine.

    ``fn(tokens, stat)`` computes the module on some tokens of ``x`` (all of them, or a subset in a
    partial step); when ``stat`` is not None it also returns the selector statistic the engine asked
    for, as ``(output, statistic)``. Without a cache the expression is exactly the plain forward.
    """
    out: torch.Tensor | None
    if cache is None:
        out = cast(torch.Tensor, fn(x, None))  # asked for no statistic: the output alone
    else:
        out = cache.run(module, x, fn)
        if out is None:  # aggressive: the module adds nothing
            return x
        if gate is not None and cache.action(module) != Action.FULL:
            # a reused, forecast or partially recomputed output: one fused pass over the tokens instead of a
            # product and a sum (CPU, DiT-XL/2 at 256 tokens: 0.28 ms instead of 1.7 ms per module;
            # docs/benchmarks.md). Full steps keep the plain expression, so they match the uncached forward.
            return torch.addcmul(x, gate, out)
    return x + out if gate is None else x + gate * out


@dataclass
class EngineTimers:
    """Seconds spent in the engine's own work (filled only when the session is opened with profile=True)."""

    scoring: float = 0.0
    gather_scatter: float = 0.0
    cache_writes: float = 0.0

    def total(self) -> float:
        return self.scoring + self.gather_scatter + self.cache_writes


class FeatureCache:
    """Owned by a model instance. Holds the config and, during a session, the run state."""

    def __init__(self, config: CacheConfig, layout: BlockLayout) -> None:
        if not isinstance(config, CacheConfig):
            raise TypeError(f"config must be a CacheConfig, got {type(config).__name__}")
        self.config = config
        self.layout = layout
        self._run: CacheRun | None = None
        self.last_trace: Trace | None = None
        self.last_timers: EngineTimers | None = None
        # bytes the cache held at its fullest, sampled at every step boundary and after the last step's writes
        self.last_peak_bytes: int = 0
        self.profile_sessions = False  # sessions opened without profile= are profiled (see profiling())

    def plan(self, num_steps: int) -> Plan:
        return build_plan(self.config, self.layout, num_steps)

    @contextlib.contextmanager
    def profiling(self) -> Iterator[None]:
        """Profile every session opened inside the block (for samplers that open their own session)."""
        before, self.profile_sessions = self.profile_sessions, True
        try:
            yield
        finally:
            self.profile_sessions = before

    @contextlib.contextmanager
    def session(
        self,
        num_steps: int,
        *,
        grid: tuple[int, int] | None = None,
        cfg_halves: bool = False,
        profile: bool | None = None,
    ) -> Iterator[CacheRun]:
        """One sampling run. ``grid`` is the token grid (rows, cols) for the spatial bonus;
        ``cfg_halves`` says the batch is two CFG halves that must select the same random tokens;
        ``profile`` fills the engine timers (default: ``profile_sessions``)."""
        profile = self.profile_sessions if profile is None else profile
        if self._run is not None:
            raise RuntimeError("a cache session is already open on this model; sessions do not nest")
        run = CacheRun(self, self.plan(num_steps), grid=grid, cfg_halves=cfg_halves, profile=profile)
        self._run = run
        try:
            yield run
        finally:
            self.last_trace = run.trace
            self.last_timers = run.timers
            # the last step's writes happen after its set_step sampled the size: count them too
            self.last_peak_bytes = max(run.peak_bytes, run.nbytes())
            run.release()
            self._run = None

    @property
    def active(self) -> CacheRun | None:
        return self._run

    def current_step(self) -> StepView | None:
        return None if self._run is None else self._run.current


class CacheRun:
    """State of one sampling run: cached outputs, counters, statistics, trunk output, trace."""

    def __init__(
        self, owner: FeatureCache, plan: Plan, *, grid: tuple[int, int] | None, cfg_halves: bool, profile: bool
    ) -> None:
        self.owner = owner
        self.config = owner.config
        self.layout = owner.layout
        self.plan = plan
        self.grid = grid
        self.cfg_halves = cfg_halves
        self.profile = profile
        depth, modules = self.layout.depth, self.layout.modules
        self.modules: list[dict[str, ModuleState]] = [{m: ModuleState() for m in modules} for _ in range(depth)]
        self.stats: list[torch.Tensor | None] = [None] * depth
        self.method: CacheMethod = get_method(self.config.method)
        self.trunk_out: torch.Tensor | None = None
        self.trunk_state: TrunkState | None = self.method.new_trunk()  # a method that computes the trunk itself
        self.shape: tuple[int, int] | None = None
        self.generator: torch.Generator | None = None
        self.trace = Trace.empty(plan)
        self.timers = EngineTimers()
        self.peak_bytes = 0
        self.current: StepView | None = None
        self._selects = plan.count(Action.PARTIAL) > 0
        self._stores = self.method.caches
        self._stores_trunk = any(plan.trunk_reused)  # decided once, not per step

    # -- lifecycle -------------------------------------------------------------------------------
    def set_step(self, p: int) -> StepView:
        if not (0 <= p < self.plan.num_steps):
            raise ValueError(
                f"step {p} is outside this session's {self.plan.num_steps} steps; "
                f"open a new session for a different step count"
            )
        self.peak_bytes = max(self.peak_bytes, self.nbytes())
        self.current = StepView(self, p)
        return self.current

    def release(self) -> None:
        self.modules = []
        self.stats = []
        self.trunk_out = None
        self.trunk_state = None
        self.current = None

    def nbytes(self) -> int:
        trunk = self.trunk_state.tensors() if self.trunk_state is not None else []
        held = [t for block in self.modules for s in block.values() for t in s.tensors()]
        return tensor_bytes(*held, *self.stats, self.trunk_out, *trunk)

    # -- helpers -----------------------------------------------------------------------------------
    def _check_shape(self, x: torch.Tensor) -> None:
        shape = (x.shape[0], x.shape[1])
        if self.shape is None:
            if self.cfg_halves and shape[0] % 2:
                raise ValueError(
                    f"cache session opened with cfg_halves=True but the batch has {shape[0]} rows; "
                    f"a CFG batch holds two equal halves (pass cfg_halves=False without guidance)"
                )
            self.shape = shape
        elif shape != self.shape:
            raise ValueError(
                f"this cache session started with batch {self.shape[0]} x {self.shape[1]} tokens "
                f"but got batch {shape[0]} x {shape[1]}; open a new session for a new shape"
            )

    @contextlib.contextmanager
    def _timed(self, attr: str, device: torch.device) -> Iterator[None]:
        if not self.profile:
            yield
            return
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        setattr(self.timers, attr, getattr(self.timers, attr) + time.perf_counter() - t0)


class StepView:
    """One model evaluation of a session: hands out block views and handles the trunk output."""

    __slots__ = ("p", "run")

    def __init__(self, run: CacheRun, p: int) -> None:
        self.run, self.p = run, p

    @property
    def trunk_reused(self) -> bool:
        return self.run.plan.trunk_reused[self.p]

    def block(self, index: int) -> BlockView:
        return BlockView(self.run, self.p, index)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Call after the last block: returns the cached trunk output in aggressive steps, else stores x."""
        run = self.run
        run.trace.trunk_reused[self.p] = self.trunk_reused
        if run.trunk_state is not None:  # the method computes the trunk output (e.g. forecasts it)
            return run.trunk_state.step(x, self.p, self.trunk_reused, run.config)
        if self.trunk_reused:
            if run.trunk_out is None:
                raise RuntimeError(
                    f"step {self.p} reuses the trunk output but none was computed before; "
                    f"the plan must start with a full step"
                )
            return run.trunk_out
        if run._stores_trunk:
            run.trunk_out = x
        return x


class BlockView:
    """What one block may ask the engine in one step."""

    __slots__ = ("index", "p", "state")

    def __init__(self, state: CacheRun, p: int, index: int) -> None:
        self.state, self.p, self.index = state, p, index

    @property
    def skip(self) -> bool:
        """True when every module of this block adds nothing in this step (aggressive)."""
        return all(a == Action.SKIP for a in self.state.plan.actions[self.p][self.index])

    def action(self, module: str) -> Action:
        return self.state.plan.action(self.p, self.index, module)

    def stat_kind(self, module: str) -> str | None:
        """The selector statistic this module should return now, or None (then SDPA/flash can be used)."""
        run = self.state
        kind = run.config.selector
        if not run._selects or self.action(module) not in (Action.FULL, Action.PARTIAL):
            return None
        if kind in STAT_FROM_SELF_ATTN and module == run.layout.self_attn:
            return kind
        if kind in STAT_FROM_CROSS_ATTN and module == run.layout.cross_attn:
            return kind
        return None

    def run(self, module: str, x: torch.Tensor, fn: ModuleFn) -> torch.Tensor | None:
        run, p, b = self.state, self.p, self.index
        m_idx = run.layout.modules.index(module)
        action = run.plan.actions[p][b][m_idx]
        state = run.modules[b][module]
        run._check_shape(x)
        if action == Action.PARTIAL:
            k = sel.fresh_token_count(run.plan.ratios[p][b][m_idx], x.shape[1])
            if k == 0:
                # no token recomputed, but the step still ages every token, as in the reference (its
                # cache_cutfresh adds 1 to all counters before zeroing the k = 0 selected ones)
                action = Action.REUSE
                if state.counter is not None:
                    state.counter += 1
            elif k >= x.shape[1]:
                action = Action.FULL
        if action == Action.REUSE:
            action = run.method.reuse_as  # e.g. dualca forecasts what DuCa would reuse
        run.trace.record(p, b, m_idx, action, x.shape[1] if action == Action.FULL else 0)

        if action == Action.SKIP:
            return None
        if action == Action.FULL:
            return self._full(module, state, x, fn)
        if action == Action.REUSE:
            out = run.method.reuse(state, p, run.config)
            if out is None:
                raise RuntimeError(f"block {b} module {module!r} is reused at step {p} before it was computed")
            return out
        if action == Action.FORECAST:
            out = run.method.forecast(state, p, run.config)
            if out is None:
                raise RuntimeError(f"block {b} module {module!r} is forecast at step {p} before it was computed")
            return out
        run.method.before_partial(state, p, run.config)
        return self._partial(module, state, x, fn, k)

    def _split(
        self, result: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(result, tuple):
            return result[0], result[1]
        return result, None

    def _full(self, module: str, state: ModuleState, x: torch.Tensor, fn: ModuleFn) -> torch.Tensor:
        run = self.state
        kind = self.stat_kind(module)
        out, stat = self._split(fn(x, kind))
        if not run._stores:
            return out
        with run._timed("cache_writes", x.device):
            if kind is not None:
                if stat is None:
                    raise RuntimeError(
                        f"selector {kind!r} needs module {module!r} of block {self.index} to "
                        f"return (output, statistic) when asked for one"
                    )
                run.stats[self.index] = stat
            run.method.on_full(state, out, self.p, run.config)
            if run._selects and module in run.layout.tokenwise:
                state.counter = torch.zeros(x.shape[0], x.shape[1], device=x.device, dtype=torch.int32)
                if run.config.selector == "similarity":
                    state.ref_input = x
        return out

    def _score(self, module: str, state: ModuleState, x: torch.Tensor) -> torch.Tensor:
        run, cfg = self.state, self.state.config
        b, n = x.shape[0], x.shape[1]
        if cfg.selector == "random":
            if run.generator is None:
                run.generator = torch.Generator(device="cpu" if x.device.type == "meta" else x.device)
                run.generator.manual_seed(cfg.seed)
            if x.device.type == "meta":
                score = torch.empty(b, n, device="meta")
            else:
                score = sel.random_score(b, n, run.generator, x.device, run.cfg_halves)
        elif cfg.selector == "similarity":
            if state.ref_input is None:
                raise RuntimeError(f"similarity selector: block {self.index} module {module!r} has no full step input")
            cos = torch.nn.functional.cosine_similarity(x.float(), state.ref_input.float(), dim=-1)
            score = sel.score_from_stat("similarity", 1.0 - cos)
        else:
            stat = run.stats[self.index]
            if stat is None:
                source = run.layout.cross_attn if cfg.selector in STAT_FROM_CROSS_ATTN else run.layout.self_attn
                raise RuntimeError(
                    f"selector {cfg.selector!r} needs a statistic from module {source!r} of block "
                    f"{self.index}, but none was recorded; does this model provide it?"
                )
            score = sel.score_from_stat(cfg.selector, stat)
            if cfg.selector in STAT_FROM_CROSS_ATTN and run.cfg_halves:
                score = sel.share_over_cfg_halves(score)
        if cfg.staleness_weight > 0 and state.counter is not None:
            score = score + cfg.staleness_weight * state.counter.float() / cfg.interval
        if cfg.spatial_bonus > 0 and run.grid is not None:
            score = sel.spatial_bonus(score, run.grid, cfg.spatial_cell, cfg.spatial_bonus)
        return score

    def _partial(self, module: str, state: ModuleState, x: torch.Tensor, fn: ModuleFn, k: int) -> torch.Tensor:
        run = self.state
        if state.out is None or state.counter is None:
            raise RuntimeError(
                f"block {self.index} module {module!r} is partially recomputed at step {self.p} "
                f"before it was computed in full"
            )
        with run._timed("scoring", x.device):
            index = sel.top_k(self._score(module, state, x), k)
        with run._timed("gather_scatter", x.device):
            x_sel = sel.gather_tokens(x, index)
        kind = self.stat_kind(module)
        out_sel, stat_sel = self._split(fn(x_sel, kind))
        run.trace.tokens[self.p][self.index][run.layout.modules.index(module)] = k
        with run._timed("gather_scatter", x.device):
            sel.scatter_tokens(state.out, index, out_sel)
            stats = run.stats[self.index]
            if kind is not None and stat_sel is not None and stats is not None:
                stats.scatter_(-1, index, stat_sel.to(stats.dtype))
        with run._timed("cache_writes", x.device):
            state.counter += 1
            state.counter.scatter_(1, index, 0)
        return state.out
