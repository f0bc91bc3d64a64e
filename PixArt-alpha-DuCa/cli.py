"""What ``scripts/inference.py`` and ``scripts/inference_ddp.py`` share: the reference flags, their
validation (every bad input fails before any weights are read), building the cache config, loading the
components, prompt files, image writing and the JSON report."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from duca_common.cache import CacheConfig
from duca_common.cache.flags import add_cache_flags, family, resolve_cache_flags
from duca_common.errors import NonFiniteError, UsageError  # noqa: F401  (re-exported to the scripts)
from duca_common.outputs import check_output_dir, check_output_file
from duca_common.run_record import RunRecord, file_identity, text_identity
from duca_common.runtime import atomic_write_bytes, pick_device, write_json  # noqa: F401  (re-exported to the scripts)
from duca_common.seeding import sample_generator
from duca_common.text import read_prompt_lines
from duca_common.validate import COUNT, GUIDANCE, SEED, STEPS, Bound, FiniteWatch, check_numbers, looks_like_hub_id

from .checkpoint import CheckpointError, check_image_size, config_from_state_dict, load_transformer, read_pth_state_dict
from .dpm_solver import DEFAULT_CFG, DEFAULT_STEPS
from .model import MS_IMAGE_SIZE, TEXT_TOKENS, VAE_DOWNSAMPLE, PixArt, PixArtConfig, nearest_bucket, pixart_xl_2

# The reference --cache_type names -> engine selectors (the flags layer's PixArt family, models.md B.9).
CACHE_TYPES = family("pixart").cache_types
# Upstream's default locations, relative to the working directory (PixArt scripts/inference.py).
DEFAULT_T5_PATH = "output/pretrained_models/t5_ckpts"
T5_SUBFOLDER = "t5-v1_1-xxl"
DEFAULT_VAE_PATH = "output/pretrained_models/sd-vae-ft-ema"
DEFAULT_OUT = "output/samples"
DEFAULT_IMAGE_SIZE = 256        # reference scripts/inference.py default (models.md B.9 defaults table)
PROMPTS_COPY = "prompts.txt"
IMAGE_NAME = "{index:06d}.png"   # image index <-> line index of the prompts file (the evaluation's pairing)
IMAGE_GLOB = "[0-9]*.png"        # what the run record attributes to a run
ASPECT_RATIO = Bound("aspect ratio H/W", low=0.0, low_open=True)
# Dtype of the transformer: fp16 on GPU as upstream (B.1), fp32 on CPU.
GPU_DTYPE = torch.float16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model and inputs")
    g.add_argument("--model_path", help="official PixArt-XL-2-*.pth, a diffusers PixArt folder, or a hub id")
    g.add_argument("--image_size", type=int, default=DEFAULT_IMAGE_SIZE, help="256, 512 or 1024 (the 1024-MS model)")
    g.add_argument("--aspect_ratio", type=float, default=1.0, help="1024-MS only: H/W, snapped to the nearest bucket")
    g.add_argument("--bs", type=int, default=1, help="images per forward batch (CFG doubles it)")
    g.add_argument("--txt_file", help="prompts, one per line")
    g.add_argument("--prompt", action="append", help="a prompt (repeatable); instead of --txt_file")
    g.add_argument("--t5_path", default=DEFAULT_T5_PATH,
                   help=f"T5 folder (or one holding {T5_SUBFOLDER}/), or a hub id such as DeepFloyd/t5-v1_1-xxl")
    g.add_argument("--vae_path", "--tokenizer_path", dest="vae_path", default=DEFAULT_VAE_PATH,
                   help="sd-vae-ft-ema folder or hub id; 'none' saves a latent preview instead (tests)")
    g.add_argument("--no_clean_caption", action="store_true", help="skip the DeepFloyd-IF caption cleaning")
    g.add_argument("--seed", type=int, default=0,
                   help="noise of image i from a generator seeded by (seed, i), independent of --bs")
    g.add_argument("--cfg_scale", type=float, default=DEFAULT_CFG,
                   help="classifier-free guidance scale (1 = no guidance)")
    g.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="DPM-Solver++ (2M) model evaluations")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    add_cache_flags(parser, "pixart")
    o = parser.add_argument_group("outputs")
    o.add_argument("--out", default=DEFAULT_OUT, help="output folder for images, prompts copy and report")
    o.add_argument("--report", help="write a JSON report (plan, trace, FLOPs, timings) to this path")
    o.add_argument("--flops-only", dest="flops_only", action="store_true",
                   help="count FLOPs on the meta device (no weights needed) and exit")


# ---------------------------------------------------------------------------------------------------
# Validation and configuration
# ---------------------------------------------------------------------------------------------------
def cache_config_from_args(args: argparse.Namespace) -> CacheConfig:
    """The CacheConfig the flags describe (the flags layer, family ``pixart``): the preset or the reference
    defaults, with explicit flags applied."""
    return resolve_cache_flags(args, "pixart").config


def check_sampling_args(args: argparse.Namespace) -> None:
    """Every numeric flag in range and finite (UsageError naming the flag)."""
    check_numbers([("--bs", args.bs, COUNT), ("--steps", args.steps, STEPS), ("--cfg_scale", args.cfg_scale, GUIDANCE),
                   ("--seed", args.seed, SEED), ("--image_size", args.image_size, COUNT),
                   ("--aspect_ratio", args.aspect_ratio, ASPECT_RATIO)])
    if args.image_size < VAE_DOWNSAMPLE * 2 or args.image_size % (VAE_DOWNSAMPLE * 2):
        raise UsageError(f"--image_size {args.image_size} is invalid: pass a multiple of 16 (256, 512 or 1024)")


def check_outputs(args: argparse.Namespace) -> None:
    """--out and --report can be written (before any model is built)."""
    if not args.flops_only:
        check_output_dir(args.out, "--out")
    if args.report:
        check_output_file(args.report, "--report", suffixes=(".json",))


def read_prompts(args: argparse.Namespace) -> list[str]:
    """Prompts from --prompt or --txt_file. Line i of the file is prompt i; empty lines are errors (they
    would break the image-index <-> line-index pairing the evaluation relies on)."""
    if args.prompt and args.txt_file:
        raise UsageError("pass either --prompt or --txt_file, not both")
    if args.prompt:
        prompts = list(args.prompt)
    elif args.txt_file:
        prompts = read_prompt_lines(Path(args.txt_file), "--txt_file")
    else:
        raise UsageError("no prompts: pass --txt_file PATH (one prompt per line) or --prompt TEXT")
    if not prompts:
        raise UsageError(f"--txt_file {args.txt_file!r} is empty; put one prompt per line")
    return prompts


def resolve_t5_path(path: str) -> str:
    """A T5 folder, upstream's t5_ckpts folder holding ``t5-v1_1-xxl/``, or a hub id."""
    local = Path(path)
    if (local / T5_SUBFOLDER).is_dir():
        return str(local / T5_SUBFOLDER)
    if local.is_dir():
        return str(local)
    if local.exists() or not looks_like_hub_id(path):
        raise UsageError(f"--t5_path {path!r} does not exist; pass the folder holding the T5 v1.1 XXL encoder and "
                         f"tokenizer (hub PixArt-alpha/PixArt-alpha, subfolder {T5_SUBFOLDER}) or a hub id")
    return path


def check_vae_path(path: str) -> None:
    if path.lower() == "none":
        return
    local = Path(path)
    if not local.exists() and not looks_like_hub_id(path):
        raise UsageError(f"--vae_path {path!r} does not exist; pass the sd-vae-ft-ema folder, a hub id "
                         f"(stabilityai/sd-vae-ft-ema), or 'none' for latent previews")


def model_config_for(args: argparse.Namespace) -> PixArtConfig:
    """The architecture: from the checkpoint's shapes when it is a readable .pth, else official XL/2."""
    path = args.model_path
    if path and Path(path).is_file():
        try:
            config = config_from_state_dict(read_pth_state_dict(path))
            check_image_size(config, args.image_size, path)
        except CheckpointError as err:
            raise UsageError(str(err)) from err
        return config
    try:
        return pixart_xl_2(args.image_size)
    except ValueError as err:
        raise UsageError(str(err)) from err


def image_hw(config: PixArtConfig, args: argparse.Namespace) -> tuple[int, int]:
    """(H, W) in pixels: the training size, or the 1024-MS bucket nearest to --aspect_ratio (B.5)."""
    if config.multi_scale and args.image_size == MS_IMAGE_SIZE:
        _, (h, w) = nearest_bucket(args.aspect_ratio)
        return h, w
    return args.image_size, args.image_size


# ---------------------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------------------
@dataclass
class Components:
    model: PixArt
    text: object           # T5TextEncoder
    vae: object | None
    device: torch.device


def load_components(args: argparse.Namespace, cache: CacheConfig, device: torch.device) -> Components:
    from duca_common.text import T5TextEncoder

    from .vae import load_vae

    if not args.model_path:
        raise UsageError("--model_path is required to sample (only --flops-only runs without weights)")
    try:
        model = load_transformer(args.model_path, cache_config=cache)
        check_image_size(model.config, args.image_size, args.model_path)
    except CheckpointError as err:
        raise UsageError(str(err)) from err
    model = model.to(device=device, dtype=model_dtype(device)).eval()
    text = T5TextEncoder(resolve_t5_path(args.t5_path), device=device, clean=not args.no_clean_caption)
    if text.dim != model.config.caption_channels:
        raise UsageError(f"the T5 encoder at {args.t5_path!r} outputs {text.dim} channels but the PixArt checkpoint "
                         f"expects {model.config.caption_channels}; pass the matching T5 (t5-v1_1-xxl: 4096)")
    if text.max_length != model.config.text_tokens:
        raise UsageError(f"T5 max length {text.max_length} differs from the checkpoint's {model.config.text_tokens}")
    vae = None if args.vae_path.lower() == "none" else load_vae(args.vae_path, device=device)
    return Components(model, text, vae, device)


# ---------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------
def save_image(image: torch.Tensor, path: Path) -> None:
    """(3, H, W) in [0, 1] -> PNG, written atomically (temp file then rename)."""
    import io

    from PIL import Image

    array = (image.permute(1, 2, 0).cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_prompts_copy(out: Path, prompts: list[str]) -> None:
    """Save the prompt list next to the images (the COCO evaluation pairs image i with its line i); refuse to
    mix with a different list already there (the run record refuses first; this guards older folders)."""
    path = out / PROMPTS_COPY
    text = "\n".join(prompts) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") != text:
        raise UsageError(f"{str(path)!r} holds a different prompt list; its images would not pair with these prompts. "
                         f"Use another --out folder")
    if not path.is_file():
        atomic_write_bytes(path, text.encode("utf-8"))


def model_dtype(device: torch.device) -> torch.dtype:
    return GPU_DTYPE if device.type == "cuda" else torch.float32


def run_record(args: argparse.Namespace, prompts: list[str], cache: CacheConfig, config: PixArtConfig,
               hw: tuple[int, int], device: torch.device) -> RunRecord:
    """What decides the images of an --out folder (duca_common.run_record). inference.py and inference_ddp.py
    write the same record for the same settings, so either can finish the other's folder. The batch size is
    recorded because a batch's contents change the cache's token selection."""
    from dataclasses import asdict

    settings = {"sampler": "pixart_duca", "checkpoint": file_identity(args.model_path),
                "architecture": asdict(config), "t5": args.t5_path, "clean_caption": not args.no_clean_caption,
                "vae": args.vae_path, "prompts": text_identity(prompts), "image_hw": list(hw), "steps": args.steps,
                "cfg_scale": args.cfg_scale, "seed": args.seed,
                "noise": "per image: duca_common.seeding.sample_seed(seed, index)", "bs": args.bs,
                "dtype": str(model_dtype(device)), "cache": asdict(cache)}
    return RunRecord(settings, info={"images": len(prompts), "preset": args.preset,
                                     "model_path": args.model_path})


def image_noise(indices: list[int], seed: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Noise of image i from its own generator, seeded by (seed, i) (duca_common.seeding): independent of
    batching and ranks, and no two seeds share an image's noise (``seed + i`` did)."""
    return torch.cat([torch.randn((1, *shape[1:]), generator=sample_generator(seed, i, device), device=device)
                      for i in indices])


def image_path(out: Path, index: int) -> Path:
    return out / IMAGE_NAME.format(index=index)


def text_lengths_for_flops(args: argparse.Namespace, prompts: list[str]) -> tuple[list[int], str]:
    """Valid T5 tokens of each prompt (the tokenizer only), or 120 each when no tokenizer is available."""
    try:
        from transformers import AutoTokenizer

        from duca_common.text import clean_caption
        tok = AutoTokenizer.from_pretrained(resolve_t5_path(args.t5_path))
        texts = prompts if args.no_clean_caption else [clean_caption(p) for p in prompts]
        mask = tok(texts, max_length=TEXT_TOKENS, padding="max_length", truncation=True)["attention_mask"]
        return [int(sum(m)) for m in mask], "T5 tokenizer"
    except (UsageError, OSError, ValueError):
        return [TEXT_TOKENS] * len(prompts), f"no tokenizer at --t5_path: every prompt counted as {TEXT_TOKENS} tokens"


def write_report(path: str | None, report: dict) -> None:
    if path:
        write_json(path, report)


# ---------------------------------------------------------------------------------------------------
# One batch, and the report
# ---------------------------------------------------------------------------------------------------
@dataclass
class BatchResult:
    images: torch.Tensor          # (B, 3, H, W) in [0, 1]
    text_lengths: list[int]       # valid text tokens of the 2B forward rows, [uncond..., cond...]
    seconds: float                # sampling loop only (no text encoding, no decoding)
    trace: object                 # duca_common.cache.Trace of the run


def generate(parts: Components, prompts: list[str], noise: torch.Tensor, args: argparse.Namespace,
             hw: tuple[int, int]) -> BatchResult:
    import time

    from .pipeline import MicroConditions, cfg_caption, sample
    from .vae import decode, latent_preview

    model = parts.model
    cond = parts.text.encode(prompts)
    uncond = None if model.has_null_caption else parts.text.encode([""] * len(prompts))
    caption = cfg_caption(model, cond, uncond)
    micro = MicroConditions.for_size(len(prompts), *hw, parts.device) if model.config.multi_scale else None
    if parts.device.type == "cuda":
        torch.cuda.synchronize(parts.device)
    start = time.perf_counter()
    watch = FiniteWatch(f"method {model.feature_cache.config.method}, --cfg_scale {args.cfg_scale}", args.steps,
                        "Check the checkpoint for NaN weights; on GPU the model runs in fp16")
    latents = sample(model, noise, caption, args.steps, args.cfg_scale, micro, watch=watch)
    if parts.device.type == "cuda":
        torch.cuda.synchronize(parts.device)
    seconds = time.perf_counter() - start
    watch.check()
    images = decode(parts.vae, latents) if parts.vae is not None else latent_preview(latents, VAE_DOWNSAMPLE)
    if not torch.isfinite(images).all():
        raise NonFiniteError("the VAE decoded NaN/inf pixels from finite latents; nothing was written. "
                             "Check --vae_path")
    return BatchResult(images, caption.lengths, seconds, model.feature_cache.last_trace)


def flops_section(config: PixArtConfig, cache: CacheConfig, images: int, hw: tuple[int, int],
                  text_lengths: list[int], steps: int) -> dict:
    """FLOPs of one batch (reference formula and measured on meta), plus per-image figures."""
    from .pipeline import flops_report

    report, trace = flops_report(config, cache, images, hw[0], hw[1], text_lengths, steps)
    out = report.to_dict()
    out.update(images=images, text_tokens_total=int(sum(text_lengths)),
               reference_cached_per_image=report.reference_cached / images,
               reference_full_per_image=report.reference_full / images)
    return {"flops": out, "plan": trace.table()}


def describe_run(args: argparse.Namespace, cache: CacheConfig, config: PixArtConfig, hw: tuple[int, int]) -> dict:
    from dataclasses import asdict

    return {"model_path": args.model_path, "image_hw": list(hw), "steps": args.steps, "cfg_scale": args.cfg_scale,
            "seed": args.seed, "bs": args.bs, "preset": args.preset,
            "cache_config": json.loads(json.dumps(asdict(cache), default=str)),
            "model_config": asdict(config)}
