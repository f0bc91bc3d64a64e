"""Text-to-video with STDiT3 + RFlow + the OpenSora VAE (models.md C.7-C.10), and FLOPs measured on meta.

One video per call (the reference samples with batch 1): T5 the prompt (+ the aesthetic-score suffix),
draw the noise from its own seed, 30 RFlow steps with CFG 7 on a [cond, null] batch, decode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from duca_common.cache import CacheConfig, measured_flops
from duca_common.layers import Caption, pack_caption
from duca_common.validate import FiniteWatch

from .rflow import RFlowConfig, rflow_sample, sampling_timesteps
from .stdit3 import STDiT3, STDiT3Config
from .vae import VideoAutoencoderPipeline, VideoVAEConfig

DEFAULT_FPS = 24                        # C.10: fps / save_fps
DEFAULT_AES = 6.5                       # C.7: config aes, appended to every prompt
# C.9: the model kwargs (height, width, num_frames, fps) are tensors of the model dtype, bf16, in the
# reference; the timestep transform and the position-table scale inherit their rounding (854 -> 856).
REFERENCE_KWARGS_DTYPE = torch.bfloat16


def prompt_with_scores(prompt: str, aes: float | None = DEFAULT_AES, flow: float | None = None,
                       camera_motion: str | None = None) -> str:
    """C.7: upstream appends `` aesthetic score: 6.5.`` (one decimal), then the motion score and camera motion
    when set, each unless the prompt already carries it; cleaning comes after."""
    if aes is not None and "aesthetic score:" not in prompt:
        prompt = f"{prompt} aesthetic score: {aes:.1f}."
    if flow is not None and "motion score:" not in prompt:
        prompt = f"{prompt} motion score: {flow:.1f}."
    if camera_motion is not None and "camera motion:" not in prompt:
        prompt = f"{prompt} camera motion: {camera_motion}."
    return prompt


@dataclass(frozen=True)
class VideoSpec:
    """What to generate: pixel size, frame count and fps (C.10)."""

    height: int
    width: int
    num_frames: int
    fps: int = DEFAULT_FPS


def model_kwargs(spec: VideoSpec, batch: int) -> dict[str, torch.Tensor]:
    """fps, height, width for STDiT3, as the reference creates them (bf16, C.9). They stay on the CPU: the
    model reads height and width as Python numbers and moves fps itself."""
    def tensor(v: float) -> torch.Tensor:
        return torch.full((batch,), float(v), dtype=REFERENCE_KWARGS_DTYPE)
    return {"fps": tensor(spec.fps), "height": tensor(spec.height), "width": tensor(spec.width)}


def cfg_caption(model: STDiT3, tokens: torch.Tensor, mask: torch.Tensor) -> Caption:
    """[cond, null] caption batch: the null rows are the learned null caption under the prompt's mask (C.5 step 4)."""
    cond = pack_caption(tokens, mask)
    null = model.null_caption(mask)
    return Caption(torch.cat([cond.tokens, null.tokens.to(cond.tokens.dtype)]), torch.cat([cond.mask, null.mask]))


def latent_shape(vae_config: VideoVAEConfig, spec: VideoSpec) -> tuple[int, int, int, int]:
    return vae_config.latent_shape(spec.num_frames, spec.height, spec.width)


@torch.no_grad()
def denoise(model: STDiT3, z: torch.Tensor, caption: Caption, spec: VideoSpec, rflow: RFlowConfig,
            progress: bool = False, watch=None) -> torch.Tensor:
    """RFlow from noise z (B, 4, T, H, W) under the [cond, null] caption (2B rows); opens the cache session."""
    kwargs = model_kwargs(spec, z.shape[0])
    timesteps = sampling_timesteps(rflow, spec.height, spec.width, spec.num_frames, REFERENCE_KWARGS_DTYPE)
    return rflow_sample(lambda zi, ti: model(zi, ti, caption, **kwargs), z, timesteps, rflow.cfg_scale,
                        feature_cache=model.feature_cache, num_timesteps=rflow.num_timesteps, progress=progress,
                        watch=watch)


@dataclass
class VideoResult:
    video: torch.Tensor          # (3, F, H, W) uint8
    seconds: float               # the denoising loop only
    text_tokens: int             # valid T5 tokens of the prompt


def to_uint8_video(x: torch.Tensor) -> torch.Tensor:
    """(3, F, H, W) in [-1, 1] -> uint8 as upstream's save_sample: clamp, (x+1)/2, *255 + 0.5."""
    return ((x.float().clamp(-1, 1) + 1) / 2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8).cpu()


def generate(model: STDiT3, vae: VideoAutoencoderPipeline, text_encoder, prompt: str, seed: int, spec: VideoSpec,
             rflow: RFlowConfig, aes: float | None = DEFAULT_AES, progress: bool = False, flow: float | None = None,
             camera_motion: str | None = None) -> VideoResult:
    device = next(model.parameters()).device
    emb = text_encoder.encode([prompt_with_scores(prompt, aes, flow, camera_motion)])
    caption = cfg_caption(model, emb.tokens.to(device), emb.mask.to(device))
    # C.9: the reference reseeds with 1024 + k right before drawing the noise, in the model dtype.
    g = torch.Generator(device).manual_seed(seed)
    z = torch.randn((1, *latent_shape(vae.config, spec)), generator=g, device=device, dtype=model.dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    watch = FiniteWatch(f"OpenSora, cache {model.feature_cache.config.method}", rflow.num_sampling_steps)
    z = denoise(model, z, caption, spec, rflow, progress, watch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    watch.check()              # NaN / inf latents: NonFiniteError naming the step, before anything is decoded
    with torch.no_grad():
        video = vae.decode(z.to(vae.dtype), num_frames=spec.num_frames)[0]
    return VideoResult(to_uint8_video(video), seconds, int(emb.mask.sum()))


# ---------------------------------------------------------------------------------------------------
# FLOPs (measured on the meta device: no hand formula exists for STDiT3 in the reference)
# ---------------------------------------------------------------------------------------------------
def _meta_run(config: STDiT3Config, cache: CacheConfig, spec: VideoSpec, vae_config: VideoVAEConfig,
              text_tokens: int, rflow: RFlowConfig) -> tuple[int, object]:
    with torch.device("meta"):
        model = STDiT3(config, cache)
    z = torch.empty((1, *latent_shape(vae_config, spec)), device="meta")
    # [cond, null] rows with ``text_tokens`` valid tokens each (what cfg_caption packs a real prompt to).
    caption = Caption(torch.empty(2, text_tokens, config.caption_channels, device="meta"),
                      torch.ones(2, text_tokens, device="meta"))
    flops = measured_flops(lambda: denoise(model, z, caption, spec, rflow))
    return flops, model.feature_cache.last_trace


def flops_report(config: STDiT3Config, cache: CacheConfig, spec: VideoSpec, vae_config: VideoVAEConfig,
                 text_tokens: int, rflow: RFlowConfig) -> dict:
    """Transformer FLOPs of one video (CFG batch of 2), cached and uncached, counted by FlopCounterMode."""
    if not 1 <= text_tokens <= config.model_max_length:
        raise ValueError(f"text_tokens={text_tokens} is invalid: allowed 1..{config.model_max_length}")
    cached, trace = _meta_run(config, cache, spec, vae_config, text_tokens, rflow)
    one_step = RFlowConfig(num_sampling_steps=1, cfg_scale=rflow.cfg_scale)
    full = _meta_run(config, CacheConfig(), spec, vae_config, text_tokens, one_step)[0] * rflow.num_sampling_steps
    return {"measured_cached": cached, "measured_full": full, "speedup": full / cached if cached else float("inf"),
            "text_tokens": text_tokens, "latent_shape": list(latent_shape(vae_config, spec)),
            "plan": trace.table(), "fraction_computed": trace.fraction_computed()}
