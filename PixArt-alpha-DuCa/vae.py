"""The SD VAE (``sd-vae-ft-ema``) through diffusers' ``AutoencoderKL`` (models.md B.8, D.1).

The weights are read by us and loaded with ``strict=True`` after renaming the deprecated mid-block
attention keys (``query``/``key``/``value``/``proj_attn`` -> ``to_q``/``to_k``/``to_v``/``to_out.0``),
which the hub uploads of that VAE most likely still use.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VAE_SCALE = 0.18215                    # SD latent scaling (D.1)
VAE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
VAE_SUBFOLDER = "vae"
DEPRECATED_ATTENTION_KEYS = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def remap_deprecated_attention_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``...attentions.N.query.weight`` style keys to the current diffusers names."""
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if len(parts) >= 2 and "attentions" in parts and parts[-2] in DEPRECATED_ATTENTION_KEYS:
            parts[-2] = DEPRECATED_ATTENTION_KEYS[parts[-2]]
            key = ".".join(parts)
            if value.dim() == 4 and value.shape[-2:] == (1, 1):   # very old files stored 1x1 convs
                value = value[:, :, 0, 0]
        out[key] = value
    return out


def _resolve(path_or_id: str) -> Path:
    local = Path(path_or_id)
    if local.is_dir():
        for folder in (local, local / VAE_SUBFOLDER):
            if (folder / "config.json").is_file() and any((folder / f).is_file() for f in VAE_WEIGHT_FILES):
                return folder
        raise FileNotFoundError(f"--vae_path {path_or_id!r} has no config.json with {VAE_WEIGHT_FILES} (nor under "
                                f"{VAE_SUBFOLDER}/); pass the sd-vae-ft-ema folder, or --vae_path none")
    if local.exists() or path_or_id.count("/") != 1:
        raise FileNotFoundError(f"--vae_path {path_or_id!r} does not exist; pass the sd-vae-ft-ema folder, a hub id "
                                f"such as stabilityai/sd-vae-ft-ema, or --vae_path none")
    from huggingface_hub import snapshot_download
    return _resolve(snapshot_download(path_or_id, allow_patterns=["*.json", "*.safetensors", "*.bin"]))


def load_vae(path_or_id: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    from diffusers import AutoencoderKL

    folder = _resolve(path_or_id)
    config = json.loads((folder / "config.json").read_text())
    vae = AutoencoderKL.from_config(config)
    for name in VAE_WEIGHT_FILES:
        file = folder / name
        if file.is_file():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file
                sd = load_file(str(file))
            else:
                sd = torch.load(file, map_location="cpu", weights_only=True)
            break
    vae.load_state_dict(remap_deprecated_attention_keys(sd), strict=True)
    return vae.to(device=device, dtype=dtype).eval()


@torch.no_grad()
def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [0, 1], (B, 3, H, W), fp32 (B.7: ``vae.decode(z / 0.18215)``)."""
    images = vae.decode(latents.to(vae.dtype) / VAE_SCALE).sample
    return ((images.float() + 1) / 2).clamp(0, 1)


def latent_preview(latents: torch.Tensor, upscale: int) -> torch.Tensor:
    """A stand-in image when no VAE is loaded (``--vae_path none``, tests): latent channels 0..2 squashed
    to [0, 1] by tanh and upscaled by nearest neighbour to the image size. Deterministic in the latents."""
    rgb = (torch.tanh(latents[:, :3].float()) + 1) / 2
    return torch.nn.functional.interpolate(rgb, scale_factor=upscale, mode="nearest")
