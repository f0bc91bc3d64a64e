"""Sampling the embedded digits DiT under each cache method, with FLOPs, time and quality.

Shared by the demo (``dit_duca.demo``) and the tests. Every method samples the same noise and labels
(``torch.manual_seed(seed)`` then one ``randn`` of the batch, as the reference sampler draws it) with
classifier-free guidance on the ``[cond, uncond]`` batch, through the model's cache session.

Cache settings (``EMBEDDED_METHODS``): the DiT-XL/2 presets at N = 3 (``common/cache/presets.py``), so
the five methods are compared at the same cycle length, as in the paper's DiT table. They apply to a
6-block model unchanged because the ratio schedule is written in ``layer / (depth - 1)`` and the cycle
rule in ``step / K``; only the token-selection statistic of DuCa is the preset's value norm
("V-caching", which keeps SDPA). The presets' spatial bonus uses 2x2 cells, which divide the 8x8 token grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from duca_common.cache import CacheConfig, Trace, TransformerDims, full_run_flops, get_preset, reference_flops

from .diffusion import create_diffusion
from .models import DiT

# One preset per method, all at cycle length N = 3 (paper.md section 2, DiT-XL/2 DDIM-50 rows).
EMBEDDED_PRESETS: dict[str, str] = {
    "fora": "dit-fora-n3",
    "toca": "dit-toca-n3-r93",
    "duca": "dit-duca-n3-r95",
    "taylorseer": "dit-taylorseer-n3-o3",
}
METHOD_ORDER: tuple[str, ...] = ("none", "fora", "toca", "duca", "taylorseer")

# Sampler defaults for the embedded model: DDIM with 50 steps as the DuCa README's DiT runs; guidance
# 4.0 as upstream DiT's sample.py for visualisation (a small model needs strong guidance to draw the
# requested digit reliably).
DEFAULT_NUM_STEPS = 50
DEFAULT_CFG_SCALE = 4.0


def method_config(method: str) -> CacheConfig:
    """The cache configuration the embedded demo uses for ``method`` (see the module docstring)."""
    if method == "none":
        return CacheConfig(method="none")
    if method not in EMBEDDED_PRESETS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHOD_ORDER)}")
    return get_preset(EMBEDDED_PRESETS[method]).config


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., num_classes-1, 0, 1, ... (n labels): every class equally often when n is a multiple."""
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    return torch.arange(n) % num_classes


@dataclass
class SampleRun:
    method: str
    images: torch.Tensor          # (B, C, H, W) in [-1, 1] (not clamped)
    labels: torch.Tensor
    seconds: float
    trace: Trace | None


def model_dims(model: DiT, batch: int = 2) -> TransformerDims:
    """Hand-formula sizes; ``batch`` 2 is one image with CFG (its cond and uncond rows)."""
    return TransformerDims(batch=batch, tokens=model.x_embedder.num_patches, hidden=model.hidden_size,
                           heads=model.num_heads)


def run_flops_per_image(model: DiT, run: SampleRun) -> int:
    """Reference-formula FLOPs of the transformer blocks per generated image (CFG included)."""
    if run.trace is None:
        raise ValueError("this run has no trace")
    return reference_flops(run.trace, model_dims(model))


def uncached_flops_per_image(model: DiT, num_steps: int) -> int:
    return full_run_flops(model_dims(model), model.depth, num_steps, model.feature_cache.layout.modules)


@torch.no_grad()
def sample(model: DiT, labels: torch.Tensor, *, method: str = "none", config: CacheConfig | None = None,
           num_steps: int = DEFAULT_NUM_STEPS, cfg_scale: float = DEFAULT_CFG_SCALE, seed: int = 0,
           ddim: bool = True, progress: bool = False) -> SampleRun:
    """Class-conditional samples of ``labels`` with guidance, under ``method`` (or an explicit ``config``)."""
    if cfg_scale < 1.0:
        raise ValueError(f"cfg_scale must be >= 1 (1 means no guidance), got {cfg_scale}")
    labels = torch.as_tensor(labels).long()
    if labels.ndim != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-D tensor, got shape {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= model.num_classes:
        raise ValueError(f"labels must be in 0..{model.num_classes - 1}, got {labels.tolist()}")
    model.eval()
    model.configure_cache(config if config is not None else method_config(method))
    diffusion = create_diffusion(str(num_steps))
    n = labels.numel()
    size, channels = model.input_size, model.in_channels
    torch.manual_seed(seed)
    z = torch.randn(n, channels, size, size)
    z = torch.cat([z, z], 0)
    y = torch.cat([labels, torch.full_like(labels, model.num_classes)], 0)   # [cond, uncond]
    loop = diffusion.ddim_sample_loop if ddim else diffusion.p_sample_loop
    t0 = time.perf_counter()
    out = loop(model.forward_with_cfg, z.shape, noise=z, model_kwargs=dict(y=y, cfg_scale=cfg_scale),
               feature_cache=model.feature_cache, grid=model.grid_size, cfg_halves=True, progress=progress)
    seconds = time.perf_counter() - t0
    trace = model.feature_cache.last_trace
    return SampleRun(method, out[:n], labels, seconds, trace)


def psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of images in [-1, 1] against ``reference`` (``digits_metrics.mean_psnr``:
    both mapped to [0, 1]; ``inf`` when every image equals its reference)."""
    from .digits_metrics import mean_psnr

    return mean_psnr(images, reference)
