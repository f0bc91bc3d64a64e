"""Issue 16's forecasting methods: foca (forecast then calibrate), hicache (Hermite basis), dualca (DuCa +
forecasts). Their forecasters on hand-made trajectories, and the methods end to end on the tiny transformer."""

import math

import pytest
import torch

from duca_common.cache import Action, CacheConfig, get_preset
from duca_common.cache.accounting import TransformerDims, reference_flops
from duca_common.cache.foca import GAIN_RANGE, CalibratedTerms
from duca_common.cache.hicache import HERMITE_SCALE, HermiteTerms, hermite_coefficient, hermite_he
from duca_common.cache.taylor import TaylorTerms
from tiny_transformer import TinyTransformer, sample

STEPS = 12
GRID = (4, 4)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return TinyTransformer(depth=3, dim=32, heads=4).eval()


@pytest.fixture()
def x():
    torch.manual_seed(1)
    return torch.randn(4, GRID[0] * GRID[1], 32)


def test_hermite_polynomials_and_their_taylor_limit():
    assert [hermite_he(n, 2.0) for n in range(5)] == [1.0, 2.0, 3.0, 2.0, -5.0]   # 1, x, x^2-1, x^3-3x, x^4-6x^2+3
    with pytest.raises(ValueError, match="order"):
        hermite_he(-1, 0.0)
    # He_i(s dt) / (s^i i!) -> dt^i / i! as s grows: TaylorSeer is the large-scale limit.
    assert hermite_coefficient(2, 3.0, scale=1e4) == pytest.approx(9.0 / 2, rel=1e-6)
    assert hermite_coefficient(2, 3.0) == pytest.approx((9.0 - 1.0 / HERMITE_SCALE ** 2) / 2)


def test_hermite_forecast_damps_the_curvature_term_only():
    a, b = torch.randn(3, 5), torch.randn(3, 5)

    def f(s):                                               # d2 = 1 with backward differences
        return a + b * s + 0.5 * s * s

    taylor, hermite = TaylorTerms(), HermiteTerms()
    for step in (0, 2, 4):
        taylor.update(f(step), step, order=2)
        hermite.update(f(step), step, order=2)
    for step in (5, 7):
        # same finite differences; the order-2 weight is (dt^2 - 1/s^2)/2 instead of dt^2/2
        assert torch.allclose(hermite.forecast(step), taylor.forecast(step) - 0.5 / HERMITE_SCALE ** 2, atol=1e-5)
    linear = HermiteTerms()
    for step in (0, 3):
        linear.update(a + b * step, step, order=1)       # order 1: He_1(x) = x, exactly TaylorSeer
    assert torch.allclose(linear.forecast(5), a + b * 5, atol=1e-6)


def test_foca_gain_calibrates_the_forecast_increment():
    y0 = torch.zeros(2, 3)
    terms = CalibratedTerms()
    terms.update(y0, 0, order=1)
    terms.update(y0 + 3.0, 3, order=1)                   # slope 1 per step
    assert terms.gain is None and torch.allclose(terms.forecast(4), y0 + 4.0)   # no measurement yet: Taylor
    terms.update(y0 + 4.5, 6, order=1)                   # forecast said +3, +1.5 happened: gain 0.5
    assert torch.allclose(terms.gain, torch.full((2, 1), 0.5))
    # new slope (4.5 - 3) / 3 = 0.5; one step later: 4.5 + 0.5 * 0.5
    assert torch.allclose(terms.forecast(7), y0 + 4.75)
    terms.update(y0 + 0.0, 9, order=1)                   # the opposite direction: gain clamped at the floor
    assert torch.allclose(terms.gain, torch.full((2, 1), GAIN_RANGE[0]))
    assert torch.allclose(terms.forecast(10), y0)        # gain 0: plain reuse of the last computation


def test_foca_is_exact_on_linear_trajectories():
    a, b = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    terms = CalibratedTerms()
    for step in (0, 3, 6, 9):
        terms.update(a + b * step, step, order=2)
    assert torch.allclose(terms.gain, torch.ones(2, 1, 1), atol=1e-5)
    assert torch.allclose(terms.forecast(11), a + b * 11, atol=1e-4)


@pytest.mark.parametrize("method", ["foca", "hicache"])
def test_forecast_methods_run_taylorseers_plan_and_differ_from_it(model, x, method):
    model.feature_cache.config = CacheConfig(method="taylorseer", interval=3, taylor_order=2)
    taylor = sample(model, x, STEPS)
    taylor_trace = model.feature_cache.last_trace
    model.feature_cache.config = CacheConfig(method=method, interval=3, taylor_order=2)
    ours = sample(model, x, STEPS)
    trace = model.feature_cache.last_trace
    assert (trace.actions == taylor_trace.actions).all()          # same plan, same FLOPs
    assert (trace.actions == int(Action.FORECAST)).sum() > 0
    assert torch.equal(ours[0], taylor[0])                       # the full first step is the model's
    assert not torch.allclose(ours[-1], taylor[-1])              # the forecasts are not TaylorSeer's
    assert all(torch.isfinite(o).all() for o in ours)


def test_dualca_keeps_ducas_plan_and_flops_and_forecasts_what_duca_reuses(model, x):
    duca_cfg = get_preset("dit-duca-n3-r95").config.replace(interval_rule="fixed")
    model.feature_cache.config = duca_cfg
    duca = sample(model, x, STEPS, grid=GRID, cfg_halves=True)
    duca_trace = model.feature_cache.last_trace
    model.feature_cache.config = duca_cfg.replace(method="dualca", taylor_order=1)
    dual = sample(model, x, STEPS, grid=GRID, cfg_halves=True)
    trace = model.feature_cache.last_trace
    reused = duca_trace.actions == int(Action.REUSE)
    assert reused.any() and (trace.actions[reused] == int(Action.FORECAST)).all()
    assert (trace.actions[~reused] == duca_trace.actions[~reused]).all()
    assert trace.trunk_reused == duca_trace.trunk_reused and any(trace.trunk_reused)
    dims = TransformerDims(batch=4, tokens=16, hidden=32, heads=4)
    assert reference_flops(trace, dims) == reference_flops(duca_trace, dims)
    a_steps = [p for p, r in enumerate(trace.trunk_reused) if r]
    p = a_steps[0]
    # DuCa hands the sampler the previous step's output in an aggressive step; dualca a forecast of it.
    assert torch.equal(duca[p], duca[p - 1]) and not torch.equal(dual[p], dual[p - 1])
    assert model.feature_cache.last_peak_bytes > 0


def test_dualca_trunk_forecast_is_exact_on_a_linear_trunk():
    from duca_common.cache.dualca import TrunkForecast

    a, b = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    trunk = TrunkForecast()
    for step in (0, 1):
        trunk.observe(a + b * step, step, order=1)
    assert torch.allclose(trunk.forecast(2), a + b * 2, atol=1e-6) and len(trunk.tensors()) == 2


@pytest.mark.parametrize("name, method, interval", [("dit-foca-n5-o2", "foca", 5), ("dit-hicache-n5-o2", "hicache", 5),
                                                    ("dit-dualca-n5-r95", "dualca", 5)])
def test_presets_and_method_strings(name, method, interval):
    from duca_scripts.methods import parse_method

    cfg = get_preset(name).config
    assert (cfg.method, cfg.interval) == (method, interval)
    spec = parse_method(f"{method}:n=4")
    assert spec.config.method == method and spec.config.interval == 4
    if method == "dualca":      # DuCa's DiT rules and selector underneath
        assert spec.config.interval_rule == "dit" and spec.config.selector == "value_norm"
        assert spec.config.fresh_ratio == pytest.approx(0.05) and spec.config.taylor_order == 1
    else:
        assert spec.config.taylor_order == 2 and parse_method(f"{method}:n=4,o=3").config.taylor_order == 3
    assert math.isfinite(spec.config.staleness_weight)
