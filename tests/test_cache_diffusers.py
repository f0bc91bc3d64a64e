"""The cache engine attached from outside to diffusers' DiT and PixArt-alpha (duca_common.cache.adapters.diffusers).

(a) caching off -> bit-identical to the plain pipeline; (b) the same weights through our DiT / PixArt and through
the diffusers transformer with the same preset give the same latents and the same trace; (c) remove_cache
restores the plain forward bit for bit; (d) an exception inside a pipeline call releases the state.
Tiny random models built from configs, no hub."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DiTPipeline

from diffusers_tiny import (
    diffusers_dit,
    diffusers_pixart,
    dit_ddim_scheduler,
    dit_pipeline,
    pixart_pipeline,
    tiny_dit,
)
from dit_duca.diffusion import create_diffusion
from duca_common.cache import Action, CacheConfig, get_preset, presets_for
from duca_common.cache.adapters.diffusers import (
    HANDLE_ATTRIBUTE,
    apply_cache,
    cache_of,
    dit_layout,
    pixart_layout,
    remove_cache,
)
from duca_common.layers import pack_caption
from pixart_tiny import T5_DIM, TINY, TINY_MS
from pixart_tiny import tiny_model as tiny_pixart

# Two float32 implementations of the same network (same weights, different GEMM groupings), run through a whole
# cached sampling loop: the traces agree exactly and the latents to this bound relative to their largest magnitude.
# Relative because CFG amplifies the tiny random models' latents (the PixArt loop ends at |x| ~ 170), and the float32
# rounding of the two GEMM groupings depends on the CPU's BLAS kernels: an absolute 1e-5 held on one CI machine and
# failed on an AVX-512 AMD EPYC one at 1.2e-4 (7e-7 of the latents' scale). float32 resolves ~1.2e-7 relative.
LOOP_RTOL = 1e-5


def assert_same_latents(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = theirs.abs().max().item()
    err = (ours - theirs).abs().max().item()
    assert err <= LOOP_RTOL * scale, f"max |ours - theirs| = {err:.3g} at latents' scale {scale:.3g}"
DIT_STEPS = 12          # enough for full, conservative and aggressive steps under the DiT rule (N=3)
PIXART_STEPS = 9


def dit_call(pipe: DiTPipeline, steps: int = 6) -> torch.Tensor:
    return pipe(class_labels=[1, 7], num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                output_type="pt").images


def assert_plain(pipe) -> None:
    """Nothing of the adapter is left on the pipeline."""
    assert type(pipe) is DiTPipeline or not hasattr(type(pipe), "_duca_original_class")
    assert not hasattr(pipe.transformer, HANDLE_ATTRIBUTE)
    assert all("forward" not in b.__dict__ for b in pipe.transformer.transformer_blocks)
    assert not pipe.transformer._forward_pre_hooks


# ------------------------------------------------------------------------------------------------ (a), (c), (d)

def test_dit_pipeline_cache_off_on_and_removed():
    pipe = dit_pipeline()
    plain = dit_call(pipe)
    handle = apply_cache(pipe, config=CacheConfig(method="none"))
    assert isinstance(pipe, DiTPipeline) and type(pipe).__name__ == "DiTPipeline"
    assert torch.equal(dit_call(pipe), plain)                                    # (a) bit for bit
    trace = handle.feature_cache.last_trace
    assert trace.num_steps == 6 and (trace.actions == int(Action.FULL)).all()    # the session ran, every step
    assert handle.feature_cache.active is None

    handle = apply_cache(pipe, preset="dit-duca-n3-r95")                         # replaces the configuration
    assert cache_of(pipe) is handle
    cached = dit_call(pipe, steps=DIT_STEPS)
    trace = handle.feature_cache.last_trace
    assert {int(Action.PARTIAL), int(Action.REUSE)} <= set(np.unique(trace.actions).tolist())
    assert any(trace.trunk_reused)                                               # aggressive steps ran
    assert not torch.equal(cached, dit_call_plain(pipe, DIT_STEPS))

    # without guidance (guidance_scale <= 1) the batch is one half: the session has no CFG halves
    handle = apply_cache(pipe, preset="dit-duca-n3-random", profile=True)
    seen = []
    spy = pipe.transformer.register_forward_hook(lambda *_: seen.append(handle.feature_cache.active.cfg_halves))
    pipe(class_labels=[1, 7], num_inference_steps=DIT_STEPS, guidance_scale=1.0, output_type="pt")
    dit_call(pipe)
    spy.remove()
    assert seen == [False] * DIT_STEPS + [True] * 6
    assert (handle.feature_cache.last_trace.actions == int(Action.PARTIAL)).any()
    assert handle.feature_cache.last_timers.total() > 0 and handle.feature_cache.last_peak_bytes > 0

    remove_cache(pipe)                                                           # (c)
    assert_plain(pipe)
    assert type(pipe) is DiTPipeline
    assert torch.equal(dit_call(pipe), plain)
    remove_cache(pipe)                                                           # a no-op when not applied


def dit_call_plain(pipe, steps: int) -> torch.Tensor:
    """The same call with the cache detached for its duration."""
    handle = cache_of(pipe)
    config = handle.config
    remove_cache(pipe)
    try:
        return dit_call(pipe, steps)
    finally:
        apply_cache(pipe, config=config)


def test_exception_inside_the_pipeline_call_releases_the_state(monkeypatch):
    pipe = dit_pipeline()
    handle = apply_cache(pipe, preset="dit-fora-n3")
    expected = dit_call(pipe)
    original_step = pipe.scheduler.step
    calls = {"n": 0}

    def failing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom in step 3")
        return original_step(*args, **kwargs)

    monkeypatch.setattr(pipe.scheduler, "step", failing_step)
    with pytest.raises(RuntimeError, match="boom in step 3"):
        dit_call(pipe)
    assert handle.feature_cache.active is None and handle._lazy is None          # (d) released
    assert handle.feature_cache.last_trace.num_steps == 6
    assert (handle.feature_cache.last_trace.actions[3:] == -1).all()             # steps never run
    monkeypatch.setattr(pipe.scheduler, "step", original_step)
    assert torch.equal(dit_call(pipe), expected)                                 # no state leaked into the next call


def test_bad_uses_fail_clearly():
    pipe = dit_pipeline()
    with pytest.raises(ValueError, match="preset 'pixart-duca-r25' is for pixart models"):
        apply_cache(pipe, preset="pixart-duca-r25")
    with pytest.raises(ValueError, match="exactly one of preset"):
        apply_cache(pipe, preset="dit-fora-n3", config=CacheConfig(method="fora"))
    with pytest.raises(ValueError, match="exactly one of preset"):
        apply_cache(pipe)
    with pytest.raises(TypeError, match="takes a diffusers pipeline"):
        apply_cache(torch.nn.Linear(2, 2), preset="dit-fora-n3")
    with pytest.raises(ValueError, match="unknown cache preset"):
        apply_cache(pipe, preset="dit-nothing")
    assert_plain(pipe)                                                           # nothing half-applied
    handle = apply_cache(pipe.transformer, preset="dit-fora-n3")
    with handle.session(4, cfg_halves=False):
        with pytest.raises(RuntimeError, match="while a sampling session is open"):
            remove_cache(pipe.transformer)
        with pytest.raises(RuntimeError, match="transformer call 5 in a cache session of 4 steps"):
            for _ in range(5):
                pipe.transformer(torch.randn(1, 4, 8, 8), timestep=torch.tensor([10]), class_labels=torch.tensor([1]))
    remove_cache(pipe.transformer)
    assert_plain(pipe)


# ------------------------------------------------------------------------------------------------ (b) DiT

# every DiT preset (new engine methods are covered as they are added); their selectors span value norm
# (SDPA kept), attention received, random
DIT_CONFIGS = {p.name: p.config for p in presets_for("dit")}


def sample_ours_dit(model, z, y, steps):
    zz = torch.cat([z, z])
    return create_diffusion(str(steps)).ddim_sample_loop(
        model.forward_with_cfg, zz.shape, noise=zz, model_kwargs=dict(y=y, cfg_scale=4.0),
        feature_cache=model.feature_cache, grid=model.grid_size, cfg_halves=True)


def sample_diffusers_dit(transformer, handle, cfg_channels, z, y, steps):
    """Our DDIM loop and CFG rule, the network being the diffusers transformer with the cache attached."""

    def forward_with_cfg(x, t, y, cfg_scale):
        half = x[: len(x) // 2]
        out = transformer(torch.cat([half, half]), timestep=t, class_labels=y).sample
        eps, rest = out[:, :cfg_channels], out[:, cfg_channels:]
        cond, uncond = eps.chunk(2)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided]), rest], dim=1)

    zz = torch.cat([z, z])
    with handle.session(steps, cfg_halves=True):
        return create_diffusion(str(steps)).ddim_sample_loop(forward_with_cfg, zz.shape, noise=zz,
                                                             model_kwargs=dict(y=y, cfg_scale=4.0))


@pytest.mark.parametrize("name", list(DIT_CONFIGS))
def test_dit_same_latents_and_trace_as_our_dit(name):
    model = tiny_dit(depth=4)
    transformer = diffusers_dit(model)
    config = DIT_CONFIGS[name]
    model.configure_cache(config)
    handle = apply_cache(transformer, config=config)
    assert handle.feature_cache.layout == model.feature_cache.layout == dit_layout(4)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([1, 7, 10, 10])
    with torch.no_grad():
        ours = sample_ours_dit(model, z, y, DIT_STEPS)
        theirs = sample_diffusers_dit(transformer, handle, model.cfg_channels, z, y, DIT_STEPS)
    ours_trace, their_trace = model.feature_cache.last_trace, handle.feature_cache.last_trace
    assert np.array_equal(ours_trace.actions, their_trace.actions)
    assert np.array_equal(ours_trace.tokens, their_trace.tokens)
    assert ours_trace.trunk_reused == their_trace.trunk_reused
    assert_same_latents(ours, theirs)
    if config.method in ("toca", "duca"):
        assert (ours_trace.actions == int(Action.PARTIAL)).any()


# ------------------------------------------------------------------------------------------------ (b) PixArt

PIXART_CONFIGS = {**{p.name: p.config for p in presets_for("pixart")},
                  "pixart-duca-value-norm": get_preset("pixart-duca-r25").config.replace(selector="value_norm"),
                  "pixart-taylorseer": CacheConfig(method="taylorseer", interval=3, taylor_order=2)}


def pixart_inputs():
    g = torch.Generator().manual_seed(5)
    tokens = torch.randn(2, 12, T5_DIM, generator=g)                            # [uncond, cond] as diffusers
    mask = (torch.arange(12) < torch.tensor([[4], [9]])).float()
    return torch.randn(1, 4, 8, 8, generator=g), tokens, mask


def sample_pixart(step_fn, steps):
    """diffusers' DDIM loop with CFG 4.5 on [uncond, cond]; ``step_fn(x2, t2)`` is the network."""
    sch = dit_ddim_scheduler()
    sch.set_timesteps(steps)
    x = pixart_inputs()[0]
    for t in sch.timesteps:
        out = step_fn(torch.cat([x, x]), t.expand(2).float())
        uncond, cond = out[:, :4].chunk(2)
        x = sch.step(uncond + 4.5 * (cond - uncond), t, x).prev_sample
    return x


@pytest.mark.parametrize("name", [*PIXART_CONFIGS, "pixart-duca-r25-ms"])
def test_pixart_same_latents_and_trace_as_our_pixart(name):
    multi_scale = name.endswith("-ms")                   # the 1024-MS-style model with micro-conditions
    model = tiny_pixart(TINY_MS if multi_scale else TINY)
    transformer = diffusers_pixart(model)
    config = PIXART_CONFIGS[name.removesuffix("-ms")]
    hw, ar = torch.tensor([[64.0, 64.0]] * 2), torch.tensor([[1.0]] * 2)
    ours_kw = dict(img_hw=hw, aspect_ratio=ar) if multi_scale else {}
    added = {"resolution": hw, "aspect_ratio": ar} if multi_scale else None
    model.feature_cache = type(model.feature_cache)(config, model.feature_cache.layout)
    handle = apply_cache(transformer, config=config)
    assert handle.feature_cache.layout == model.feature_cache.layout == pixart_layout(TINY.depth)
    _, tokens, mask = pixart_inputs()
    caption = pack_caption(tokens, mask)
    grid = (model.config.base_size, model.config.base_size)
    with torch.no_grad():
        with model.feature_cache.session(PIXART_STEPS, grid=grid, cfg_halves=True) as run:
            counter = iter(range(PIXART_STEPS))

            def ours_step(x2, t2):
                run.set_step(next(counter))
                return model(x2, t2, caption, **ours_kw)

            ours = sample_pixart(ours_step, PIXART_STEPS)
        with handle.session(PIXART_STEPS, cfg_halves=True, grid=grid):
            theirs = sample_pixart(lambda x2, t2: transformer(x2, encoder_hidden_states=tokens,
                                                              encoder_attention_mask=mask, timestep=t2,
                                                              added_cond_kwargs=added).sample,
                                   PIXART_STEPS)
    ours_trace, their_trace = model.feature_cache.last_trace, handle.feature_cache.last_trace
    assert np.array_equal(ours_trace.actions, their_trace.actions)
    assert np.array_equal(ours_trace.tokens, their_trace.tokens)
    assert_same_latents(ours, theirs)
    if config.method in ("toca", "duca"):
        assert (ours_trace.actions == int(Action.PARTIAL)).any()


def test_pixart_alpha_pipeline_path():
    """The pipeline call opens and closes the session itself (steps from the scheduler, CFG from guidance_scale)."""
    transformer = diffusers_pixart(tiny_pixart(TINY))
    pipe = pixart_pipeline(transformer)
    _, tokens, mask = pixart_inputs()

    def call():
        return pipe(prompt=None, negative_prompt=None, prompt_embeds=tokens[1:], prompt_attention_mask=mask[1:],
                    negative_prompt_embeds=tokens[:1], negative_prompt_attention_mask=mask[:1],
                    num_inference_steps=PIXART_STEPS, guidance_scale=4.5, height=64, width=64,
                    generator=torch.Generator().manual_seed(0), output_type="latent", use_resolution_binning=False
                    ).images

    plain = call()
    handle = apply_cache(pipe, config=CacheConfig(method="none"))
    assert torch.equal(call(), plain)                                            # (a)
    handle = apply_cache(pipe, preset="pixart-duca-r25")
    cached = call()
    trace = handle.feature_cache.last_trace
    assert trace.num_steps == PIXART_STEPS and (trace.actions == int(Action.PARTIAL)).any()
    assert handle.feature_cache.active is None
    assert 0 < (cached - plain).abs().max().item() < 0.1 * plain.abs().max().item()   # close, not equal
    remove_cache(pipe)                                                           # (c)
    assert not hasattr(type(pipe), "_duca_original_class")
    assert torch.equal(call(), plain)


# ------------------------------------------------------------------------------------------------ the README example

def test_readme_example_script_runs_offline(capsys):
    from duca_scripts import diffusers_example

    rows = diffusers_example.main(["--steps", "4"])
    out = capsys.readouterr().out
    assert out.count("plain result restored bit for bit: True") == 2
    for family, none in (("dit", "dit-none"), ("pixart", "pixart-none")):
        assert rows[family][none] == (0.0, 1.0)                                  # caching off: identical
        cached = {k: v for k, v in rows[family].items() if k != none}
        assert cached and all(diff > 0 and computed < 1.0 for diff, computed in cached.values())
    with pytest.raises(SystemExit):
        diffusers_example.main(["--dit-preset", "pixart-duca-r25"])
    assert "is not a dit preset" in capsys.readouterr().err
