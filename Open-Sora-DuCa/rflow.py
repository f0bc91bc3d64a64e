"""Rectified-flow sampler of OpenSora 1.2 (models.md C.9), written here because no library scheduler has
OpenSora's resolution- and length-dependent timestep transform with its bf16 arithmetic.

Forward process ``x_t = (1 - t/1000) x0 + (t/1000) eps``; the model predicts the velocity ``x0 - eps``.
Euler steps from t = 1000 down the transformed grid, classifier-free guidance on a [cond, uncond] batch.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from tqdm import tqdm

from duca_common.cache import FeatureCache

NUM_TIMESTEPS = 1000              # training timesteps (C.9)
BASE_RESOLUTION = 512 * 512       # the transform's reference pixel count (C.9)
FRAMES_PER_CHUNK = 17             # the transform counts frames as (F // 17) * 5 latent frames (C.9)
LATENT_FRAMES_PER_CHUNK = 5
VELOCITY_CHANNELS = 4             # channels 0..3 of the 8 the model predicts are the velocity (C.5 step 8)


@dataclass(frozen=True)
class RFlowConfig:
    """C.9 defaults: 30 steps, cfg 7.0, timestep transform on."""

    num_sampling_steps: int = 30
    cfg_scale: float = 7.0
    use_timestep_transform: bool = True
    transform_scale: float = 1.0
    num_timesteps: int = NUM_TIMESTEPS

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.num_sampling_steps, int) and self.num_sampling_steps >= 1, "num_sampling_steps",
             "an integer >= 1"),
            (self.cfg_scale >= 1.0, "cfg_scale", "a float >= 1 (1 = no guidance)"),
            (self.transform_scale > 0, "transform_scale", "a float > 0"),
            (self.num_timesteps >= 1, "num_timesteps", "an integer >= 1"),
        ]
        for ok, name, allowed in checks:
            if not ok:
                raise ValueError(f"RFlowConfig.{name}={getattr(self, name)!r} is invalid: allowed {allowed}")


def transform_ratio(height: int, width: int, num_frames: int, dtype: torch.dtype = torch.bfloat16,
                    scale: float = 1.0) -> torch.Tensor:
    """The transform's ratio ``sqrt(H W / 512^2) * sqrt((F // 17) * 5) * scale`` computed as the reference
    does, on tensors of the model dtype (C.9: in bf16 width 854 becomes 856 and the ratio 4.84375)."""
    h = torch.tensor([height], dtype=dtype)
    w = torch.tensor([width], dtype=dtype)
    f = torch.tensor([num_frames], dtype=dtype)
    ratio_space = (h * w / BASE_RESOLUTION).sqrt()
    frames = torch.ones_like(f) if num_frames == 1 else f // FRAMES_PER_CHUNK * LATENT_FRAMES_PER_CHUNK
    ratio_time = frames.sqrt()
    return ratio_space * ratio_time * scale


def sampling_timesteps(config: RFlowConfig, height: int, width: int, num_frames: int,
                       dtype: torch.dtype = torch.bfloat16) -> list[float]:
    """The t' grid (float32 values, 1000 first): base ``(1 - i/K) 1000`` through the transform (C.9)."""
    k, n = config.num_sampling_steps, config.num_timesteps
    base = torch.tensor([(1.0 - i / k) * n for i in range(k)], dtype=torch.float32)
    if not config.use_timestep_transform:
        return base.tolist()
    tau = base / n
    ratio = transform_ratio(height, width, num_frames, dtype, config.transform_scale)
    if not bool((ratio > 0).all()):
        # (F // 17) * 5 is 0 for 2..16 frames: the reference formula gives t' = 0/0 there.
        raise ValueError(f"the timestep transform is undefined for {num_frames} frames (the reference counts "
                         f"(F // {FRAMES_PER_CHUNK}) * {LATENT_FRAMES_PER_CHUNK} latent frames, 0 here): use 1 "
                         f"or >= {FRAMES_PER_CHUNK} frames")
    new = ratio * tau / (1 + (ratio - 1) * tau)          # bf16 ratio x fp32 tau -> fp32, as upstream
    return (new * n).float().tolist()


# model_fn(z_in (2B, ...), t_in (2B,)) -> prediction (2B, >= 4, ...) for the [cond, uncond] batch.
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def rflow_sample(model_fn: ModelFn, z: torch.Tensor, timesteps: list[float], cfg_scale: float, *,
                 feature_cache: FeatureCache | None = None, num_timesteps: int = NUM_TIMESTEPS,
                 progress: bool = False, watch=None) -> torch.Tensor:
    """Euler integration of the guided velocity from noise ``z`` (B, C, T, H, W); returns z at t = 0.

    With ``feature_cache`` a cache session is open for the run and ``run.set_step(p)`` precedes the
    evaluation of step p (the step counts up, C.11). ``z`` becomes fp32 after the first update (C.9).
    ``watch`` (a ``duca_common.validate.FiniteWatch``) sees z after every step, without a host sync.
    """
    b = z.shape[0]
    steps = len(timesteps)
    grid = torch.tensor(timesteps, dtype=torch.float32, device=z.device)
    session = feature_cache.session(steps, cfg_halves=True) if feature_cache is not None else nullcontext()
    with session as run:
        for p in tqdm(range(steps), desc="rflow", unit="step", disable=not progress):
            if run is not None:
                run.set_step(p)
            pred = model_fn(torch.cat([z, z]), grid[p].expand(2 * b))[:, :VELOCITY_CHANNELS]
            cond, uncond = pred.chunk(2, dim=0)
            velocity = uncond + cfg_scale * (cond - uncond)
            dt = (grid[p] - grid[p + 1] if p + 1 < steps else grid[p]) / num_timesteps   # fp32 as upstream
            z = z + velocity * dt
            if watch is not None:
                watch.observe(z, p)
    return z
