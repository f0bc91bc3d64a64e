r"""OpenSora 1.2 text-to-video with DuCa / ToCa / FORA / TaylorSeer caching, and VBench sampling.

    python scripts/inference.py configs/opensora-v1-2/inference/sample.py --num-frames 2s --resolution 480p \
        --aspect-ratio 9:16 --prompt "a beautiful waterfall"              # from Open-Sora-DuCa/, as upstream
    python -m opensora_duca.inference --prompt "a corgi on the beach" --ckpt-path STDiT-v3/ --vae-path VAE-v1.2/ \
        --t5-path t5-v1_1-xxl/ --cache duca --out samples/
    bash eval/vbench/launch.sh CKPT 51 NAME 480p 9:16                     # VBench sampling, one process per GPU
    python -m opensora_duca.inference --flops-only --cache duca --report flops.json

Settings come from the command line, then the optional config file (upstream's format, read as data by
``opensora_duca.config``), then the defaults: the reference's operating point (models.md C.10): 480p, aspect
9:16 (H:W, 480 x 854), 51 frames ("2s"), fps 24, 30 RFlow steps, cfg 7.0, aesthetic score 6.5, seed 1024 + k
for sample k of a prompt (C.9). Upstream's flag names (--save-dir, --prompt-path, --num-sampling-steps,
--num-sample, --sample-name, --start-index, --end-index) work beside this project's.

* ``--vbench``: 5 samples per prompt, file names ``{prompt}-{k}.mp4`` (``--prompt-as-path``), the names
  VBench 0.1.5 looks up. The prompt list is VBench's own (``VBench_full_info.json``, shipped in
  ``eval/vbench/``); ``--prompts-file`` takes a text file (one prompt a line) or such a JSON file.
* Identical videos for any number of processes: every (prompt, k) is one job with its own seed; the prompts
  are split into contiguous blocks (``--shard I/N``, or the torchrun ranks); videos are written atomically
  (temp file, then rename); a rerun skips finished files.
* Weights given by hub id (the shipped config's three) are checked before anything is built: the hub must be
  reachable, or the files in the local Hugging Face cache (with the hub unreachable the run then switches
  huggingface_hub to offline mode itself, with a note); otherwise one ``error:`` line gives the ``hf download``
  commands and the flags to pass the folders (huggingface_hub alone retries an unreachable hub for ~25 s per
  file before failing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from duca_common import runtime
from duca_common.cache import CacheConfig, get_preset  # noqa: F401  (get_preset: re-exported for callers)
from duca_common.cache.flags import add_cache_flags, config_from_flags
from duca_common.errors import UsageError, print_error
from duca_common.outputs import check_output_dir, check_output_file
from duca_common.run_record import RunRecord, check_resume, file_identity, text_identity, write_record
from duca_common.runtime import HelpFormatter, atomic_path, pick_device, write_json
from duca_common.seeding import sample_seed
from duca_common.text import read_prompt_lines, read_text_utf8
from duca_common.validate import (
    COUNT,
    GUIDANCE,
    NON_NEGATIVE_INT,
    SEED,
    SIZE,
    STEPS,
    Bound,
    check_numbers,
    looks_like_hub_id,
)
from opensora_duca import aspect
from opensora_duca.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, config_fields
from opensora_duca.config import InferenceConfig, parse_config
from opensora_duca.pipeline import DEFAULT_AES, DEFAULT_FPS, VideoSpec, flops_report
from opensora_duca.rflow import RFlowConfig, sampling_timesteps
from opensora_duca.stdit3 import PATCH_SIZE, STDIT3_HUB_ID, STDiT3Config, stdit3_xl_2
from opensora_duca.vae import VAE_HUB_ID, SpatialVAEConfig, VideoVAEConfig

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_SEED = 1024                      # C.9: the DuCa fork reseeds with 1024 + k
VBENCH_SAMPLES = 5                       # paper.md section 2: 5 videos per prompt
VBENCH_INFO = "VBench_full_info.json"
DEFAULT_T5 = "DeepFloyd/t5-v1_1-xxl"
MAX_NAME_BYTES = 250                     # file-name limit (255) minus "-k.mp4" room
VIDEO_CRF = "0"                          # upstream save_sample: h264 with crf 0
NOISE_SEEDINGS = ("reference", "per-sample")
SCORE = Bound("score appended to the prompt; a negative --aes appends none", low=0.0)
# smallest image side: one latent patch, the VAE's 8x spatial downsampling (C.8) times the patch 2 (C.2) = 16
MIN_IMAGE_SIDE = SpatialVAEConfig().downsample * PATCH_SIZE[1]
VIDEO_GLOB = "*.mp4"                     # what a sampling folder holds (a folder of videos without run.json is refused)

# Every setting a config file can give: (argparse dest, dotted config key, built-in default). A flag on the
# command line wins over the config file, which wins over the default (upstream's merge_args order). The
# defaults are the paper's operating point (480p, 9:16, 51 frames, DuCa); the shipped config file holds the
# reference's config (240p unless --resolution is passed, as in its README).
OPTIONS: tuple[tuple[str, str, object], ...] = (
    ("resolution", "resolution", "480p"),
    ("aspect_ratio", "aspect_ratio", "9:16"),
    ("image_size", "image_size", None),
    ("num_frames", "num_frames", "51"),
    ("fps", "fps", DEFAULT_FPS),
    ("frame_interval", "frame_interval", 1),
    ("save_fps", "save_fps", None),           # None: fps // frame_interval (upstream)
    ("out", "save_dir", "samples"),
    ("seed", "seed", DEFAULT_SEED),
    ("batch_size", "batch_size", 1),
    ("dtype", "dtype", "auto"),
    ("verbose", "verbose", 1),
    ("start_index", "start_index", None),
    ("end_index", "end_index", None),
    ("num_samples", "num_sample", None),
    ("prompt_as_path", "prompt_as_path", False),
    ("sample_name", "sample_name", None),
    ("aes", "aes", DEFAULT_AES),
    ("flow", "flow", None),
    ("camera_motion", "camera_motion", None),
    ("ckpt_path", "model.from_pretrained", None),
    ("vae_path", "vae.from_pretrained", None),
    ("t5_path", "text_encoder.from_pretrained", DEFAULT_T5),
    ("steps", "scheduler.num_sampling_steps", RFlowConfig.num_sampling_steps),
    ("cfg_scale", "scheduler.cfg_scale", RFlowConfig.cfg_scale),
    # cache fields: unset ones keep the flags layer's OpenSora defaults (duca_common.cache.flags)
    ("fresh_ratio", "cache.fresh_ratio", None),
    ("fresh_threshold", "cache.interval", None),
    ("taylor_order", "cache.taylor_order", None),
)


# ---------------------------------------------------------------------------------------------------
# Flags and validation (everything here runs before any weights are read)
# ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Upstream OpenSora's flag names (``--save-dir``, ``--prompt-path``, ``--num-sampling-steps``,
    ``--num-sample``) are accepted beside this project's. Flags default to None: unset ones come from the
    config file, then from OPTIONS."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("config", nargs="?", help="inference config file (configs/opensora-v1-2/inference/sample.py); "
                                             "flags override its values")
    g = p.add_argument_group("prompts and video")
    g.add_argument("--prompt", action="extend", nargs="+", help="prompt(s); repeatable")
    g.add_argument("--prompts-file", "--prompt-path", dest="prompts_file",
                   help="prompts, one per line, or VBench's VBench_full_info.json")
    g.add_argument("--start-index", type=int, help="first prompt of the list (also offsets sample_NNNN names)")
    g.add_argument("--end-index", type=int, help="one past the last prompt of the list")
    g.add_argument("--vbench", action="store_true",
                   help=f"VBench protocol: {VBENCH_SAMPLES} samples per prompt, --prompt-as-path, VBench's prompt list")
    g.add_argument("--num-samples", "--num-sample", dest="num_samples", type=int,
                   help="videos per prompt (default 1; 5 with --vbench)")
    g.add_argument("--prompt-as-path", action="store_true", default=None, help="name files '{prompt}-{k}.mp4'")
    g.add_argument("--sample-name", help="file-name prefix (default 'sample', or none with --prompt-as-path)")
    g.add_argument("--resolution", help=f"one of {list(aspect.RESOLUTIONS)} (default 480p)")
    g.add_argument("--aspect-ratio", help="H:W name such as 9:16 (default) or a table key such as 0.56")
    g.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="pixel size; overrides the two above")
    g.add_argument("--num-frames", help=f"an integer or one of {list(aspect.NUM_FRAMES_NAMES)} (default 51)")
    g.add_argument("--fps", type=int, help=f"fps the model is conditioned on (default {DEFAULT_FPS})")
    g.add_argument("--frame-interval", type=int, help="the mp4 rate defaults to fps // frame-interval (1)")
    g.add_argument("--save-fps", type=int, help="frame rate of the mp4 (default fps // frame-interval)")
    g.add_argument("--aes", type=float, help=f"aesthetic score appended to prompts (default {DEFAULT_AES}); <0: none")
    g.add_argument("--flow", type=float, help="motion score appended to prompts (default none)")
    g.add_argument("--camera-motion", help="camera motion appended to prompts (default none)")
    g.add_argument("--steps", "--num-sampling-steps", dest="steps", type=int, help="RFlow steps (default 30)")
    g.add_argument("--cfg-scale", type=float, help="guidance scale (default 7.0)")
    g.add_argument("--seed", type=int, help=f"sample k of a prompt uses seed + k (default {DEFAULT_SEED})")
    g.add_argument("--noise-seeding", choices=NOISE_SEEDINGS, default="reference",
                   help="reference: sample k of every prompt draws its noise from seed + k, as the DuCa fork (so "
                        "seed s, sample 1 = seed s+1, sample 0); per-sample: from (seed, sample index) through "
                        "duca_common.seeding, no overlap between seeds or prompts")
    g.add_argument("--batch-size", type=int, help="videos per forward pass: 1 (as the reference's VBench runs)")
    w = p.add_argument_group("weights")
    w.add_argument("--ckpt-path", help=f"STDiT3 folder / model.safetensors / hub id ({STDIT3_HUB_ID})")
    w.add_argument("--vae-path", help=f"OpenSora VAE folder / model.safetensors / hub id ({VAE_HUB_ID})")
    w.add_argument("--t5-path", help=f"T5 v1.1 XXL folder (model + tokenizer) or hub id (default {DEFAULT_T5})")
    w.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    w.add_argument("--dtype", choices=["auto", "bf16", "fp32"],
                   help="STDiT3 and VAE dtype: bf16 on GPU as the reference, fp32 on CPU (auto, the default)")
    add_cache_flags(p, "opensora")          # --cache, --preset, --fresh-ratio, --interval, --taylor-order
    o = p.add_argument_group("outputs")
    o.add_argument("--out", "--save-dir", dest="out", help="output folder (default samples)")
    o.add_argument("--report", help="write a JSON report (settings, plan, FLOPs, timings) here")
    o.add_argument("--verbose", type=int, help="0: quiet, 1: progress bar (default), 2: one line per video")
    o.add_argument("--shard", help="I/N: sample only the I-th of N contiguous blocks of prompts (0-based); "
                                   "the VBench launcher runs one process per GPU this way")
    o.add_argument("--check-only", action="store_true",
                   help="check flags, prompts, weights paths and the output folder (and its run.json), then exit "
                        "(no model is built, nothing is written)")
    o.add_argument("--flops-only", action="store_true", help="count FLOPs on the meta device and exit (no weights)")
    o.add_argument("--flops-text-tokens", type=int, default=None,
                   help="valid T5 tokens assumed by --flops-only (default: the model's maximum, 300)")
    return p


def find_config(path: str) -> Path:
    """``path`` as given, else relative to the package folder (so the shipped
    ``configs/opensora-v1-2/inference/sample.py`` is found from any working folder)."""
    given = Path(path).expanduser()
    if given.is_file() or given.is_absolute():
        return given
    shipped = PACKAGE_DIR / given
    return shipped if shipped.is_file() else given


def apply_config(args: argparse.Namespace, config: InferenceConfig | None) -> argparse.Namespace:
    """Fill every flag left unset from the config file, then from OPTIONS' defaults (flags win)."""
    values = config.values if config is not None else {}
    for dest, key, default in OPTIONS:
        if getattr(args, dest) is None:
            setattr(args, dest, values.get(key, default))
    # prompts: a prompt flag replaces the config's prompt list / file; in the config, prompt wins (upstream)
    if not args.prompt and not args.prompts_file:
        prompt = values.get("prompt")
        if prompt:
            args.prompt = [prompt] if isinstance(prompt, str) else list(prompt)
        else:
            args.prompts_file = values.get("prompt_path")
    # caching: --cache / --preset on the command line replace the config's method and preset together
    if args.cache is None and args.preset is None:
        args.cache, args.preset = values.get("cache.method"), values.get("cache.preset")
    if args.image_size is not None:
        size = list(args.image_size)
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
            where = f" ({config.where('image_size')})" if config is not None and "image_size" in values else ""
            raise UsageError(f"image_size {size!r}{where} is invalid: pass two integers [H, W]")
        args.image_size = size
    if args.aes is not None and args.aes < 0:
        args.aes = None
    if args.save_fps is None:
        if args.frame_interval < 1:
            raise UsageError(f"frame_interval {args.frame_interval} is invalid: pass at least 1")
        args.save_fps = max(args.fps // args.frame_interval, 1)
    if args.batch_size != 1:
        raise UsageError(f"--batch-size {args.batch_size} is not supported: videos are sampled one at a time "
                         f"(batch 1, as the reference's VBench runs); pass --batch-size 1")
    args.config_record = None if config is None else {"path": str(config.path), "values": dict(values)}
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, then the config file (read as data, never run), then the defaults."""
    args = build_parser().parse_args(argv)
    config = parse_config(find_config(args.config)) if args.config else None
    return apply_config(args, config)


def parse_num_frames(value: str | int) -> int:
    return aspect.num_frames(value)


def image_size(args: argparse.Namespace) -> tuple[int, int]:
    """(H, W): --image-size, or the reference's table entry for (resolution, aspect ratio)."""
    if args.image_size:
        h, w = args.image_size
    else:
        h, w = aspect.image_size(args.resolution, args.aspect_ratio)
    if h < MIN_IMAGE_SIDE or w < MIN_IMAGE_SIDE:
        raise UsageError(f"image size {h}x{w} is too small: pass at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}")
    return h, w


def cache_config(args: argparse.Namespace) -> CacheConfig:
    """The cache the flags (and the config file's ``cache`` entries) describe: duca_common.cache.flags, the
    OpenSora family (DuCa / ToCa on the reference's module cycles, the ``opensora-duca`` preset)."""
    return config_from_flags(args, "opensora")


def read_prompt_list(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--prompts-file {path!r} does not exist; pass a text file with one prompt per line or "
                         f"VBench's {VBENCH_INFO}")
    if file.suffix == ".json":
        try:
            prompts = [entry["prompt_en"] for entry in json.loads(read_text_utf8(file, "--prompts-file"))]
        except (json.JSONDecodeError, TypeError, KeyError) as err:
            raise UsageError(f"--prompts-file {path!r} is not a VBench info file (a list of {{'prompt_en': ...}}): "
                             f"{err}") from err
    else:
        prompts = read_prompt_lines(file, "--prompts-file")
    if not prompts:
        raise UsageError(f"--prompts-file {path!r} holds no prompts")
    return prompts


def vbench_info_path() -> Path:
    """VBench's prompt list: the copy shipped in this package (``eval/vbench/VBench_full_info.json``, taken from
    the ``vbench==0.1.5`` wheel), else the installed ``vbench`` package's."""
    shipped = PACKAGE_DIR / "eval" / "vbench" / VBENCH_INFO
    if shipped.is_file():
        return shipped
    import importlib.util

    spec = importlib.util.find_spec("vbench")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"--vbench needs VBench's prompt list: pass --prompts-file {VBENCH_INFO} "
                         f"(in the vbench==0.1.5 wheel: pip download vbench==0.1.5 --no-deps, "
                         f"then unzip vbench/{VBENCH_INFO})")
    return Path(list(spec.submodule_search_locations)[0]) / VBENCH_INFO


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompt list; a file's list is cut to [--start-index, --end-index) as upstream's load_prompts."""
    if args.prompt and args.prompts_file:
        raise UsageError("pass either --prompt or --prompts-file, not both")
    if args.prompt:
        if any(not p.strip() for p in args.prompt):
            raise UsageError("--prompt '' is empty; pass a non-empty prompt")
        return [p.strip() for p in args.prompt]
    if args.prompts_file:
        prompts = read_prompt_list(args.prompts_file)
    elif args.vbench:
        prompts = read_prompt_list(str(vbench_info_path()))
    else:
        raise UsageError("no prompts: pass --prompt TEXT, --prompts-file PATH, or --vbench")
    start = args.start_index or 0
    if start < 0 or (args.end_index is not None and args.end_index < start):
        raise UsageError(f"--start-index {args.start_index} / --end-index {args.end_index} are invalid: pass "
                         f"0 <= start <= end")
    prompts = prompts[start:args.end_index]
    if not prompts:
        raise UsageError(f"--start-index {start} / --end-index {args.end_index} select no prompt of the "
                         f"{args.prompts_file or VBENCH_INFO} list")
    return prompts


def check_weight_path(value: str | None, flag: str, hub_id: str) -> None:
    if not value:
        raise UsageError(f"{flag} is required to sample (a local folder, its model.safetensors, or {hub_id}); "
                         f"only --flops-only runs without weights")
    p = Path(value).expanduser()
    if not p.exists() and not looks_like_hub_id(value):
        raise UsageError(f"{flag} {value!r} does not exist; pass a local folder, its model.safetensors, or a hub id "
                         f"such as {hub_id}")


def check_t5_path(value: str) -> None:
    p = Path(value).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise UsageError(f"--t5-path {value!r} has no config.json; pass the t5-v1_1-xxl folder (model + tokenizer)")
    elif not looks_like_hub_id(value):
        raise UsageError(f"--t5-path {value!r} does not exist; pass the t5-v1_1-xxl folder or a hub id such as "
                         f"{DEFAULT_T5}")


# What transformers reads to build the T5 encoder and its tokenizer: one file of each group (weights may be
# sharded; then the index names the shards, which must be there too).
T5_HUB_FILES = ((CONFIG_FILE,), ("spiece.model", "tokenizer.json"),
                ("model.safetensors", "model.safetensors.index.json",
                 "pytorch_model.bin", "pytorch_model.bin.index.json"))
# Weights flags that may name a hub id, and the files whose presence in the local Hugging Face cache stands for
# the repo (groups of alternatives, as T5_HUB_FILES).
HUB_FLAGS = (("--ckpt-path", "ckpt_path", ((WEIGHTS_FILE,),)), ("--vae-path", "vae_path", ((WEIGHTS_FILE,),)),
             ("--t5-path", "t5_path", T5_HUB_FILES))


def hub_offline() -> bool:
    """huggingface_hub's own offline mode (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE): only its local cache is read."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT          # HF_ENDPOINT, default https://huggingface.co


def hub_reachable() -> bool:
    """The hub endpoint answers the eval CLIs' probe, ``duca_eval.weights.network_reachable``: a TCP connection
    in a few seconds at most; False when DUCA_EVAL_OFFLINE / HF_HUB_OFFLINE declare the machine offline, True
    behind a proxy."""
    from duca_eval.weights import network_reachable

    return network_reachable(hub_endpoint())


def enter_hub_offline_mode() -> None:
    """Put huggingface_hub (and transformers, which asks it) in offline mode for this process and its children:
    what ``HF_HUB_OFFLINE=1`` does, set after import (huggingface_hub's modules read ``constants.HF_HUB_OFFLINE``
    per call; diffusers copies it at import, but OpenSora's loaders do not go through diffusers). For the rest
    of the process: it is not switched back."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def cached_hub_file(repo_id: str, filename: str) -> str | None:
    """The local path of ``filename`` of ``repo_id`` in the Hugging Face cache, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename)
    return path if isinstance(path, str) else None


def in_hub_cache(repo_id: str, groups: tuple[tuple[str, ...], ...]) -> bool:
    """The local Hugging Face cache holds one file of each group of ``repo_id`` (and, for a sharded-weights
    index, every shard it names): what loading the repo offline reads."""
    for group in groups:
        found = next((path for name in group if (path := cached_hub_file(repo_id, name))), None)
        if found is None:
            return False
        if found.endswith(".index.json"):
            try:
                shards = set(json.loads(Path(found).read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return False          # an unreadable index: the loader could not use it either
            if not all(cached_hub_file(repo_id, shard) for shard in shards):
                return False
    return True


def check_hub_access(args: argparse.Namespace) -> None:
    """Weights flags that name hub ids can be served: the hub is reachable, or the local cache holds them (with
    the hub unreachable, huggingface_hub is then put in offline mode, with a note: online it would retry the
    hub for ~25 s per file, five retries 1-8 s apart, before reading its cache). Otherwise one line with the
    fix, in seconds."""
    hub = [(flag, value, files) for flag, dest, files in HUB_FLAGS
           if (value := getattr(args, dest)) and not Path(value).expanduser().exists() and looks_like_hub_id(value)]
    if not hub:
        return
    missing = [(flag, value) for flag, value, files in hub if not in_hub_cache(value, files)]
    fetch = (f"download {'them' if len(missing) > 1 else 'it'} where there is internet ("
             + ", ".join(f"`hf download {v} --local-dir {v.split('/')[1]}`" for _, v in missing)
             + ") and pass the folder" + ("s" if len(missing) > 1 else "") + " ("
             + " ".join(f"{f} {v.split('/')[1]}" for f, v in missing) + ")")
    ids = ", ".join(f"{f} {v}" for f, v in missing)
    if hub_offline():
        if missing:
            raise UsageError(f"{ids} {'are hub ids' if len(missing) > 1 else 'is a hub id'} not in the local "
                             f"Hugging Face cache, and HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) allows no download: "
                             f"{fetch}, or unset HF_HUB_OFFLINE on a machine that reaches the hub")
        return
    if hub_reachable():
        return
    where = f"the Hugging Face hub ({hub_endpoint()}) cannot be reached"
    if not missing:
        enter_hub_offline_mode()
        if os.environ.get("RANK", "0") == "0":          # once under torchrun: every rank gets here
            print(f"note: {where}; {', '.join(f'{f} {v}' for f, v, _ in hub)} "
                  f"{'are' if len(hub) > 1 else 'is'} in the local Hugging Face cache: using the cache "
                  f"(HF_HUB_OFFLINE=1 for this run)", file=sys.stderr)
        return
    raise UsageError(f"{where} and {ids} {'are hub ids' if len(missing) > 1 else 'is a hub id'} not in the local "
                     f"cache: {fetch}; or connect to the internet")


@dataclass(frozen=True)
class Job:
    prompt_index: int   # into Settings.prompts
    k: int              # sample index within the prompt; the seed is --seed + k
    name: str           # file name, without the folder


def noise_seed(seeding: str, seed: int, job: Job, num_samples: int, start_index: int = 0) -> int:
    """The seed of a job's noise: ``seed + k`` (the reference: every prompt's sample k shares it), or
    ``sample_seed(seed, index)`` with index = (start_index + prompt) * num_samples + k ("per-sample")."""
    if seeding == "reference":
        return seed + job.k
    return sample_seed(seed, (start_index + job.prompt_index) * num_samples + job.k)


def sample_name(prompt: str, index: int, k: int, num_samples: int, prompt_as_path: bool,
                prefix: str | None = None) -> str:
    """Upstream's names: ``{prefix}{prompt}`` with --prompt-as-path (prefix '' by default: VBench's lookup
    name), else ``{prefix}_{index:04d}`` (prefix 'sample'); ``-{k}`` appended unless there is one sample per
    prompt; ``.mp4``."""
    if prompt_as_path:
        if "/" in prompt or "\0" in prompt:
            raise UsageError(f"prompt {index} contains '/' and cannot be a file name; drop --prompt-as-path")
        stem = f"{prefix or ''}{prompt}"
        if len(stem.encode("utf-8")) > MAX_NAME_BYTES:
            raise UsageError(f"prompt {index} is longer than {MAX_NAME_BYTES} bytes, too long for a file name; "
                             f"drop --prompt-as-path")
    else:
        stem = f"{'sample' if prefix is None else prefix}_{index:04d}"
    return f"{stem}-{k}.mp4" if num_samples != 1 else f"{stem}.mp4"


def make_jobs(prompts: list[str], num_samples: int, prompt_as_path: bool, prefix: str | None = None,
              start_index: int = 0) -> list[Job]:
    """Every (prompt, k) once; a prompt listed twice (VBench has 2) maps to the same files, so it runs once.
    Names count from ``start_index`` (upstream's --start-index)."""
    jobs, seen = [], set()
    for i, prompt in enumerate(prompts):
        for k in range(num_samples):
            name = sample_name(prompt, start_index + i, k, num_samples, prompt_as_path, prefix)
            if name not in seen:
                seen.add(name)
                jobs.append(Job(i, k, name))
    return jobs


def shard_bounds(count: int, index: int, shards: int) -> tuple[int, int]:
    """[start, end) of block ``index`` of ``shards`` contiguous blocks over ``count`` items: sizes differ by
    at most one and the blocks cover every item exactly once, for any number of shards."""
    if not 0 <= index < shards:
        raise UsageError(f"shard {index}/{shards} is invalid: pass I/N with 0 <= I < N")
    return index * count // shards, (index + 1) * count // shards


def shard_jobs(jobs: list[Job], index: int, shards: int) -> list[Job]:
    """The jobs of a contiguous block of prompts (all samples of a prompt stay in one shard)."""
    prompts = list(dict.fromkeys(j.prompt_index for j in jobs))
    lo, hi = shard_bounds(len(prompts), index, shards)
    chosen = set(prompts[lo:hi])
    return [j for j in jobs if j.prompt_index in chosen]


def parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        index, shards = (int(x) for x in value.split("/"))
    except ValueError:
        raise UsageError(f"--shard {value!r} is invalid: pass I/N, e.g. 0/8") from None
    if shards < 1 or not 0 <= index < shards:
        raise UsageError(f"--shard {value} is invalid: pass I/N with N >= 1 and 0 <= I < N")
    return index, shards


@dataclass(frozen=True)
class Settings:
    prompts: list[str]
    jobs: list[Job]
    spec: VideoSpec
    rflow: RFlowConfig
    cache: CacheConfig
    aes: float | None
    save_fps: int
    shard: tuple[int, int] | None = None
    num_samples: int = 1


def check_flag_numbers(args: argparse.Namespace) -> None:
    """Every numeric setting finite and in range (duca_common.validate), before anything else."""
    check_numbers([("--steps", args.steps, STEPS), ("--cfg-scale", args.cfg_scale, GUIDANCE),
                   ("--seed", args.seed, SEED), ("--fps", args.fps, COUNT), ("--save-fps", args.save_fps, COUNT),
                   ("--frame-interval", args.frame_interval, COUNT), ("--num-samples", args.num_samples, COUNT),
                   ("--start-index", args.start_index, NON_NEGATIVE_INT),
                   ("--end-index", args.end_index, NON_NEGATIVE_INT),
                   ("--aes", args.aes, SCORE), ("--flow", args.flow, SCORE),
                   ("--verbose", args.verbose, NON_NEGATIVE_INT)]
                  + [("--image-size", v, SIZE) for v in (args.image_size or [])])


def settings_from_args(args: argparse.Namespace) -> Settings:
    check_flag_numbers(args)
    if args.vbench:
        if args.num_samples not in (None, VBENCH_SAMPLES):
            raise UsageError(f"--vbench samples {VBENCH_SAMPLES} videos per prompt; drop --num-samples")
        args.num_samples, args.prompt_as_path = VBENCH_SAMPLES, True
    num_samples = 1 if args.num_samples is None else args.num_samples
    if num_samples < 1:
        raise UsageError(f"--num-samples {num_samples} is invalid: pass at least 1")
    try:
        rflow = RFlowConfig(num_sampling_steps=args.steps, cfg_scale=args.cfg_scale)
    except ValueError as err:
        raise UsageError(f"--steps / --cfg-scale: {err}") from err
    if args.fps < 1 or args.save_fps < 1:
        raise UsageError(f"--fps {args.fps} / --save-fps {args.save_fps} are invalid: pass at least 1 "
                         f"(24 as the reference)")
    h, w = image_size(args)
    spec = VideoSpec(h, w, parse_num_frames(args.num_frames), args.fps)
    try:
        sampling_timesteps(rflow, spec.height, spec.width, spec.num_frames)
    except ValueError as err:
        raise UsageError(f"--num-frames {spec.num_frames}: {err}") from err
    cache = cache_config(args)
    prompts = [] if args.flops_only else read_prompts(args)
    jobs = make_jobs(prompts, num_samples, bool(args.prompt_as_path), args.sample_name, args.start_index or 0)
    return Settings(prompts, jobs, spec, rflow, cache, args.aes, args.save_fps, parse_shard(args.shard), num_samples)


# ---------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------
def write_video(video: torch.Tensor, path: Path, fps: int) -> None:
    """(3, F, H, W) uint8 -> H.264 mp4 (crf 0 as upstream), written to a temp file then renamed."""
    try:
        import av
    except ImportError as err:
        raise UsageError("writing mp4 needs PyAV: pip install av") from err
    frames = video.permute(1, 2, 3, 0).contiguous().numpy()           # (F, H, W, 3)
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2] // 2 * 2, frames.shape[1] // 2 * 2   # yuv420p: even
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": VIDEO_CRF}
        for frame in frames:
            image = av.VideoFrame.from_ndarray(frame[:stream.height, :stream.width], format="rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_report(path: str | None, report: dict) -> None:
    if path:
        write_json(path, report)


def describe(args: argparse.Namespace, s: Settings) -> dict:
    return {"spec": asdict(s.spec), "steps": s.rflow.num_sampling_steps, "cfg_scale": s.rflow.cfg_scale,
            "seed": args.seed, "noise_seeding": args.noise_seeding, "aes": s.aes, "flow": args.flow,
            "cache": args.cache, "preset": args.preset,
            "cache_config": json.loads(json.dumps(asdict(s.cache), default=str)),
            "prompts": len(s.prompts), "videos": len(s.jobs), "save_fps": s.save_fps, "config": args.config_record}


# ---------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------
def flops_model_config(args: argparse.Namespace) -> STDiT3Config:
    """The architecture for --flops-only: ``config.json`` of a local --ckpt-path, else XL/2."""
    if args.ckpt_path:
        p = Path(args.ckpt_path).expanduser()
        file = (p if p.is_dir() else p.parent) / CONFIG_FILE
        if file.is_file():
            try:
                return STDiT3Config(**config_fields(STDiT3Config, json.loads(file.read_text())))
            except (TypeError, ValueError) as err:
                raise UsageError(f"{file} describes an invalid STDiT3: {err}") from err
    return stdit3_xl_2()


def run_flops(args: argparse.Namespace, s: Settings) -> int:
    config = flops_model_config(args)
    tokens = config.model_max_length if args.flops_text_tokens is None else args.flops_text_tokens
    try:
        flops = flops_report(config, s.cache, s.spec, VideoVAEConfig(), tokens, s.rflow)
    except ValueError as err:
        raise UsageError(f"--flops-text-tokens: {err}") from err
    print(flops["plan"])
    print(f"STDiT3 FLOPs per video (CFG batch 2, {s.rflow.num_sampling_steps} steps, measured on meta): "
          f"{flops['measured_cached'] / 1e12:.1f} T cached, {flops['measured_full'] / 1e12:.1f} T uncached, "
          f"speed-up {flops['speedup']:.2f}x")
    write_report(args.report, {**describe(args, s), "model_config": asdict(config), "flops": flops})
    return 0


def init_distributed(device_flag: str) -> tuple[int, int, torch.device]:
    return runtime.init_distributed(pick_device(device_flag))


def load_components(args: argparse.Namespace, cache: CacheConfig, device: torch.device, dtype: torch.dtype):
    from duca_common.text import T5TextEncoder
    from opensora_duca.stdit3 import load_stdit3
    from opensora_duca.vae import load_vae

    try:
        model = load_stdit3(args.ckpt_path, cache, device).to(dtype)
        vae = load_vae(args.vae_path, device).to(dtype)
    except (CheckpointError, ValueError) as err:
        raise UsageError(str(err)) from err
    text = T5TextEncoder(args.t5_path, device=device, max_length=model.config.model_max_length)
    if text.dim != model.config.caption_channels:
        raise UsageError(f"the T5 encoder at {args.t5_path!r} outputs {text.dim} channels but STDiT3 expects "
                         f"{model.config.caption_channels}; pass t5-v1_1-xxl (4096)")
    return model, vae, text


def my_jobs(s: Settings, rank: int, world: int) -> list[Job]:
    """This process's jobs: the --shard block, or under torchrun the rank's block (the same contiguous split)."""
    if s.shard is not None:
        if world > 1:
            raise UsageError("--shard splits the work between separate processes; under torchrun the ranks split "
                             "it already: drop --shard")
        return shard_jobs(s.jobs, *s.shard)
    return shard_jobs(s.jobs, rank, world)


def resolved_dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp32": torch.float32}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)


def run_record(args: argparse.Namespace, s: Settings, dtype: torch.dtype) -> RunRecord:
    """What decides the videos (compared on resume) and what is for people only (``info``). Checkpoints are
    identified by their SHA-256 (a hub id by its text), T5 by its flag value (duca_common.run_record)."""
    settings = {
        "stdit3": file_identity(args.ckpt_path), "vae": file_identity(args.vae_path), "t5": args.t5_path,
        "prompts": text_identity(s.prompts), "prompt_as_path": bool(args.prompt_as_path),
        "sample_name": args.sample_name, "start_index": args.start_index or 0,
        "height": s.spec.height, "width": s.spec.width, "num_frames": s.spec.num_frames, "fps": s.spec.fps,
        "save_fps": s.save_fps, "steps": s.rflow.num_sampling_steps, "cfg_scale": s.rflow.cfg_scale,
        "seed": args.seed, "noise_seeding": args.noise_seeding, "aes": s.aes, "flow": args.flow,
        "camera_motion": args.camera_motion,
        "dtype": str(dtype).removeprefix("torch."), "cache": asdict(s.cache),
    }
    return RunRecord(settings, {"videos": len(s.jobs), "prompts": len(s.prompts), "config": args.config_record})


def check_outputs(args: argparse.Namespace) -> None:
    """--out and --report can be written: one line and exit 2 before anything is built or read."""
    if not args.flops_only:
        check_output_dir(args.out, "--out")
    if args.report:
        check_output_file(args.report, "--report", suffixes=(".json",))


def run_sampling(args: argparse.Namespace, s: Settings) -> int:
    from opensora_duca.pipeline import generate

    check_weight_path(args.ckpt_path, "--ckpt-path", STDIT3_HUB_ID)
    check_weight_path(args.vae_path, "--vae-path", VAE_HUB_ID)
    check_t5_path(args.t5_path)
    # hub ids: reachable or cached, checked once before any process group or model (rank-independent: the
    # videos still missing from the run's --shard, or from all of it); a finished folder needs no weights
    out = Path(args.out)
    if any(not (out / j.name).is_file() for j in (shard_jobs(s.jobs, *s.shard) if s.shard else s.jobs)):
        check_hub_access(args)
    rank, world, device = init_distributed(args.device)
    mine = my_jobs(s, rank, world)
    dtype = resolved_dtype(args, device)
    # A folder made with other settings (or holding videos and no record) is refused here, before any model;
    # so every finished file that is skipped belongs to this run. The record is written right before the first
    # video (a run that fails earlier, e.g. on NaN latents, leaves nothing behind). Every process (torchrun
    # rank or --shard process) writes the same record atomically before its own first video.
    record = run_record(args, s, dtype)
    check_resume(out, record, flag="--out", outputs=(VIDEO_GLOB,))
    todo = [j for j in mine if not (out / j.name).is_file()]
    lead = rank == 0 and args.verbose >= 1
    if lead:
        where = f"shard {s.shard[0]}/{s.shard[1]}" if s.shard else f"rank 0 of {world} process(es)"
        print(f"{len(s.prompts)} prompts, {len(s.jobs)} videos; {where} has {len(todo)} of its {len(mine)} to do")
    if args.check_only:
        return 0
    seconds, records, plan = 0.0, [], None
    if todo:
        model, vae, text = load_components(args, s.cache, device, dtype)
        for job in tqdm(todo, desc=f"rank {rank}", unit="video", disable=not lead or args.verbose != 1):
            seed = noise_seed(args.noise_seeding, args.seed, job, s.num_samples, args.start_index or 0)
            result = generate(model, vae, text, s.prompts[job.prompt_index], seed, s.spec, s.rflow,
                              s.aes, flow=args.flow, camera_motion=args.camera_motion)
            if not records:
                write_record(out, record)
            write_video(result.video, out / job.name, s.save_fps)
            if args.verbose >= 2:
                print(f"{out / job.name}: {result.seconds:.1f} s", flush=True)
            seconds += result.seconds
            records.append({"name": job.name, "seconds": result.seconds, "text_tokens": result.text_tokens})
            plan = model.feature_cache.last_trace.table()     # the same for every video of a run
    if world > 1:
        dist.barrier()
    expected = mine if s.shard else s.jobs
    missing = [j.name for j in expected if not (out / j.name).is_file()]
    if rank == 0:
        if missing:
            print(f"error: {len(missing)} videos are missing (first {missing[0]!r}); rerun to finish them",
                  file=sys.stderr)
            return 1
        if args.verbose >= 1:
            print(f"all {len(expected)} videos{' of the shard' if s.shard else ''} are in {out}")
        write_report(args.report, {**describe(args, s), "world_size": world, "shard": args.shard, "out": str(out),
                                   "rank0_sampling_seconds": seconds, "plan": plan, "rank0_videos": records})
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        check_outputs(args)
        settings = settings_from_args(args)
        return run_flops(args, settings) if args.flops_only else run_sampling(args, settings)
    except UsageError as err:          # CheckpointError and NonFiniteError too: one line, exit 2
        return print_error(err)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

if __name__ == "__main__":
    sys.exit(main())
