"""PixArt model: official key names and shapes, strict loading, the diffusers key map, positional
embedding, partial cross-attention, the engine wiring (cache off = plain forward), FLOPs accounting."""

from __future__ import annotations

import math

import pytest
import torch

from duca_common.cache import CacheConfig, RatioSchedule, TransformerDims, full_run_flops, get_preset, reference_flops
from duca_common.cache.accounting import cross_attention_flops
from duca_common.layers import cross_attention_entropy, pack_caption, pos_embed_2d
from duca_common.text import TextEmbedding
from pixart_duca import checkpoint as ck
from pixart_duca.model import CACHED_MODULES, PixArt, pixart_xl_2
from pixart_duca.pipeline import cfg_caption, flops_report, meta_run, sample
from pixart_tiny import T5_DIM, TINY, TINY_MS, tiny_model

C = 1152


def xl_expected_shapes(image_size: int) -> dict[str, tuple[int, ...]]:
    """models.md B.2, written out independently of the model code."""
    tokens = {256: 256, 512: 1024, 1024: 4096}[image_size]
    shapes = {"pos_embed": (1, tokens, C), "x_embedder.proj.weight": (C, 4, 2, 2), "x_embedder.proj.bias": (C,),
              "t_embedder.mlp.0.weight": (C, 256), "t_embedder.mlp.0.bias": (C,),
              "t_embedder.mlp.2.weight": (C, C), "t_embedder.mlp.2.bias": (C,),
              "t_block.1.weight": (6 * C, C), "t_block.1.bias": (6 * C,),
              "y_embedder.y_embedding": (120, 4096),
              "y_embedder.y_proj.fc1.weight": (C, 4096), "y_embedder.y_proj.fc1.bias": (C,),
              "y_embedder.y_proj.fc2.weight": (C, C), "y_embedder.y_proj.fc2.bias": (C,),
              "final_layer.scale_shift_table": (2, C), "final_layer.linear.weight": (32, C),
              "final_layer.linear.bias": (32,)}
    for i in range(28):
        b = f"blocks.{i}."
        shapes.update({b + "scale_shift_table": (6, C),
                       b + "attn.qkv.weight": (3 * C, C), b + "attn.qkv.bias": (3 * C,),
                       b + "attn.proj.weight": (C, C), b + "attn.proj.bias": (C,),
                       b + "cross_attn.q_linear.weight": (C, C), b + "cross_attn.q_linear.bias": (C,),
                       b + "cross_attn.kv_linear.weight": (2 * C, C), b + "cross_attn.kv_linear.bias": (2 * C,),
                       b + "cross_attn.proj.weight": (C, C), b + "cross_attn.proj.bias": (C,),
                       b + "mlp.fc1.weight": (4 * C, C), b + "mlp.fc1.bias": (4 * C,),
                       b + "mlp.fc2.weight": (C, 4 * C), b + "mlp.fc2.bias": (C,)})
    if image_size == 1024:
        for name in ("csize_embedder", "ar_embedder"):
            shapes.update({f"{name}.mlp.0.weight": (384, 256), f"{name}.mlp.0.bias": (384,),
                           f"{name}.mlp.2.weight": (384, 384), f"{name}.mlp.2.bias": (384,)})
    return shapes


@pytest.mark.parametrize("image_size,count,params", [(256, 437, 610_856_096), (512, 437, 610_856_096),
                                                     (1024, 445, 611_349_152)])
def test_official_keys_and_shapes_on_meta(image_size, count, params):
    with torch.device("meta"):
        model = PixArt(pixart_xl_2(image_size))
    sd = model.state_dict()
    assert len(sd) == count
    assert {k: tuple(v.shape) for k, v in sd.items()} == xl_expected_shapes(image_size)
    assert sum(p.numel() for p in model.parameters()) == params
    # the diffusers map covers every key but the two it drops, and round-trips
    diff = ck.to_diffusers(sd)
    assert "transformer_blocks.27.attn1.to_v.weight" in diff and "adaln_single.linear.weight" in diff
    assert set(ck.from_diffusers(diff)) == set(sd) - set(ck.DROPPED_KEYS)


def test_diffusers_key_map_round_trip_values():
    sd = tiny_model(TINY_MS).state_dict()
    diff = ck.to_diffusers(sd)
    assert torch.equal(diff["transformer_blocks.1.attn1.to_k.weight"], sd["blocks.1.attn.qkv.weight"][144:288])
    assert torch.equal(diff["transformer_blocks.0.attn2.to_v.bias"], sd["blocks.0.cross_attn.kv_linear.bias"][144:])
    assert torch.equal(diff["adaln_single.emb.aspect_ratio_embedder.linear_2.weight"], sd["ar_embedder.mlp.2.weight"])
    assert torch.equal(diff["scale_shift_table"], sd["final_layer.scale_shift_table"])
    back = ck.from_diffusers(diff)
    assert all(torch.equal(back[k], sd[k]) for k in back)


def test_diffusers_folder_loads_and_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from safetensors.torch import save_file
    model = tiny_model()
    folder = tmp_path / "pixart" / "transformer"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ck.to_diffusers(model.state_dict()).items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text('{"sample_size": 8, "num_attention_heads": 2}')
    loaded = ck.load_transformer(str(tmp_path / "pixart"))
    assert not loaded.has_null_caption and loaded.config == TINY
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([999.0, 10.0])
    cap = pack_caption(torch.randn(2, 120, T5_DIM), (torch.arange(120) < 7).float().repeat(2, 1))
    assert torch.equal(loaded(x, t, cap), model(x, t, cap))
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.load_transformer(str(tmp_path / "nothing-here"))


def test_pth_strict_load_and_errors(tmp_path):
    model = tiny_model()
    state = model.state_dict()
    state["pos_embed"] = torch.randn_like(state["pos_embed"])          # upstream ignores the stored table
    torch.save({"state_dict": state}, tmp_path / "m.pth")
    loaded = ck.load_pth(tmp_path / "m.pth")
    assert loaded.config == TINY
    assert torch.equal(loaded.pos_embed, model.pos_embed)               # recomputed, not the stored one
    assert torch.equal(loaded.y_embedder.y_embedding, model.y_embedder.y_embedding)
    with pytest.raises(ck.CheckpointError, match="image_size is 512"):
        ck.check_image_size(loaded.config, 512, "m.pth")
    del state["blocks.0.mlp.fc1.bias"]
    torch.save({"state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(ck.CheckpointError, match="1 missing keys"):
        ck.load_pth(tmp_path / "bad.pth", config=TINY)
    torch.save({"state_dict": {"net.weight": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(ck.CheckpointError, match="not a PixArt-alpha checkpoint"):
        ck.load_pth(tmp_path / "other.pth")


def test_pos_embed_formula():
    # 256 / 512: integer grid, first half encodes the column (section 0.4, B.4)
    table = pos_embed_2d(C, (16, 16), 16, 1.0)[0]
    r, c, k = 3, 5, 7
    omega = 10000 ** (-k / 288)
    assert table[r * 16 + c, k].item() == pytest.approx(math.sin(c * omega), abs=1e-6)
    assert table[r * 16 + c, 288 + k].item() == pytest.approx(math.cos(c * omega), abs=1e-6)
    assert table[r * 16 + c, 576 + k].item() == pytest.approx(math.sin(r * omega), abs=1e-6)
    # 1024-MS at 64x64 with lewei 2: positions 0, 0.5, ..., 31.5
    ms = pos_embed_2d(C, (64, 64), 64, 2.0)[0]
    assert ms[1, 0].item() == pytest.approx(math.sin(0.5), abs=1e-6)
    assert ms[64 * 63, 576].item() == pytest.approx(math.sin(31.5), abs=1e-6)


def reference_packed_cross_attention(ca, x, y_list):
    """The reference layout: all valid text tokens of all samples in one sequence, block-diagonal mask."""
    b, n, c = x.shape
    h, d = ca.heads, c // ca.heads
    q = ca.q_linear(x).reshape(1, b * n, h, d).transpose(1, 2)
    kv = ca.kv_linear(torch.cat(y_list)[None]).reshape(1, -1, 2, h, d)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    lens = [len(y) for y in y_list]
    mask = torch.full((b * n, sum(lens)), float("-inf"))
    start = 0
    for i, length in enumerate(lens):
        mask[i * n:(i + 1) * n, start:start + length] = 0
        start += length
    attn = ((q @ k.transpose(-2, -1)) * d ** -0.5 + mask).softmax(-1)
    out = ca.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
    return out, attn.mean(1)[0].reshape(b, n, sum(lens))


def test_cross_attention_matches_packed_reference_and_partial():
    torch.manual_seed(1)
    ca = tiny_model().blocks[0].cross_attn
    b, n, lens = 4, 16, [3, 7, 3, 7]            # [uncond a, uncond b, cond a, cond b]
    x = torch.randn(b, n, 144)
    y_list = [torch.randn(length, 144) for length in lens]
    full = torch.zeros(b, 120, 144)
    mask = torch.zeros(b, 120)
    for i, y in enumerate(y_list):
        full[i, :len(y)] = y
        mask[i, :len(y)] = 1
    cap = pack_caption(full, mask)
    out, ent = ca(x, cap.tokens, cap.mask, stat="cross_entropy", cfg_halves=True)
    ref_out, ref_map = reference_packed_cross_attention(ca, x, y_list)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    # the reference entropy: average the packed maps of the two halves, then entropy per token
    p = 0.5 * ref_map[:2] + 0.5 * ref_map[2:]
    ref_ent = -(p * torch.log(p + 1e-7)).sum(-1)
    torch.testing.assert_close(ent, torch.cat([ref_ent, ref_ent]), atol=1e-5, rtol=1e-5)
    assert torch.equal(ca(x, cap.tokens, cap.mask), ca(x, cap.tokens, cap.mask, stat=None))
    torch.testing.assert_close(ca(x, cap.tokens, cap.mask), out, atol=1e-5, rtol=1e-5)   # SDPA path
    # partial: a token subset gives the same rows as the full computation, and the same entropies
    idx = torch.tensor([[0, 5, 9], [2, 3, 15]]).repeat(2, 1)
    x_sel = x.gather(1, idx[..., None].expand(-1, -1, 144))
    out_sel, ent_sel = ca(x_sel, cap.tokens, cap.mask, stat="cross_entropy", cfg_halves=True)
    torch.testing.assert_close(out_sel, out.gather(1, idx[..., None].expand(-1, -1, 144)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_sel, ent.gather(1, idx), atol=1e-5, rtol=1e-5)


def test_entropy_of_uniform_rows():
    # uniform over L valid keys in each half -> averaged row is uniform over 2L columns: entropy log(2L)
    attn = torch.zeros(2, 1, 3, 5)
    attn[..., :4] = 0.25
    ent = cross_attention_entropy(attn, torch.tensor([[1, 1, 1, 1, 0]] * 2, dtype=torch.float32), cfg_halves=True)
    assert torch.allclose(ent, torch.full((2, 3), math.log(8.0)), atol=1e-5)


def _caption(model, lengths):
    emb = torch.randn(len(lengths), 120, T5_DIM)
    mask = (torch.arange(120)[None] < torch.tensor(lengths)[:, None]).long()
    return cfg_caption(model, TextEmbedding(emb, mask))


@pytest.mark.parametrize("config", [TINY, TINY_MS], ids=["256-style", "MS"])
def test_cache_off_equals_plain_forward_and_ratio_one(config):
    from pixart_duca.pipeline import MicroConditions
    torch.manual_seed(0)
    plain = tiny_model(config)
    cap = _caption(plain, [4, 9])
    noise = torch.randn(2, 4, 8, 8)
    micro = MicroConditions.for_size(2, 64, 64) if config.multi_scale else None
    ref = sample(plain, noise, cap, 6, micro=micro)
    # method none through the engine = the plain forward, bit for bit, in a sampling loop
    off = tiny_model(config, cache_config=CacheConfig(method="none"))
    assert torch.equal(sample(off, noise, cap, 6, micro=micro), ref)
    # fresh ratio 1 under a constant schedule (every module's ratio is 1) recomputes everything in ToCa steps
    toca = get_preset("pixart-toca-r70").config.replace(fresh_ratio=1.0, ratio_schedule=RatioSchedule("constant"))
    assert torch.equal(sample(tiny_model(config, cache_config=toca), noise, cap, 6, micro=micro), ref)


@pytest.fixture(scope="module")
def uncached_run():
    torch.manual_seed(0)
    model = tiny_model()
    cap, noise = _caption(model, [5, 11]), torch.randn(2, 4, 8, 8)
    return cap, noise, sample(model, noise, cap, 20)


@pytest.mark.parametrize("preset,selector", [("pixart-duca-r70-script", None), ("pixart-duca-r25", "value_norm"),
                                             ("pixart-toca-r70", "random"), ("pixart-fora-n3", None)])
def test_cached_sampling_runs_and_differs_slightly(uncached_run, preset, selector):
    cap, noise, ref = uncached_run
    cfg = get_preset(preset).config
    if selector:
        cfg = cfg.replace(selector=selector)
    model = tiny_model(cache_config=cfg)
    out = sample(model, noise, cap, 20)
    trace = model.feature_cache.last_trace
    assert trace.trunk_reused == ([p % 3 == 2 for p in range(20)] if cfg.method == "duca" else [False] * 20)
    assert 0 < trace.fraction_computed() < 1
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.5


def test_reference_flops_formula_and_meta_measurement():
    # hand formula of paper.md section 4 for one cross-attention, written out
    d = TransformerDims(batch=2, tokens=256, hidden=C, heads=16, text_tokens=30)
    n0, n1, h, hd = 2 * 64, 30, 16, 72
    expected = (2 * n0 * C * C + 4 * n1 * C * C + h * n0 * hd + h * n0 * n1 + 2 * h * n0 * n1 * hd + 5 * h * n0 * n1
                + 2 * h * n0 * n1 * hd + 2 * 2 * n0 * C * C)
    assert cross_attention_flops(d, 64) == expected
    report, trace = flops_report(TINY, get_preset("pixart-duca-r25").config, 1, 64, 64, [6, 6], 20)
    assert report.reference_full > report.reference_cached > 0
    assert report.measured_full > report.measured_cached > 0
    assert 1.3 < report.reference_speedup < 3.0 and 1.3 < report.measured_speedup < 3.0
    assert trace.trunk_reused == [p % 3 == 2 for p in range(20)]


def test_flops_xl_256_duca_readme_setting():
    """PixArt-XL/2 at 256 under the README setting: the speed-up is near the paper's 1.87x (paper.md)."""
    config, dims = pixart_xl_2(256), TransformerDims(batch=2, tokens=256, hidden=C, heads=16, text_tokens=24)
    measured, trace = meta_run(config, get_preset("pixart-duca-r25").config, 1, 256, 256, [12, 12], 20)
    full = full_run_flops(dims, 28, 20, CACHED_MODULES)
    assert full == pytest.approx(11.86e12, rel=0.01)
    assert 1.7 < full / reference_flops(trace, dims) < 2.1
    assert 0.8 < measured / reference_flops(trace, dims) < 1.1      # the counter sees about what the formula says


def test_residual_stream_is_contiguous_in_every_block():
    """As for DiT (docs/benchmarks.md, issue 14.3): the patch embedding's transposed view is made contiguous."""
    model = tiny_model()
    seen: list[bool] = []
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous())) for b in model.blocks]
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([999.0, 10.0])
    model(x, t, pack_caption(torch.randn(2, 120, T5_DIM), (torch.arange(120) < 7).float().repeat(2, 1)))
    for h in hooks:
        h.remove()
    assert seen == [True] * len(model.blocks)
