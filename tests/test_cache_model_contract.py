"""One model-side contract (duca_common.cache.SupportsCache) for the three stacks: configure the cache, open a
session, expose the layout; the benchmark targets use it without hasattr or monkeypatching."""

import pytest

from dit_duca.models import DiT
from duca_common.cache import CacheConfig, CachedModel, SupportsCache, get_preset
from opensora_tiny import tiny_stdit3
from pixart_tiny import tiny_model


def _models():
    return {"dit": DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4,
                       num_classes=10),
            "pixart": tiny_model(),
            "opensora": tiny_stdit3()}


@pytest.mark.parametrize("name", ["dit", "pixart", "opensora"])
def test_every_stack_implements_the_contract(name):
    model = _models()[name]
    assert isinstance(model, CachedModel) and isinstance(model, SupportsCache)
    layout = model.cache_layout
    assert layout is model.feature_cache.layout and layout.depth >= 2
    config = get_preset("dit-fora-n3").config
    model.configure_cache(config)
    assert model.feature_cache.config == config and model.cache_layout == layout   # same layout, new engine
    with model.cache_session(4) as run:
        assert model.feature_cache.active is run and run.plan.num_steps == 4 and not run.profile
        with pytest.raises(RuntimeError, match="while a sampling session is open"):
            model.configure_cache(CacheConfig())
    with model.feature_cache.profiling(), model.cache_session(2) as run:
        assert run.profile                   # a sampler that opens its own session is profiled from outside
    assert model.feature_cache.active is None and not model.feature_cache.profile_sessions
