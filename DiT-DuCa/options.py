"""Command-line options shared by ``sample.py`` and ``sample_ddp.py``, and their cache configuration.

The reference flags (``--cache-type --fresh-ratio --ratio-scheduler --force-fresh --soft-fresh-weight
--fresh-threshold``) keep the reference's meaning: without ``--cache`` or ``--preset`` they select DuCa,
as the reference code always caches. ``--cache {none,fora,toca,duca,taylorseer}`` picks the method
explicitly (the reference flags then fill in its parameters); ``--preset NAME`` takes a named operating
point from ``duca_common.cache.presets`` and overrides the reference flags.
"""

from __future__ import annotations

import argparse

from duca_common.cache import DIT_TOCA_SCHEDULE, CacheConfig, RatioSchedule, get_preset
from duca_common.cache.config import METHODS
from duca_common.cache.presets import DIT_SPATIAL, PRESETS

from .models import DiT_models

# --cache-type of the reference -> engine selector
CACHE_TYPES = {"attention": "attention_received", "kv-norm": "value_norm", "random": "random",
               "similarity": "similarity"}
RATIO_SCHEDULERS = ("ToCa", "constant")
FORCE_FRESH = ("global",)


def add_model_args(parser: argparse.ArgumentParser, *, cfg_scale: float, steps: int, vae: str) -> None:
    parser.add_argument("--model", type=str, default="DiT-XL/2", help=f"one of {', '.join(DiT_models)}")
    parser.add_argument("--vae", type=str, default=vae,
                        help="'ema' / 'mse' (stabilityai/sd-vae-ft-*), a local diffusers folder, a hub id, "
                             "or 'none' (no decoding: the model works on images directly)")
    parser.add_argument("--image-size", type=int, default=256,
                        help="image side in pixels (256 or 512 for the official weights); the latent side is "
                             "image-size/8, or image-size itself with --vae none")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--cfg-scale", type=float, default=cfg_scale)
    parser.add_argument("--num-sampling-steps", type=int, default=steps)
    parser.add_argument("--ckpt", type=str, default=None,
                        help="checkpoint (.pt or .safetensors); default: the official DiT-XL-2 file in "
                             "pretrained_models/ (see loading.checkpoint_search_dirs)")
    parser.add_argument("--ddim-sample", action="store_true", help="DDIM (eta 0) instead of DDPM")
    parser.add_argument("--in-channels", type=int, default=4, help="latent channels of a --model built by name")


def add_cache_args(parser: argparse.ArgumentParser, *, cache_type: str) -> None:
    g = parser.add_argument_group("caching (reference flags; without --cache/--preset they mean DuCa)")
    g.add_argument("--cache", type=str, default=None, choices=METHODS,
                   help="caching method; default: DuCa configured by the reference flags")
    g.add_argument("--preset", type=str, default=None,
                   help="named operating point: " + ", ".join(n for n, p in PRESETS.items() if p.model == "dit"))
    g.add_argument("--cache-type", type=str, default=cache_type, choices=sorted(CACHE_TYPES),
                   help="token selector: attention (attention received), kv-norm (value norms, V-caching), random")
    g.add_argument("--fresh-ratio", type=float, default=0.07, help="base fraction of tokens recomputed (1 - R)")
    g.add_argument("--ratio-scheduler", type=str, default="ToCa", choices=RATIO_SCHEDULERS)
    g.add_argument("--force-fresh", type=str, default="global", choices=FORCE_FRESH,
                   help="only 'global' (the reference setting) is implemented")
    g.add_argument("--soft-fresh-weight", type=float, default=0.25, help="staleness bonus weight")
    g.add_argument("--fresh-threshold", type=int, default=4, help="cycle length N")
    g.add_argument("--taylor-order", type=int, default=3, help="TaylorSeer order O (with --cache taylorseer)")
    g.add_argument("--test-FLOPs", dest="test_flops", action="store_true",
                   help="print the reference-formula FLOPs of the run")


def cache_config_from_args(args: argparse.Namespace) -> tuple[CacheConfig, str]:
    """The engine configuration and a short description of where it came from."""
    if args.preset is not None:
        preset = get_preset(args.preset)
        if preset.model != "dit":
            raise ValueError(f"--preset {args.preset} is for {preset.model}, not DiT; DiT presets: "
                             + ", ".join(n for n, p in PRESETS.items() if p.model == "dit"))
        if args.cache is not None and args.cache != preset.config.method:
            raise ValueError(f"--cache {args.cache} contradicts --preset {args.preset} (method {preset.config.method})")
        return preset.config, f"preset {preset.name}: {preset.paper_row}"
    method = args.cache or "duca"
    if not 0.0 <= args.fresh_ratio <= 1.0:
        raise ValueError(f"--fresh-ratio {args.fresh_ratio} must be in [0, 1]")
    if args.fresh_threshold < 1:
        raise ValueError(f"--fresh-threshold {args.fresh_threshold} must be >= 1")
    if method == "none":
        return CacheConfig(method="none"), "no cache"
    if method == "fora":
        return CacheConfig(method="fora", interval=args.fresh_threshold), f"FORA N={args.fresh_threshold}"
    if method == "taylorseer":
        return (CacheConfig(method="taylorseer", interval=args.fresh_threshold, taylor_order=args.taylor_order),
                f"TaylorSeer N={args.fresh_threshold} O={args.taylor_order}")
    schedule = DIT_TOCA_SCHEDULE if args.ratio_scheduler == "ToCa" else RatioSchedule("constant")
    cfg = CacheConfig(method=method, interval=args.fresh_threshold, fresh_ratio=args.fresh_ratio,
                      ratio_schedule=schedule, interval_rule="dit", selector=CACHE_TYPES[args.cache_type],
                      staleness_weight=args.soft_fresh_weight, **DIT_SPATIAL)
    source = "reference flags" if args.cache is None else f"--cache {method}"
    return cfg, (f"{method} ({source}): N={args.fresh_threshold} fresh_ratio={args.fresh_ratio} "
                 f"selector={cfg.selector} scheduler={args.ratio_scheduler}")


def latent_geometry(args: argparse.Namespace) -> tuple[int, int]:
    """(latent side, latent channels) implied by --image-size and --vae."""
    if args.vae == "none":
        return args.image_size, args.in_channels
    if args.image_size % 8:
        raise ValueError(f"--image-size {args.image_size} must be a multiple of 8 with a VAE")
    return args.image_size // 8, args.in_channels


def validate_common(args: argparse.Namespace) -> None:
    if args.num_sampling_steps < 1:
        raise ValueError(f"--num-sampling-steps {args.num_sampling_steps} must be >= 1")
    if args.num_classes < 1:
        raise ValueError(f"--num-classes {args.num_classes} must be >= 1")
    if args.image_size < 1:
        raise ValueError(f"--image-size {args.image_size} must be positive")
