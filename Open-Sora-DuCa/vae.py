"""OpenSora-VAE-v1.2 (``VideoAutoencoderPipeline``, models.md C.8): a 2-D SDXL-architecture ``AutoencoderKL``
per frame (diffusers, exact) followed by a causal temporal VAE that compresses time by 4 (written here: no
library has it). Names match ``hpcai-tech/OpenSora-VAE-v1.2/model.safetensors``:

    spatial_vae.module.<AutoencoderKL keys>      (248 tensors at full size)
    temporal_vae.<encoder / decoder / quant_conv / post_quant_conv>, every conv under ``.conv.`` (267)
    scale, shift                                  persistent (1, 4, 1, 1, 1) buffers

Latent size: H/8 x W/8, and time (F // 17) * 5 + ceil(F mod 17 / 4) (51 frames -> 15).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from duca_common.vae import remap_deprecated_attention_keys

VAE_HUB_ID = "hpcai-tech/OpenSora-VAE-v1.2"
SPATIAL_LATENT_SCALE = 0.18215          # hard-coded in VideoAutoencoderKL; the SDXL config's 0.13025 is unused (C.8)
LOGVAR_RANGE = (-30.0, 20.0)            # DiagonalGaussianDistribution clamp (C.8)
# Latent normalisation of OpenSoraVAE_V1_2 (C.8): z = (temporal latent - shift) / scale.
LATENT_SHIFT = (-0.10, 0.34, 0.27, 0.98)
LATENT_SCALE = (3.85, 2.32, 2.33, 3.06)


@dataclass(frozen=True)
class SpatialVAEConfig:
    """The ``AutoencoderKL`` arguments that differ between the SDXL VAE and the tiny test VAE (D.1)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    latent_channels: int = 4

    def build(self) -> nn.Module:
        from diffusers import AutoencoderKL

        n = len(self.block_out_channels)
        return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                             up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=self.block_out_channels,
                             layers_per_block=self.layers_per_block, norm_num_groups=self.norm_num_groups,
                             latent_channels=self.latent_channels, act_fn="silu")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class TemporalVAEConfig:
    """``VAE_Temporal_SD`` (C.8)."""

    in_out_channels: int = 4
    latent_embed_dim: int = 4
    embed_dim: int = 4
    filters: int = 128
    num_res_blocks: int = 4
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4)
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    norm_groups: int = 32                  # GroupNorm groups (eps 1e-5, the PyTorch default)

    def __post_init__(self) -> None:
        if len(self.temporal_downsample) != len(self.channel_multipliers) - 1:
            raise ValueError(f"TemporalVAEConfig.temporal_downsample={self.temporal_downsample!r} is invalid: "
                             f"allowed one entry per level transition ({len(self.channel_multipliers) - 1})")
        if self.filters % self.norm_groups:
            raise ValueError(f"TemporalVAEConfig.norm_groups={self.norm_groups} is invalid: allowed a divisor of "
                             f"filters={self.filters}")

    @property
    def time_downsample(self) -> int:
        return 2 ** sum(self.temporal_downsample)


@dataclass(frozen=True)
class VideoVAEConfig:
    """``OpenSoraVAE_V1_2`` (C.8): micro-batches of 4 frames for the 2-D stage, chunks of 17 frames in time."""

    spatial: SpatialVAEConfig = field(default_factory=SpatialVAEConfig)
    temporal: TemporalVAEConfig = field(default_factory=TemporalVAEConfig)
    micro_batch_size: int = 4
    micro_frame_size: int = 17

    def __post_init__(self) -> None:
        td = self.temporal.time_downsample
        if self.micro_batch_size < 1:
            raise ValueError(f"VideoVAEConfig.micro_batch_size={self.micro_batch_size} is invalid: allowed >= 1")
        if self.micro_frame_size < 1 or (self.micro_frame_size - 1) % td:
            raise ValueError(f"VideoVAEConfig.micro_frame_size={self.micro_frame_size} is invalid: allowed "
                             f"1 + a multiple of the time downsampling {td} (17 in the reference)")

    @property
    def micro_z_frame_size(self) -> int:
        """Latent frames of one full chunk: ceil(17 / 4) = 5."""
        return -(-self.micro_frame_size // self.temporal.time_downsample)

    def latent_frames(self, num_frames: int) -> int:
        full, rem = divmod(num_frames, self.micro_frame_size)
        return full * self.micro_z_frame_size + -(-rem // self.temporal.time_downsample)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        d = self.spatial.downsample
        return (self.temporal.embed_dim, self.latent_frames(num_frames), height // d, width // d)


# ---------------------------------------------------------------------------------------------------
# Temporal VAE
# ---------------------------------------------------------------------------------------------------
class CausalConv3d(nn.Module):
    """Zero-pad H and W by k//2 on both sides and T by (k_t - 1) + (1 - stride) frames at the front, then an
    unpadded ``nn.Conv3d`` with stride (s, 1, 1) stored as ``.conv`` (C.8)."""

    def __init__(self, chan_in: int, chan_out: int, kernel: int, time_stride: int = 1, bias: bool = True) -> None:
        super().__init__()
        time_pad = (kernel - 1) + (1 - time_stride)
        self.padding = (kernel // 2, kernel // 2, kernel // 2, kernel // 2, time_pad, 0)
        self.conv = nn.Conv3d(chan_in, chan_out, kernel, stride=(time_stride, 1, 1), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.padding))


class ResBlock(nn.Module):
    """GN -> SiLU -> conv1 -> GN -> SiLU -> conv2, plus the input (through a 1x1x1 ``conv3`` when widths differ)."""

    def __init__(self, chan_in: int, chan_out: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, chan_in)
        self.conv1 = CausalConv3d(chan_in, chan_out, 3, bias=False)
        self.norm2 = nn.GroupNorm(groups, chan_out)
        self.conv2 = CausalConv3d(chan_out, chan_out, 3, bias=False)
        self.conv3 = CausalConv3d(chan_in, chan_out, 1, bias=False) if chan_in != chan_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.conv3(x) if self.conv3 is not None else x)


def _res_stack(chan_in: int, chan_out: int, count: int, groups: int) -> nn.ModuleList:
    return nn.ModuleList(ResBlock(chan_in if j == 0 else chan_out, chan_out, groups) for j in range(count))


class TemporalEncoder(nn.Module):
    def __init__(self, cfg: TemporalVAEConfig) -> None:
        super().__init__()
        g, levels = cfg.norm_groups, len(cfg.channel_multipliers)
        self.conv_in = CausalConv3d(cfg.in_out_channels, cfg.filters, 3, bias=False)
        self.block_res_blocks = nn.ModuleList()
        self.conv_blocks = nn.ModuleList()
        prev = cfg.filters
        for i, mult in enumerate(cfg.channel_multipliers):
            width = cfg.filters * mult
            self.block_res_blocks.append(_res_stack(prev, width, cfg.num_res_blocks, g))
            prev = width
            if i < levels - 1:   # Identity keeps the ModuleList indices of the official file
                self.conv_blocks.append(CausalConv3d(prev, prev, 3, time_stride=2) if cfg.temporal_downsample[i]
                                        else nn.Identity())
        self.res_blocks = _res_stack(prev, prev, cfg.num_res_blocks, g)
        self.norm1 = nn.GroupNorm(g, prev)
        self.conv2 = CausalConv3d(prev, 2 * cfg.latent_embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for i, blocks in enumerate(self.block_res_blocks):
            for block in blocks:
                x = block(x)
            if i < len(self.conv_blocks):
                x = self.conv_blocks[i](x)
        for block in self.res_blocks:
            x = block(x)
        return self.conv2(F.silu(self.norm1(x)))


class TemporalDecoder(nn.Module):
    def __init__(self, cfg: TemporalVAEConfig) -> None:
        super().__init__()
        g, levels = cfg.norm_groups, len(cfg.channel_multipliers)
        self.temporal_downsample = cfg.temporal_downsample
        prev = cfg.filters * cfg.channel_multipliers[-1]
        self.conv1 = CausalConv3d(cfg.latent_embed_dim, prev, 3)
        self.res_blocks = _res_stack(prev, prev, cfg.num_res_blocks, g)
        blocks: list[nn.ModuleList] = []
        convs: list[nn.Module] = []
        for i in reversed(range(levels)):
            width = cfg.filters * cfg.channel_multipliers[i]
            blocks.insert(0, _res_stack(prev, width, cfg.num_res_blocks, g))
            prev = width
            if i > 0:   # depth-to-time: the conv doubles the channels, then channels become frames
                ts = 2 if cfg.temporal_downsample[i - 1] else 1
                convs.insert(0, CausalConv3d(prev, prev * ts, 3) if ts > 1 else nn.Identity())
        self.block_res_blocks = nn.ModuleList(blocks)
        self.conv_blocks = nn.ModuleList(convs)
        self.norm1 = nn.GroupNorm(g, prev)
        self.conv_out = CausalConv3d(prev, cfg.in_out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.res_blocks:
            x = block(x)
        for i in reversed(range(len(self.block_res_blocks))):
            for block in self.block_res_blocks[i]:
                x = block(x)
            if i > 0:
                ts = 2 if self.temporal_downsample[i - 1] else 1
                x = self.conv_blocks[i - 1](x)
                b, c, t, h, w = x.shape      # channels ordered (C, ts): channel c*ts + k -> frame t*ts + k
                x = x.view(b, c // ts, ts, t, h, w).permute(0, 1, 3, 2, 4, 5).reshape(b, c // ts, t * ts, h, w)
        return self.conv_out(F.silu(self.norm1(x)))


def _front_pad_frames(num_frames: int, multiple: int) -> int:
    return (multiple - num_frames % multiple) % multiple


class TemporalVAE(nn.Module):
    """``VAE_Temporal_SD``: time /4, no spatial change; front zero-padding to a multiple of 4 frames."""

    def __init__(self, cfg: TemporalVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = TemporalEncoder(cfg)
        self.quant_conv = CausalConv3d(2 * cfg.latent_embed_dim, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = CausalConv3d(cfg.embed_dim, cfg.latent_embed_dim, 1)
        self.decoder = TemporalDecoder(cfg)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
        pad = _front_pad_frames(x.shape[2], self.cfg.time_downsample)
        x = F.pad(x, (0, 0, 0, 0, pad, 0))
        moments = self.quant_conv(self.encoder(x)).to(x.dtype)
        mean, logvar = moments.chunk(2, dim=1)
        if not sample:
            return mean
        std = torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))
        return mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)

    def decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        pad = _front_pad_frames(num_frames, self.cfg.time_downsample)
        return self.decoder(self.post_quant_conv(z))[:, :, pad:]


# ---------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------
class SpatialVAE(nn.Module):
    """``VideoAutoencoderKL``: the diffusers ``AutoencoderKL`` as ``.module``, applied frame by frame."""

    def __init__(self, cfg: SpatialVAEConfig, micro_batch_size: int) -> None:
        super().__init__()
        self.module = cfg.build()
        self.micro_batch_size = micro_batch_size

    def _per_frame(self, x: torch.Tensor, fn) -> torch.Tensor:
        b, _, t = x.shape[:3]
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, *x.shape[1:2], *x.shape[3:])
        out = torch.cat([fn(frames[i:i + self.micro_batch_size])
                         for i in range(0, frames.shape[0], self.micro_batch_size)])
        return out.reshape(b, t, *out.shape[1:]).permute(0, 2, 1, 3, 4)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
        def enc(f: torch.Tensor) -> torch.Tensor:
            dist = self.module.encode(f).latent_dist
            return (dist.sample(generator) if sample else dist.mode()) * SPATIAL_LATENT_SCALE
        return self._per_frame(x, enc)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._per_frame(z, lambda f: self.module.decode(f / SPATIAL_LATENT_SCALE).sample)


class VideoAutoencoderPipeline(nn.Module):
    """Video (B, 3, F, H, W) in [-1, 1] <-> normalised latent (B, 4, F', H/8, W/8)."""

    def __init__(self, config: VideoVAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VideoVAEConfig()
        self.spatial_vae = SpatialVAE(config.spatial, config.micro_batch_size)
        self.temporal_vae = TemporalVAE(config.temporal)
        shape = (1, -1, 1, 1, 1)
        self.register_buffer("scale", torch.tensor(LATENT_SCALE).view(shape))
        self.register_buffer("shift", torch.tensor(LATENT_SHIFT).view(shape))

    @property
    def dtype(self) -> torch.dtype:
        return self.temporal_vae.quant_conv.conv.weight.dtype

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
        x_z = self.spatial_vae.encode(x, generator, sample)
        n = self.config.micro_frame_size
        z = torch.cat([self.temporal_vae.encode(x_z[:, :, i:i + n], generator, sample)
                       for i in range(0, x_z.shape[2], n)], dim=2)
        return (z - self.shift) / self.scale

    def decode(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Latent chunks of 5 frames each decode to min(17, frames left) frames, then the 2-D decoder (C.8)."""
        expected = self.config.latent_frames(num_frames)
        if z.shape[2] != expected:
            raise ValueError(f"{num_frames} frames need {expected} latent frames, got {z.shape[2]}")
        z = z * self.scale.to(z.dtype) + self.shift.to(z.dtype)
        chunks, left, n = [], num_frames, self.config.micro_z_frame_size
        for i in range(0, z.shape[2], n):
            chunks.append(self.temporal_vae.decode(z[:, :, i:i + n], min(self.config.micro_frame_size, left)))
            left -= self.config.micro_frame_size
        return self.spatial_vae.decode(torch.cat(chunks, dim=2))


def vae_config_dict(config: VideoVAEConfig) -> dict:
    return {"model_type": "VideoAutoencoderPipeline", **dataclasses.asdict(config)}


def vae_config_from_dict(raw: dict) -> VideoVAEConfig:
    """Our own ``config.json`` layout (nested spatial/temporal) or, without those entries, the official one."""
    def build(cls, values: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})
    if "spatial" in raw or "temporal" in raw:
        return VideoVAEConfig(spatial=build(SpatialVAEConfig, raw.get("spatial", {})),
                              temporal=build(TemporalVAEConfig, raw.get("temporal", {})),
                              **{k: raw[k] for k in ("micro_batch_size", "micro_frame_size") if k in raw})
    return VideoVAEConfig(**{k: raw[k] for k in ("micro_batch_size", "micro_frame_size") if k in raw})


def load_vae(spec: str, device: torch.device | str = "cpu") -> VideoAutoencoderPipeline:
    """The pipeline from a folder / ``model.safetensors`` / hub id, strictly (old attention names remapped)."""
    from .checkpoint import load_strict, read_config, read_safetensors, resolve_weights

    weights = resolve_weights(spec, "--vae-path", VAE_HUB_ID)
    try:
        config = vae_config_from_dict(read_config(weights))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{weights.parent / 'config.json'} describes an invalid OpenSora VAE: {err}") from err
    model = VideoAutoencoderPipeline(config)
    state = remap_deprecated_attention_keys(read_safetensors(weights))
    load_strict(model, {k: v.float() for k, v in state.items()}, os.fspath(weights))
    return model.to(device).eval()
