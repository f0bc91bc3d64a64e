"""Tiny random models shared by the diffusers tests: our DiT / PixArt and the diffusers transformers holding the
same weights (through the key maps), a tiny VAE, and the DiT / PixArt-alpha pipelines built from them."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
)

from dit_duca import diffusers_format as df
from dit_duca.diffusion import linear_betas
from dit_duca.models import DiT
from pixart_duca import checkpoint as pixart_ck

DIT_PIPELINE_CLASSES = 1000


def tiny_dit(in_channels: int = 4, depth: int = 3, seed: int = 0, input_size: int = 8, num_classes: int = 10) -> DiT:
    torch.manual_seed(seed)
    model = DiT(input_size=input_size, patch_size=2, in_channels=in_channels, hidden_size=64, depth=depth,
                num_heads=4, num_classes=num_classes)
    with torch.no_grad():     # the official init zeroes adaLN and the output layer: make every path non-trivial
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def diffusers_dit(model: DiT, match_official: bool = True) -> DiTTransformer2DModel:
    d = DiTTransformer2DModel.from_config(df.diffusers_config(model)).eval()
    d.load_state_dict(df.to_diffusers(model.state_dict(), model.depth), strict=True)
    if match_official:
        df.match_official_dit(d)
    return d


def diffusers_pixart(model) -> PixArtTransformer2DModel:
    cfg = model.config
    d = PixArtTransformer2DModel(num_attention_heads=cfg.num_heads, attention_head_dim=cfg.hidden_size // cfg.num_heads,
                                 in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.depth,
                                 cross_attention_dim=cfg.hidden_size, sample_size=cfg.input_size,
                                 patch_size=cfg.patch_size, caption_channels=cfg.caption_channels,
                                 interpolation_scale=cfg.lewei_scale, use_additional_conditions=cfg.multi_scale,
                                 norm_eps=1e-6).eval()
    d.load_state_dict(pixart_ck.to_diffusers(model.state_dict()), strict=True)
    return d


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """4 levels (8x down-sampling like the SD VAE), 8 channels per level."""
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4,
                         layers_per_block=1).eval()


def dit_ddim_scheduler() -> DDIMScheduler:
    """diffusers' DDIM on DiT's betas (linear 1e-4..0.02, 1000 steps), no x0 clipping as the DiT samplers."""
    betas = linear_betas()
    return DDIMScheduler(num_train_timesteps=len(betas), beta_start=float(betas[0]), beta_end=float(betas[-1]),
                         beta_schedule="linear", clip_sample=False, set_alpha_to_one=True, steps_offset=0)


def dit_pipeline(model: DiT | None = None) -> DiTPipeline:
    # DiTPipeline's null class is the hard-coded ImageNet 1000 (pipeline_dit.py): the model needs 1000 classes
    model = model if model is not None else tiny_dit(num_classes=DIT_PIPELINE_CLASSES)
    pipe = DiTPipeline(transformer=diffusers_dit(model), vae=tiny_vae(), scheduler=dit_ddim_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pixart_pipeline(transformer: PixArtTransformer2DModel) -> PixArtAlphaPipeline:
    """Text encoder and tokenizer left out: the tests pass prompt embeddings directly."""
    pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=tiny_vae(), transformer=transformer,
                               scheduler=dit_ddim_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe
