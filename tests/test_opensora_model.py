"""STDiT3: official names and sizes on the meta device, strict safetensors round trip, the engine wiring
(cache off = plain forward bit for bit, value norms in (t, s) order, the DuCa schedule), x_mask, RoPE."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from duca_common.cache import CacheConfig, get_preset
from opensora_duca.checkpoint import CheckpointError, save_safetensors
from opensora_duca.rflow import RFlowConfig, rflow_sample, sampling_timesteps
from opensora_duca.stdit3 import RotaryEmbedding, STDiT3, config_dict, load_stdit3, sincos_table_2d, stdit3_xl_2
from opensora_tiny import LATENT, TINY, tiny_caption, tiny_inputs, tiny_stdit3

XL_TENSORS = 973                  # models.md C.3
XL_PARAMS = 1_207_643_972



def test_xl_meta_names_shapes_and_count():
    with torch.device("meta"):
        model = STDiT3(stdit3_xl_2())
    sd = model.state_dict()
    assert len(sd) == XL_TENSORS
    assert sum(p.numel() for p in model.parameters()) == XL_PARAMS
    expected = {"rope.freqs": (36,), "x_embedder.proj.weight": (1152, 4, 1, 2, 2), "t_block.1.weight": (6912, 1152),
                "fps_embedder.mlp.0.weight": (1152, 256), "y_embedder.y_embedding": (300, 4096),
                "y_embedder.y_proj.fc1.weight": (1152, 4096), "final_layer.linear.weight": (32, 1152),
                "final_layer.scale_shift_table": (2, 1152), "temporal_blocks.27.attn.q_norm.weight": (72,),
                "spatial_blocks.27.cross_attn.kv_linear.weight": (2304, 1152),
                "temporal_blocks.0.scale_shift_table": (6, 1152), "spatial_blocks.3.mlp.fc2.weight": (1152, 4608)}
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any("inv_freq" in k or "dummy" in k for k in sd)
    spatial = {k.split(".", 2)[2] for k in sd if k.startswith("spatial_blocks.0.")}
    temporal = {k.split(".", 2)[2] for k in sd if k.startswith("temporal_blocks.0.")}
    assert spatial == temporal and len(spatial) == 17


def test_rope_frequencies_and_rotation():
    rope = RotaryEmbedding(72)
    k = torch.arange(36, dtype=torch.float32)
    torch.testing.assert_close(rope.freqs.data, 10000.0 ** (-2 * k / 72))
    x = torch.randn(1, 1, 4, 72)
    out = rope.rotate_queries_or_keys(x)
    torch.testing.assert_close(out[..., 0, :], x[..., 0, :])              # position 0 is not rotated
    ang = 3 * rope.freqs[5]                                                # position 3, pair 5 (dims 10, 11)
    a, b = x[0, 0, 3, 10], x[0, 0, 3, 11]
    torch.testing.assert_close(out[0, 0, 3, 10], a * ang.cos() - b * ang.sin())
    torch.testing.assert_close(out[0, 0, 3, 11], b * ang.cos() + a * ang.sin())


def test_position_table_column_half_first():
    table = sincos_table_2d(16, 2, 3, scale=1.0, base_size=2)[0]         # tokens row-major (r, c)
    assert table.shape == (6, 16)
    torch.testing.assert_close(table[0, :8], table[3, :8])               # same column -> same first half
    torch.testing.assert_close(table[0, 8:], table[1, 8:])               # same row -> same second half
    gx = 1 / 1.0 * (2 / 3)                                               # column 1: c / scale * base / W
    torch.testing.assert_close(table[1, 0], torch.tensor(math.sin(gx)))


def test_strict_safetensors_round_trip_and_bad_checkpoints(tmp_path):
    model = tiny_stdit3()
    save_safetensors(model, tmp_path / "ok", config_dict(TINY))
    loaded = load_stdit3(str(tmp_path / "ok"))
    assert loaded.config == TINY
    inputs = tiny_inputs(2)
    assert torch.equal(model(**inputs), loaded(**inputs))
    # a tensor missing from the file is named
    from safetensors.torch import save_file
    sd = {k: v for k, v in model.state_dict().items() if k != "rope.freqs"}
    (tmp_path / "bad").mkdir()
    save_file(sd, str(tmp_path / "bad" / "model.safetensors"))
    (tmp_path / "bad" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="missing.*rope.freqs"):
        load_stdit3(str(tmp_path / "bad"))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_stdit3(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        load_stdit3(str(tmp_path / "empty"))


def test_output_shape_crop_and_fp32():
    model = tiny_stdit3()
    inputs = tiny_inputs(2)
    inputs["x"] = torch.randn(2, 4, 3, 5, 7)                               # odd sizes: padded then cropped
    out = model(**inputs)
    assert out.shape == (2, 8, 3, 5, 7) and out.dtype == torch.float32


def test_cache_off_and_full_steps_equal_plain_forward_bit_for_bit():
    inputs = tiny_inputs(2)
    plain = tiny_stdit3()(**inputs)
    for cache in (CacheConfig(), get_preset("opensora-duca").config):
        model = tiny_stdit3(cache_config=cache)
        with model.feature_cache.session(30, cfg_halves=True) as run:
            run.set_step(0)                                                # step 0 is full in every plan
            assert torch.equal(model(**inputs), plain)


def test_value_norms_in_t_s_order():
    model = tiny_stdit3()
    inputs = tiny_inputs(2)
    b, (t, h, w) = 2, model.token_grid(LATENT)
    a = torch.randn(b, t * h * w, TINY.hidden_size)
    for block in (model.spatial_blocks[0], model.temporal_blocks[0]):
        rope = model.rope.rotate_queries_or_keys if block.temporal else None
        out, norms = block._attend(a, t, h * w, rope, "value_norm")
        v = block.attn.qkv(a)[..., 2 * TINY.hidden_size:]                # v of a token depends on that token only
        expected = v.view(b, t * h * w, TINY.num_heads, TINY.head_dim).norm(dim=-1).transpose(1, 2)
        torch.testing.assert_close(norms, expected)
        assert torch.equal(out, block._attend(a, t, h * w, rope, None))
    del inputs


def test_x_mask_semantics():
    model = tiny_stdit3(final_masked_modulation="single")
    inputs = tiny_inputs(2)
    t = LATENT[0]
    plain = model(**inputs)
    torch.testing.assert_close(model(**inputs, x_mask=torch.ones(2, t, dtype=torch.bool)), plain, rtol=0, atol=0)
    # every frame a conditioning frame: the whole model runs under the timestep-0 modulation ("single")
    zero = model(**{**inputs, "timestep": torch.zeros(2)})
    torch.testing.assert_close(model(**inputs, x_mask=torch.zeros(2, t, dtype=torch.bool)), zero)
    mixed = model(**inputs, x_mask=torch.tensor([[True, False, True]] * 2))
    assert not torch.allclose(mixed, plain)
    with pytest.raises(ValueError, match="x_mask must be"):
        model(**inputs, x_mask=torch.ones(2, t + 1, dtype=torch.bool))


def test_final_layer_modulates_masked_frames_twice_by_default_as_the_reference():
    """Issue 12.5: the reference's T2IFinalLayer applies LayerNorm + t0 modulation on top of the t-modulated
    tokens on conditioning frames; "single" applies it once. Generated frames are the same in both."""
    from duca_common.layers import t2i_modulate
    from opensora_duca.stdit3 import BlockInputs, FinalLayer

    torch.manual_seed(0)
    b, f, s, c = 2, 3, 4, 16
    layer = FinalLayer(c, (1, 2, 2), 8)
    x, temb, t0 = torch.randn(b, f * s, c), torch.randn(b, c), torch.randn(b, c)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    inp = BlockInputs(torch.zeros(b, 6 * c), torch.zeros(b, 1, c), torch.ones(b, 1), f, s, mask, None)
    ln = torch.nn.functional.layer_norm
    sh, sc = (layer.scale_shift_table[None] + temb[:, None]).chunk(2, dim=1)
    sh0, sc0 = (layer.scale_shift_table[None] + t0[:, None]).chunk(2, dim=1)
    once_t = t2i_modulate(ln(x, (c,), eps=1e-6), sh, sc)
    twice = t2i_modulate(ln(once_t, (c,), eps=1e-6), sh0, sc0)            # the reference's masked frames
    once_t0 = t2i_modulate(ln(x, (c,), eps=1e-6), sh0, sc0)
    keep = mask[:, :, None, None].expand(b, f, s, 1).reshape(b, f * s, 1)
    with torch.no_grad():
        reference = layer(x, temb, inp, t0)
        layer.masked_modulation = "single"
        single = layer(x, temb, inp, t0)
        torch.testing.assert_close(reference, layer.linear(torch.where(keep, once_t, twice)))
        torch.testing.assert_close(single, layer.linear(torch.where(keep, once_t, once_t0)))
        # no mask: one modulation with t, whatever the option
        torch.testing.assert_close(layer(x, temb, dataclasses.replace(inp, x_mask=None), None),
                                   layer.linear(once_t))
    assert torch.equal(reference[keep.expand_as(reference)], single[keep.expand_as(single)])
    assert not torch.allclose(reference, single)
    # the whole model: the default is the reference's; the two options differ only on conditioning frames
    inputs = tiny_inputs(2)
    x_mask = torch.tensor([[True, False, True]] * 2)
    ref_model, single_model = tiny_stdit3(), tiny_stdit3(final_masked_modulation="single")
    assert ref_model.final_layer.masked_modulation == "reference"
    out_ref, out_single = ref_model(**inputs, x_mask=x_mask), single_model(**inputs, x_mask=x_mask)
    assert torch.equal(out_ref[:, :, [0, 2]], out_single[:, :, [0, 2]])
    assert not torch.allclose(out_ref[:, :, 1], out_single[:, :, 1])
    with pytest.raises(ValueError, match="final_masked_modulation='twice' is invalid"):
        tiny_stdit3(final_masked_modulation="twice")


# C.11: the reference 30-step schedule, attn / cross / mlp per step (A = whole trunk reused).
REFERENCE_SCHEDULE = ("F/F/F F/F/F F/F/F F/R/F R/R/T A F/F/F R/R/T A F/R/F R/R/T A F/F/F R/R/T A F/R/F R/R/T A "
                      "F/F/F R/R/T A F/R/F R/R/T A F/F/F R/R/T A F/R/F R/R/T A").split()


def test_duca_preset_follows_the_reference_schedule():
    """T (ToCa) in the reference = cached output reused (attn, cross) or partial MLP: R and T here."""
    model = tiny_stdit3(cache_config=get_preset("opensora-duca").config)
    caption = tiny_caption(1)
    cond_null = type(caption)(torch.cat([caption.tokens, caption.tokens.flip(1)]), torch.cat([caption.mask] * 2))
    kwargs = dict(caption=cond_null, fps=torch.tensor([24.0]), height=torch.tensor([32.0]), width=torch.tensor([48.0]))
    z = torch.randn(1, 4, *LATENT)
    timesteps = sampling_timesteps(RFlowConfig(), 32, 48, 1)
    out = rflow_sample(lambda zi, ti: model(zi, ti, **kwargs), z, timesteps, 7.0, feature_cache=model.feature_cache)
    trace = model.feature_cache.last_trace
    assert [trace.step_letters(p) for p in range(30)] == REFERENCE_SCHEDULE
    n = math.prod(model.token_grid(LATENT))
    k = int(0.1 * 1.495 * n)                                                # C.11: r = 0.1 x 1.495 for the MLP
    assert k > 0 and (trace.tokens[4, :, 2] == k).all()                    # every block, step 4: partial MLP
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cache,step5", [
    (CacheConfig(method="fora", interval=3), "R/R/R"),
    (CacheConfig(method="taylorseer", interval=3, taylor_order=2), "P/P/P"),
    (get_preset("opensora-duca").config.replace(
        method="toca", module_cycles=(("attn", "FTT"), ("cross_attn", "FTTTTT"), ("mlp", "FTT"))), "R/R/T"),
])
def test_other_methods_run_on_stdit3(cache, step5):
    """FORA reuses, TaylorSeer forecasts, ToCa never skips the trunk; all stay close to the uncached run."""
    caption = tiny_caption(1)
    cond_null = type(caption)(torch.cat([caption.tokens] * 2), torch.cat([caption.mask] * 2))
    kwargs = dict(caption=cond_null, fps=torch.tensor([24.0]), height=torch.tensor([32.0]), width=torch.tensor([48.0]))
    z = torch.randn(1, 4, *LATENT)
    timesteps = sampling_timesteps(RFlowConfig(num_sampling_steps=8), 32, 48, 1)
    outs = []
    for config in (CacheConfig(), cache):
        model = tiny_stdit3(cache_config=config)
        outs.append(rflow_sample(lambda zi, ti, model=model: model(zi, ti, **kwargs), z, timesteps, 7.0,
                                 feature_cache=model.feature_cache))
    trace = model.feature_cache.last_trace
    assert trace.step_letters(5) == step5 and not any(trace.trunk_reused)
    assert 0 < (outs[0] - outs[1]).abs().max() < 0.5 * outs[0].abs().max()


def test_patch_embedding_output_is_contiguous():
    """As for DiT (docs/benchmarks.md, issue 14.3): the residual stream starts contiguous."""
    model = tiny_stdit3()
    out = model.x_embedder(torch.randn(2, TINY.in_channels, *LATENT))
    assert out.shape == (2, 3 * 2 * 3, TINY.hidden_size) and out.is_contiguous()       # LATENT: 3 x 2 x 3 tokens
