"""The method registry: built-in methods, and a method registered from outside the package running on the
tiny transformer without any change to the engine."""

import pytest
import torch

from duca_common.cache import (
    Action,
    CacheConfig,
    CacheMethod,
    available_methods,
    build_plan,
    get_method,
    register_method,
    unregister_method,
)
from tiny_transformer import TinyTransformer, sample

STEPS = 7
GRID = (4, 4)


class ScaledReuse(CacheMethod):
    """A toy method: FORA's plan, but a reused module returns its last output times the parameter ``scale``."""

    name = "scaled_reuse"
    params = {"scale": 0.5}

    def non_full_letter(self, r: int) -> str:
        return "R"

    def reuse(self, state, p, config):
        return None if state.out is None else state.out * config.param("scale")


@pytest.fixture()
def toy():
    register_method(ScaledReuse())
    yield
    unregister_method("scaled_reuse")


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return TinyTransformer(depth=3, dim=32, heads=4).eval()


@pytest.fixture()
def x():
    torch.manual_seed(1)
    return torch.randn(4, GRID[0] * GRID[1], 32)


def test_builtin_methods_are_registered_in_order():
    assert available_methods()[:5] == ("none", "fora", "toca", "duca", "taylorseer")
    assert {"foca", "hicache", "dualca"} <= set(available_methods())
    assert get_method("duca").module_cycles and not get_method("fora").module_cycles


def test_outside_method_runs_on_the_tiny_transformer(toy, model, x):
    assert "scaled_reuse" in available_methods()
    layout = model.feature_cache.layout
    fora_cfg = CacheConfig(method="fora", interval=3)
    cfg = CacheConfig(method="scaled_reuse", interval=3)
    assert build_plan(cfg, layout, STEPS).actions == build_plan(fora_cfg, layout, STEPS).actions
    model.feature_cache.config = fora_cfg
    fora = sample(model, x, STEPS, grid=GRID)
    model.feature_cache.config = cfg.replace(params=(("scale", 1.0),))
    same = sample(model, x, STEPS, grid=GRID)
    assert all(torch.equal(a, b) for a, b in zip(fora, same, strict=True))          # scale 1 is FORA, bit for bit
    model.feature_cache.config = cfg                                    # the declared default, 0.5
    half = sample(model, x, STEPS, grid=GRID)
    trace = model.feature_cache.last_trace
    assert (trace.actions[1] == int(Action.REUSE)).all()
    assert torch.equal(half[0], fora[0]) and not torch.equal(half[1], fora[1])
    assert model.feature_cache.last_peak_bytes > 0


def test_registry_errors_name_the_problem(toy):
    with pytest.raises(ValueError, match="already registered"):
        register_method(ScaledReuse())
    with pytest.raises(ValueError, match="params"):
        CacheConfig(method="scaled_reuse", params=(("scael", 1.0),))
    with pytest.raises(KeyError, match="has no parameter 'nope'"):
        CacheConfig(method="scaled_reuse").param("nope")
    with pytest.raises(ValueError, match="module_cycles"):
        CacheConfig(method="scaled_reuse", interval_rule="module_cycles", module_cycles=(("mlp", "FT"),))

    class NoRule(CacheMethod):
        name = "no_rule"

    class BadLetter(ScaledReuse):
        name = "bad_letter"

        def non_full_letter(self, r):
            return "X"

    with pytest.raises(ValueError, match="non_full_letter"):
        register_method(NoRule())
    with pytest.raises(ValueError, match="non_full_letter must return one of"):
        register_method(BadLetter())
    with pytest.raises(TypeError, match="CacheMethod instance"):
        register_method(ScaledReuse)


def test_unknown_method_names_the_registry():
    with pytest.raises(ValueError, match="CacheConfig.method='scaled_reuse' is invalid"):
        CacheConfig(method="scaled_reuse")
