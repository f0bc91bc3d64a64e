"""Text-to-image sampling with PixArt: CFG in the [uncond, cond] layout, the DPM-Solver++ loop inside a
cache session, and FLOPs accounting (reference hand formula and measured on the meta device)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from duca_common.cache import CacheConfig, TransformerDims, full_run_flops, measured_flops, reference_flops
from duca_common.cache.trace import Trace
from duca_common.layers import Caption, pack_caption
from duca_common.text import TextEmbedding

from .dpm_solver import DEFAULT_CFG, DEFAULT_STEPS, DiscreteVPSchedule, dpm_solver_pp_2m, eps_to_x0, model_time
from .model import CACHED_MODULES, VAE_DOWNSAMPLE, PixArt, PixArtConfig, nearest_bucket


def cat_captions(a: Caption, b: Caption) -> Caption:
    """Stack two caption batches along the batch axis, padding the shorter one (its mask hides the pad)."""
    length = max(a.tokens.shape[1], b.tokens.shape[1])

    def pad(c: Caption) -> Caption:
        extra = length - c.tokens.shape[1]
        if extra == 0:
            return c
        return Caption(torch.nn.functional.pad(c.tokens, (0, 0, 0, extra)),
                       torch.nn.functional.pad(c.mask, (0, extra)))

    a, b = pad(a), pad(b)
    return Caption(torch.cat([a.tokens, b.tokens]), torch.cat([a.mask, b.mask]))


def cfg_caption(model: PixArt, cond: TextEmbedding, uncond: TextEmbedding | None = None) -> Caption:
    """The forward batch's captions, [uncond, cond] (B.7). The uncond half is the learned null caption
    under the prompt's mask (B.6) or, for weights without one, ``uncond`` (T5 of the empty prompt)."""
    cond_c = pack_caption(cond.tokens, cond.mask)
    if model.has_null_caption:
        null = model.null_caption(cond.mask.to(model.y_embedder.y_embedding.device))
    else:
        if uncond is None:
            raise ValueError("these weights have no learned null caption: pass the T5 encoding of the empty prompt")
        null = pack_caption(uncond.tokens, uncond.mask)
    null = Caption(null.tokens.to(cond_c.tokens.device, cond_c.tokens.dtype), null.mask.to(cond_c.mask.device,
                                                                                           cond_c.mask.dtype))
    return cat_captions(null, cond_c)


@dataclass(frozen=True)
class MicroConditions:
    """1024-MS size and aspect-ratio conditions (B.5), per image: (H, W) in pixels and H / W."""

    img_hw: torch.Tensor          # (B, 2)
    aspect_ratio: torch.Tensor    # (B, 1)

    @classmethod
    def for_size(cls, batch: int, height: int, width: int, device: torch.device | str = "cpu") -> MicroConditions:
        key, _ = nearest_bucket(height / width)
        hw = torch.tensor([[float(height), float(width)]], device=device).repeat(batch, 1)
        return cls(hw, torch.tensor([[key]], device=device).repeat(batch, 1))

    def doubled(self) -> MicroConditions:
        return MicroConditions(self.img_hw.repeat(2, 1), self.aspect_ratio.repeat(2, 1))


def latent_shape(config: PixArtConfig, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
    return batch, config.in_channels, height // VAE_DOWNSAMPLE, width // VAE_DOWNSAMPLE


@torch.no_grad()
def sample(model: PixArt, noise: torch.Tensor, caption: Caption, num_steps: int = DEFAULT_STEPS,
           cfg_scale: float = DEFAULT_CFG, micro: MicroConditions | None = None,
           progress: Callable[[int], None] | None = None, schedule: DiscreteVPSchedule | None = None,
           watch=None) -> torch.Tensor:
    """Latents from ``noise`` (B, 4, h, w) in fp32. ``caption`` is the CFG batch [uncond, cond] (2B rows).

    Opens the model's cache session for the run and calls ``run.set_step(k)`` before evaluation k.
    ``watch`` (a ``duca_common.validate.FiniteWatch``) sees the guided noise prediction of every step.
    """
    schedule = schedule or DiscreteVPSchedule.linear()
    b = noise.shape[0]
    if caption.tokens.shape[0] != 2 * b:
        raise ValueError(f"the CFG caption batch has {caption.tokens.shape[0]} rows for {b} images; need {2 * b}")
    micro2 = micro.doubled() if micro is not None else None
    in_ch = model.config.in_channels
    p = model.config.patch_size
    grid = (noise.shape[2] // p, noise.shape[3] // p)

    with model.feature_cache.session(num_steps, grid=grid, cfg_halves=True) as run:
        def x0_pred(x: torch.Tensor, t: float, k: int) -> torch.Tensor:
            run.set_step(k)
            t_in = torch.full((2 * b,), model_time(t), device=x.device)
            out = model(torch.cat([x, x]), t_in, caption,
                        img_hw=None if micro2 is None else micro2.img_hw,
                        aspect_ratio=None if micro2 is None else micro2.aspect_ratio)
            eps_u, eps_c = out[:, :in_ch].float().chunk(2)
            eps = eps_u + cfg_scale * (eps_c - eps_u)
            if watch is not None:
                watch.observe(eps, k)
            return eps_to_x0(eps, x, t, schedule)

        return dpm_solver_pp_2m(x0_pred, noise.float(), num_steps, schedule, progress=progress)


# ---------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------
def transformer_dims(config: PixArtConfig, images: int, tokens: int, text_lengths: list[int]) -> TransformerDims:
    """Hand-formula sizes of one CFG forward: batch 2B, N tokens, the valid text tokens of all 2B rows."""
    return TransformerDims(batch=2 * images, tokens=tokens, hidden=config.hidden_size, heads=config.num_heads,
                           text_tokens=int(sum(text_lengths)))


@dataclass
class FlopsReport:
    reference_cached: int
    reference_full: int
    measured_cached: int
    measured_full: int

    @property
    def reference_speedup(self) -> float:
        return self.reference_full / max(self.reference_cached, 1)

    @property
    def measured_speedup(self) -> float:
        return self.measured_full / max(self.measured_cached, 1)

    def to_dict(self) -> dict:
        return {"reference_cached": self.reference_cached, "reference_full": self.reference_full,
                "reference_speedup": self.reference_speedup, "measured_cached": self.measured_cached,
                "measured_full": self.measured_full, "measured_speedup": self.measured_speedup,
                "notes": "reference = hand formula of the reference code over the transformer blocks (paper.md "
                         "section 4); measured = torch FlopCounterMode on the meta device over the whole network, "
                         "whole run (all CFG rows, padded text keys, embedders and final layer included)"}


def meta_run(config: PixArtConfig, cache_config: CacheConfig, images: int, height: int, width: int,
             text_lengths: list[int], num_steps: int) -> tuple[int, Trace]:
    """Measured FLOPs and trace of a whole sampling run, on the meta device (no weights, no compute)."""
    with torch.device("meta"):
        model = PixArt(config, cache_config)
    longest = max(text_lengths)
    mask = torch.zeros(2 * images, longest)
    for i, n in enumerate(text_lengths):
        mask[i, :n] = 1
    caption = Caption(torch.empty(2 * images, longest, config.caption_channels, device="meta"), mask.to("meta"))
    noise = torch.empty(latent_shape(config, images, height, width), device="meta")
    micro = MicroConditions.for_size(images, height, width, "meta") if config.multi_scale else None
    flops = measured_flops(lambda: sample(model, noise, caption, num_steps, micro=micro))
    return flops, model.feature_cache.last_trace


def flops_report(config: PixArtConfig, cache_config: CacheConfig, images: int, height: int, width: int,
                 text_lengths: list[int], num_steps: int) -> tuple[FlopsReport, Trace]:
    """Cached and uncached FLOPs of a run, two ways. ``text_lengths`` lists the valid text tokens of the
    2B forward rows ([uncond..., cond...])."""
    if len(text_lengths) != 2 * images:
        raise ValueError(f"text_lengths has {len(text_lengths)} entries for {images} images; need {2 * images}")
    measured_cached, trace = meta_run(config, cache_config, images, height, width, text_lengths, num_steps)
    # Every uncached step costs the same: count one and multiply.
    one_step, _ = meta_run(config, CacheConfig(method="none"), images, height, width, text_lengths, 1)
    measured_full = one_step * num_steps
    tokens = (height // VAE_DOWNSAMPLE // config.patch_size) * (width // VAE_DOWNSAMPLE // config.patch_size)
    dims = transformer_dims(config, images, tokens, text_lengths)
    report = FlopsReport(reference_cached=reference_flops(trace, dims),
                         reference_full=full_run_flops(dims, config.depth, num_steps, CACHED_MODULES),
                         measured_cached=measured_cached, measured_full=measured_full)
    return report, trace
