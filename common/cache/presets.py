"""Named operating points of the reference code, each tied to the paper row it reproduces.

``get_preset(name).config`` is a :class:`CacheConfig`. Sources: shared/reference/paper.md section 2
(rows and speed-ups) and models.md A.7 / B.9 / C.11 (the reference flags). R is the cache ratio, so
R = 95% means fresh_ratio 0.05.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import (
    DIT_TOCA_SCHEDULE,
    OPENSORA_TOCA_SCHEDULE,
    PIXART_TOCA_SCHEDULE,
    CacheConfig,
)

# Reference token-score bonuses (models.md A.7 and B.9): the best token of each 2x2 (DiT) or 4x4
# (PixArt) cell gets 0.8x (DiT) or 0.4x (PixArt) of its score added; staleness weight 0.25.
DIT_SPATIAL: dict[str, Any] = {"spatial_bonus": 0.8, "spatial_cell": 2}
PIXART_SPATIAL: dict[str, Any] = {"spatial_bonus": 0.4, "spatial_cell": 4}
REFERENCE_STALENESS = 0.25


@dataclass(frozen=True)
class Preset:
    name: str
    model: str  # "dit", "pixart" or "opensora"
    config: CacheConfig
    paper_row: str  # which published row (or reference default) this reproduces


def _dit_token(method: str, interval: int, fresh_ratio: float, selector: str) -> CacheConfig:
    return CacheConfig(
        method=method,
        interval=interval,
        fresh_ratio=fresh_ratio,
        ratio_schedule=DIT_TOCA_SCHEDULE,
        interval_rule="dit",
        selector=selector,
        staleness_weight=REFERENCE_STALENESS,
        **DIT_SPATIAL,
    )


def _pixart_token(method: str, fresh_ratio: float) -> CacheConfig:
    return CacheConfig(
        method=method,
        interval=3,
        fresh_ratio=fresh_ratio,
        ratio_schedule=PIXART_TOCA_SCHEDULE,
        interval_rule="fixed",
        selector="cross_entropy",
        staleness_weight=REFERENCE_STALENESS,
        **PIXART_SPATIAL,
    )


_PRESETS = [
    Preset("dit-none", "dit", CacheConfig(method="none"), "DiT-XL/2 DDIM-50 (no cache): FID 2.32, 23.74 TFLOPs"),
    Preset(
        "dit-fora-n3", "dit", CacheConfig(method="fora", interval=3), "DiT-XL/2 DDIM-50, FORA (N=3): 2.77x, FID 3.55"
    ),
    Preset(
        "dit-toca-n3-r93",
        "dit",
        _dit_token("toca", 3, 0.07, "attention_received"),
        "DiT-XL/2 DDIM-50, ToCa (N=3, R=93%): 2.32x, FID 3.04",
    ),
    Preset(
        "dit-duca-n3-r95",
        "dit",
        _dit_token("duca", 3, 0.05, "value_norm"),
        "DiT-XL/2 DDIM-50, DuCa (N=3, R=95%, V-caching as the author's Table 3): 2.48x, FID 2.88",
    ),
    Preset(
        "dit-duca-n5-r95",
        "dit",
        _dit_token("duca", 5, 0.05, "value_norm"),
        "DiT-XL/2 DDIM-50, DuCa (N=5, R=95%): 3.78x, FID 6.06",
    ),
    Preset(
        "dit-duca-readme",
        "dit",
        _dit_token("duca", 3, 0.05, "attention_received"),
        "DuCa README command for DiT (cache-type attention, fresh ratio 0.05, threshold 3)",
    ),
    Preset(
        "dit-duca-n3-random", "dit", _dit_token("duca", 3, 0.05, "random"), "DuCa v2 (random selection) at N=3, R=95%"
    ),
    Preset(
        "dit-taylorseer-n3-o3",
        "dit",
        CacheConfig(method="taylorseer", interval=3, taylor_order=3),
        "DiT-XL/2 DDIM-50, TaylorSeer (N=3, O=3): 2.77x, FID 2.34",
    ),
    Preset(
        "dit-taylorseer-n5-o3",
        "dit",
        CacheConfig(method="taylorseer", interval=5, taylor_order=3),
        "DiT-XL/2 DDIM-50, TaylorSeer (N=5, O=3): 4.53x, FID 2.65",
    ),
    # Issue 16's forecasting methods on DiT (not paper rows: operating points of this project, at N=5 where
    # TaylorSeer's published row is 4.53x; docs/results.md has their numbers on the embedded models).
    Preset(
        "dit-foca-n5-o2",
        "dit",
        CacheConfig(method="foca", interval=5, taylor_order=2),
        "forecast-then-calibrate after FoCa (arXiv 2508.16211), N=5, O=2: 4.53x FLOPs on DiT-XL/2 (no FID measured)",
    ),
    Preset(
        "dit-hicache-n5-o2",
        "dit",
        CacheConfig(method="hicache", interval=5, taylor_order=2),
        "Hermite-basis forecast after HiCache (arXiv 2508.16984), N=5, O=2: 4.53x FLOPs on DiT-XL/2 (no FID measured)",
    ),
    Preset(
        "dit-dualca-n5-r95",
        "dit",
        _dit_token("duca", 5, 0.05, "value_norm").replace(method="dualca", taylor_order=1),
        "DuCa N=5 R=95% with forecasts in place of reuse (ours, issue 16): DuCa's 3.76x FLOPs (no FID measured)",
    ),
    Preset(
        "pixart-none", "pixart", CacheConfig(method="none"), "PixArt-alpha 256, DPM-Solver 20 (no cache): FID-30k 28.09"
    ),
    Preset(
        "pixart-duca-r70-script",
        "pixart",
        _pixart_token("duca", 0.30),
        "DuCa PixArt scripts/inference.py default (fresh ratio 0.30, N=3)",
    ),
    Preset(
        "pixart-duca-r25",
        "pixart",
        _pixart_token("duca", 0.75),
        "DuCa PixArt README setting (fresh ratio 0.75, N=3): 1.87x, FID-30k 28.05, CLIP 16.42",
    ),
    Preset("pixart-toca-r70", "pixart", _pixart_token("toca", 0.30), "ToCa PixArt (N=3, R=70%): FID-30k 28.02"),
    Preset("pixart-fora-n3", "pixart", CacheConfig(method="fora", interval=3), "FORA on PixArt (N=3)"),
    Preset(
        "opensora-duca",
        "opensora",
        CacheConfig(
            method="duca",
            interval=3,
            fresh_ratio=0.1,
            ratio_schedule=OPENSORA_TOCA_SCHEDULE,
            interval_rule="module_cycles",
            warmup_full_steps=3,
            selector="value_norm",
            staleness_weight=REFERENCE_STALENESS,
            module_cycles=(("attn", "FTA"), ("cross_attn", "FTATTA"), ("mlp", "FTA")),
        ),
        "DuCa OpenSora 1.2 (V-caching, fresh ratio 0.1, cycles 3/3/6/3): 2.50x, 'nearly lossless' VBench",
    ),
]

PRESETS: dict[str, Preset] = {p.name: p for p in _PRESETS}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown cache preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def presets_for(model: str) -> list[Preset]:
    return [p for p in _PRESETS if p.model == model]
