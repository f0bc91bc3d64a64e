"""DiT model: official names and shapes, strict save/reload, CFG channel semantics, cache off = plain."""


import pytest
import torch

from dit_duca.diffusion import create_diffusion
from dit_duca.models import DiT, DiT_models, build_model
from duca_common.cache import CacheConfig, get_preset
from duca_common.layers import pos_embed_2d


def tiny_dit(**kw) -> DiT:
    args = dict(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=4, num_classes=10)
    args.update(kw)
    torch.manual_seed(0)
    model = DiT(**args)
    # the official init zeroes adaLN and the output layer; randomise so the tests see real signals
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    return model.eval()


def official_xl2_table(grid_tokens: int) -> dict[str, tuple[int, ...]]:
    """models.md A.2, written out independently of the model code."""
    t = {"pos_embed": (1, grid_tokens, 1152),
         "x_embedder.proj.weight": (1152, 4, 2, 2), "x_embedder.proj.bias": (1152,),
         "t_embedder.mlp.0.weight": (1152, 256), "t_embedder.mlp.0.bias": (1152,),
         "t_embedder.mlp.2.weight": (1152, 1152), "t_embedder.mlp.2.bias": (1152,),
         "y_embedder.embedding_table.weight": (1001, 1152),
         "final_layer.linear.weight": (32, 1152), "final_layer.linear.bias": (32,),
         "final_layer.adaLN_modulation.1.weight": (2304, 1152), "final_layer.adaLN_modulation.1.bias": (2304,)}
    for i in range(28):
        b = f"blocks.{i}."
        t.update({b + "attn.qkv.weight": (3456, 1152), b + "attn.qkv.bias": (3456,),
                  b + "attn.proj.weight": (1152, 1152), b + "attn.proj.bias": (1152,),
                  b + "mlp.fc1.weight": (4608, 1152), b + "mlp.fc1.bias": (4608,),
                  b + "mlp.fc2.weight": (1152, 4608), b + "mlp.fc2.bias": (1152,),
                  b + "adaLN_modulation.1.weight": (6912, 1152), b + "adaLN_modulation.1.bias": (6912,)})
    return t


@pytest.mark.parametrize("image_size,tokens,params", [(256, 256, 675_129_632), (512, 1024, 676_014_368)])
def test_xl2_official_keys_and_shapes_on_meta(image_size, tokens, params):
    with torch.device("meta"):
        model = DiT_models["DiT-XL/2"](input_size=image_size // 8)
    sd = model.state_dict()
    expected = official_xl2_table(tokens)
    assert len(sd) == 292
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert sum(v.numel() for v in sd.values()) == params
    assert not model.pos_embed.requires_grad


def test_every_config_builds_on_meta():
    for name in DiT_models:
        with torch.device("meta"):
            model = build_model(name, input_size=32)
        depth = {"XL": 28, "L": 24, "B": 12, "S": 12}[name.split("-")[1].split("/")[0]]
        assert len(model.blocks) == depth
        assert model.x_embedder.patch_size[0] == int(name.split("/")[1])
    with pytest.raises(ValueError, match="unknown DiT model"):
        build_model("DiT-XXL/2")


def test_tiny_dit_saved_and_strictly_reloaded(tmp_path):
    model = tiny_dit()
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    other = DiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=4, num_classes=10)
    other.load_state_dict(sd, strict=True)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 10])
    assert torch.equal(model(x, t, y), other.eval()(x, t, y))
    assert "pos_embed" in sd


def test_pos_embed_first_half_encodes_column():
    pe = pos_embed_2d(16, (4, 4), base_size=4, lewei_scale=1.0)[0]   # DiT's table: (16 tokens, 16 dims)
    # tokens 0 and 4 share the column (0) and differ in row: the first half must be equal
    assert (pe[0, :8] == pe[4, :8]).all() and not (pe[0, 8:] == pe[4, 8:]).all()
    assert (pe[0, 8:] == pe[1, 8:]).all()


def test_forward_with_cfg_guides_first_three_channels_only():
    model = tiny_dit(in_channels=4, num_classes=10)
    assert model.cfg_channels == 3
    x = torch.randn(2, 4, 8, 8)
    xx = torch.cat([x, x])
    t = torch.tensor([500, 500, 500, 500])
    y = torch.tensor([1, 2, 10, 10])                       # [cond, uncond]
    out = model.forward_with_cfg(xx, t, y, cfg_scale=4.0)
    raw = model(xx, t, y)
    cond, uncond = raw[:2], raw[2:]
    guided = uncond[:, :3] + 4.0 * (cond[:, :3] - uncond[:, :3])
    torch.testing.assert_close(out[:2, :3], guided)
    torch.testing.assert_close(out[2:, :3], guided)
    # epsilon channel 3 and the variance channels keep each half's own values
    torch.testing.assert_close(out[:, 3:], raw[:, 3:])
    assert not torch.allclose(out[:2, 3], out[2:, 3])


def test_cfg_scale_one_equals_conditional():
    model = tiny_dit()
    x = torch.randn(1, 1, 8, 8)
    xx = torch.cat([x, x])
    out = model.forward_with_cfg(xx, torch.tensor([10, 10]), torch.tensor([3, 10]), cfg_scale=1.0)
    torch.testing.assert_close(out[0], model(x, torch.tensor([10]), torch.tensor([3]))[0])


def test_cache_off_equals_plain_forward_bit_for_bit():
    model = tiny_dit()
    diffusion = create_diffusion("10")
    z = torch.randn(2, 1, 8, 8)
    zz, yy = torch.cat([z, z]), torch.tensor([1, 2, 10, 10])
    kwargs = dict(noise=zz, model_kwargs=dict(y=yy, cfg_scale=1.5))
    plain = diffusion.ddim_sample_loop(model.forward_with_cfg, zz.shape, **kwargs)
    model.configure_cache(CacheConfig(method="none"))
    cached = diffusion.ddim_sample_loop(model.forward_with_cfg, zz.shape, feature_cache=model.feature_cache,
                                        grid=model.grid_size, cfg_halves=True, **kwargs)
    assert torch.equal(plain, cached)
    # a caching preset changes the result and records a trace
    model.configure_cache(get_preset("dit-duca-readme").config)
    duca = diffusion.ddim_sample_loop(model.forward_with_cfg, zz.shape, feature_cache=model.feature_cache,
                                      grid=model.grid_size, cfg_halves=True, **kwargs)
    assert not torch.equal(plain, duca)
    assert model.feature_cache.last_trace is not None


@pytest.mark.parametrize("selector", ["attention_received", "value_norm", "random"])
def test_selectors_run_on_tiny_dit(selector):
    model = tiny_dit()
    cfg = get_preset("dit-duca-readme").config.replace(selector=selector, fresh_ratio=0.3)
    model.configure_cache(cfg)
    z = torch.randn(1, 1, 8, 8)
    zz = torch.cat([z, z])
    out = create_diffusion("20").ddim_sample_loop(model.forward_with_cfg, zz.shape, noise=zz,
                                                  model_kwargs=dict(y=torch.tensor([1, 10]), cfg_scale=1.5),
                                                  feature_cache=model.feature_cache, grid=model.grid_size,
                                                  cfg_halves=True)
    assert torch.isfinite(out).all()
    trace = model.feature_cache.last_trace
    assert (trace.tokens[:, :, 1] > 0).any()


def test_attention_map_path_matches_sdpa():
    model = tiny_dit()
    attn = model.blocks[0].attn
    x = torch.randn(2, 16, 32)
    out_sdpa = attn(x)
    out_map, received = attn(x, stat="attention_received")
    torch.testing.assert_close(out_sdpa, out_map, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(received.sum(-1), torch.full((2,), 16.0))   # each query's row sums to 1


def _block_inputs_contiguous(blocks, run) -> list[bool]:
    """Whether each block's residual-stream input was contiguous during ``run()``."""
    seen: list[bool] = []
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous())) for b in blocks]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_residual_stream_is_contiguous_in_every_block():
    """The patch embedding hands the blocks a contiguous (B, N, C) stream: its transposed view would set the
    layout of every residual op after it (docs/benchmarks.md, issue 14.3)."""
    model = tiny_dit()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([999, 10]), torch.tensor([1, 2])
    assert _block_inputs_contiguous(model.blocks, lambda: model(x, t, y)) == [True] * len(model.blocks)
    # and under the engine, through full, conservative and aggressive steps
    model.configure_cache(get_preset("dit-duca-readme").config)
    z = torch.randn(1, 1, 8, 8)
    zz = torch.cat([z, z])
    seen = _block_inputs_contiguous(model.blocks, lambda: create_diffusion("10").ddim_sample_loop(
        model.forward_with_cfg, zz.shape, noise=zz, model_kwargs=dict(y=torch.tensor([1, 10]), cfg_scale=1.5),
        feature_cache=model.feature_cache, grid=model.grid_size, cfg_halves=True))
    assert len(seen) > 0 and all(seen)


class _Actions:
    """The one engine call ``DiTBlock.modulation`` makes: the action of each module."""

    def __init__(self, attn, mlp) -> None:
        self.actions = {"attn": attn, "mlp": mlp}

    def action(self, module):
        return self.actions[module]


@pytest.mark.parametrize("hidden", [32, 1152])
def test_modulation_multiplies_only_the_vectors_needed_bit_for_bit(hidden):
    """A conservative step reads only the adaLN weight rows of the vectors it uses (one product per run
    of consecutive vectors) and gets the full product's values exactly, at a toy and at DiT-XL/2's width."""
    from dit_duca.models import DiTBlock
    from duca_common.cache.actions import Action

    torch.manual_seed(0)
    block = DiTBlock(hidden, num_heads=4).eval()
    c = torch.randn(2, hidden)
    with torch.no_grad():
        full = block.adaLN_modulation(c).chunk(6, dim=1)
        cases = {  # (attn action, mlp action) -> the vectors used, in order shift/scale/gate attn, then mlp
            (Action.REUSE, Action.PARTIAL): [2, 3, 4, 5],
            (Action.REUSE, Action.REUSE): [2, 5],           # two runs: the gates only
            (Action.FORECAST, Action.FULL): [2, 3, 4, 5],
            (Action.PARTIAL, Action.REUSE): [0, 1, 2, 5],
            (Action.SKIP, Action.REUSE): [5],
            (Action.SKIP, Action.SKIP): [],
        }
        for (attn, mlp), used in cases.items():
            got = block.modulation(c, _Actions(attn, mlp))
            assert [i for i, v in enumerate(got) if v is not None] == used, (attn, mlp)
            assert all(torch.equal(got[i], full[i]) for i in used), (attn, mlp)
        computed = block.modulation(c, _Actions(Action.FULL, Action.FULL))
        assert all(torch.equal(a, b) for a, b in zip(computed, full, strict=True))
