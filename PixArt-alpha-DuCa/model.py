"""PixArt-alpha XL/2 (256, 512) and PixArtMS XL/2 (1024, micro-conditioned), wired to the DuCa cache engine.

Parameter names and shapes are those of the official ``.pth`` files (shared/reference/models.md B.2), so
``load_state_dict(strict=True)`` works on their ``state_dict`` entry. The forward follows B.3:

    x = patch_embed(x) + pos_embed;  t = t_embedder(t) (+ size / aspect-ratio embeddings for MS)
    t0 = t_block(t)                                   # adaLN-single: one projection for all blocks
    y  = y_proj(caption)                              # T5 features -> hidden size
    each block:  x += gate_msa * SelfAttn(modulate(LN(x)))
                 x += CrossAttn(x, y)                 # no norm, no modulation, no gate
                 x += gate_mlp * MLP(modulate(LN(x)))
    final layer (modulated by t, not t0), unpatchify

Caching: every block hands "attn", "cross_attn" and "mlp" to the engine (``duca_common.cache``); the
cross-attention and the MLP can be recomputed for a subset of tokens (B.9).

Cross-attention masking. The reference packs the valid text tokens of all samples into one sequence and
uses a block-diagonal mask. Here each sample keeps its own text tokens (valid tokens gathered to the
front, see ``pack_caption``) and a key-padding mask. Both give exactly the same softmax: a masked key
has weight 0 in either layout. It avoids a (B*N) x sum(L) mask, which at batch 100 with CFG would hold
about 10^8 entries per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp

from duca_common.cache import BlockLayout, CacheConfig, CachedModel, FeatureCache, residual
from duca_common.cache.attention_score import sdpa_and_received
from duca_common.layers import (
    Caption,
    CaptionEmbedder,
    CrossAttention,
    SizeEmbedder,
    TimestepEmbedder,
    gelu_tanh,
    pack_caption,
    pos_embed_2d,
    t2i_modulate,
)
from duca_common.text import T5_MAX_LENGTH

# Architecture constants of PixArt-XL/2 (models.md B.1/B.2).
XL_HIDDEN = 1152
XL_DEPTH = 28
HEAD_DIM = 72                   # 1152 / 16 heads; also used to infer the head count of other widths
PATCH_SIZE = 2
LATENT_CHANNELS = 4
TEXT_TOKENS = T5_MAX_LENGTH       # T5 max_length (B.6)
T5_XXL_DIM = 4096               # caption_channels
MLP_RATIO = 4.0
LN_EPS = 1e-6                   # LayerNorm without affine (models.md notation, B.2)
NUM_MODULATIONS = 6             # shift/scale/gate for attention and MLP (adaLN-single t_block, B.2)
MS_IMAGE_SIZE = 1024            # the only official multi-scale (PixArtMS) checkpoint is 1024px (B.1)
VAE_DOWNSAMPLE = 8              # SD VAE: latent side = image side / 8
# lewei_scale per image size (B.1: the DuCa fork's table); other sizes use 1 (non-MS) / 2 (MS).
LEWEI_SCALE = {256: 1.0, 512: 1.0, 1024: 2.0}
# Entropy of the cross-attention map: the reference adds 1e-7 inside the log (B.9 step 2; ENTROPY_EPS in
# duca_common.layers).

# The module names the engine caches, in execution order, and which can run on a token subset (B.9).
CACHED_MODULES = ("attn", "cross_attn", "mlp")
TOKENWISE_MODULES = ("cross_attn", "mlp")


@dataclass(frozen=True)
class PixArtConfig:
    """Sizes of one PixArt transformer. ``input_size`` is the latent side at training resolution."""

    input_size: int = 32
    hidden_size: int = XL_HIDDEN
    depth: int = XL_DEPTH
    num_heads: int = XL_HIDDEN // HEAD_DIM
    patch_size: int = PATCH_SIZE
    in_channels: int = LATENT_CHANNELS
    learn_sigma: bool = True
    caption_channels: int = T5_XXL_DIM
    text_tokens: int = TEXT_TOKENS
    lewei_scale: float = 1.0
    multi_scale: bool = False     # PixArtMS: size and aspect-ratio micro-conditions (B.5)

    def __post_init__(self) -> None:
        checks = [
            (self.input_size >= self.patch_size and self.input_size % self.patch_size == 0, "input_size",
             f"a multiple of patch_size={self.patch_size}"),
            (self.depth >= 1, "depth", "an integer >= 1"),
            (self.num_heads >= 1 and self.hidden_size % self.num_heads == 0, "num_heads",
             f"a divisor of hidden_size={self.hidden_size}"),
            (not self.multi_scale or self.hidden_size % 3 == 0, "hidden_size",
             "a multiple of 3 for the MS model (size embedder width is hidden/3)"),
            (self.lewei_scale > 0, "lewei_scale", "a float > 0"),
        ]
        for ok, name, allowed in checks:
            if not ok:
                raise ValueError(f"PixArtConfig.{name}={getattr(self, name)!r} is invalid: allowed {allowed}")

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def base_size(self) -> int:
        """Token-grid side at training resolution (B.4)."""
        return self.input_size // self.patch_size

    @property
    def image_size(self) -> int:
        return self.input_size * VAE_DOWNSAMPLE


def pixart_xl_2(image_size: int) -> PixArtConfig:
    """The official PixArt-XL/2 configuration for 256, 512 or 1024 (1024 is the MS model) (B.1)."""
    if image_size not in LEWEI_SCALE:
        raise ValueError(f"image_size={image_size} has no official PixArt-XL/2 checkpoint; allowed "
                         f"{sorted(LEWEI_SCALE)}")
    return PixArtConfig(input_size=image_size // VAE_DOWNSAMPLE, lewei_scale=LEWEI_SCALE[image_size],
                        multi_scale=image_size == MS_IMAGE_SIZE)


# ---------------------------------------------------------------------------------------------------
# Fixed embeddings
# ---------------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------------
# Sub-modules (names match the official checkpoint)
# ---------------------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """Conv2d(k = s = patch) then flatten: token index = row * W + col. Accepts any multiple-of-patch size."""

    def __init__(self, patch: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous (B, N, C): the transposed view would set the layout of the residual stream (see
        # dit_duca.models.PatchEmbed)
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()


class SelfAttention(nn.Module):
    """timm-style attention (``qkv``, ``proj``); the output always comes from SDPA. Selector statistics:
    ``value_norm`` (||v|| per head, averaged over the CFG halves as the reference) and
    ``attention_received`` (head-mean attention each token receives, computed in query chunks without the
    tokens x tokens map, ``duca_common.cache.attention_score``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, stat: str | None = None, cfg_halves: bool = False):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if stat == "attention_received":
            out, received = sdpa_and_received(q, k, v)
            return self.proj(out.transpose(1, 2).reshape(b, n, c)), received
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        if stat is None:
            return out
        if stat != "value_norm":
            raise ValueError(f"PixArt self-attention provides the 'value_norm' and 'attention_received' "
                             f"statistics, not {stat!r}")
        norms = v.float().norm(dim=-1)                                 # (B, H, N)
        if cfg_halves:   # the reference averages ||v|| over the two CFG halves (B.9 'kv-norm')
            norms = norms.view(2, b // 2, *norms.shape[1:]).mean(0).repeat(2, 1, 1)
        return out, norms


class PixArtBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.attn = SelfAttention(dim, heads)
        self.cross_attn = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * MLP_RATIO), act_layer=gelu_tanh)
        self.scale_shift_table = nn.Parameter(torch.randn(NUM_MODULATIONS, dim) / dim ** 0.5)

    def forward(self, x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor, t0: torch.Tensor, cache=None,
                cfg_halves: bool = False) -> torch.Tensor:
        if cache is not None and cache.skip:
            return x
        b = x.shape[0]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + t0.reshape(b, NUM_MODULATIONS, -1)).chunk(NUM_MODULATIONS, dim=1)
        x = residual(cache, "attn", x, lambda t, stat: self.attn(
            t2i_modulate(self.norm1(t), shift_msa, scale_msa), stat, cfg_halves), gate_msa)
        x = residual(cache, "cross_attn", x, lambda t, stat: self.cross_attn(t, y, key_mask, stat, cfg_halves))
        x = residual(cache, "mlp", x, lambda t, stat: self.mlp(t2i_modulate(self.norm2(t), shift_mlp, scale_mlp)),
                     gate_mlp)
        return x


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=LN_EPS)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim ** 0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        return self.linear(t2i_modulate(self.norm_final(x), shift, scale))


# ---------------------------------------------------------------------------------------------------
# The transformer
# ---------------------------------------------------------------------------------------------------
class PixArt(CachedModel, nn.Module):
    """PixArt-alpha (``multi_scale=False``) or PixArtMS (``multi_scale=True``). Returns (B, out_ch, H, W)."""

    def __init__(self, config: PixArtConfig, cache_config: CacheConfig | None = None) -> None:
        super().__init__()
        self.config = config
        c = config.hidden_size
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, c)
        self.t_embedder = TimestepEmbedder(c)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(c, NUM_MODULATIONS * c))
        self.y_embedder = CaptionEmbedder(config.caption_channels, c, config.text_tokens)
        if config.multi_scale:
            self.csize_embedder = SizeEmbedder(c // 3)
            self.ar_embedder = SizeEmbedder(c // 3)
        self.blocks = nn.ModuleList(PixArtBlock(c, config.num_heads) for _ in range(config.depth))
        self.final_layer = FinalLayer(c, config.patch_size, config.out_channels)
        self.register_buffer("pos_embed", torch.zeros(1, config.base_size ** 2, c))
        self.reset_pos_embed()
        # False when the weights came without the learned null caption (diffusers format, B.10).
        self.has_null_caption = True
        self.feature_cache = FeatureCache(cache_config or CacheConfig(), BlockLayout(
            config.depth, CACHED_MODULES, tokenwise=TOKENWISE_MODULES, self_attn="attn", cross_attn="cross_attn",
            step_counts_down=False))

    @property
    def dtype(self) -> torch.dtype:
        return self.t_block[1].weight.dtype

    def reset_pos_embed(self) -> None:
        """Overwrite the stored table with the recomputed one (upstream ignores the stored value, B.1)."""
        cfg = self.config
        table = pos_embed_2d(cfg.hidden_size, (cfg.base_size, cfg.base_size), cfg.base_size, cfg.lewei_scale)
        with torch.no_grad():
            self.pos_embed.copy_(table.to(self.pos_embed.device, self.pos_embed.dtype))

    def null_caption(self, mask: torch.Tensor) -> Caption:
        """The learned null caption with the prompt's mask (B.6): the uncond row sees the first L_i tokens."""
        if not self.has_null_caption:
            raise RuntimeError("these weights carry no learned null caption (diffusers format); encode the "
                               "empty prompt with T5 instead")
        null = self.y_embedder.y_embedding[None].expand(mask.shape[0], -1, -1)
        return pack_caption(null, mask)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, caption: Caption,
                img_hw: torch.Tensor | None = None, aspect_ratio: torch.Tensor | None = None) -> torch.Tensor:
        cfg, dtype = self.config, self.dtype
        b, _, h_lat, w_lat = x.shape
        p = cfg.patch_size
        if h_lat % p or w_lat % p:
            raise ValueError(f"latent size {h_lat}x{w_lat} is not a multiple of the patch size {p}")
        h, w = h_lat // p, w_lat // p
        x = x.to(dtype)
        timestep = timestep.to(dtype)               # fp16 rounding of t before the sinusoid (B.3 step 1)
        if cfg.multi_scale:
            pos = pos_embed_2d(cfg.hidden_size, (h, w), cfg.base_size, cfg.lewei_scale).to(x.device, dtype)
        else:
            if (h, w) != (cfg.base_size, cfg.base_size):
                raise ValueError(f"this PixArt model takes {cfg.base_size * p}x{cfg.base_size * p} latents "
                                 f"({cfg.image_size}px images), got {h_lat}x{w_lat}")
            pos = self.pos_embed
        x = self.x_embedder(x) + pos
        t = self.t_embedder(timestep)
        if cfg.multi_scale:
            if img_hw is None or aspect_ratio is None:
                raise ValueError("the PixArtMS model needs img_hw (B, 2) and aspect_ratio (B, 1) micro-conditions")
            t = t + torch.cat([self.csize_embedder(img_hw.to(x.device), b),
                               self.ar_embedder(aspect_ratio.to(x.device), b)], dim=1).to(dtype)
        t0 = self.t_block(t)
        y = self.y_embedder.y_proj(caption.tokens.to(dtype))
        key_mask = caption.mask.to(x.device)
        run = self.feature_cache.active
        cfg_halves = run is not None and run.cfg_halves
        step = self.feature_cache.current_step()
        for i, block in enumerate(self.blocks):
            x = block(x, y, key_mask, t0, None if step is None else step.block(i), cfg_halves)
        if step is not None:
            x = step.trunk(x)
        x = self.final_layer(x, t)
        return self.unpatchify(x, h, w)

    def unpatchify(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, h*w, p*p*C) -> (B, C, h*p, w*p), channels fastest in each token (section 0.5)."""
        p, c = self.config.patch_size, self.config.out_channels
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)


# Aspect-ratio buckets of the 1024-MS model at test time, key -> [H, W] in pixels (B.5 ASPECT_RATIO_1024_TEST).
ASPECT_RATIO_1024 = {
    0.25: (512, 2048), 0.28: (512, 1856), 0.32: (576, 1792), 0.33: (576, 1728), 0.35: (576, 1664),
    0.4: (640, 1600), 0.42: (640, 1536), 0.48: (704, 1472), 0.5: (704, 1408), 0.52: (704, 1344),
    0.57: (768, 1344), 0.6: (768, 1280), 0.68: (832, 1216), 0.72: (832, 1152), 0.78: (896, 1152),
    0.82: (896, 1088), 0.88: (960, 1088), 0.94: (960, 1024), 1.0: (1024, 1024), 1.07: (1024, 960),
    1.13: (1088, 960), 1.21: (1088, 896), 1.29: (1152, 896), 1.38: (1152, 832), 1.46: (1216, 832),
    1.67: (1280, 768), 1.75: (1344, 768), 2.0: (1408, 704), 2.09: (1472, 704), 2.4: (1536, 640),
    2.5: (1600, 640), 3.0: (1728, 576), 4.0: (2048, 512),
}


def nearest_bucket(aspect_ratio: float) -> tuple[float, tuple[int, int]]:
    """The 1024-MS bucket whose key (H/W) is nearest to ``aspect_ratio``: (key, (H, W))."""
    key = min(ASPECT_RATIO_1024, key=lambda k: abs(k - aspect_ratio))
    return key, ASPECT_RATIO_1024[key]
