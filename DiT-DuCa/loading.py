"""Checkpoints and the VAE for DiT: find, load strictly, fail fast with clear messages.

* Checkpoints: the official ``DiT-XL-2-{256,512}x{...}.pt`` (a plain state dict), a training checkpoint
  (``{"model": ..., "ema": ...}``: the EMA weights are used, as upstream ``find_model``), a
  ``.safetensors`` file (preferred; never unpickles), or a diffusers DiT folder (``diffusers_format.py``).
  ``.pt`` files are read with ``weights_only=True``.
  A file may carry its architecture: safetensors metadata ``dit_config`` (JSON) or a ``"config"`` dict
  next to the weights in a ``.pt``; then the model is built from it instead of ``--model``.
* VAE: diffusers ``AutoencoderKL`` from a local folder or a hub id, with the deprecated mid-block
  attention names (``query/key/value/proj_attn``) renamed before a strict load (models.md D.1).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from duca_common.errors import CheckpointError, CheckpointNotFoundError, UsageError, read_failure
from duca_common.vae import LATENT_SCALE, load_autoencoder_kl, vae_weight_file
from duca_common.validate import looks_like_hub_id

from .models import DiT, DiT_models

OFFICIAL_URL = "https://dl.fbaipublicfiles.com/DiT/models/{name}"
OFFICIAL_CHECKPOINTS = {("DiT-XL/2", 256), ("DiT-XL/2", 512)}      # (model, image size) with released weights
VAE_HUB_IDS = {"mse": "stabilityai/sd-vae-ft-mse", "ema": "stabilityai/sd-vae-ft-ema"}
PACKAGE_DIR = Path(__file__).resolve().parent


def official_checkpoints_text() -> str:
    """:data:`OFFICIAL_CHECKPOINTS` in words, for messages: 'DiT-XL/2 at 256 and 512'."""
    sizes: dict[str, list[str]] = {}
    for model, size in sorted(OFFICIAL_CHECKPOINTS):
        sizes.setdefault(model, []).append(str(size))
    return "; ".join(f"{model} at {' and '.join(s)}" for model, s in sizes.items())


class VAEError(UsageError):
    """The VAE could not be found or loaded."""


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------

def official_checkpoint_name(model: str, image_size: int) -> str:
    return f"{model.replace('/', '-')}-{image_size}x{image_size}.pt"


def checkpoint_search_dirs() -> list[Path]:
    """Where an official checkpoint is looked for when ``--ckpt`` is not given, in order."""
    dirs = []
    if os.environ.get("DIT_CHECKPOINT_DIR"):
        dirs.append(Path(os.environ["DIT_CHECKPOINT_DIR"]))
    dirs += [Path.cwd() / "pretrained_models", PACKAGE_DIR / "pretrained_models",
             PACKAGE_DIR.parent / "pretrained_models"]
    seen, unique = set(), []
    for d in dirs:
        if d.resolve() not in seen:
            seen.add(d.resolve())
            unique.append(d)
    return unique


def resolve_checkpoint(ckpt: str | None, model: str, image_size: int) -> Path:
    """The checkpoint file to load.

    An explicit ``ckpt`` must exist. Without one, the official file name for (model, image_size) is
    looked for in :func:`checkpoint_search_dirs`. Nothing is downloaded. This is the single place to add
    fallbacks (e.g. a checkpoint shipped with the package): raise ``CheckpointNotFoundError`` otherwise.
    """
    if ckpt is not None:
        path = Path(ckpt).expanduser()
        if path.is_dir():        # a diffusers DiT folder (DiTPipeline snapshot or its transformer/)
            from .diffusers_format import transformer_folder
            return transformer_folder(path)
        if not path.is_file():
            raise CheckpointError(f"--ckpt {ckpt}: no such file")
        return path
    name = official_checkpoint_name(model, image_size)
    for d in checkpoint_search_dirs():
        if (d / name).is_file():
            return d / name
    searched = ", ".join(str(d) for d in checkpoint_search_dirs())
    raise CheckpointNotFoundError(f"no --ckpt given and {name} was not found (searched {searched}); "
                                  f"{official_download_hint(name)}. Only {official_checkpoints_text()} has official "
                                  f"weights.")


def official_download_hint(name: str) -> str:
    """How to get the official file ``name`` (one line: the errors print as ``error: ...`` on one line)."""
    return (f"download it with `mkdir -p pretrained_models && curl -L -o pretrained_models/{name} "
            f"{OFFICIAL_URL.format(name=name)}`, or pass --ckpt PATH (or set DIT_CHECKPOINT_DIR)")


@dataclass
class LoadedCheckpoint:
    state_dict: dict[str, torch.Tensor]
    config: dict | None          # architecture stored in the file, if any
    path: Path


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read a checkpoint without unpickling code (safetensors, or torch.load(weights_only=True))."""
    path = Path(path)
    if path.is_dir():            # diffusers format: keys converted, architecture from its config.json
        from .diffusers_format import read_diffusers_dit
        return LoadedCheckpoint(*read_diffusers_dit(path), path)
    config = None
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file
            state = load_file(str(path), device="cpu")
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if "dit_config" in meta:
                config = json.loads(meta["dit_config"])
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader error means: not a usable checkpoint
        raise CheckpointError(f"cannot read checkpoint {path}: {read_failure(exc)}; pass an official DiT .pt, a "
                              f".safetensors file or a diffusers DiT folder") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    if "config" in state and isinstance(state["config"], dict):
        config = state["config"]
    if "ema" in state and isinstance(state["ema"], dict):        # a DiT training checkpoint
        state = state["ema"]
    elif "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"checkpoint {path} contains no tensors")
    return LoadedCheckpoint(state, config, path)


def save_checkpoint(model: DiT, path: str | Path, config: dict | None = None) -> Path:
    """Save weights (safetensors when the suffix says so) with the architecture attached."""
    path = Path(path)
    config = config if config is not None else model_config(model)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path), metadata={"dit_config": json.dumps(config)})
    else:
        torch.save({"model": state, "config": config}, path)
    return path


def model_config(model: DiT) -> dict:
    """Constructor arguments that rebuild ``model``'s architecture."""
    return dict(input_size=model.input_size, patch_size=model.patch_size, in_channels=model.in_channels,
                hidden_size=model.hidden_size, depth=model.depth, num_heads=model.num_heads,
                mlp_ratio=model.blocks[0].mlp.fc1.out_features / model.hidden_size,
                num_classes=model.num_classes, learn_sigma=model.learn_sigma,
                class_dropout_prob=model.y_embedder.dropout_prob, cfg_channels=model.cfg_channels)


def build_dit(name: str, *, input_size: int, num_classes: int, in_channels: int = 4, config: dict | None = None,
              device: torch.device | str | None = None) -> DiT:
    """A DiT from a stored ``config`` if given, else the named configuration."""
    if config is None and name not in DiT_models:
        raise UsageError(f"unknown --model {name!r}; choose one of {', '.join(DiT_models)}")
    try:
        with torch.device(device if device is not None else "cpu"):
            if config is not None:
                return DiT(**config)
            return DiT_models[name](input_size=input_size, num_classes=num_classes, in_channels=in_channels)
    except (TypeError, ValueError) as exc:
        source = "the checkpoint's stored architecture" if config is not None else f"--model {name}"
        raise CheckpointError(f"cannot build {source} at latent side {input_size}: {exc}; check --model and "
                              f"--image-size") from None


def load_into(model: DiT, ckpt: LoadedCheckpoint, what: str) -> None:
    """Strict load with a readable summary of what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(ckpt.state_dict))
    unexpected = sorted(set(ckpt.state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(ckpt.state_dict) if tuple(own[k].shape) != tuple(ckpt.state_dict[k].shape))
    if missing or unexpected or wrong:
        def show(keys, fmt):
            return ", ".join(fmt(k) for k in keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
        parts = []
        if wrong:
            parts.append("shape mismatch: " + show(wrong, lambda k: f"{k} file {tuple(ckpt.state_dict[k].shape)} "
                                                              f"vs model {tuple(own[k].shape)}"))
        if missing:
            parts.append("missing: " + show(missing, str))
        if unexpected:
            parts.append("unexpected: " + show(unexpected, str))
        raise CheckpointError(f"checkpoint {ckpt.path} does not fit {what}: " + "; ".join(parts) +
                              ". Check --model, --image-size, --num-classes and --vae.")
    model.load_state_dict(ckpt.state_dict, strict=True)


# ------------------------------------------------------------------------------------------------
# VAE
# ------------------------------------------------------------------------------------------------

def resolve_vae_folder(spec: str) -> Path:
    """A local folder holding ``config.json`` and the weights: the path itself, ``pretrained_models/<name>``
    for ema/mse, or a hub snapshot (honours ``HF_HUB_OFFLINE``)."""
    if spec in VAE_HUB_IDS:
        local_name = VAE_HUB_IDS[spec].split("/")[1]
        for d in checkpoint_search_dirs():
            if (d / local_name / "config.json").is_file():
                return d / local_name
        spec = VAE_HUB_IDS[spec]
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file() or vae_weight_file(path) is None:
            raise VAEError(f"--vae {spec}: a local VAE must be a folder with config.json and "
                           f"diffusion_pytorch_model.safetensors (or .bin)")
        return path
    if not looks_like_hub_id(spec):
        raise VAEError(f"--vae {spec}: not a local folder, not 'ema'/'mse'/'none', and not a hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
        folder = snapshot_download(spec, allow_patterns=["config.json", "*.safetensors", "*.bin"])
    except Exception as exc:  # noqa: BLE001
        raise VAEError(f"--vae {spec}: cannot fetch from the hub ({type(exc).__name__}: {exc}). Download it once "
                       f"to a folder and pass that folder, or use --vae none") from exc
    return Path(folder)


def load_vae(spec: str, device: torch.device | str = "cpu"):
    """``AutoencoderKL`` in eval mode, or None for ``spec == 'none'``."""
    if spec == "none":
        return None
    folder = resolve_vae_folder(spec)
    try:
        return load_autoencoder_kl(folder, device)
    except Exception as exc:  # noqa: BLE001
        raise VAEError(f"cannot load the VAE from {folder}: {type(exc).__name__}: {exc}") from exc


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1]: ``vae.decode(latents / 0.18215)``; with no VAE the latents are the image."""
    if vae is None:
        return latents
    with torch.no_grad():
        return vae.decode(latents / LATENT_SCALE).sample


def to_uint8_images(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] to (B, H, W, 3) uint8 as the upstream DiT scripts convert; one channel
    is repeated to three, more than three keep the first three."""
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    images = images[:, :3]
    return torch.clamp(127.5 * images + 128.0, 0, 255).permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8)
