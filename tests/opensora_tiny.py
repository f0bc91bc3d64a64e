"""Tiny OpenSora stack for the CPU tests: a random STDiT3 (2 block pairs, width 64) and caption helpers."""

from __future__ import annotations

import torch

from duca_common.layers import Caption, pack_caption
from opensora_duca.stdit3 import STDiT3, STDiT3Config

CAPTION_DIM = 16          # the tiny T5 width of tests/pixart_tiny.py
TEXT_TOKENS = 12
TINY = STDiT3Config(hidden_size=64, depth=2, num_heads=2, caption_channels=CAPTION_DIM,
                    model_max_length=TEXT_TOKENS, input_sq_size=64)
LATENT = (3, 4, 6)        # (T, H, W) latent -> token grid 3 x 2 x 3


def tiny_stdit3(seed: int = 0, config: STDiT3Config = TINY, **kwargs) -> STDiT3:
    torch.manual_seed(seed)
    model = STDiT3(config, **kwargs)
    with torch.no_grad():   # random, non-trivial gates and outputs everywhere
        for p in model.parameters():
            if p is not model.rope.freqs:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def tiny_caption(batch: int, seed: int = 1) -> Caption:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, TEXT_TOKENS, CAPTION_DIM, generator=g)
    lengths = [TEXT_TOKENS - 3 * i % TEXT_TOKENS for i in range(batch)]
    mask = torch.tensor([[1] * n + [0] * (TEXT_TOKENS - n) for n in lengths])
    return pack_caption(tokens, mask)


def tiny_inputs(batch: int, seed: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, 4, *LATENT, generator=g), timestep=torch.rand(batch, generator=g) * 1000,
                caption=tiny_caption(batch), fps=torch.full((batch,), 24.0), height=torch.tensor([32.0]),
                width=torch.tensor([48.0]))


def tiny_vae_config():
    from opensora_duca.vae import SpatialVAEConfig, TemporalVAEConfig, VideoVAEConfig

    # 2-D stage downsamples by 2 (two levels); temporal stage keeps the official level layout, 8 filters.
    return VideoVAEConfig(spatial=SpatialVAEConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4),
                          temporal=TemporalVAEConfig(filters=8, num_res_blocks=1, norm_groups=4))


def tiny_vae(seed: int = 0):
    from opensora_duca.vae import VideoAutoencoderPipeline

    torch.manual_seed(seed)
    return VideoAutoencoderPipeline(tiny_vae_config()).eval()
