"""FLOPs and memory accounting.

Two ways to count FLOPs:

* ``reference_flops``: the hand formula of the reference code (shared/reference/paper.md section 4),
  applied to a :class:`~duca_common.cache.trace.Trace`, for parity with published numbers. It counts the
  transformer blocks only (not embedders, final layer, VAE, or token scoring).
* ``measured_flops``: ``torch.utils.flop_counter.FlopCounterMode`` around any callable. Run it on the
  meta device: on CPU tensors the counter misses the attention kernel (environment.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .plan import Action
from .trace import NOT_RUN, Trace


@dataclass(frozen=True)
class TransformerDims:
    """Sizes the hand formula needs. ``batch`` is the forward batch (2 per image with CFG)."""

    batch: int
    tokens: int
    hidden: int
    heads: int
    text_tokens: int = 0  # PixArt: valid text tokens of the whole batch (sum over rows)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def layernorm_flops(d: TransformerDims) -> int:
    return 2 * d.batch * d.tokens * d.hidden


def adaln_flops(d: TransformerDims) -> int:
    return d.batch * d.hidden + 6 * d.batch * d.hidden**2


def self_attention_flops(d: TransformerDims) -> int:
    b, n, c, h, hd = d.batch, d.tokens, d.hidden, d.heads, d.head_dim
    return (
        6 * b * n * c * c
        + b * h * n * hd
        + 2 * b * h * n * n * hd
        + 5 * b * h * n * n
        + 2 * b * h * n * n * hd
        + 2 * b * n * c * c
    )


def mlp_flops(d: TransformerDims, n: int) -> int:
    """fc1 and fc2 with a 4C hidden layer and the GELU, on n tokens per row."""
    b, c = d.batch, d.hidden
    return 8 * b * n * c * c + 8 * b * n * c * c + 24 * b * n * c


def cross_attention_flops(d: TransformerDims, n: int) -> int:
    """PixArt reference formula with packed queries (paper.md section 4), on n query tokens per row.

    The last term over-counts the output projection by the factor B, a quirk kept for parity.
    """
    c, h, hd = d.hidden, d.heads, d.head_dim
    n0, n1 = d.batch * n, d.text_tokens
    return (
        2 * n0 * c * c
        + 4 * n1 * c * c
        + h * n0 * hd
        + h * n0 * n1
        + 2 * h * n0 * n1 * hd
        + 5 * h * n0 * n1
        + 2 * h * n0 * n1 * hd
        + 2 * d.batch * n0 * c * c
    )


MODULE_FORMULAS: dict[str, Callable[[TransformerDims, int], int]] = {
    "attn": lambda d, n: self_attention_flops(d),  # self-attention is only ever computed in full
    "mlp": mlp_flops,
    "cross_attn": cross_attention_flops,
}


def reference_flops(trace: Trace, dims: TransformerDims) -> int:
    """Total hand-formula FLOPs of the blocks of a traced run.

    Per block and step: LayerNorms and adaLN when any module is computed (full or partial), adaLN only
    when modules are reused or forecast (FORA / TaylorSeer), nothing when the block is skipped; plus each
    module's formula on the tokens it computed.
    """
    total = 0
    computed = (int(Action.FULL), int(Action.PARTIAL))
    for p in range(trace.num_steps):
        for block in range(trace.actions.shape[1]):
            acts = trace.actions[p, block]
            ran = [a for a in acts if a not in (NOT_RUN, int(Action.SKIP))]
            if not ran:
                continue
            total += adaln_flops(dims)
            if any(a in computed for a in ran):
                total += layernorm_flops(dims)
            for m, a in enumerate(acts):
                n = int(trace.tokens[p, block, m])
                if a in computed and n > 0:
                    total += MODULE_FORMULAS[trace.modules[m]](dims, n)
    return total


def full_run_flops(dims: TransformerDims, depth: int, num_steps: int, modules: tuple[str, ...]) -> int:
    """Hand-formula FLOPs of an uncached run (every module of every block computed on all tokens)."""
    per_block = adaln_flops(dims) + layernorm_flops(dims)
    per_block += sum(MODULE_FORMULAS[m](dims, dims.tokens) for m in modules)
    return per_block * depth * num_steps


def measured_flops(fn: Callable[[], object]) -> int:
    """FLOPs counted by torch's FlopCounterMode while ``fn()`` runs (use meta tensors for attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    """Bytes of the given tensors, each counted once (the same tensor may be named twice, e.g. a module's
    cached output that is also its forecaster's first term)."""
    unique = {id(t): t for t in tensors if t is not None}
    return sum(t.numel() * t.element_size() for t in unique.values())


def speedup(baseline: float, value: float) -> float:
    return float(baseline) / float(value) if value else float("inf")


__all__ = [
    "TransformerDims",
    "adaln_flops",
    "cross_attention_flops",
    "full_run_flops",
    "layernorm_flops",
    "measured_flops",
    "mlp_flops",
    "reference_flops",
    "self_attention_flops",
    "speedup",
    "tensor_bytes",
]
