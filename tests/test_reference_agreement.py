"""The project against golden outputs of the reference DuCa code (tests/fixtures/reference/).

The fixtures were produced by ``python -m duca_scripts.make_reference_fixtures --reference <DuCa checkout>``
on tiny models with seeded random weights (``duca_scripts.reference_fixtures``); here the same weights go
into our models, which run the same settings. Decisions (action per step x block x module, tokens
computed, trunk reuse) and the recomputed token sets must be identical; final latents agree to
``LATENT_RTOL`` relative (max |ours - ref| / max |ref|).
"""

from __future__ import annotations

import pytest
import torch

from dit_duca.diffusion import create_diffusion
from dit_duca.models import DiT
from duca_common.cache import get_preset
from duca_scripts import reference_fixtures as rf
from reference_runs import (
    first_difference,
    first_selection_difference,
    record_selections,
    relative_difference,
    trace_arrays,
    unpack,
)

# ------------------------------------------------------------------------------------------------ DiT

@pytest.fixture(scope="module")
def dit_fixture():
    meta, arrays = rf.load_fixture("dit")
    geo = rf.DiTGeometry(**meta["geometry"])
    model = DiT(input_size=geo.input_size, patch_size=geo.patch_size, in_channels=geo.in_channels,
                hidden_size=geo.hidden_size, depth=geo.depth, num_heads=geo.num_heads, mlp_ratio=geo.mlp_ratio,
                num_classes=geo.num_classes).eval()
    state = rf.seeded_weights(model, meta["weights_seed"])
    assert rf.checksum(state) == pytest.approx(meta["weights_checksum"], rel=1e-12), "seeded_weights drifted"
    model.load_state_dict(state, strict=True)
    return meta, arrays, geo, model


def run_dit(model: DiT, geo: rf.DiTGeometry, meta: dict, preset: str):
    model.configure_cache(get_preset(preset).config)
    z = rf.dit_noise(geo)
    kwargs = dict(y=rf.dit_labels(geo), cfg_scale=meta["cfg_scale"])
    with record_selections() as found:
        out = create_diffusion(str(meta["steps"])).sample_loop(
            model.forward_with_cfg, z.shape, noise=z, model_kwargs=kwargs, ddim=True, clip_denoised=False,
            feature_cache=model.feature_cache, grid=model.grid_size, cfg_halves=True)
    return out, model.feature_cache.last_trace, found


def compare(case: str, arrays: dict, out, trace, found, modules) -> dict:
    """Every difference between our run and the reference's, in words; and the latents' relative difference."""
    actions, tokens, trunk = trace_arrays(trace)
    problems = [first_difference(actions, arrays[f"{case}/actions"], "actions"),
                first_difference(tokens, arrays[f"{case}/tokens"], "tokens"),
                first_difference(trunk, arrays[f"{case}/trunk_reused"], "trunk reuse")]
    ref = unpack(arrays[f"{case}/indices"], arrays[f"{case}/actions"], arrays[f"{case}/tokens"], modules)
    problems.append(first_selection_difference(found, ref))
    return {"problems": [p for p in problems if p], "latents": relative_difference(out, arrays[f"{case}/latents"])}


@pytest.mark.parametrize("case", [c.name for c in rf.DIT_CASES])
def test_dit_28_blocks_matches_reference(dit_fixture, case):
    meta, arrays, geo, model = dit_fixture
    preset = next(c["preset"] for c in meta["cases"] if c["name"] == case)
    out, trace, found = run_dit(model, geo, meta, preset)
    result = compare(case, arrays, out, trace, found, ("attn", "mlp"))
    assert result["problems"] == []
    assert result["latents"] <= rf.LATENT_RTOL, result["latents"]


# ------------------------------------------------------------------------------------------------ PixArt

@pytest.fixture(scope="module")
def pixart_fixture():
    from pixart_duca.model import PixArt, PixArtConfig

    meta, arrays = rf.load_fixture("pixart")
    geo = rf.PixArtGeometry(**meta["geometry"])
    model = PixArt(PixArtConfig(input_size=geo.input_size, hidden_size=geo.hidden_size, depth=geo.depth,
                                num_heads=geo.num_heads, caption_channels=geo.caption_channels,
                                text_tokens=geo.text_tokens)).eval()
    state = rf.seeded_weights(model, meta["weights_seed"], gain=tuple(map(tuple, meta["weights_gain"])))
    assert rf.checksum(state) == pytest.approx(meta["weights_checksum"], rel=1e-12), "seeded_weights drifted"
    model.load_state_dict(state, strict=True)
    return meta, arrays, geo, model


def run_pixart(model, geo: rf.PixArtGeometry, meta: dict, preset: str):
    from duca_common.text import TextEmbedding
    from pixart_duca.pipeline import cfg_caption, sample

    model.configure_cache(get_preset(preset).config)
    z, caption, mask = rf.pixart_inputs(geo)
    with record_selections() as found:
        out = sample(model, z, cfg_caption(model, TextEmbedding(caption, mask)), num_steps=meta["steps"],
                     cfg_scale=meta["cfg_scale"])
    return out, model.feature_cache.last_trace, found


@pytest.mark.parametrize("case", [c.name for c in rf.PIXART_CASES])
def test_pixart_28_blocks_matches_reference(pixart_fixture, case):
    meta, arrays, geo, model = pixart_fixture
    preset = next(c["preset"] for c in meta["cases"] if c["name"] == case)
    out, trace, found = run_pixart(model, geo, meta, preset)
    result = compare(case, arrays, out, trace, found, ("attn", "cross_attn", "mlp"))
    assert result["problems"] == []
    assert result["latents"] <= rf.PIXART_LATENT_RTOL, result["latents"]


# ------------------------------------------------------------------------------------------------ depth

def test_depth_general_where_the_reference_is_28_only():
    """The reference hard-codes 28 blocks: its ratio schedule divides the layer by 27 and its trunk reuse is
    keyed on block 27. Ours uses layer / (depth - 1) and the last block, which is the reference's rule at
    depth 28 (held by the fixtures above) and stays meaningful at any depth."""
    from dit_duca.models import dit_block_layout
    from duca_common.cache import DIT_TOCA_SCHEDULE, build_plan

    cfg = get_preset("dit-duca-n3-r95").config
    plans = {d: build_plan(cfg, dit_block_layout(d), 25) for d in (12, 28)}
    assert plans[12].trunk_reused == plans[28].trunk_reused        # the trunk is the last block's output
    p = next(i for i in range(25) if plans[12].block_types[i][-1] == "T" and plans[12].ratios[i][-1][1] > 0)
    s = 25 - 1 - p
    for depth, plan in plans.items():
        last = DIT_TOCA_SCHEDULE.ratio(cfg.fresh_ratio, s, 25, depth - 1, depth, "mlp")
        assert plan.ratios[p][depth - 1][1] == pytest.approx(last)
        # the last block gets the reference's layer-27 factor, 0.8 + 0.4 * 27/27 = 1.2
        assert last == pytest.approx(cfg.fresh_ratio * 1.2 * (3 - 4 * s / 25) * 2.5)


# ------------------------------------------------------------------------------------------------ OpenSora

@pytest.fixture(scope="module")
def opensora_fixture():
    from opensora_duca.stdit3 import STDiT3, STDiT3Config

    meta, arrays = rf.load_fixture("opensora")
    geo = rf.OpenSoraGeometry(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["geometry"].items()})
    model = STDiT3(STDiT3Config(hidden_size=geo.hidden_size, depth=geo.depth, num_heads=geo.num_heads,
                                caption_channels=geo.caption_channels, model_max_length=geo.text_tokens,
                                input_sq_size=geo.pixels)).eval()
    state = rf.seeded_weights(model, meta["weights_seed"], skip=("rope.freqs",))
    assert rf.checksum(state) == pytest.approx(meta["weights_checksum"], rel=1e-12), "seeded_weights drifted"
    model.load_state_dict(state, strict=True)
    return meta, arrays, geo, model


def opensora_config(method: str):
    from dataclasses import replace

    from duca_common.cache import CacheConfig

    duca = get_preset("opensora-duca").config
    return CacheConfig(method="none") if method == "none" else replace(duca, method=method)


def run_opensora(model, geo: rf.OpenSoraGeometry, meta: dict, method: str):
    from opensora_duca.pipeline import cfg_caption
    from opensora_duca.rflow import rflow_sample

    model.configure_cache(opensora_config(method))
    z, caption, mask = rf.opensora_inputs(geo)
    cap = cfg_caption(model, caption, mask)
    kwargs = dict(fps=torch.tensor([geo.fps] * 2), height=torch.tensor([float(geo.pixels)] * 2),
                  width=torch.tensor([float(geo.pixels)] * 2))
    with record_selections() as found:
        out = rflow_sample(lambda zi, ti: model(zi, ti, cap, **kwargs), z, rf.opensora_timesteps(meta["steps"]),
                           meta["cfg_scale"], feature_cache=model.feature_cache)
    return out, model.feature_cache.last_trace, found


@pytest.mark.parametrize("case", [c.name for c in rf.OPENSORA_CASES])
def test_opensora_28_blocks_matches_reference(opensora_fixture, case):
    meta, arrays, geo, model = opensora_fixture
    method = next(c["method"] for c in meta["cases"] if c["name"] == case)
    out, trace, found = run_opensora(model, geo, meta, method)
    result = compare(case, arrays, out, trace, found, ("attn", "cross_attn", "mlp"))
    assert result["problems"] == []
    assert result["latents"] <= rf.LATENT_RTOL, result["latents"]
