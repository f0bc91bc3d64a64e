"""The SD VAE (diffusers ``AutoencoderKL``) shared by DiT, PixArt-alpha and OpenSora's 2-D stage.

The hub uploads of ``stabilityai/sd-vae-ft-mse`` / ``-ema`` (and PixArt's copy) were made with an early
diffusers version whose mid-block attention is stored as ``query/key/value/proj_attn`` (models.md D.1);
diffusers renames them on load, and so do we, before a strict load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

LATENT_SCALE = 0.18215   # SD latent scaling: latent = 0.18215 x posterior sample (models.md D.1)
VAE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin")
DEPRECATED_ATTENTION_KEYS = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def remap_deprecated_attention_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``...attentions.N.query.weight``-style keys to the current diffusers names; the oldest files
    stored those projections as 1x1 convolutions, which are squeezed to Linear shape."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if "attentions" in parts and len(parts) >= 2 and parts[-2] in DEPRECATED_ATTENTION_KEYS:
            key = ".".join(parts[:-2] + [DEPRECATED_ATTENTION_KEYS[parts[-2]], parts[-1]])
            if value.dim() == 4 and value.shape[-2:] == (1, 1):
                value = value[:, :, 0, 0]
        out[key] = value
    return out


def vae_weight_file(folder: Path) -> Path | None:
    """The weights file of a diffusers VAE folder, safetensors first; None when there is none."""
    for name in VAE_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a pickled state dict read with ``weights_only=True``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_autoencoder_kl(folder: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """``AutoencoderKL`` built from ``folder/config.json`` and its weights (old names remapped), strictly."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    weights = vae_weight_file(folder)
    if weights is None or not (folder / "config.json").is_file():
        raise FileNotFoundError(f"VAE folder {folder} needs config.json and one of {VAE_WEIGHT_FILES}")
    vae = AutoencoderKL.from_config(json.loads((folder / "config.json").read_text()))
    vae.load_state_dict(remap_deprecated_attention_keys(read_state_dict(weights)), strict=True)
    return vae.to(device=device, dtype=dtype).eval()
