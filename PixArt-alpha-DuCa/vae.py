"""The SD VAE (``sd-vae-ft-ema``) through diffusers' ``AutoencoderKL`` (models.md B.8, D.1).

Loading (deprecated attention names remapped, strict) is shared with DiT in ``duca_common.vae``; this
module resolves PixArt's ``--vae_path`` (a folder, its ``vae/`` subfolder, or a hub id).
"""

from __future__ import annotations

from pathlib import Path

import torch

from duca_common.vae import LATENT_SCALE, VAE_WEIGHT_FILES, load_autoencoder_kl, vae_weight_file
from duca_common.validate import looks_like_hub_id

VAE_SUBFOLDER = "vae"


def _resolve(path_or_id: str) -> Path:
    local = Path(path_or_id)
    if local.is_dir():
        for folder in (local, local / VAE_SUBFOLDER):
            if (folder / "config.json").is_file() and vae_weight_file(folder) is not None:
                return folder
        raise FileNotFoundError(f"--vae_path {path_or_id!r} has no config.json with {VAE_WEIGHT_FILES} (nor under "
                                f"{VAE_SUBFOLDER}/); pass the sd-vae-ft-ema folder, or --vae_path none")
    if local.exists() or not looks_like_hub_id(path_or_id):
        raise FileNotFoundError(f"--vae_path {path_or_id!r} does not exist; pass the sd-vae-ft-ema folder, a hub id "
                                f"such as stabilityai/sd-vae-ft-ema, or --vae_path none")
    from huggingface_hub import snapshot_download
    return _resolve(snapshot_download(path_or_id, allow_patterns=["*.json", "*.safetensors", "*.bin"]))


def load_vae(path_or_id: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    return load_autoencoder_kl(_resolve(path_or_id), device, dtype)


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [0, 1], (B, 3, H, W), fp32 (B.7: ``vae.decode(z / 0.18215)``)."""
    images = vae.decode(latents.to(vae.dtype) / LATENT_SCALE).sample
    return ((images.float() + 1) / 2).clamp(0, 1)


def latent_preview(latents: torch.Tensor, upscale: int) -> torch.Tensor:
    """A stand-in image when no VAE is loaded (``--vae_path none``, tests): latent channels 0..2 squashed
    to [0, 1] by tanh and upscaled by nearest neighbour to the image size. Deterministic in the latents."""
    rgb = (torch.tanh(latents[:, :3].float()) + 1) / 2
    return torch.nn.functional.interpolate(rgb, scale_factor=upscale, mode="nearest")
