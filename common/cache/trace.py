"""What a run actually computed: the action and the number of recomputed tokens per step x block x module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .plan import Action, Plan

NOT_RUN = -1  # trace value of a module the model never called in that step


@dataclass
class Trace:
    modules: tuple[str, ...]
    step_labels: list[int]  # the reference step index of each evaluation
    actions: np.ndarray  # (K, depth, modules) int8, Action values or NOT_RUN
    tokens: np.ndarray  # (K, depth, modules) int64, tokens computed (N for full, k for partial)
    trunk_reused: list[bool]

    @classmethod
    def empty(cls, plan: Plan) -> Trace:
        k, d, m = plan.num_steps, plan.layout.depth, len(plan.layout.modules)
        labels = [plan.layout.reference_step(p, k) for p in range(k)]
        return cls(
            plan.layout.modules,
            labels,
            np.full((k, d, m), NOT_RUN, dtype=np.int8),
            np.zeros((k, d, m), dtype=np.int64),
            [False] * k,
        )

    def record(self, p: int, block: int, module: int, action: Action, tokens: int) -> None:
        self.actions[p, block, module] = int(action)
        self.tokens[p, block, module] = tokens

    @property
    def num_steps(self) -> int:
        return self.actions.shape[0]

    def _row(self, p: int, block: int) -> str:
        return "/".join("-" if a == NOT_RUN else Action(int(a)).letter for a in self.actions[p, block])

    def step_letters(self, p: int) -> str:
        """Block 0's letters (one per module, e.g. 'R/T': attention reused, MLP partial); '→' then the last
        block's when they differ (the DiT reference's 'F→T'); 'A' for a step whose trunk was reused."""
        first, last = self._row(p, 0), self._row(p, self.actions.shape[1] - 1)
        if self.trunk_reused[p]:
            skipped = all(a in (int(Action.SKIP), NOT_RUN) for a in self.actions[p, 0])
            return "A" if skipped else f"{first}→A"
        return first if first == last else f"{first}→{last}"

    def table(self, columns: int = 10) -> str:
        """Compact text table: 'step:letters' entries, ``columns`` per line, in evaluation order."""
        cells = [f"{self.step_labels[p]:>3}:{self.step_letters(p):<7}" for p in range(self.num_steps)]
        header = "modules: " + "/".join(self.modules) + "  (F full, T partial, R reuse, A skip, P forecast)"
        return "\n".join([header] + [" ".join(cells[i : i + columns]) for i in range(0, len(cells), columns)])

    def fraction_computed(self) -> float:
        """Fraction of module-token evaluations actually computed, relative to no caching."""
        full = int((self.actions != NOT_RUN).sum())
        if full == 0:
            return 0.0
        n = int(self.tokens.max()) or 1
        return float(self.tokens.sum()) / (full * n)

    def to_dict(self) -> dict:
        return {
            "modules": list(self.modules),
            "step_labels": self.step_labels,
            "actions": self.actions.tolist(),
            "tokens": self.tokens.tolist(),
            "trunk_reused": self.trunk_reused,
            "legend": {int(a): a.name for a in Action} | {NOT_RUN: "NOT_RUN"},
        }

    def save_heatmap(self, path: str | Path, title: str = "") -> Path:
        """One panel per module: steps (x) by blocks (y), coloured by action; partial cells show k/N shading."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        n_mod = len(self.modules)
        fig, axes = plt.subplots(n_mod, 1, figsize=(max(6, self.num_steps * 0.18), 1.6 + 1.8 * n_mod), squeeze=False)
        colors = ["#d62728", "#ff7f0e", "#1f77b4", "#e0e0e0", "#2ca02c", "#ffffff"]  # F T R A P, not run
        cmap = ListedColormap(colors)
        for m, ax in enumerate(axes[:, 0]):
            grid = self.actions[:, :, m].T.astype(float)
            grid[grid == NOT_RUN] = len(colors) - 1
            ax.imshow(grid, aspect="auto", cmap=cmap, vmin=-0.5, vmax=len(colors) - 0.5, interpolation="nearest")
            ax.set_ylabel(f"{self.modules[m]}\nblock")
            ax.set_xticks(range(0, self.num_steps, max(1, self.num_steps // 10)))
            ax.set_xticklabels([self.step_labels[p] for p in range(0, self.num_steps, max(1, self.num_steps // 10))])
        axes[-1, 0].set_xlabel("step (reference numbering, evaluation order left to right)")
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors[:5]]
        fig.legend(handles, ["full", "partial", "reuse", "skip", "forecast"], loc="upper right", ncol=5, fontsize=8)
        if title:
            fig.suptitle(title, x=0.01, ha="left", fontsize=10)
        fig.tight_layout(rect=(0, 0, 1, 0.93))
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path
