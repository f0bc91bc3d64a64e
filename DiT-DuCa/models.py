"""DiT (Peebles & Xie) with the shared DuCa cache engine.

Parameter names and shapes are exactly those of the official checkpoints (models.md A.2), so
``DiT-XL-2-256x256.pt`` / ``-512x512.pt`` load with ``strict=True``. ``pos_embed`` is a fixed 2-D
sin-cos table stored as a non-trainable ``nn.Parameter`` (it is in the official files).

The blocks hold no cache logic: each cached module (self-attention ``attn`` and ``mlp``) goes through
:func:`duca_common.cache.residual`, and the trunk output goes through ``step.trunk`` (models.md A.7,
section E). Outside a cache session the forward is the plain DiT forward.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from duca_common.cache import Action, BlockLayout, CacheConfig, CachedModel, FeatureCache, residual
from duca_common.cache.attention_score import sdpa_and_received

# the timestep embedder (models.md 0.1) and the 2-D sin-cos table (0.4) are shared with PixArt
from duca_common.layers import TimestepEmbedder, pos_embed_2d

# Constants of the DiT architecture (facebookresearch/DiT models.py; models.md A.1-A.3).
LN_EPS = 1e-6                    # LayerNorm(C, eps=1e-6, elementwise_affine=False) (models.md notation, A.3)
NUM_MODULATIONS = 6              # adaLN vectors per block: shift/scale/gate of attention, then of the MLP (A.3)
EMBED_INIT_STD = 0.02            # normal init std of the label table and timestep MLP (upstream initialize_weights)
# DiT-XL/2 at 256px, the constructor defaults (models.md A.1): latent side 32 = 256 / 8
XL_INPUT_SIZE = 32
XL_PATCH_SIZE = 2
LATENT_CHANNELS = 4              # SD VAE latent channels (models.md D.1)
XL_HIDDEN = 1152
XL_DEPTH = 28
XL_HEADS = 16
MLP_RATIO = 4.0                  # timm Mlp hidden = 4C (models.md 0.3)
CLASS_DROPOUT = 0.1              # label dropout; > 0 adds the null-class row (A.1)
IMAGENET_CLASSES = 1000
OFFICIAL_CFG_CHANNELS = 3        # forward_with_cfg guides only eps channels 0..2 of the official models (A.4)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# ------------------------------------------------------------------------------------------------
# Embedders (timm / DiT names: x_embedder.proj, y_embedder.embedding_table; t_embedder is shared)
# ------------------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    """timm ``PatchEmbed`` with the same parameter names: Conv2d ``proj`` (k = s = patch), flatten, NLC."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"input size {tuple(x.shape[-2:])} does not match the model's {self.img_size}")
        # contiguous (B, N, C): the transposed view would set the memory layout of the whole residual stream (an
        # elementwise op keeps its first operand's layout), and every residual add / fused addcmul mixing it with
        # a contiguous module output runs on a slow strided path (DiT-XL/2 on CPU: ~3% of a DuCa run; same values
        # bit for bit, docs/benchmarks.md)
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()


class LabelEmbedder(nn.Module):
    """Class labels to vectors; with dropout > 0 the table has one extra row, the null class."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


# ------------------------------------------------------------------------------------------------
# Attention and MLP (timm names: attn.qkv, attn.proj, mlp.fc1, mlp.fc2)
# ------------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """timm ``Attention`` (qkv with bias, proj); the output always comes from SDPA.

    ``stat`` is the selector statistic the engine asks for (``BlockView.stat_kind``):
    ``"attention_received"`` also returns the head-mean attention each token receives (B, N), computed
    in query chunks without the tokens x tokens map (``duca_common.cache.attention_score``);
    ``"value_norm"`` also returns ||v|| per head (B, H, N).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, stat: str | None = None):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if stat == "attention_received":
            out, received = sdpa_and_received(q, k, v, self.scale)   # received (B, N): column sums of the map
            return self.proj(out.transpose(1, 2).reshape(b, n, c)), received
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        if stat == "value_norm":
            return out, v.norm(dim=-1)                       # (B, H, N)
        if stat is not None:
            raise ValueError(f"DiT attention cannot provide the statistic {stat!r}")
        return out


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


# ------------------------------------------------------------------------------------------------
# Blocks
# ------------------------------------------------------------------------------------------------

class DiTBlock(nn.Module):
    """adaLN-Zero block. Cache decisions come from the engine's block view (``cache``)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = MLP_RATIO) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(),
                                              nn.Linear(hidden_size, NUM_MODULATIONS * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor, cache=None) -> torch.Tensor:
        if cache is not None and cache.skip:          # aggressive: the block adds nothing
            return x
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c, cache)
        x = residual(cache, "attn", x,
                     lambda t, stat: self.attn(modulate(self.norm1(t), shift_msa, scale_msa), stat=stat),
                     gate_msa.unsqueeze(1))
        x = residual(cache, "mlp", x,
                     lambda t, stat: self.mlp(modulate(self.norm2(t), shift_mlp, scale_mlp)),
                     gate_mlp.unsqueeze(1))
        return x


    def modulation(self, c: torch.Tensor, cache=None) -> list[torch.Tensor | None]:
        """The six adaLN vectors (shift, scale, gate of attention, then of the MLP).

        In a step that computes both modules (or without a cache) this is the plain ``adaLN_modulation(c)``.
        In a conservative step a reused or forecast module needs only its gate, so only the weight rows of the
        vectors needed are multiplied, one product per run of consecutive vectors (the others are None): on
        CPU this matrix-vector product reads its whole 6C x C weight from memory and was the largest cost of
        a conservative DiT-XL/2 step that the FLOPs model does not see (docs/benchmarks.md). A slice of the
        weight's rows gives the same values as the full product, bit for bit (tests/test_dit_model.py).
        """
        if cache is not None:
            need = [base + i for module, base in (("attn", 0), ("mlp", 3)) for i in _MOD_NEEDED[cache.action(module)]]
            if len(need) < NUM_MODULATIONS:
                out: list[torch.Tensor | None] = [None] * NUM_MODULATIONS
                linear = self.adaLN_modulation[-1]
                dim = linear.in_features
                h = self.adaLN_modulation[0](c) if need else None
                for lo, hi in _runs(need):
                    rows = F.linear(h, linear.weight[lo * dim:hi * dim], linear.bias[lo * dim:hi * dim])
                    out[lo:hi] = rows.chunk(hi - lo, dim=1)
                return out
        return list(self.adaLN_modulation(c).chunk(NUM_MODULATIONS, dim=1))


# adaLN vectors (0 shift, 1 scale, 2 gate) a module needs for each engine action: a computed module (full or
# partial) needs all three, a reused or forecast one only its gate (the residual x + gate * cached output).
_MOD_NEEDED = {Action.FULL: (0, 1, 2), Action.PARTIAL: (0, 1, 2), Action.REUSE: (2,), Action.FORECAST: (2,),
               Action.SKIP: ()}


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices as half-open runs of consecutive values: [2, 3, 5] -> [(2, 4), (5, 6)]."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=LN_EPS)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)     # shift first
        return self.linear(modulate(self.norm_final(x), shift, scale))


# ------------------------------------------------------------------------------------------------
# DiT
# ------------------------------------------------------------------------------------------------

def dit_block_layout(depth: int) -> BlockLayout:
    """The engine's view of DiT: attention then MLP per block; the MLP is token-wise; the step index
    counts down as in the reference sampler (models.md A.5 / A.7)."""
    return BlockLayout(depth, ("attn", "mlp"), tokenwise=("mlp",), self_attn="attn", step_counts_down=True)


class DiT(CachedModel, nn.Module):
    """Diffusion transformer. ``forward(x, t, y)`` with integer timesteps in the original 0..999 scale."""

    def __init__(self, input_size: int = XL_INPUT_SIZE, patch_size: int = XL_PATCH_SIZE,
                 in_channels: int = LATENT_CHANNELS, hidden_size: int = XL_HIDDEN, depth: int = XL_DEPTH,
                 num_heads: int = XL_HEADS, mlp_ratio: float = MLP_RATIO, class_dropout_prob: float = CLASS_DROPOUT,
                 num_classes: int = IMAGENET_CLASSES, learn_sigma: bool = True, cfg_channels: int | None = None,
                 cache_config: CacheConfig | None = None) -> None:
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.hidden_size = hidden_size
        self.depth = depth
        self.input_size = input_size
        self.num_classes = num_classes
        # Channels guided by forward_with_cfg: 3 for the official 4-channel models (models.md A.4, a
        # quirk kept for parity); every epsilon channel for other channel counts.
        official = in_channels == LATENT_CHANNELS
        self.cfg_channels = (cfg_channels if cfg_channels is not None
                             else OFFICIAL_CFG_CHANNELS if official else in_channels)

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.feature_cache = FeatureCache(cache_config or CacheConfig(), dit_block_layout(depth))
        self.initialize_weights()

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.x_embedder.grid_size

    def initialize_weights(self) -> None:
        """The official initialisation (xavier linears, adaLN-Zero, zero output layer)."""
        if self.pos_embed.is_meta:
            return

        def _basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        side = self.x_embedder.grid_size[0]
        self.pos_embed.data.copy_(pos_embed_2d(self.hidden_size, (side, side), base_size=side, lewei_scale=1.0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=EMBED_INIT_STD)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=EMBED_INIT_STD)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=EMBED_INIT_STD)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, H, W), channels fastest in each token (models.md 0.5)."""
        c, p = self.out_channels, self.x_embedder.patch_size[0]
        h, w = self.x_embedder.grid_size
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # bf16/fp16 weights (dit_duca.precision): the input is cast in and the output back (no-ops in fp32)
        in_dtype = x.dtype
        x = self.x_embedder(x.to(self.pos_embed.dtype)) + self.pos_embed
        t = self.t_embedder(t)
        y = self.y_embedder(y, self.training)
        c = t + y
        step = self.feature_cache.current_step()          # None outside a sampling session
        for i, block in enumerate(self.blocks):
            x = block(x, c, None if step is None else step.block(i))
        if step is not None:
            x = step.trunk(x)                               # aggressive steps swap in the cached trunk
        x = self.final_layer(x, c)
        return self.unpatchify(x).to(in_dtype)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """Classifier-free guidance on the batch ``[cond, uncond]`` (models.md A.4).

        The first half of ``x`` is run twice (labels ``y`` hold the real labels then the null class);
        the first ``cfg_channels`` epsilon channels are guided and copied to both halves; the other
        channels keep each half's own value.
        """
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)
        model_out = self.forward(combined, t, y)
        k = self.cfg_channels
        eps, rest = model_out[:, :k], model_out[:, k:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        eps = torch.cat([half_eps, half_eps], dim=0)
        return torch.cat([eps, rest], dim=1)


# ------------------------------------------------------------------------------------------------
# Fixed 2-D sin-cos position table (MAE convention, models.md 0.4; float64 numpy as upstream)
# ------------------------------------------------------------------------------------------------

# ------------------------------------------------------------------------------------------------
# Configs: the size table of upstream facebookresearch/DiT models.py (depth, hidden, patch, heads;
# XL/2 is models.md A.1)
# ------------------------------------------------------------------------------------------------

def DiT_XL_2(**kwargs): return DiT(depth=28, hidden_size=1152, patch_size=2, num_heads=16, **kwargs)
def DiT_XL_4(**kwargs): return DiT(depth=28, hidden_size=1152, patch_size=4, num_heads=16, **kwargs)
def DiT_XL_8(**kwargs): return DiT(depth=28, hidden_size=1152, patch_size=8, num_heads=16, **kwargs)
def DiT_L_2(**kwargs): return DiT(depth=24, hidden_size=1024, patch_size=2, num_heads=16, **kwargs)
def DiT_L_4(**kwargs): return DiT(depth=24, hidden_size=1024, patch_size=4, num_heads=16, **kwargs)
def DiT_L_8(**kwargs): return DiT(depth=24, hidden_size=1024, patch_size=8, num_heads=16, **kwargs)
def DiT_B_2(**kwargs): return DiT(depth=12, hidden_size=768, patch_size=2, num_heads=12, **kwargs)
def DiT_B_4(**kwargs): return DiT(depth=12, hidden_size=768, patch_size=4, num_heads=12, **kwargs)
def DiT_B_8(**kwargs): return DiT(depth=12, hidden_size=768, patch_size=8, num_heads=12, **kwargs)
def DiT_S_2(**kwargs): return DiT(depth=12, hidden_size=384, patch_size=2, num_heads=6, **kwargs)
def DiT_S_4(**kwargs): return DiT(depth=12, hidden_size=384, patch_size=4, num_heads=6, **kwargs)
def DiT_S_8(**kwargs): return DiT(depth=12, hidden_size=384, patch_size=8, num_heads=6, **kwargs)


DiT_models = {
    "DiT-XL/2": DiT_XL_2, "DiT-XL/4": DiT_XL_4, "DiT-XL/8": DiT_XL_8,
    "DiT-L/2": DiT_L_2, "DiT-L/4": DiT_L_4, "DiT-L/8": DiT_L_8,
    "DiT-B/2": DiT_B_2, "DiT-B/4": DiT_B_4, "DiT-B/8": DiT_B_8,
    "DiT-S/2": DiT_S_2, "DiT-S/4": DiT_S_4, "DiT-S/8": DiT_S_8,
}


def build_model(name: str, **kwargs) -> DiT:
    """``DiT_models[name](**kwargs)`` with a clear error for an unknown name."""
    if name not in DiT_models:
        raise ValueError(f"unknown DiT model {name!r}; choose one of {', '.join(DiT_models)}")
    return DiT_models[name](**kwargs)
