"""Attention-score selection without the tokens x tokens map: equal to the explicit softmax, chunked, used by
DiT and PixArt self-attention with SDPA kept for the output."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from duca_common.cache.attention_score import CHUNK_ELEMENTS, attention_received, query_chunk_rows


def explicit_received(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The map-forming computation the DiT attention used before: column sums of the head-mean softmax."""
    attn = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return attn.mean(dim=1).sum(dim=1)


@pytest.mark.parametrize("chunk", [1, 7, 64, None])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_score_equals_the_explicit_softmax(chunk, dtype):
    g = torch.Generator().manual_seed(0)
    b, h, n, d = 2, 3, 50, 16
    q = torch.randn(b, h, n, d, generator=g, dtype=dtype) * 2     # peaked rows: a real softmax test
    k = torch.randn(b, h, n, d, generator=g, dtype=dtype) * 2
    got = attention_received(q, k, d ** -0.5, chunk=chunk)
    want = explicit_received(q, k, d ** -0.5)
    assert got.shape == (b, n) and got.dtype == dtype
    assert torch.allclose(got, want, rtol=0, atol=1e-6), (got - want).abs().max()
    assert torch.allclose(got.sum(dim=1), torch.full((b,), float(n), dtype=dtype), atol=1e-4)   # rows sum to 1


def test_half_precision_inputs_are_scored_in_float32():
    q, k = torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8)
    got = attention_received(q.to(torch.bfloat16), k.to(torch.bfloat16))
    assert got.dtype == torch.float32
    want = explicit_received(q.to(torch.bfloat16).float(), k.to(torch.bfloat16).float(), 8 ** -0.5)
    assert torch.allclose(got, want, atol=1e-6)


def test_chunk_rows_bound_the_buffer():
    assert query_chunk_rows(2, 16, 256) == 512                          # DiT-XL/2 256 px: one chunk
    rows = query_chunk_rows(2, 6, 4096)                                  # DiT-S at 4096 tokens
    assert rows == 85 and 2 * 6 * rows * 4096 <= CHUNK_ELEMENTS
    assert query_chunk_rows(64, 64, 1 << 20) == 1                        # never zero rows
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        attention_received(torch.randn(1, 1, 4, 2), torch.randn(1, 1, 4, 2), chunk=0)
    with pytest.raises(ValueError, match=r"\(B, H, N, D\)"):
        attention_received(torch.randn(1, 4, 2), torch.randn(1, 1, 4, 2))


def test_peak_memory_is_one_chunk_not_the_map():
    """The largest tensor the score creates (seen by a dispatch mode that watches every op's output) is one
    chunk's logits, not the B x H x N x N map."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor):
                    Largest.biggest = max(Largest.biggest, t.numel())
            return out

    b, h, n, d = 1, 2, 512, 8
    q, k = torch.randn(b, h, n, d), torch.randn(b, h, n, d)
    with Largest():
        attention_received(q, k, chunk=16)
    assert Largest.biggest == b * h * 16 * n                             # one chunk's logits
    assert Largest.biggest * 32 == b * h * n * n                         # 1/32 of the map


def test_dit_attention_keeps_sdpa_and_returns_the_score():
    from dit_duca.models import Attention

    torch.manual_seed(0)
    attn = Attention(32, 4).eval()
    x = torch.randn(2, 20, 32)
    with torch.no_grad():
        plain = attn(x)
        out, received = attn(x, stat="attention_received")
        q, k, v = attn.qkv(x).reshape(2, 20, 3, 4, 8).permute(2, 0, 3, 1, 4)
        sdpa = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 20, 32))
    assert torch.equal(out, plain) and torch.equal(out, sdpa)          # the output is SDPA's, bit for bit
    assert torch.allclose(received, explicit_received(q, k, attn.scale), atol=1e-6)


def test_pixart_self_attention_provides_the_score():
    from pixart_duca.model import SelfAttention

    torch.manual_seed(0)
    attn = SelfAttention(32, 4).eval()
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        plain = attn(x)
        out, received = attn(x, stat="attention_received")
        q, k, _ = attn.qkv(x).reshape(2, 12, 3, 4, 8).permute(2, 0, 3, 1, 4)
    assert torch.equal(out, plain)
    assert torch.allclose(received, explicit_received(q, k, 8 ** -0.5), atol=1e-6)
    with pytest.raises(ValueError, match="'value_norm' and 'attention_received'"):
        attn(x, stat="cross_entropy")


def test_sdpa_and_received_matches_sdpa_and_the_explicit_score():
    from duca_common.cache.attention_score import sdpa_and_received

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 40, 8, generator=g) for _ in range(3))
    out, received = sdpa_and_received(q, k, v, chunk=16)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))     # bit for bit
    assert torch.allclose(received, explicit_received(q, k, 8 ** -0.5), atol=1e-6)
    # the generic path (what CUDA and the meta device use): each chunk computes its own log-sum-exp
    assert torch.allclose(attention_received(q, k, chunk=16), received, atol=1e-6)
    meta_out, meta_received = sdpa_and_received(q.to("meta"), k.to("meta"), v.to("meta"))
    assert meta_out.shape == out.shape and meta_received.shape == (2, 40)


def test_benchmark_script_writes_its_table(tmp_path):
    from duca_scripts import bench_attention_score
    from duca_scripts.report import parse_markdown_table

    data = bench_attention_score.main(["--tokens", "16", "40", "--repeats", "2", "--warmup", "0", "--threads", "1",
                                       "--out", str(tmp_path)])
    rows = parse_markdown_table((tmp_path / "attention_score.md").read_text().split("\n\n", 1)[1])
    assert [(r["tokens"], r["path"]) for r in rows] == [(str(n), p) for n in (16, 40)
                                                         for p in ("map", "chunked", "sdpa")]
    chunked = [r for r in data["rows"] if r["path"] == "chunked"]
    assert all(r["max_abs_score_error"] < 1e-5 and r["max_abs_output_error"] < 1e-5 for r in chunked)
    assert all(len(r["cpu_seconds"]) == 2 for r in data["rows"])
    with pytest.raises(SystemExit) as exc:
        bench_attention_score.main(["--tokens", "0", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
