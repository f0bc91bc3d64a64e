"""Command-line options shared by ``sample.py`` and ``sample_ddp.py``, and their cache configuration.

The cache flags come from the one flags layer (``duca_common.cache.flags``, family ``dit``): the
reference flags (``--cache-type --fresh-ratio --ratio-scheduler --force-fresh --soft-fresh-weight
--fresh-threshold``) keep the reference's meaning (without ``--cache`` or ``--preset`` they select DuCa,
as the reference code always caches); ``--cache`` picks the method, ``--preset NAME`` a paper row, and
explicit flags override the preset's fields.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from duca_common.cache import CacheConfig
from duca_common.cache.flags import add_cache_flags, family, resolve_cache_flags
from duca_common.errors import UsageError
from duca_common.validate import COUNT, GUIDANCE, SIZE, STEPS, check_numbers

from .diffusion import NUM_DIFFUSION_TIMESTEPS
from .loading import (
    OFFICIAL_CHECKPOINTS,
    CheckpointNotFoundError,
    official_checkpoint_name,
    official_checkpoints_text,
    official_download_hint,
    resolve_checkpoint,
)
from .models import DiT_models

# --cache-type of the reference -> engine selector (kept for scripts that map a config back to its flags)
CACHE_TYPES = family("dit").cache_types


def add_model_args(parser: argparse.ArgumentParser, *, cfg_scale: float, steps: int, vae: str) -> None:
    parser.add_argument("--model", type=str, default=None,
                        help=f"one of {', '.join(DiT_models)} "
                             "(default DiT-XL/2, or the architecture a checkpoint stores)")
    parser.add_argument("--vae", type=str, default=None,
                        help="'ema' / 'mse' (stabilityai/sd-vae-ft-*), a local diffusers folder, a hub id, "
                             f"or 'none' (no decoding: the model works on images directly); default {vae}, or "
                             "none for a checkpoint trained on pixels (the embedded digits DiT, a dit_duca.train "
                             "export of images)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image side in pixels (default 256; 256 or 512 for the official weights); the latent "
                             "side is image-size/8, or image-size itself with --vae none. A checkpoint that stores "
                             "its architecture must agree")
    parser.add_argument("--num-classes", type=int, default=None, help="default 1000, or the checkpoint's")
    parser.add_argument("--cfg-scale", type=float, default=cfg_scale,
                        help="classifier-free guidance scale (1 = no guidance)")
    parser.add_argument("--num-sampling-steps", type=int, default=steps,
                        help=f"sampling steps, respaced from the {NUM_DIFFUSION_TIMESTEPS}-step schedule (DDPM, or "
                             "DDIM with --ddim-sample)")
    parser.add_argument("--ckpt", type=str, default=None,
                        help="checkpoint (.pt or .safetensors); default: the official DiT-XL-2 file in "
                             "pretrained_models/ (see loading.checkpoint_search_dirs)")
    parser.add_argument("--ddim-sample", action="store_true", help="DDIM (eta 0) instead of DDPM")
    parser.add_argument("--in-channels", type=int, default=None,
                        help="latent channels of a --model built by name (default 4, or the checkpoint's)")


def add_cache_args(parser: argparse.ArgumentParser, *, cache_type: str) -> None:
    add_cache_flags(parser, "dit", cache_type=cache_type)
    parser.add_argument("--test-FLOPs", dest="test_flops", action="store_true",
                        help="print the reference-formula FLOPs of the run")


def cache_config_from_args(args: argparse.Namespace) -> tuple[CacheConfig, str]:
    """The engine configuration and a short description of where it came from."""
    choice = resolve_cache_flags(args, "dit")
    return choice.config, choice.description


# Defaults when neither a flag nor the checkpoint says otherwise: the official DiT-XL/2 release
# (ImageNet, 1000 classes, 256 px, SD-VAE latents with 4 channels).
DEFAULT_MODEL = "DiT-XL/2"
DEFAULT_IMAGE_SIZE = 256
DEFAULT_NUM_CLASSES = 1000
DEFAULT_IN_CHANNELS = 4
VAE_FACTOR = 8                             # SD VAE: latent side = image side / 8
# Architecture fields compared between --model and a stored architecture.
ARCH_FIELDS = ("patch_size", "hidden_size", "depth", "num_heads")


def latent_geometry(args: argparse.Namespace) -> tuple[int, int]:
    """(latent side, latent channels) implied by --image-size and --vae."""
    size = args.image_size if args.image_size is not None else DEFAULT_IMAGE_SIZE
    channels = args.in_channels if args.in_channels is not None else DEFAULT_IN_CHANNELS
    if args.vae == "none":
        return size, channels
    if size % VAE_FACTOR:
        raise UsageError(f"--image-size {size} must be a multiple of {VAE_FACTOR} with a VAE (the latent is 1/8 "
                         f"of the image); pass e.g. {max(VAE_FACTOR, size // VAE_FACTOR * VAE_FACTOR)}")
    return size // VAE_FACTOR, channels


def validate_common(args: argparse.Namespace) -> None:
    """Every numeric flag shared by sample.py and sample_ddp.py, in range and finite (UsageError)."""
    check_numbers([
        ("--num-sampling-steps", args.num_sampling_steps,
         STEPS.with_high(NUM_DIFFUSION_TIMESTEPS, f"the diffusion has {NUM_DIFFUSION_TIMESTEPS} steps to respace")),
        ("--cfg-scale", args.cfg_scale, GUIDANCE),
        ("--image-size", args.image_size, SIZE),
        ("--num-classes", args.num_classes, COUNT),
        ("--in-channels", args.in_channels, COUNT),
    ])
    if args.model is not None and args.model not in DiT_models:
        raise UsageError(f"--model {args.model!r} is unknown; choose one of {', '.join(DiT_models)}")


def fill_default_architecture(args: argparse.Namespace) -> None:
    """No stored architecture: the flags, or the official DiT-XL/2 defaults."""
    args.model = args.model or DEFAULT_MODEL
    args.image_size = args.image_size if args.image_size is not None else DEFAULT_IMAGE_SIZE
    args.num_classes = args.num_classes if args.num_classes is not None else DEFAULT_NUM_CLASSES
    args.in_channels = args.in_channels if args.in_channels is not None else DEFAULT_IN_CHANNELS


def apply_stored_architecture(args: argparse.Namespace, stored: dict | None, source: str) -> None:
    """Fill --image-size / --num-classes / --in-channels from a checkpoint that stores its architecture;
    a flag given explicitly that contradicts it is a UsageError naming both values (a silent override wrote
    8 px images while recording 32 px)."""
    if stored is None:
        fill_default_architecture(args)
        return
    side = int(stored["input_size"])
    implied = {"image_size": side if args.vae == "none" else side * VAE_FACTOR,
               "num_classes": int(stored["num_classes"]), "in_channels": int(stored["in_channels"])}
    for attr, value in implied.items():
        given = getattr(args, attr)
        flag = "--" + attr.replace("_", "-")
        if given is not None and given != value:
            how = (f" (latent side {side}" + (")" if args.vae == "none" else f" x {VAE_FACTOR} with a VAE)")
                   if attr == "image_size" else "")
            raise UsageError(f"{flag} {given} contradicts {source}, which stores a model for {flag} {value}{how}; "
                             f"drop {flag} or pass {flag} {value}")
        setattr(args, attr, value)
    if args.model is not None:
        import torch

        with torch.device("meta"):
            named = DiT_models[args.model](input_size=side, num_classes=implied["num_classes"],
                                           in_channels=implied["in_channels"])
        named_arch = {"patch_size": named.patch_size, "hidden_size": named.hidden_size, "depth": named.depth,
                      "num_heads": named.num_heads}
        differ = [k for k in ARCH_FIELDS if k in stored and int(stored[k]) != named_arch[k]]
        if differ:
            theirs = ", ".join(f"{k} {stored[k]}" for k in differ)
            ours = ", ".join(f"{k} {named_arch[k]}" for k in differ)
            raise UsageError(f"--model {args.model} ({ours}) contradicts {source}, which stores {theirs}; "
                             f"drop --model (the stored architecture is used)")
    else:
        args.model = "stored"


def choose_vae(args: argparse.Namespace, ckpt_path: Path | None, default: str) -> None:
    """Settle ``--vae``: left out, it is ``none`` for a checkpoint trained on pixels (the embedded digits
    DiT, any ``dit_duca.train`` export of images: :func:`~dit_duca.embedded.pixel_training_data`) and the
    script's ``default`` (the SD VAE, as upstream) otherwise. A VAE named for a pixel checkpoint is refused
    (it would decode images as latents)."""
    from .embedded import pixel_training_data

    pixels = pixel_training_data(ckpt_path) if ckpt_path is not None else None
    if args.vae is None:
        args.vae = "none" if pixels else default
    elif pixels and args.vae != "none":
        raise UsageError(f"--vae {args.vae} contradicts checkpoint {ckpt_path}, which samples pixels (trained on "
                         f"{pixels}); drop --vae or pass --vae none")


# Flags that describe the model to sample (with no --ckpt: the official one, whose file is looked for).
GEOMETRY_FLAGS = ("model", "image_size", "num_classes", "in_channels")


def use_embedded_model_if_no_checkpoint(args: argparse.Namespace) -> bool:
    """No ``--ckpt`` and no official checkpoint on disk: sample the embedded digits DiT shipped with the
    package instead (``sample.py`` only; docs/embedded.md). Its stored geometry replaces the flags that
    describe the official model (``--model``, ``--image-size``, ``--num-classes``, ``--in-channels``: the
    reference commands pass ``--image-size 256``), and ``--vae`` becomes ``none`` (it samples pixels); one
    note on stderr names what was replaced and how to get the official weights. With ``--ckpt`` nothing is
    replaced: a flag that contradicts the file is refused by :func:`apply_stored_architecture`."""
    if args.ckpt is not None:
        return False
    model, size = args.model or DEFAULT_MODEL, args.image_size or DEFAULT_IMAGE_SIZE
    from .embedded import DEFAULT_EMBEDDED_PATH, read_spec

    try:
        resolve_checkpoint(None, model, size)
        return False
    except CheckpointNotFoundError:
        if not DEFAULT_EMBEDDED_PATH.is_file():      # no fallback either: the message names the download
            raise
    spec = read_spec(DEFAULT_EMBEDDED_PATH)
    stored = {"model": None, "image_size": spec.input_size, "num_classes": spec.num_classes,
              "in_channels": spec.in_channels}
    replaced = []
    for attr in GEOMETRY_FLAGS:
        given = getattr(args, attr)
        if given is not None and given != stored[attr]:
            replaced.append(f"--{attr.replace('_', '-')} {given}")
        setattr(args, attr, None)                    # filled from the stored architecture
    if args.vae is not None and args.vae != "none":
        replaced.append(f"--vae {args.vae}")
    args.ckpt, args.vae = str(DEFAULT_EMBEDDED_PATH), "none"
    name = official_checkpoint_name(model, size)
    what = (f"flags of the official model replaced: {' '.join(replaced)}" if replaced
            else "its stored geometry is used")
    real = (f"For {model} itself: {official_download_hint(name)}." if (model, size) in OFFICIAL_CHECKPOINTS
            else f"{model} at {size} px has no official weights (only {official_checkpoints_text()}): "
                 f"pass --ckpt PATH.")
    print(f"note: no --ckpt given and no {name} found, so this samples the embedded digits DiT "
          f"({DEFAULT_EMBEDDED_PATH.name}: {spec.input_size}x{spec.input_size} pixels, {spec.num_classes} classes, "
          f"--vae none); {what}. {real}", file=sys.stderr)
    return True
