"""Plans: a pure function of (config, layout, number of steps) that says what every module does.

A plan is a table ``actions[step][block][module]`` plus, per step, whether the trunk output (the hidden
state after the last block) is computed or reused. Steps are indexed in evaluation order ``p = 0..K-1``;
``layout.step_counts_down`` maps ``p`` to the index the reference code uses (``s = K-1-p`` for DiT).

Block types, as the reference code names them:
  F full          every module computed, caches refreshed
  T conservative  token-wise modules recompute a fraction of tokens, the others are reused
  A aggressive    nothing computed; if the last block is aggressive the trunk output is reused
  R reuse (FORA)  every module reused under the current gates
  P forecast      TaylorSeer: every module forecast from finite differences of its past outputs

Which type a non-full step gets is the method's rule (``methods/*.py``: ``non_full_letter``, ``cycle_letter``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .actions import Action
from .config import CacheConfig
from .methods import get_method


@dataclass(frozen=True)
class BlockLayout:
    """What the engine needs to know about a model's blocks (no model code).

    ``modules`` are the cached sub-modules of one block, in execution order. ``tokenwise`` are the
    ones whose output for a token depends only on that token (MLP; cross-attention given the text),
    so they can be recomputed for a subset of tokens. ``self_attn`` / ``cross_attn`` name the modules
    that provide selector statistics (value norms, attention scores).
    """

    depth: int
    modules: tuple[str, ...] = ("attn", "mlp")
    tokenwise: tuple[str, ...] = ("mlp",)
    self_attn: str | None = "attn"
    cross_attn: str | None = None
    step_counts_down: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.depth, int) and self.depth >= 1):
            raise ValueError(f"BlockLayout.depth={self.depth!r} is invalid: allowed an integer >= 1")
        if len(self.modules) == 0 or len(set(self.modules)) != len(self.modules):
            raise ValueError(f"BlockLayout.modules={self.modules!r} is invalid: allowed distinct names, at least one")
        unknown = set(self.tokenwise) - set(self.modules)
        for name in (self.self_attn, self.cross_attn):
            if name is not None and name not in self.modules:
                unknown.add(name)
        if unknown:
            raise ValueError(f"BlockLayout names modules {sorted(unknown)} that are not in modules={self.modules}")

    def reference_step(self, p: int, num_steps: int) -> int:
        return num_steps - 1 - p if self.step_counts_down else p


@dataclass(frozen=True)
class Plan:
    """The full schedule of one sampling run. ``actions[p][block][module_index]``; ``ratios`` alike."""

    config: CacheConfig
    layout: BlockLayout
    num_steps: int
    block_types: tuple[tuple[str, ...], ...]  # [p][block] letter F/T/A/R/P ("" for module_cycles)
    actions: tuple[tuple[tuple[Action, ...], ...], ...]
    ratios: tuple[tuple[tuple[float, ...], ...], ...]
    trunk_reused: tuple[bool, ...]

    def action(self, p: int, block: int, module: str) -> Action:
        return self.actions[p][block][self.layout.modules.index(module)]

    def step_summary(self, p: int) -> str:
        """Compact description of one step: 'F', 'T', 'A', 'F→T' (block 0 differs from the rest), ..."""
        types = self.block_types[p]
        if types[0]:
            rest = set(types[1:])
            if not rest or rest == {types[0]}:
                return types[0]
            return f"{types[0]}→{'/'.join(sorted(rest))}"
        # module_cycles: one letter per module of block 0, or A when the trunk is reused
        if self.trunk_reused[p]:
            return "A"
        return "/".join(a.letter for a in self.actions[p][0])

    def table(self) -> str:
        """The schedule as text, one 'step type' entry per step in the reference step numbering."""
        lines = []
        for p in range(self.num_steps):
            s = self.layout.reference_step(p, self.num_steps)
            lines.append(f"{s:>4} {self.step_summary(p)}")
        return "\n".join(lines)

    def count(self, action: Action, module: str | None = None) -> int:
        idx = None if module is None else self.layout.modules.index(module)
        n = 0
        for step in self.actions:
            for block in step:
                for m, a in enumerate(block):
                    if a == action and (idx is None or m == idx):
                        n += 1
        return n


def _dit_interval(cfg: CacheConfig, s: int, num_steps: int) -> int:
    """Cycle length after a full block at reference step ``s`` (models.md A.7, force_scheduler).

    ``w = 0.4`` when caching tokens (fresh_ratio > 0), else 0; ``I = round(N / (1 + w - 2 w s / K))``
    with round-half-to-even (the reference uses torch.round); ``I = 2`` for s in [int(0.2K), int(0.4K)).
    """
    w = DIT_RESCALE_WEIGHT if cfg.fresh_ratio > 0 else 0.0
    interval = round(cfg.interval / (1.0 + w - 2.0 * w * s / num_steps))  # Python round: half to even
    lo, hi = int(DIT_FORCED_WINDOW[0] * num_steps), int(DIT_FORCED_WINDOW[1] * num_steps)
    if lo <= s < hi:
        interval = DIT_FORCED_INTERVAL
    return max(int(interval), 1)


# DiT reference force_scheduler constants (DuCa-DiT/cache_functions/force_scheduler.py, models.md A.7).
DIT_RESCALE_WEIGHT = 0.4
DIT_FORCED_WINDOW = (0.2, 0.4)
DIT_FORCED_INTERVAL = 2


def _block_type_letters(cfg: CacheConfig, layout: BlockLayout, num_steps: int) -> list[list[str]]:
    types: list[list[str]] = []
    method = get_method(cfg.method)
    cal_interval = cfg.interval  # the reference initialises cal_threshold to fresh_threshold
    for p in range(num_steps):
        s = layout.reference_step(p, num_steps)
        first = p == 0
        row: list[str] = []
        step_interval = cal_interval  # per_step mode: decided once, from the state before the step
        for _block in range(layout.depth):
            if not method.caches:
                row.append("F")
                continue
            if cfg.interval_rule == "dit":
                interval = cfg.interval if first else (cal_interval if cfg.plan_mode == "reference" else step_interval)
            else:
                interval = cfg.interval
            if first or p < cfg.warmup_full_steps or s % interval == 0:
                row.append("F")
                if cfg.interval_rule == "dit":
                    cal_interval = _dit_interval(cfg, s, num_steps)
            else:
                row.append(method.non_full_letter(s % interval))
        types.append(row)
    return types


_TYPE_TO_ACTION = {"F": Action.FULL, "A": Action.SKIP, "R": Action.REUSE, "P": Action.FORECAST}


def build_plan(cfg: CacheConfig, layout: BlockLayout, num_steps: int) -> Plan:
    """The schedule of a run of ``num_steps`` model evaluations. Pure: no tensors, no state."""
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(f"num_steps={num_steps!r} is invalid: allowed an integer >= 1")
    modules = layout.modules
    actions: list[tuple[tuple[Action, ...], ...]] = []
    ratios: list[tuple[tuple[float, ...], ...]] = []
    trunk: list[bool] = []

    if cfg.interval_rule == "module_cycles":
        method = get_method(cfg.method)
        cycles = dict(cfg.module_cycles)
        missing = [m for m in modules if m not in cycles]
        if missing:
            raise ValueError(
                f"CacheConfig.module_cycles has no pattern for modules {missing} of this model (modules: {modules})"
            )
        block_types = tuple(tuple("" for _ in range(layout.depth)) for _ in range(num_steps))
        for p in range(num_steps):
            s = layout.reference_step(p, num_steps)
            step_letters = [
                method.cycle_letter("F" if p < cfg.warmup_full_steps else cycles[m][s % len(cycles[m])])
                for m in modules
            ]
            step_actions, step_ratios = [], []
            for block in range(layout.depth):
                a_row, r_row = zip(
                    *(
                        _module_action(cfg, layout, letter, m, s, num_steps, block)
                        for letter, m in zip(step_letters, modules, strict=True)
                    ),
                    strict=True,
                )
                step_actions.append(tuple(a_row))
                step_ratios.append(tuple(r_row))
            actions.append(tuple(step_actions))
            ratios.append(tuple(step_ratios))
            trunk.append(all(a == Action.SKIP for a in step_actions[-1]))
        return Plan(cfg, layout, num_steps, block_types, tuple(actions), tuple(ratios), tuple(trunk))

    letters = _block_type_letters(cfg, layout, num_steps)
    for p in range(num_steps):
        s = layout.reference_step(p, num_steps)
        step_actions, step_ratios = [], []
        for block in range(layout.depth):
            a_row, r_row = zip(
                *(_module_action(cfg, layout, letters[p][block], m, s, num_steps, block) for m in modules),
                strict=True,
            )
            step_actions.append(tuple(a_row))
            step_ratios.append(tuple(r_row))
        actions.append(tuple(step_actions))
        ratios.append(tuple(step_ratios))
        trunk.append(letters[p][-1] == "A")
    return Plan(cfg, layout, num_steps, tuple(tuple(r) for r in letters), tuple(actions), tuple(ratios), tuple(trunk))


def _module_action(
    cfg: CacheConfig, layout: BlockLayout, letter: str, module: str, s: int, num_steps: int, block: int
) -> tuple[Action, float]:
    if letter != "T":
        return _TYPE_TO_ACTION[letter], (1.0 if letter == "F" else 0.0)
    r = cfg.ratio_schedule.ratio(cfg.fresh_ratio, s, num_steps, block, layout.depth, module)
    if r >= 1.0:  # every token fresh: the module is simply computed
        return Action.FULL, 1.0
    if module not in layout.tokenwise:
        return Action.REUSE, 0.0  # self-attention cannot be recomputed token-wise: reuse it
    # r <= 0 stays a partial step of ratio 0: no token is recomputed (the engine reuses the output and traces
    # a reuse) but every token's staleness counter still advances, as in the reference's conservative steps.
    return Action.PARTIAL, r
