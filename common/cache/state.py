"""Per-module state of one sampling run (what the cache holds for one module of one block)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .taylor import TaylorTerms


@dataclass
class ModuleState:
    out: torch.Tensor | None = None  # last output, pre-gate, (B, N, C)
    counter: torch.Tensor | None = None  # (B, N) partial steps since each token was last computed
    taylor: TaylorTerms | None = None  # the method's forecaster, if it has one
    ref_input: torch.Tensor | None = None  # module input at the last full step (similarity selector)

    def tensors(self) -> list[torch.Tensor | None]:
        taylor = self.taylor.tensors() if self.taylor is not None else []
        return [self.out, self.counter, self.ref_input, *taylor]
