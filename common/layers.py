"""Transformer layers shared by the text-conditioned models: PixArt-alpha and OpenSora's STDiT3 (whose
upstream code reuses PixArt's blocks). Parameter names match the official checkpoints (models.md B.2, C.3).

* ``pos_embed_2d``: the fixed 2-D sin-cos position table (section 0.4; DiT and PixArt).
* ``timestep_embedding`` / ``TimestepEmbedder`` / ``SizeEmbedder``: GLIDE sinusoid + 2-layer MLP (section 0.1, B.5).
* ``CaptionEmbedder``: T5 features -> hidden (``y_proj``) and the learned null caption ``y_embedding``.
* ``CrossAttention``: image tokens attend to their sample's valid text tokens; any subset of the tokens can
  be recomputed (the engine's partial step), and the small cross-attention map yields the entropy selector
  statistic (B.9).
* ``Caption`` / ``pack_caption``: valid text tokens moved to the front of each row, with their mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp

FREQ_EMBED_DIM = 256            # sinusoidal timestep features (models.md section 0.1)
SINCOS_MAX_PERIOD = 10000       # base of the sinusoids: ln(10000) in 0.1, 10000^(-k/288) in 0.4 (models.md)
ENTROPY_EPS = 1e-7              # the reference's log(P + 1e-7) in the entropy score (B.9)


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / SINCOS_MAX_PERIOD ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def pos_embed_2d(dim: int, grid: tuple[int, int], base_size: int, lewei_scale: float) -> torch.Tensor:
    """2-D sin-cos table (1, h*w, dim) (models.md section 0.4) with PixArt's coordinate scaling (B.4).

    DiT's table is the case grid = (base, base), lewei_scale = 1: integer coordinates.

    Row r, column c: gy = r / (h / base) / lewei, gx = c / (w / base) / lewei; the first half of the
    channels encodes gx (the column). Computed in float32 like upstream's numpy code.
    """
    h, w = grid
    gy = np.arange(h, dtype=np.float32) / (h / base_size) / lewei_scale
    gx = np.arange(w, dtype=np.float32) / (w / base_size) / lewei_scale
    xx, yy = np.meshgrid(gx, gy)                                   # (h, w) each, token index r*w + c
    emb = np.concatenate([_sincos_1d(dim // 2, xx), _sincos_1d(dim // 2, yy)], axis=1)
    return torch.from_numpy(emb.astype(np.float32))[None]


def timestep_embedding(t: torch.Tensor, dim: int = FREQ_EMBED_DIM,
                       max_period: float = float(SINCOS_MAX_PERIOD)) -> torch.Tensor:
    """GLIDE sinusoid, [cos | sin], frequencies exp(-ln(max_period) i / half) (section 0.1), in fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def gelu_tanh() -> nn.Module:
    return nn.GELU(approximate="tanh")


def t2i_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQ_EMBED_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t).to(self.mlp[0].weight.dtype))


class SizeEmbedder(TimestepEmbedder):
    """Embeds each column of a (B, k) tensor of scalars and concatenates them: (B, k * dim) (B.5)."""

    def forward(self, s: torch.Tensor, batch: int) -> torch.Tensor:
        if s.shape[0] != batch:
            s = s.repeat(batch // s.shape[0], 1)
        emb = super().forward(s.reshape(-1))
        return emb.reshape(batch, -1)


class CaptionEmbedder(nn.Module):
    """T5 features -> hidden (``y_proj``), and the learned null caption ``y_embedding`` (a persistent buffer)."""

    def __init__(self, in_channels: int, hidden: int, tokens: int) -> None:
        super().__init__()
        self.y_proj = Mlp(in_features=in_channels, hidden_features=hidden, out_features=hidden, act_layer=gelu_tanh)
        self.register_buffer("y_embedding", torch.randn(tokens, in_channels) / in_channels ** 0.5)


def cross_attention_entropy(attn: torch.Tensor, key_mask: torch.Tensor, cfg_halves: bool) -> torch.Tensor:
    """Entropy per image token of the head-mean cross-attention map, (B, n), as the reference computes it.

    ``attn`` is (B, H, n, L). The reference averages the map of the two CFG halves, ``0.5 P_a + 0.5 P_b``,
    on its packed layout where the halves' text tokens are different columns; so the averaged row
    holds both halves' distributions side by side, each weighted 0.5. Both halves get that entropy.
    """
    p = attn.float().mean(dim=1) * key_mask[:, None, :]                # (B, n, L); masked keys are 0 anyway
    if cfg_halves:
        half = p.shape[0] // 2
        p = 0.5 * torch.cat([p[:half], p[half:]], dim=-1)              # (B/2, n, 2L): disjoint column blocks
    ent = -(p * torch.log(p + ENTROPY_EPS)).sum(dim=-1)
    return ent.repeat(2, 1) if cfg_halves else ent


class CrossAttention(nn.Module):
    """Image tokens attend to their own sample's valid text tokens (``q_linear``, ``kv_linear``, ``proj``).

    ``x`` may be any subset of a sample's tokens (partial recompute): each query row depends only on its
    own token and the text, so a subset gives the same rows as the full computation.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor, stat: str | None = None,
                cfg_halves: bool = False):
        b, n, c = x.shape
        hd = c // self.heads
        q = self.q_linear(x).view(b, n, self.heads, hd).transpose(1, 2)
        k, v = self.kv_linear(y).view(b, y.shape[1], 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        allowed = key_mask.bool()[:, None, None, :]                    # (B, 1, 1, L)
        if stat is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        elif stat == "cross_entropy":
            # Only the small (n x L) cross-attention map is formed, never the self-attention map.
            scores = (q @ k.transpose(-2, -1)).float() * hd ** -0.5
            attn = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
            out = attn.to(v.dtype) @ v
        else:
            raise ValueError(f"PixArt cross-attention provides the 'cross_entropy' statistic, not {stat!r}")
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        if stat is None:
            return out
        return out, cross_attention_entropy(attn, key_mask.to(attn.dtype), cfg_halves)


@dataclass
class Caption:
    """Caption features for one forward batch: ``tokens`` (B, L, caption_channels), ``mask`` (B, L) of 0/1,
    valid tokens first (see ``pack_caption``)."""

    tokens: torch.Tensor
    mask: torch.Tensor

    @property
    def lengths(self) -> list[int]:
        return [int(v) for v in self.mask.sum(dim=1).tolist()]


def pack_caption(tokens: torch.Tensor, mask: torch.Tensor) -> Caption:
    """Keep the tokens where ``mask != 0``, moved to the front of each row, trimmed to the longest row.

    The per-sample form of the reference's packing (B.3 step 5): row i holds exactly its L_i valid tokens
    (then padding the mask hides). ``tokens`` (B, L, C), ``mask`` (B, L).
    """
    if tokens.shape[:2] != mask.shape:
        raise ValueError(f"caption tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)} disagree")
    valid = mask != 0
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # valid positions first, in order
    longest = max(int(valid.sum(dim=1).max()), 1) if valid.device.type != "meta" else mask.shape[1]
    order = order[:, :longest]
    packed = tokens.gather(1, order[..., None].expand(-1, -1, tokens.shape[-1]))
    return Caption(packed, valid.gather(1, order).to(tokens.dtype))
