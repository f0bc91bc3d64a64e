"""The engine on a small DiT-style transformer: exactness, reuse, partial recompute, selectors,
TaylorSeer, state lifecycle and config validation."""

import math

import pytest
import torch

from duca_common.cache import Action, CacheConfig, RatioSchedule, get_preset
from duca_common.cache import selectors as sel
from tiny_transformer import TinyTransformer, sample

STEPS = 9
GRID = (4, 4)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return TinyTransformer(depth=3, dim=32, heads=4).eval()


@pytest.fixture()
def x():
    torch.manual_seed(1)
    return torch.randn(4, GRID[0] * GRID[1], 32)


def _plain(model, x, steps=STEPS):
    outs = []
    for p in range(steps):
        out = model(x, torch.full((x.shape[0],), float(steps - p)))
        outs.append(out)
        x = x - 0.1 * out
    return outs


def test_cache_off_equals_plain_forward_exactly(model, x):
    plain = _plain(model, x)
    cached = sample(model, x, STEPS, grid=GRID, cfg_halves=True)
    assert all(torch.equal(a, b) for a, b in zip(plain, cached, strict=True))


@pytest.mark.parametrize("cfg", [
    CacheConfig(method="toca", interval=3, fresh_ratio=1.0),           # constant schedule, every token fresh
    CacheConfig(method="duca", interval=1, fresh_ratio=0.05),          # cycle length 1: every step full
    CacheConfig(method="fora", interval=1),
    CacheConfig(method="taylorseer", interval=1, taylor_order=2),
])
def test_ratio_one_and_cycle_one_equal_no_cache(model, x, cfg):
    plain = _plain(model, x)
    model.feature_cache.config = cfg
    cached = sample(model, x, STEPS, grid=GRID, cfg_halves=True)
    assert all(torch.equal(a, b) for a, b in zip(plain, cached, strict=True))


def test_reuse_returns_cached_output_under_current_gate(model, x):
    """FORA: the module output of the last full step, multiplied by this step's gate."""
    model.feature_cache.config = CacheConfig(method="fora", interval=3)
    block = model.blocks[0]
    seen = {}
    orig = block.attn.forward

    def spy(h, stat=None):
        out = orig(h, stat)
        seen["attn"] = out
        return out

    block.attn.forward = spy
    t_full, t_reuse = torch.full((4,), 5.0), torch.full((4,), 4.0)
    with model.feature_cache.session(3) as run:             # steps count down: 2 (full), 1 (reuse), 0
        run.set_step(0)
        model(x, t_full)
        cached_attn = seen.pop("attn")
        run.set_step(1)
        view = run.current.block(0)
        assert view.action("attn") == Action.REUSE
        c = model.t_embed(t_reuse[:, None])
        gate_msa = block.adaLN_modulation(c).chunk(6, dim=1)[2]
        got = view.run("attn", x, lambda t, s: pytest.fail("reused module must not be computed"))
        assert torch.equal(got, cached_attn)
        expected_residual = x + gate_msa.unsqueeze(1) * cached_attn
        from duca_common.cache import residual
        # a reused output is added in one fused pass (torch.addcmul): equal up to the rounding of one product
        got_residual = residual(view, "attn", x, lambda t, s: None, gate_msa.unsqueeze(1))
        assert torch.equal(got_residual, torch.addcmul(x, gate_msa.unsqueeze(1), cached_attn))
        assert torch.allclose(got_residual, expected_residual, rtol=0, atol=1e-6)
    assert "attn" not in seen


def _one_partial_step(model, x, cfg, x_second=None):
    """Run a full step then a conservative step of the MLP of block 0; return (cached_before, after, index)."""
    model.feature_cache.config = cfg
    with model.feature_cache.session(3, grid=GRID, cfg_halves=True) as run:   # steps 2 (full), 1 (conservative)
        run.set_step(0)
        view = run.current.block(0)
        before = view.run("mlp", x, lambda t, s: t * 2.0).clone()
        run.set_step(1)
        view = run.current.block(0)
        assert view.action("mlp") == Action.PARTIAL
        picked = {}

        def fn(t, s):
            picked["tokens"] = t.clone()
            return torch.full_like(t, -7.0)

        after = view.run("mlp", x if x_second is None else x_second, fn).clone()
        return before, after, picked["tokens"], run.current.block(0)


def _conservative(selector, ratio=0.25, **kw):
    return CacheConfig(method="toca", interval=2, fresh_ratio=ratio, selector=selector, staleness_weight=0.0, **kw)


def test_partial_recompute_changes_only_selected_tokens(model, x):
    before, after, tokens, _ = _one_partial_step(model, x, _conservative("random"))
    changed = (after != before).any(-1)                                   # (B, N)
    k = int(0.25 * x.shape[1])
    assert changed.sum(1).tolist() == [k] * x.shape[0]
    assert torch.all(after[changed] == -7.0)
    assert torch.equal(after[~changed], before[~changed])
    # the module saw exactly the selected tokens of the current input
    sel_idx = changed.nonzero()[:, 1].view(x.shape[0], k)
    assert torch.equal(torch.sort(tokens, dim=1).values,
                       torch.sort(sel.gather_tokens(x, sel_idx), dim=1).values)


def test_random_selector_same_tokens_in_both_cfg_halves(model, x):
    before, after, _, _ = _one_partial_step(model, x, _conservative("random"))
    changed = (after != before).any(-1)
    half = x.shape[0] // 2
    assert torch.equal(changed[:half], changed[half:])
    assert not torch.equal(changed[0], changed[1])                          # rows of one half differ


def test_value_norm_selector_picks_smallest_norms():
    torch.manual_seed(0)
    vnorm = torch.rand(2, 4, 16) + 0.5                                     # (B, H, N)
    score = sel.score_from_stat("value_norm", vnorm)
    idx = sel.top_k(score, 5)
    smallest = torch.topk(-vnorm.sum(1), 5, dim=-1).indices
    assert torch.equal(torch.sort(idx, 1).values, torch.sort(smallest, 1).values)


def test_value_norm_selection_end_to_end_uses_attention_statistic(model, x):
    model.feature_cache.config = _conservative("value_norm").replace(interval=2)
    with model.feature_cache.session(4, grid=GRID, cfg_halves=True) as run:
        for p in range(4):
            run.set_step(p)
            model(x, torch.full((4,), 4.0 - p))
            if p == 0:   # the full step recorded per-head value norms of every block: (B, H, N)
                assert [tuple(s.shape) for s in run.stats] == [(4, 4, 16)] * 3
    trace = model.feature_cache.last_trace
    assert (trace.actions[2, :, 1] == int(Action.PARTIAL)).all() and (trace.tokens[2, :, 1] == 4).all()


def test_missing_statistic_is_a_clear_error(model, x):
    cfg = _conservative("value_norm")
    model.feature_cache.config = cfg
    with model.feature_cache.session(3) as run:
        run.set_step(0)
        run.current.block(0).run("mlp", x, lambda t, s: t)
        run.set_step(1)
        with pytest.raises(RuntimeError, match="value_norm.*'attn'"):
            run.current.block(0).run("mlp", x, lambda t, s: t)


def test_attention_received_and_similarity_selectors_run(model, x):
    plain = _plain(model, x, 4)
    for selector in ("attention_received", "similarity"):
        model.feature_cache.config = _conservative(selector).replace(interval=2)
        outs = sample(model, x, 4, grid=GRID, cfg_halves=True)
        assert len(outs) == 4 and torch.isfinite(outs[-1]).all()
        # step 2 recomputes int(0.25 * 16) = 4 MLP tokens per row in every block, as with value norms
        trace = model.feature_cache.last_trace
        assert (trace.actions[2, :, 1] == int(Action.PARTIAL)).all() and (trace.tokens[2, :, 1] == 4).all()
        # the first step is full (the score may come from another attention kernel: equal up to rounding) ...
        assert torch.allclose(outs[0], plain[0], rtol=0, atol=1e-5)
        # ... the partial step reuses 12 of 16 tokens: a visible difference
        assert (outs[2] - plain[2]).abs().max() > 1e-3


def test_staleness_bonus_rotates_tokens(model, x):
    """With a large staleness weight a token waits at most ceil(N/k) partial steps."""
    cfg = CacheConfig(method="toca", interval=100, fresh_ratio=0.25, selector="value_norm", staleness_weight=50.0)
    model.feature_cache.config = cfg
    with model.feature_cache.session(5, grid=GRID) as run:
        run.set_step(0)
        model(x, torch.full((4,), 5.0))
        seen = torch.zeros(4, 16, dtype=torch.bool)
        for p in range(1, 5):
            run.set_step(p)
            before = run.modules[0]["mlp"].out.clone()
            model(x, torch.full((4,), 5.0 - p))
            seen |= (run.modules[0]["mlp"].counter == 0)
            del before
        assert seen.all()


def test_spatial_bonus_on_non_square_grid():
    score = torch.arange(15, dtype=torch.float).view(1, 15)                 # grid 3 x 5, cells 2 x 2
    out = sel.spatial_bonus(score, (3, 5), cell=2, bonus=0.5)
    winners = [6, 8, 9, 11, 13, 14]                                       # best token of each (partial) cell
    expected = score.clone()
    expected[0, winners] *= 1.5
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="grid 4x4"):
        sel.spatial_bonus(score, (4, 4), 2, 0.5)


def test_taylorseer_order_zero_equals_fora(model, x):
    model.feature_cache.config = CacheConfig(method="fora", interval=3)
    fora = sample(model, x, STEPS)
    model.feature_cache.config = CacheConfig(method="taylorseer", interval=3, taylor_order=0)
    taylor = sample(model, x, STEPS)
    assert all(torch.equal(a, b) for a, b in zip(fora, taylor, strict=True))


def test_taylorseer_order_one_is_exact_on_linear_features():
    from duca_common.cache.taylor import TaylorTerms
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    terms = TaylorTerms()
    for step in (0, 3):
        terms.update(a + b * step, step, order=1)
    for step in (4, 5, 7):
        assert torch.allclose(terms.forecast(step), a + b * step, atol=1e-6)
    # order 2 on a quadratic, from the last 3 computed features (Taylor with backward differences)
    terms = TaylorTerms()

    def f(s):
        return a + b * s + 0.5 * s * s

    for step in (0, 2, 4):
        terms.update(f(step), step, order=2)
    # d1 = backward difference slope, d2 = 1.0: forecast = f(4) + d1*dt + d2*dt^2/2
    d1 = (f(4) - f(2)) / 2
    assert torch.allclose(terms.forecast(5), f(4) + d1 + 0.5, atol=1e-5)


def test_no_state_leaks_across_runs(model, x):
    model.feature_cache.config = get_preset("dit-duca-n3-r95").config
    first = sample(model, x, STEPS, grid=GRID, cfg_halves=True)
    assert model.feature_cache.active is None
    # a new batch size, token count and step count never meet stale tensors
    x2 = torch.randn(2, 9, 32)
    sample(model, x2, 5, grid=(3, 3), cfg_halves=True)
    again = sample(model, x, STEPS, grid=GRID, cfg_halves=True)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_state_released_after_exception(model, x):
    model.feature_cache.config = get_preset("dit-duca-n3-r95").config
    with pytest.raises(KeyboardInterrupt):
        with model.feature_cache.session(STEPS, grid=GRID) as run:
            run.set_step(0)
            model(x, torch.full((4,), 9.0))
            held = run.nbytes()
            raise KeyboardInterrupt
    assert held > 0 and run.nbytes() == 0 and model.feature_cache.active is None
    clean = sample(model, x, STEPS, grid=GRID, cfg_halves=True)
    assert torch.isfinite(clean[-1]).all()


def test_shape_change_inside_a_session_is_an_error(model, x):
    model.feature_cache.config = CacheConfig(method="fora", interval=3)
    with model.feature_cache.session(3) as run:
        run.set_step(0)
        model(x, torch.full((4,), 3.0))
        run.set_step(1)
        with pytest.raises(ValueError, match="open a new session"):
            model(x[:2], torch.full((2,), 2.0))
        with pytest.raises(ValueError, match="outside this session's 3 steps"):
            run.set_step(3)


def test_odd_batch_with_cfg_halves_is_an_error(model, x):
    model.feature_cache.config = _conservative("random")
    with model.feature_cache.session(3, cfg_halves=True) as run:
        run.set_step(0)
        with pytest.raises(ValueError, match="two equal halves"):
            model(x[:3], torch.full((3,), 3.0))


def test_sessions_do_not_nest(model):
    with model.feature_cache.session(2):
        with pytest.raises(RuntimeError, match="already open"):
            with model.feature_cache.session(2):
                pass


def test_cache_bytes_and_trace(model, x, tmp_path):
    model.feature_cache.config = get_preset("dit-duca-n3-r95").config
    sample(model, x, STEPS, grid=GRID, cfg_halves=True)
    fc = model.feature_cache
    # attn + mlp outputs per block plus counters, stats and the trunk: at least the module outputs
    assert fc.last_peak_bytes >= 3 * 2 * x.numel() * 4
    text = fc.last_trace.table()
    assert "8:F/F" in text and "modules: attn/mlp" in text
    png = fc.last_trace.save_heatmap(tmp_path / "plan.png", title="duca")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("field,value,allowed", [
    ("method", "fast", "one of"),
    ("interval", 0, r"\[1, 1000\]"),
    ("fresh_ratio", 1.5, r"\[0, 1\]"),
    ("selector", "entropy", "one of"),
    ("interval_rule", "weekly", "one of"),
    ("plan_mode", "lazy", "one of"),
    ("taylor_order", -1, r"\[0, 8\]"),
    ("spatial_cell", 0, ">= 1"),
    ("staleness_weight", -0.1, ">= 0"),
])
def test_invalid_config_names_field_and_allowed_values(field, value, allowed):
    with pytest.raises(ValueError, match=rf"CacheConfig\.{field}=.*allowed .*{allowed}"):
        CacheConfig(**{field: value})


def test_invalid_module_cycles_and_schedule():
    with pytest.raises(ValueError, match="module_cycles"):
        CacheConfig(method="duca", interval_rule="module_cycles", module_cycles=(("mlp", "TFA"),))
    with pytest.raises(ValueError, match="RatioSchedule.kind"):
        RatioSchedule(kind="cosine")
    with pytest.raises(ValueError, match="unknown cache preset 'dit-magic'.*dit-duca-n3-r95"):
        get_preset("dit-magic")


def test_duca_runs_with_every_selector_and_is_close_to_uncached(model, x):
    plain = _plain(model, x)
    for selector in ("random", "value_norm", "attention_received", "similarity"):
        model.feature_cache.config = get_preset("dit-duca-n3-r95").config.replace(selector=selector)
        out = sample(model, x, STEPS, grid=GRID, cfg_halves=True)
        rel = (out[-1] - plain[-1]).norm() / plain[-1].norm()
        assert math.isfinite(rel.item()) and rel < 1.0


# ------------------------------------------------------------------ agreement with the reference (issue 12.1)

@pytest.mark.parametrize("tokens", [1, 2, 16, 127, 128, 256, 4096])
def test_fresh_ratio_half_gives_exactly_half_the_tokens(tokens):
    assert sel.fresh_token_count(0.5, tokens) == tokens // 2


def test_fresh_token_count_casts_the_ratio_to_float32_as_the_reference():
    # just below 1/4 in float64: float64 gives 31 of 128, the reference's float32 product 32
    r = 0.25 - 2.0 ** -55
    assert int(r * 128) == 31 and sel.fresh_token_count(r, 128) == 32
    for r in [i / 997 for i in range(998)] + [0.05 * 2.5 * f for f in (0.8, 1.1, 1.2)]:
        for n in (16, 128, 256, 1024):
            assert sel.fresh_token_count(r, n) == int(torch.tensor(r) * n), (r, n)   # the reference's expression


def test_ties_take_the_first_of_a_descending_argsort_not_topk():
    score = torch.tensor([[1.0, 2.0, 2.0, 1.0, 2.0, 0.0, 2.0], [0.0] * 7])
    idx = sel.top_k(score, 3)
    assert idx.tolist() == [[1, 2, 4], [0, 1, 2]]            # equal scores: the lower token index first (CPU)
    assert torch.topk(score, 3).indices.tolist() != idx.tolist()   # what the engine used to do differs


@pytest.mark.parametrize("fresh_ratio", [0.0, 0.05])        # r <= 0 in the plan; r > 0 but int(r * 16) == 0
def test_partial_step_with_zero_tokens_still_ages_every_token(model, x, fresh_ratio):
    model.feature_cache.config = CacheConfig(method="toca", interval=4, fresh_ratio=fresh_ratio,
                                             selector="value_norm")
    counters = []
    assert model.feature_cache.plan(4).table().split() == ["3", "F", "2", "T", "1", "T", "0", "F"]
    with model.feature_cache.session(4, grid=GRID, cfg_halves=True) as run:
        for p in range(4):
            run.set_step(p)
            model(x, torch.full((4,), 4.0 - p))
            counters.append([run.modules[b]["mlp"].counter.clone() for b in range(3)])
    # the reference: every conservative step adds 1 to all counters and k = 0 zeroes none; a full step resets
    for p, age in enumerate((0, 1, 2, 0)):
        assert all(torch.equal(c, torch.full((4, 16), age, dtype=torch.int32)) for c in counters[p])
    trace = model.feature_cache.last_trace
    assert (trace.actions[1:3, :, 1] == int(Action.REUSE)).all() and (trace.tokens[1:3, :, 1] == 0).all()


def _held_tensors(obj, seen=None) -> dict:
    """Every tensor reachable from a run's state (attributes, slots, lists, dicts), by id: what the cache holds."""
    seen = {} if seen is None else seen
    if isinstance(obj, torch.Tensor):
        seen[id(obj)] = obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _held_tensors(item, seen)
    elif isinstance(obj, dict):
        for item in obj.values():
            _held_tensors(item, seen)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("duca_common.cache"):
        for item in vars(obj).values():
            _held_tensors(item, seen)
    return seen


@pytest.mark.parametrize("cfg", [
    CacheConfig(method="taylorseer", interval=3, taylor_order=2),
    CacheConfig(method="foca", interval=3, taylor_order=2),
    CacheConfig(method="dualca", interval=3, fresh_ratio=0.25, selector="similarity"),
    CacheConfig(method="duca", interval=3, fresh_ratio=0.25, selector="value_norm"),
])
def test_peak_cache_bytes_include_the_last_steps_writes(model, x, cfg):
    """7 steps at N=3 counting down: full steps 6, 3, 0, so the last step adds a Taylor term (order 2)."""
    model.feature_cache.config = cfg
    with model.feature_cache.session(7, grid=GRID, cfg_halves=True) as run:
        held = []
        for p in range(7):
            run.set_step(p)
            model(x, torch.full((4,), 7.0 - p))
            state = {"modules": run.modules, "stats": run.stats, "trunk": run.trunk_out,
                     "trunk_state": run.trunk_state}
            held.append(sum(t.numel() * t.element_size() for t in _held_tensors(state).values()))
    assert model.feature_cache.last_peak_bytes == max(held) > 0
    if cfg.method in ("taylorseer", "foca"):
        assert held[-1] == max(held) > held[-2]          # the last step's writes are the peak


def test_tiny_transformer_runs_as_the_readme_example(capsys):
    """`python tests/tiny_transformer.py` (the README's runnable example) prints a DuCa trace and a speed-up."""
    import re

    import tiny_transformer

    tiny_transformer.main()
    out = capsys.readouterr().out
    assert out.startswith("modules: attn/mlp")
    assert "F/F" in out and "R/T" in out and "A " in out  # full, token-wise and aggressive steps all ran
    speedup = float(re.search(r"FLOPs speed-up ([0-9.]+)x", out).group(1))
    assert 2.0 < speedup < 3.0
