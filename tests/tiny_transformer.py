"""A small DiT-style transformer used by the engine tests: adaLN-modulated attention and MLP blocks
wired to the engine exactly as the model forks are."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from duca_common.cache import BlockLayout, CacheConfig, FeatureCache, residual


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TinyAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, stat: str | None = None):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if stat == "attention_received":
            attn = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
            out = attn @ v
            received = attn.mean(1).sum(1)                  # (B, N): attention each token receives
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        if stat == "value_norm":
            return out, v.norm(dim=-1)                      # (B, H, N)
        if stat == "attention_received":
            return out, received
        return out


class TinyBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = TinyAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c, cache=None):
        if cache is not None and cache.skip:
            return x
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = residual(cache, "attn", x,
                     lambda t, stat: self.attn(modulate(self.norm1(t), shift_msa, scale_msa), stat=stat),
                     gate_msa.unsqueeze(1))
        x = residual(cache, "mlp", x, lambda t, stat: self.mlp(modulate(self.norm2(t), shift_mlp, scale_mlp)),
                     gate_mlp.unsqueeze(1))
        return x


class TinyTransformer(nn.Module):
    """Tokens in, tokens out; the conditioning vector c plays the timestep/label embedding."""

    def __init__(self, depth: int = 4, dim: int = 32, heads: int = 4, config: CacheConfig | None = None,
                 step_counts_down: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyBlock(dim, heads) for _ in range(depth))
        self.t_embed = nn.Linear(1, dim)
        self.feature_cache = FeatureCache(config or CacheConfig(),
                                          BlockLayout(depth=depth, step_counts_down=step_counts_down))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self.t_embed(t[:, None].float())
        step = self.feature_cache.current_step()
        for i, block in enumerate(self.blocks):
            x = block(x, c, None if step is None else step.block(i))
        if step is not None:
            x = step.trunk(x)
        return x


# Step size of the toy sampler's update x <- x - STEP_SIZE * model(x, t) (any small value: a toy, not a solver)
STEP_SIZE = 0.1


def sample(model: TinyTransformer, x: torch.Tensor, num_steps: int, grid=None, cfg_halves=False):
    """A toy sampler: x <- x - STEP_SIZE * model(x, t); returns the per-step model outputs."""
    outs = []
    with model.feature_cache.session(num_steps, grid=grid, cfg_halves=cfg_halves) as run:
        for p in range(num_steps):
            run.set_step(p)
            t = torch.full((x.shape[0],), float(num_steps - p))
            out = model(x, t)
            outs.append(out)
            x = x - STEP_SIZE * out
    return outs


def main() -> None:
    """``python tests/tiny_transformer.py``: the toy loop uncached and under DuCa (the DiT preset's config) on the
    same weights and noise; prints the cached run's trace, the hand-formula FLOPs speed-up and the drift. The weights
    are random, without the slowly changing features that caching relies on: the drift shows the mechanics only
    (the embedded digits demo, ``python -m dit_duca.demo``, shows quality on a trained model)."""
    from duca_common.cache import TransformerDims, get_preset, reference_flops

    steps, heads, grid = 12, 4, (8, 8)
    torch.manual_seed(0)
    plain = TinyTransformer(heads=heads)
    cached = TinyTransformer(heads=heads, config=get_preset("dit-duca-n3-r95").config)
    cached.load_state_dict(plain.state_dict())
    x = torch.randn(2, grid[0] * grid[1], plain.t_embed.out_features)
    with torch.no_grad():
        reference = sample(plain, x, steps, grid=grid)
        outs = sample(cached, x, steps, grid=grid)
    dims = TransformerDims(batch=x.shape[0], tokens=x.shape[1], hidden=x.shape[2], heads=heads)
    flops = [reference_flops(m.feature_cache.last_trace, dims) for m in (plain, cached)]
    final = [x - STEP_SIZE * torch.stack(o).sum(0) for o in (reference, outs)]  # each run's last x
    drift = ((final[1] - final[0]).norm() / final[0].norm()).item()
    print(cached.feature_cache.last_trace.table())
    print(f"FLOPs speed-up {flops[0] / flops[1]:.2f}x (hand formula, {flops[1]:,} of {flops[0]:,}); "
          f"relative distance of the final x from the uncached run's: {drift:.3g}")


if __name__ == "__main__":
    main()
