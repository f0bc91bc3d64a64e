"""Hand-formula FLOPs (paper.md section 4), measured FLOPs on the meta device, and trace-based totals."""

import pytest
import torch

from duca_common.cache import (
    BlockLayout,
    CacheConfig,
    TransformerDims,
    build_plan,
    full_run_flops,
    get_preset,
    measured_flops,
    reference_flops,
)
from duca_common.cache.accounting import (
    adaln_flops,
    cross_attention_flops,
    layernorm_flops,
    mlp_flops,
    self_attention_flops,
)
from duca_common.cache.trace import Trace
from tiny_transformer import TinyTransformer, sample

DIT_XL = TransformerDims(batch=2, tokens=256, hidden=1152, heads=16)


def test_dit_xl2_ddim50_full_run_is_23_735_tflops():
    total = full_run_flops(DIT_XL, depth=28, num_steps=50, modules=("attn", "mlp"))
    assert total / 1e12 == pytest.approx(23.735, abs=5e-4)


def test_module_formulas_by_hand():
    d = TransformerDims(batch=2, tokens=4, hidden=8, heads=2)
    assert layernorm_flops(d) == 2 * 2 * 4 * 8
    assert adaln_flops(d) == 2 * 8 + 6 * 2 * 64
    assert mlp_flops(d, 3) == 16 * 2 * 3 * 64 + 24 * 2 * 3 * 8
    hd = 4
    assert self_attention_flops(d) == (6 * 2 * 4 * 64 + 2 * 2 * 4 * hd + 2 * 2 * 2 * 16 * hd + 5 * 2 * 2 * 16
                                       + 2 * 2 * 2 * 16 * hd + 2 * 2 * 4 * 64)
    p = TransformerDims(batch=2, tokens=4, hidden=8, heads=2, text_tokens=5)
    n0, n1 = 2 * 3, 5
    assert cross_attention_flops(p, 3) == (2 * n0 * 64 + 4 * n1 * 64 + 2 * n0 * hd + 2 * n0 * n1 + 2 * 2 * n0 * n1 * hd
                                           + 5 * 2 * n0 * n1 + 2 * 2 * n0 * n1 * hd + 2 * 2 * n0 * 64)


def _trace_of(cfg, steps, depth=28):
    """Build a Trace from a plan as a model would record it (full = N tokens, partial = int(r N))."""
    layout = BlockLayout(depth=depth, step_counts_down=True)
    plan = build_plan(cfg, layout, steps)
    trace = Trace.empty(plan)
    for p in range(steps):
        for b in range(depth):
            for m, a in enumerate(plan.actions[p][b]):
                n = DIT_XL.tokens if a == 0 else int(plan.ratios[p][b][m] * DIT_XL.tokens) if a == 1 else 0
                trace.record(p, b, m, a, n)
        trace.trunk_reused[p] = plan.trunk_reused[p]
    return trace


@pytest.mark.parametrize("preset,paper_speedup,tol", [
    ("dit-fora-n3", 2.77, 0.03),
    ("dit-taylorseer-n3-o3", 2.77, 0.03),
    ("dit-taylorseer-n5-o3", 4.53, 0.05),
    ("dit-duca-n3-r95", 2.48, 0.08),
    ("dit-toca-n3-r93", 2.32, 0.12),
])
def test_dit_presets_reproduce_published_flops_speedups(preset, paper_speedup, tol):
    """FLOPs speed-ups of the presets against the uncached 23.735 TFLOPs, vs paper.md section 2."""
    base = reference_flops(_trace_of(CacheConfig(), 50), DIT_XL)
    assert base / 1e12 == pytest.approx(23.735, abs=5e-4)
    got = base / reference_flops(_trace_of(get_preset(preset).config, 50), DIT_XL)
    assert got == pytest.approx(paper_speedup, rel=tol)


def test_measured_flops_on_meta_device_counts_attention():
    with torch.device("meta"):
        model = TinyTransformer(depth=2, dim=32, heads=4)
        x = torch.empty(2, 16, 32)
        t = torch.empty(2)
    flops = measured_flops(lambda: model(x, t))
    b, n, c = 2, 16, 32
    linear = 2 * b * n * (c * 3 * c + c * c + c * 4 * c * 2) + 2 * b * c * 6 * c
    attention = 2 * 2 * b * n * n * c                                     # QK^T and AV
    assert flops == 2 * (linear + attention) + 2 * b * c                 # + the t embedding


def test_reference_flops_of_a_traced_run():
    torch.manual_seed(0)
    model = TinyTransformer(depth=3, dim=32, heads=4)
    x = torch.randn(2, 16, 32)
    dims = TransformerDims(batch=2, tokens=16, hidden=32, heads=4)
    sample(model, x, 6)
    full = reference_flops(model.feature_cache.last_trace, dims)
    assert full == full_run_flops(dims, depth=3, num_steps=6, modules=("attn", "mlp"))
    model.feature_cache.config = CacheConfig(method="fora", interval=3)
    sample(model, x, 6)
    fora = reference_flops(model.feature_cache.last_trace, dims)
    per_block_full = full // (3 * 6)
    full_steps, reuse_steps = 3, 3                                         # steps 5 (first), 3, 0 are full
    assert fora == 3 * (full_steps * per_block_full + reuse_steps * adaln_flops(dims))
