"""Token selection for partial recomputation: scores, bonuses, top-k, gather and scatter.

All functions are vectorised over the batch. Scores are (B, N); a larger score means "recompute this
token". The statistics the scores are built from come from the model's attention modules:

  value_norm          ||v||_2 per head and token, (B, H, N), from the last full self-attention.
                      Score = L2-normalise_over_tokens(sum_h (1 - ||v||)), so the tokens with the
                      smallest summed value norm are recomputed (models.md A.7, C.11: "V-caching").
  attention_received  head-mean self-attention map summed over queries, (B, N): the attention each
                      token receives. Score = L2-normalise(stat).
  cross_entropy       entropy of each image token's head-mean cross-attention distribution, (B, N).
                      Score = L2-normalise(1 + stat).
  similarity          computed by the engine: 1 - cos(current input, input at the last full step).
  random              U(0, 1), drawn once for the first CFG half and copied to the second.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def normalize_tokens(score: torch.Tensor) -> torch.Tensor:
    """L2-normalise a (B, N) score over the token axis (the reference's F.normalize(dim=1))."""
    return F.normalize(score.float(), dim=-1)


def score_from_stat(kind: str, stat: torch.Tensor) -> torch.Tensor:
    if kind == "value_norm":
        if stat.dim() != 3:
            raise ValueError(f"value_norm statistic must be (B, heads, N); got shape {tuple(stat.shape)}")
        return normalize_tokens((1.0 - stat.float()).sum(dim=1))
    if kind == "attention_received":
        return normalize_tokens(stat)
    if kind == "cross_entropy":
        return normalize_tokens(1.0 + stat.float())
    if kind == "similarity":
        return normalize_tokens(stat)
    raise ValueError(f"no score for statistic kind {kind!r}")


def random_score(
    batch: int, tokens: int, generator: torch.Generator, device: torch.device, cfg_halves: bool
) -> torch.Tensor:
    """U(0,1) scores; with ``cfg_halves`` the second half of the batch repeats the first."""
    rows = batch // 2 if cfg_halves else batch
    score = torch.rand(rows, tokens, generator=generator, device=generator.device).to(device)
    return torch.cat([score, score], dim=0) if cfg_halves else score


def share_over_cfg_halves(score: torch.Tensor) -> torch.Tensor:
    """Average the two CFG halves of a (2B, N) score and give both halves the result."""
    a, b = score.chunk(2, dim=0)
    mean = 0.5 * (a + b)
    return torch.cat([mean, mean], dim=0)


def spatial_bonus(score: torch.Tensor, grid: tuple[int, int], cell: int, bonus: float) -> torch.Tensor:
    """Add ``bonus * score`` to the best-scoring token of every ``cell x cell`` patch of the token grid.

    Works on any (H, W) grid: cells at the right and bottom edges may be smaller. (The reference's
    ``local_selection_with_bonus`` reshapes to a square grid and so only handles square latents.)
    """
    if bonus == 0.0:
        return score
    h, w = grid
    b, n = score.shape
    if h * w != n:
        raise ValueError(f"token grid {h}x{w} has {h * w} tokens but the score has {n}")
    hc, wc = -(-h // cell), -(-w // cell)
    padded = score.new_full((b, hc * cell, wc * cell), float("-inf"))
    padded[:, :h, :w] = score.view(b, h, w)
    cells = padded.view(b, hc, cell, wc, cell).permute(0, 1, 3, 2, 4).reshape(b, hc, wc, cell * cell)
    arg = cells.argmax(dim=-1)  # (b, hc, wc) position inside each cell
    rows = torch.arange(hc, device=score.device)[:, None] * cell + arg // cell
    cols = torch.arange(wc, device=score.device)[None, :] * cell + arg % cell
    winners = (rows * w + cols).reshape(b, -1)  # token index of each cell's best
    best = score.gather(1, winners)
    return score.scatter_add(1, winners, bonus * best)


def fresh_token_count(ratio: float, tokens: int) -> int:
    """How many of ``tokens`` a partial step recomputes at fresh ratio ``ratio``: ``int(ratio * tokens)`` with
    the ratio cast to float32 first and the product taken in float32, as the reference code does
    (``int(torch.tensor(ratio) * N)`` in every model's ``cache_cutfresh``). In float64 some ratios give one
    token fewer (PixArt, fresh ratio 0.25 scheduled: 31 instead of 32 of 128 cross-attention tokens)."""
    return int(np.float32(ratio) * np.float32(tokens))


def top_k(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, k) of the k largest scores of each row, in descending order of score.

    The first k of a descending ``argsort``, the reference's own call (``score.argsort(dim=-1,
    descending=True)[:, :k]`` in ``cache_cutfresh``), so equal scores resolve to the same tokens as the
    reference on the same device (on CPU: the lower token index first). ``torch.topk`` breaks ties
    differently.
    """
    return torch.argsort(score, dim=-1, descending=True)[:, :k]


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, C), index (B, k) -> (B, k, C)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scatter_tokens(cache: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Write values (B, k, C) into cache (B, N, C) at index (B, k), in place; returns the cache."""
    return cache.scatter_(1, index.unsqueeze(-1).expand(-1, -1, cache.shape[-1]), values.to(cache.dtype))
