"""Run the project's models on the reference fixtures' settings and record what the engine did.

``record_selections()`` wraps the engine's partial-step method for one run and collects, per
(evaluation step, block, module), the token indices it recomputed; ``unpack`` reads a fixture's packed
indices (``duca_scripts.reference_fixtures.pack_indices``) into the same form.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from duca_common.cache import engine
from duca_common.cache import selectors as sel
from duca_common.cache.trace import NOT_RUN
from duca_scripts import reference_fixtures as rf


@contextlib.contextmanager
def record_selections() -> Iterator[dict]:
    """Yields a dict filled with ``{(p, block, module): (rows, k) int array}`` for every partial step."""
    found: dict = {}
    current: list = []
    original_partial = engine.BlockView._partial
    original_top_k = sel.top_k

    def partial(self, module, state, x, fn, k):
        current.append((self.p, self.index, module))
        try:
            return original_partial(self, module, state, x, fn, k)
        finally:
            current.pop()

    def top_k(score, k):
        index = original_top_k(score, k)
        if current:
            found[current[-1]] = index.cpu().numpy()
        return index

    engine.BlockView._partial = partial
    sel.top_k = top_k
    try:
        yield found
    finally:
        engine.BlockView._partial = original_partial
        sel.top_k = original_top_k


def unpack(indices: np.ndarray, actions: np.ndarray, tokens: np.ndarray, modules: tuple[str, ...]) -> dict:
    """The inverse of ``packed`` for a fixture: ``{(p, block, module): (rows, k)}`` from its flat indices
    (every event has the same number of batch rows)."""
    selected = int(tokens[actions == rf.PARTIAL].sum())
    rows = indices.size // selected if selected else 0
    out, at = {}, 0
    for p, b, m in zip(*np.nonzero(actions == rf.PARTIAL), strict=True):
        k = int(tokens[p, b, m])
        out[(int(p), int(b), modules[m])] = indices[at:at + rows * k].reshape(rows, k)
        at += rows * k
    if at != indices.size:
        raise ValueError(f"fixture holds {indices.size} indices but its decisions account for {at}")
    return out


def first_selection_difference(ours: dict, ref: dict) -> str:
    """The first (step, block, module) whose recomputed tokens differ, and the tokens only one side chose."""
    for key in sorted(set(ours) | set(ref), key=lambda k: (k[0], k[1], k[2])):
        a, b = ours.get(key), ref.get(key)
        if a is None or b is None:
            return f"step {key[0]} block {key[1]} {key[2]}: selected only by {'us' if b is None else 'the reference'}"
        a = np.sort(a, axis=1)
        if a.shape != b.shape or not np.array_equal(a, b):
            rows = [r for r in range(min(len(a), len(b))) if not np.array_equal(a[r], b[r])]
            r = rows[0] if rows else 0
            only_ours = sorted(set(a[r].tolist()) - set(b[r].tolist()))
            only_ref = sorted(set(b[r].tolist()) - set(a[r].tolist()))
            return (f"evaluation step {key[0]}, block {key[1]}, {key[2]}, batch row {r}: tokens only ours "
                    f"{only_ours}, only the reference's {only_ref}")
    return ""


def trace_arrays(trace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(actions, tokens, trunk_reused) of an engine trace in the fixtures' coding: a module the model never
    called (a block that returned early in an aggressive step, NOT_RUN) is SKIP, as it adds nothing."""
    actions = np.where(trace.actions == NOT_RUN, rf.SKIP, trace.actions).astype(np.int8)
    return actions, trace.tokens.astype(np.int32), np.asarray(trace.trunk_reused, dtype=bool)


def relative_difference(ours: torch.Tensor | np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref|."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def first_difference(ours: np.ndarray, ref: np.ndarray, what: str) -> str:
    """Where two decision arrays first differ, in words (evaluation step, block, module)."""
    if ours.shape != ref.shape:
        return f"{what}: shapes differ, ours {ours.shape} vs reference {ref.shape}"
    diff = np.argwhere(ours != ref)
    if len(diff) == 0:
        return ""
    first = tuple(int(v) for v in diff[0])
    return f"{what}: {len(diff)} entries differ, first at {first}: ours {ours[first]} vs reference {ref[first]}"
