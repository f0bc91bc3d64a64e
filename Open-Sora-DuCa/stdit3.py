"""STDiT3 (OpenSora 1.2), wired to the DuCa cache engine.

Parameter names and shapes are those of ``hpcai-tech/OpenSora-STDiT-v3`` (shared/reference/models.md C.3:
973 tensors, 1,207,643,972 parameters for XL/2), so ``load_state_dict(strict=True)`` works. Forward (C.5):

    x = patch_embed3d(x) + pos_emb2d              # tokens in (t, h, w) order, the 2-D table on every frame
    t = t_embedder(timestep) + fps_embedder(fps);  t_mlp = t_block(t)
    y = y_proj(caption)                          # T5 features -> hidden size
    for i: x = spatial_blocks[i](x);  x = temporal_blocks[i](x)
        block: x += gate_msa * SelfAttn(modulate(LN(x)))   # spatial: within a frame; temporal: across frames, RoPE
               x += CrossAttn(x, y)
               x += gate_mlp * MLP(modulate(LN(x)))
    final layer (modulated by t), unpatchify, crop, fp32

Caching. Spatial block i and temporal block i are engine blocks 2i and 2i+1 of one
``BlockLayout(depth=2*depth, modules=("attn", "cross_attn", "mlp"))``. The reference keeps two trunk outputs,
one per flag (spatial / temporal, C.11), and swaps in the previous step's output of block 27 of each flag when
all modules are aggressive. All modules of both flags become aggressive on the same steps, so in such a step
spatial 27's cached output is overwritten by the temporal blocks anyway (they are skipped too) and the
temporal trunk output is what reaches the final layer: one trunk output after the last temporal block is
equivalent, and that is what ``step.trunk`` keeps.

The MLP's input is modulated for all tokens before the engine picks the tokens to recompute (as the reference
does, C.11 "partial"). With an ``x_mask`` the modulation differs per frame, so the subset carries its own
per-token modulation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp

from duca_common.cache import Action, BlockLayout, CacheConfig, CachedModel, FeatureCache
from duca_common.layers import (
    Caption,
    CaptionEmbedder,
    CrossAttention,
    SizeEmbedder,
    TimestepEmbedder,
    gelu_tanh,
    pack_caption,
    t2i_modulate,
)

# Architecture constants of STDiT3-XL/2 (models.md C.2).
XL_HIDDEN = 1152
XL_DEPTH = 28
XL_HEADS = 16
PATCH_SIZE = (1, 2, 2)           # (time, height, width)
LATENT_CHANNELS = 4
T5_XXL_DIM = 4096                # caption_channels
TEXT_TOKENS = 300                # model_max_length
INPUT_SQ_SIZE = 512              # the position-embedding scale is sqrt(H*W) / 512 (C.4)
MLP_RATIO = 4.0
LN_EPS = 1e-6                    # LayerNorm without affine (C.5)
RMS_EPS = 1e-6                   # LlamaRMSNorm of the qk-norm (C.4)
ROPE_THETA = 10000.0             # rotary_embedding_torch default (C.4)
POS_THETA = 10000.0              # PositionEmbedding2D (C.4, section 0.4)
NUM_MODULATIONS = 6              # shift/scale/gate for attention and MLP (adaLN-single)

# The engine's view of one STDiT3 block (spatial or temporal) (C.11).
CACHED_MODULES = ("attn", "cross_attn", "mlp")
TOKENWISE_MODULES = ("mlp",)


@dataclass(frozen=True)
class STDiT3Config:
    hidden_size: int = XL_HIDDEN
    depth: int = XL_DEPTH                      # number of (spatial, temporal) block pairs
    num_heads: int = XL_HEADS
    patch_size: tuple[int, int, int] = PATCH_SIZE
    in_channels: int = LATENT_CHANNELS
    pred_sigma: bool = True
    caption_channels: int = T5_XXL_DIM
    model_max_length: int = TEXT_TOKENS
    input_sq_size: int = INPUT_SQ_SIZE
    mlp_ratio: float = MLP_RATIO

    def __post_init__(self) -> None:
        head_dim = self.hidden_size // max(self.num_heads, 1)
        checks = [
            (self.depth >= 1, "depth", "an integer >= 1"),
            (self.num_heads >= 1 and self.hidden_size % self.num_heads == 0, "num_heads",
             f"a divisor of hidden_size={self.hidden_size}"),
            (head_dim % 2 == 0, "num_heads", "a value giving an even head width (RoPE rotates pairs)"),
            (self.hidden_size % 4 == 0, "hidden_size", "a multiple of 4 (2-D sin-cos table)"),
            (len(self.patch_size) == 3 and all(p >= 1 for p in self.patch_size), "patch_size",
             "three integers >= 1 (time, height, width)"),
            (self.model_max_length >= 1, "model_max_length", "an integer >= 1"),
        ]
        for ok, name, allowed in checks:
            if not ok:
                raise ValueError(f"STDiT3Config.{name}={getattr(self, name)!r} is invalid: allowed {allowed}")

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.pred_sigma else self.in_channels

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def stdit3_xl_2() -> STDiT3Config:
    """The official STDiT3-XL/2 configuration (C.2)."""
    return STDiT3Config()


def block_layout(depth: int) -> BlockLayout:
    """Spatial block i is engine block 2i, temporal block i is 2i+1; the step counts up (C.11, E)."""
    return BlockLayout(depth=2 * depth, modules=CACHED_MODULES, tokenwise=TOKENWISE_MODULES, self_attn="attn",
                       cross_attn="cross_attn", step_counts_down=False)


# ---------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------
class RotaryEmbedding(nn.Module):
    """GPT-J style (interleaved pairs) RoPE over all ``dim`` channels, as rotary_embedding_torch 0.5.3 (C.4).

    ``freqs`` is an ``nn.Parameter`` (not trained) because the checkpoint stores it as ``rope.freqs``.
    """

    def __init__(self, dim: int, theta: float = ROPE_THETA) -> None:
        super().__init__()
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def rotate_queries_or_keys(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` (..., T, dim) by its position along dim -2 (positions 0..T-1 made in x's dtype)."""
        seq = torch.arange(x.shape[-2], device=x.device, dtype=x.dtype)
        angles = seq.to(self.freqs.dtype)[:, None] * self.freqs[None]        # computed in freqs' dtype (C.4)
        angles = angles.repeat_interleave(2, dim=-1)                          # [f0, f0, f1, f1, ...]
        pairs = x.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return x * angles.cos() + rotated * angles.sin()


def sincos_table_2d(dim: int, h: int, w: int, scale: float, base_size: int, device=None) -> torch.Tensor:
    """PositionEmbedding2D (C.4): (1, h*w, dim) fp32, tokens row-major; first half encodes the column.

    gy(r) = r / scale * base_size / h, gx(c) = c / scale * base_size / w; each half is [sin | cos] of
    ``dim/4`` frequencies 10000^(-2k/(dim/2)).
    """
    half = dim // 2
    inv_freq = 1.0 / POS_THETA ** (torch.arange(0, half, 2, device=device).float() / half)
    gy = torch.arange(h, device=device, dtype=torch.float32) / scale * (base_size / h)
    gx = torch.arange(w, device=device, dtype=torch.float32) / scale * (base_size / w)
    gx = gx[None, :].expand(h, w).reshape(-1)
    gy = gy[:, None].expand(h, w).reshape(-1)

    def sincos(g: torch.Tensor) -> torch.Tensor:
        out = g[:, None] * inv_freq[None]
        return torch.cat([out.sin(), out.cos()], dim=-1)

    return torch.cat([sincos(gx), sincos(gy)], dim=-1)[None]


class PatchEmbed3D(nn.Module):
    """Conv3d with kernel = stride = patch; zero-pads T, H, W at the end to patch multiples (C.5 step 5)."""

    def __init__(self, patch: tuple[int, int, int], in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pt, ph, pw = self.patch
        _, _, t, h, w = x.shape
        x = F.pad(x, (0, (-w) % pw, 0, (-h) % ph, 0, (-t) % pt))
        # (B, T*H*W, C) in (t, h, w) order, contiguous: the transposed view would set the layout of the residual
        # stream (see dit_duca.models.PatchEmbed)
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()


# ---------------------------------------------------------------------------------------------------
# Attention and blocks
# ---------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """LlamaRMSNorm: fp32 ``x * rsqrt(mean(x^2) + eps)``, back to the input dtype, times ``weight`` (C.4)."""

    def __init__(self, dim: int, eps: float = RMS_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class SelfAttention(nn.Module):
    """``qkv`` -> qk RMSNorm -> (RoPE) -> SDPA -> ``proj`` on (batch, sequence, C) rows."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(dim // heads)
        self.k_norm = RMSNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: Callable[[torch.Tensor], torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the output (B, N, C) and the values (B, H, N, d) (the engine may want their norms)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c)), v


def frame_select(x_mask: torch.Tensor | None, val: torch.Tensor, val0: torch.Tensor | None, t: int,
                 s: int) -> torch.Tensor:
    """Per-token choice between the timestep-t value and the timestep-0 value (C.6).

    ``val``/``val0`` are (B, 1, C) modulations; returns ``val`` when there is no mask, else (B, T*S, C)
    with ``val`` on frames where ``x_mask`` is True and ``val0`` elsewhere.
    """
    if x_mask is None:
        return val
    b, _, c = val.shape
    chosen = torch.where(x_mask[:, :, None, None], val[:, None].expand(b, t, s, c), val0[:, None].expand(b, t, s, c))
    return chosen.reshape(b, t * s, c)


@dataclass
class BlockInputs:
    """What every block of one forward shares."""

    t_mlp: torch.Tensor                   # (B, 6C)
    y: torch.Tensor                       # (B, L, C) projected caption
    key_mask: torch.Tensor                # (B, L)
    frames: int                           # T
    tokens_per_frame: int                 # S
    x_mask: torch.Tensor | None = None    # (B, T) bool; False = conditioning frame (t0 modulation)
    t0_mlp: torch.Tensor | None = None    # (B, 6C), only with x_mask
    cfg_halves: bool = False


def _module_output(cache, name: str, x: torch.Tensor, make_input: Callable[[], torch.Tensor],
                   fn: Callable[[torch.Tensor, str | None], object]) -> torch.Tensor | None:
    """The module's (pre-gate) output this step: computed, partially recomputed or reused by the engine;
    None when the engine skips it. The input is built only when something is computed."""
    if cache is None:
        return fn(make_input(), None)
    needs_input = cache.action(name) in (Action.FULL, Action.PARTIAL)
    return cache.run(name, make_input() if needs_input else x, fn)


class STDiT3Block(nn.Module):
    """One spatial (attention within a frame) or temporal (attention across frames, RoPE) block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False)
        self.attn = SelfAttention(dim, heads)
        self.cross_attn = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=gelu_tanh)
        self.scale_shift_table = nn.Parameter(torch.randn(NUM_MODULATIONS, dim) / dim ** 0.5)

    def _attend(self, a: torch.Tensor, t: int, s: int, rope, stat: str | None):
        """Self-attention over (B, T*S, C) tokens; with ``stat='value_norm'`` also (B, H, T*S) norms."""
        b, n, c = a.shape
        if self.temporal:
            rows = a.view(b, t, s, c).transpose(1, 2).reshape(b * s, t, c)
        else:
            rows = a.reshape(b * t, s, c)
        out, v = self.attn(rows, rope if self.temporal else None)
        if self.temporal:
            out = out.view(b, s, t, c).transpose(1, 2).reshape(b, n, c)
        else:
            out = out.reshape(b, n, c)
        if stat is None:
            return out
        if stat != "value_norm":
            raise ValueError(f"STDiT3 self-attention provides the 'value_norm' statistic, not {stat!r}")
        norms = v.float().norm(dim=-1)                                      # (rows, H, seq)
        heads = norms.shape[1]
        if self.temporal:   # rows are (b, s), sequence is t
            norms = norms.view(b, s, heads, t).permute(0, 2, 3, 1)
        else:               # rows are (b, t), sequence is s
            norms = norms.view(b, t, heads, s).permute(0, 2, 1, 3)
        return out, norms.reshape(b, heads, t * s)                          # (t, s) token order

    def forward(self, x: torch.Tensor, inp: BlockInputs, rope, cache=None) -> torch.Tensor:
        if cache is not None and cache.skip:
            return x
        b, t, s = x.shape[0], inp.frames, inp.tokens_per_frame
        mods = (self.scale_shift_table[None] + inp.t_mlp.reshape(b, NUM_MODULATIONS, -1)).chunk(NUM_MODULATIONS, 1)
        mods0 = ((self.scale_shift_table[None] + inp.t0_mlp.reshape(b, NUM_MODULATIONS, -1)).chunk(NUM_MODULATIONS, 1)
                 if inp.x_mask is not None else (None,) * NUM_MODULATIONS)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            frame_select(inp.x_mask, m, m0, t, s) for m, m0 in zip(mods, mods0, strict=True))

        out = _module_output(cache, "attn", x, lambda: t2i_modulate(self.norm1(x), shift_msa, scale_msa),
                             lambda a, stat: self._attend(a, t, s, rope, stat))
        if out is not None:
            x = x + gate_msa * out
        out = _module_output(cache, "cross_attn", x, lambda: x, lambda q, stat: self.cross_attn(
            q, inp.y, inp.key_mask, stat, inp.cfg_halves))
        if out is not None:
            x = x + out
        out = _module_output(cache, "mlp", x, lambda: t2i_modulate(self.norm2(x), shift_mlp, scale_mlp),
                             lambda m, stat: self.mlp(m))
        if out is not None:
            x = x + gate_mlp * out
        return x


# How the final layer treats conditioning frames (x_mask False; models.md C.6, issue 12 item 5):
#   "reference"  as the OpenSora 1.2 / DuCa code (opensora/models/layers/blocks.py, T2IFinalLayer.forward): the
#                tokens are first modulated with t, then LayerNorm + the t0 modulation are applied again on top
#                of that result, so conditioning frames are normalised and modulated twice.
#   "single"     LayerNorm + the t0 modulation once, as every block does on conditioning frames.
# Text-to-video passes no x_mask (or an all-True one, C.6): both give the same output there.
FINAL_MASKED_MODULATIONS = ("reference", "single")


class FinalLayer(nn.Module):
    """T2IFinalLayer: modulated by t (t0 on conditioning frames, see FINAL_MASKED_MODULATIONS), Linear to
    prod(patch) * out channels."""

    def __init__(self, dim: int, patch: tuple[int, int, int], out_channels: int,
                 masked_modulation: str = "reference") -> None:
        super().__init__()
        if masked_modulation not in FINAL_MASKED_MODULATIONS:
            raise ValueError(f"final_masked_modulation={masked_modulation!r} is invalid: allowed "
                             f"{list(FINAL_MASKED_MODULATIONS)}")
        self.masked_modulation = masked_modulation
        self.norm_final = nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False)
        self.linear = nn.Linear(dim, math.prod(patch) * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim ** 0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor, inp: BlockInputs, t0: torch.Tensor | None) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        out = t2i_modulate(self.norm_final(x), shift, scale)
        if inp.x_mask is not None:
            shift0, scale0 = (self.scale_shift_table[None] + t0[:, None]).chunk(2, dim=1)
            source = out if self.masked_modulation == "reference" else x
            out0 = t2i_modulate(self.norm_final(source), shift0, scale0)
            b, f, s = x.shape[0], inp.frames, inp.tokens_per_frame
            keep = inp.x_mask[:, :, None, None].expand(b, f, s, 1).reshape(b, f * s, 1)
            out = torch.where(keep, out, out0)
        return self.linear(out)


# ---------------------------------------------------------------------------------------------------
# The transformer
# ---------------------------------------------------------------------------------------------------
class STDiT3(CachedModel, nn.Module):
    """STDiT3. ``forward`` returns (B, out_channels, T, H, W) in fp32 (C.5 step 7)."""

    def __init__(self, config: STDiT3Config, cache_config: CacheConfig | None = None,
                 final_masked_modulation: str = "reference") -> None:
        """``final_masked_modulation``: how the final layer modulates conditioning frames (x_mask False):
        "reference" (twice, as the OpenSora / DuCa code) or "single" (see FINAL_MASKED_MODULATIONS)."""
        super().__init__()
        self.config = config
        c = config.hidden_size
        self.rope = RotaryEmbedding(config.head_dim)
        self.x_embedder = PatchEmbed3D(config.patch_size, config.in_channels, c)
        self.t_embedder = TimestepEmbedder(c)
        self.fps_embedder = SizeEmbedder(c)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(c, NUM_MODULATIONS * c))
        self.y_embedder = CaptionEmbedder(config.caption_channels, c, config.model_max_length)
        self.spatial_blocks = nn.ModuleList(
            STDiT3Block(c, config.num_heads, config.mlp_ratio, temporal=False) for _ in range(config.depth))
        self.temporal_blocks = nn.ModuleList(
            STDiT3Block(c, config.num_heads, config.mlp_ratio, temporal=True) for _ in range(config.depth))
        self.final_layer = FinalLayer(c, config.patch_size, config.out_channels, final_masked_modulation)
        self.feature_cache = FeatureCache(cache_config or CacheConfig(), block_layout(config.depth))

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    def null_caption(self, mask: torch.Tensor) -> Caption:
        """The learned null caption with the prompt's mask (C.7: the null rows reuse the prompt's mask)."""
        null = self.y_embedder.y_embedding[None].expand(mask.shape[0], -1, -1)
        return pack_caption(null, mask)

    def token_grid(self, latent_thw: tuple[int, int, int]) -> tuple[int, int, int]:
        """(T, H, W) of the token grid for a latent of (Tl, Hl, Wl): padded up to patch multiples."""
        grid = (-(-n // p) for n, p in zip(latent_thw, self.config.patch_size, strict=True))
        return tuple(grid)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, caption: Caption, fps: torch.Tensor,
                height: torch.Tensor, width: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor:
        cfg, dtype = self.config, self.dtype
        b, _, tl, hl, wl = x.shape
        t, h, w = self.token_grid((tl, hl, wl))
        s = h * w
        if x_mask is not None and tuple(x_mask.shape) != (b, t):
            raise ValueError(f"x_mask must be (batch, frames) = ({b}, {t}), got {tuple(x_mask.shape)}")
        x = x.to(dtype)
        timestep = timestep.to(dtype)                   # the model sees t rounded to its dtype (C.5 step 1)

        # Position table: scale from the requested pixel size (first sample), base = round(sqrt(S)) (C.4).
        scale = (float(height.reshape(-1)[0]) * float(width.reshape(-1)[0])) ** 0.5 / cfg.input_sq_size
        pos = sincos_table_2d(cfg.hidden_size, h, w, scale, round(s ** 0.5), device=x.device).to(dtype)

        fps_emb = self.fps_embedder(fps.reshape(-1, 1).to(x.device), b).to(dtype)
        temb = self.t_embedder(timestep) + fps_emb
        t_mlp = self.t_block(temb)
        t0, t0_mlp = None, None
        if x_mask is not None:
            t0 = self.t_embedder(torch.zeros_like(timestep)) + fps_emb
            t0_mlp = self.t_block(t0)

        y = self.y_embedder.y_proj(caption.tokens.to(dtype))
        x = self.x_embedder(x)
        x = (x.view(b, t, s, -1) + pos[:, None]).view(b, t * s, -1)

        run = self.feature_cache.active
        inp = BlockInputs(t_mlp, y, caption.mask.to(x.device), t, s, x_mask, t0_mlp,
                          cfg_halves=run is not None and run.cfg_halves)
        step = self.feature_cache.current_step()
        for i, (spatial, temporal) in enumerate(zip(self.spatial_blocks, self.temporal_blocks, strict=True)):
            x = spatial(x, inp, None, None if step is None else step.block(2 * i))
            x = temporal(x, inp, self.rope.rotate_queries_or_keys, None if step is None else step.block(2 * i + 1))
        if step is not None:
            x = step.trunk(x)
        x = self.final_layer(x, temb, inp, t0)
        return self.unpatchify(x, (t, h, w), (tl, hl, wl)).float()

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int], crop: tuple[int, int, int]) -> torch.Tensor:
        """(B, T*H*W, pt*ph*pw*C) -> (B, C, T*pt, H*ph, W*pw) with C fastest in each token, cropped (0.5)."""
        (t, h, w), (pt, ph, pw), c = grid, self.config.patch_size, self.config.out_channels
        x = x.reshape(x.shape[0], t, h, w, pt, ph, pw, c)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape[0], c, t * pt, h * ph, w * pw)
        return x[:, :, :crop[0], :crop[1], :crop[2]]


STDIT3_HUB_ID = "hpcai-tech/OpenSora-STDiT-v3"


def load_stdit3(spec: str, cache_config: CacheConfig | None = None, device: torch.device | str = "cpu") -> STDiT3:
    """STDiT3 from a folder / ``model.safetensors`` / hub id; the size comes from ``config.json`` when present
    (else XL/2). Loaded strictly; the weights are cast to fp32 (the file dtype is not known, C.1)."""
    from .checkpoint import config_fields, load_strict, read_config, read_safetensors, resolve_weights

    weights = resolve_weights(spec, "--ckpt-path", STDIT3_HUB_ID)
    try:
        config = STDiT3Config(**config_fields(STDiT3Config, read_config(weights)))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{weights.parent / 'config.json'} describes an invalid STDiT3: {err}") from err
    state = read_safetensors(weights)
    model = STDiT3(config, cache_config)
    load_strict(model, {k: v.float() for k, v in state.items()}, weights)
    return model.to(device).eval()


def config_dict(config: STDiT3Config) -> dict:
    """The ``config.json`` entries of a config (HF STDiT3Config naming; tuples as lists)."""
    return {"model_type": "STDiT3", **{k: list(v) if isinstance(v, tuple) else v
                                       for k, v in dataclasses.asdict(config).items()}}
