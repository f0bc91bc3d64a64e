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

from duca_common.cache import PIXART_TOCA_SCHEDULE, CacheConfig, RatioSchedule, get_preset, presets_for
from duca_common.cache.presets import PIXART_SPATIAL
from duca_common.runtime import UsageError, atomic_write_bytes, pick_device, write_json  # noqa: F401  (re-exported to the scripts)
from duca_common.text import read_prompt_lines

from .checkpoint import CheckpointError, check_image_size, config_from_state_dict, load_transformer, read_pth_state_dict
from .dpm_solver import DEFAULT_CFG, DEFAULT_STEPS
from .model import TEXT_TOKENS, VAE_DOWNSAMPLE, PixArt, PixArtConfig, nearest_bucket, pixart_xl_2

# Reference argparse defaults of the DuCa PixArt scripts (models.md B.9, "Default hyperparameters").
REFERENCE_DEFAULTS = dict(fresh_threshold=3, fresh_ratio=0.30, cache_type="attention", force_fresh="global",
                          soft_fresh_weight=0.25, ratio_scheduler="ToCa")
CACHE_TYPES = {"attention": "cross_entropy", "kv-norm": "value_norm", "random": "random"}
RATIO_SCHEDULERS = {"ToCa": PIXART_TOCA_SCHEDULE, "constant": RatioSchedule("constant")}
CACHE_METHODS = ("duca", "toca", "fora", "none")
# Upstream's default locations, relative to the working directory (PixArt scripts/inference.py).
DEFAULT_T5_PATH = "output/pretrained_models/t5_ckpts"
T5_SUBFOLDER = "t5-v1_1-xxl"
DEFAULT_VAE_PATH = "output/pretrained_models/sd-vae-ft-ema"
DEFAULT_OUT = "output/samples"
PROMPTS_COPY = "prompts.txt"
IMAGE_NAME = "{index:06d}.png"   # image index <-> line index of the prompts file (the evaluation's pairing)
# Dtype of the transformer: fp16 on GPU as upstream (B.1), fp32 on CPU.
GPU_DTYPE = torch.float16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model and inputs")
    g.add_argument("--model_path", help="official PixArt-XL-2-*.pth, a diffusers PixArt folder, or a hub id")
    g.add_argument("--image_size", type=int, default=256, help="256, 512 or 1024 (the 1024-MS model)")
    g.add_argument("--aspect_ratio", type=float, default=1.0, help="1024-MS only: H/W, snapped to the nearest bucket")
    g.add_argument("--bs", type=int, default=1, help="images per forward batch (CFG doubles it)")
    g.add_argument("--txt_file", help="prompts, one per line")
    g.add_argument("--prompt", action="append", help="a prompt (repeatable); instead of --txt_file")
    g.add_argument("--t5_path", default=DEFAULT_T5_PATH,
                   help=f"T5 folder (or one holding {T5_SUBFOLDER}/), or a hub id such as DeepFloyd/t5-v1_1-xxl")
    g.add_argument("--vae_path", "--tokenizer_path", dest="vae_path", default=DEFAULT_VAE_PATH,
                   help="sd-vae-ft-ema folder or hub id; 'none' saves a latent preview instead (tests)")
    g.add_argument("--no_clean_caption", action="store_true", help="skip the DeepFloyd-IF caption cleaning")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--cfg_scale", type=float, default=DEFAULT_CFG)
    g.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="DPM-Solver++ (2M) model evaluations")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    c = parser.add_argument_group("caching (reference flags; defaults are the reference script's)")
    c.add_argument("--cache", choices=CACHE_METHODS, help="method (default duca, or the preset's)")
    c.add_argument("--preset", help=f"named operating point: {', '.join(p.name for p in presets_for('pixart'))}; "
                                    "explicit cache flags override its fields")
    c.add_argument("--fresh_threshold", type=int, help="cycle length N (default 3)")
    c.add_argument("--fresh_ratio", type=float, help="base fraction of tokens recomputed (default 0.30)")
    c.add_argument("--cache_type", choices=sorted(CACHE_TYPES), help="token selector (default attention)")
    c.add_argument("--force_fresh", choices=["global"], help="only 'global' (full refresh every N steps)")
    c.add_argument("--soft_fresh_weight", type=float, help="staleness bonus weight (default 0.25)")
    c.add_argument("--ratio_scheduler", choices=sorted(RATIO_SCHEDULERS), help="default ToCa")
    o = parser.add_argument_group("outputs")
    o.add_argument("--out", default=DEFAULT_OUT, help="output folder for images, prompts copy and report")
    o.add_argument("--report", help="write a JSON report (plan, trace, FLOPs, timings) to this path")
    o.add_argument("--flops-only", dest="flops_only", action="store_true",
                   help="count FLOPs on the meta device (no weights needed) and exit")


# ---------------------------------------------------------------------------------------------------
# Validation and configuration
# ---------------------------------------------------------------------------------------------------
def cache_config_from_args(args: argparse.Namespace) -> CacheConfig:
    """The CacheConfig the flags describe: the preset (or the reference defaults) with explicit flags applied."""
    if args.preset:
        preset = get_preset(args.preset)
        if preset.model != "pixart":
            raise UsageError(f"--preset {args.preset} is a {preset.model} preset; use one of "
                             f"{[p.name for p in presets_for('pixart')]}")
        base = preset.config
    else:
        d = REFERENCE_DEFAULTS
        base = CacheConfig(method="duca", interval=d["fresh_threshold"], fresh_ratio=d["fresh_ratio"],
                           ratio_schedule=RATIO_SCHEDULERS[d["ratio_scheduler"]], interval_rule="fixed",
                           selector=CACHE_TYPES[d["cache_type"]], staleness_weight=d["soft_fresh_weight"],
                           **PIXART_SPATIAL)
    changes: dict[str, object] = {}
    if args.cache:
        changes["method"] = args.cache
    if args.fresh_threshold is not None:
        changes["interval"] = args.fresh_threshold
    if args.fresh_ratio is not None:
        changes["fresh_ratio"] = args.fresh_ratio
    if args.cache_type is not None:
        changes["selector"] = CACHE_TYPES[args.cache_type]
    if args.soft_fresh_weight is not None:
        changes["staleness_weight"] = args.soft_fresh_weight
    if args.ratio_scheduler is not None:
        changes["ratio_schedule"] = RATIO_SCHEDULERS[args.ratio_scheduler]
    try:
        return base.replace(**changes)
    except ValueError as err:
        raise UsageError(f"invalid cache flags: {err}") from err


def check_sampling_args(args: argparse.Namespace) -> None:
    if args.bs < 1:
        raise UsageError(f"--bs {args.bs} is invalid: pass a batch size >= 1")
    if args.steps < 1:
        raise UsageError(f"--steps {args.steps} is invalid: pass at least 1 DPM-Solver step")
    if args.cfg_scale < 1.0:
        raise UsageError(f"--cfg_scale {args.cfg_scale} is invalid: pass >= 1 (PixArt uses 4.5)")
    if args.image_size < VAE_DOWNSAMPLE * 2 or args.image_size % (VAE_DOWNSAMPLE * 2):
        raise UsageError(f"--image_size {args.image_size} is invalid: pass a multiple of 16 (256, 512 or 1024)")


def read_prompts(args: argparse.Namespace) -> list[str]:
    """Prompts from --prompt or --txt_file. Line i of the file is prompt i; empty lines are errors (they
    would break the image-index <-> line-index pairing the evaluation relies on)."""
    if args.prompt and args.txt_file:
        raise UsageError("pass either --prompt or --txt_file, not both")
    if args.prompt:
        prompts = list(args.prompt)
    elif args.txt_file:
        path = Path(args.txt_file)
        if not path.is_file():
            raise UsageError(f"prompt file {str(path)!r} does not exist; pass --txt_file with one prompt per line")
        prompts = read_prompt_lines(path, "--txt_file")
    else:
        raise UsageError("no prompts: pass --txt_file PATH (one prompt per line) or --prompt TEXT")
    if not prompts:
        raise UsageError(f"prompt file {args.txt_file!r} is empty; put one prompt per line")
    return prompts


def resolve_t5_path(path: str) -> str:
    """A T5 folder, upstream's t5_ckpts folder holding ``t5-v1_1-xxl/``, or a hub id."""
    local = Path(path)
    if (local / T5_SUBFOLDER).is_dir():
        return str(local / T5_SUBFOLDER)
    if local.is_dir():
        return str(local)
    if local.exists() or path.count("/") != 1 or path.startswith((".", "/")):
        raise UsageError(f"--t5_path {path!r} does not exist; pass the folder holding the T5 v1.1 XXL encoder and "
                         f"tokenizer (hub PixArt-alpha/PixArt-alpha, subfolder {T5_SUBFOLDER}) or a hub id")
    return path


def check_vae_path(path: str) -> None:
    if path.lower() == "none":
        return
    local = Path(path)
    if not local.exists() and (path.count("/") != 1 or path.startswith((".", "/"))):
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
    if config.multi_scale and args.image_size == 1024:
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
    model = model.to(device=device, dtype=GPU_DTYPE if device.type == "cuda" else torch.float32).eval()
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
    """Save the prompt list next to the images; refuse to mix with a different list already there."""
    path = out / PROMPTS_COPY
    text = "\n".join(prompts) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") != text:
        raise UsageError(f"{str(path)!r} holds a different prompt list; its images would not pair with these prompts. "
                         f"Use another --out folder")
    if not path.is_file():
        atomic_write_bytes(path, text.encode("utf-8"))


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
    latents = sample(model, noise, caption, args.steps, args.cfg_scale, micro)
    if parts.device.type == "cuda":
        torch.cuda.synchronize(parts.device)
    seconds = time.perf_counter() - start
    images = decode(parts.vae, latents) if parts.vae is not None else latent_preview(latents, VAE_DOWNSAMPLE)
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
