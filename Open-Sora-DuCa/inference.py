"""OpenSora 1.2 text-to-video with DuCa / ToCa / FORA / TaylorSeer caching, and VBench sampling.

    python -m opensora_duca.inference --prompt "a corgi on the beach" --ckpt-path STDiT-v3/ --vae-path VAE-v1.2/ \
        --t5-path t5-v1_1-xxl/ --cache duca --out samples/
    torchrun --nproc_per_node=8 -m opensora_duca.inference --vbench --prompts-file VBench_full_info.json ...
    python -m opensora_duca.inference --flops-only --cache duca --report flops.json

Defaults are the reference's (models.md C.10): 480p, aspect 9:16 (H:W, 480 x 854), 51 frames ("2s"), fps 24,
30 RFlow steps, cfg 7.0, aesthetic score 6.5, seed 1024 + k for sample k of a prompt (C.9).

* ``--vbench``: 5 samples per prompt, file names ``{prompt}-{k}.mp4`` (``--prompt-as-path``), the names
  VBench 0.1.5 looks up. The prompt list is VBench's own: ``--prompts-file`` takes a text file (one prompt a
  line) or VBench's ``VBench_full_info.json``; without it the installed ``vbench`` package's copy is used.
* Identical videos for any number of processes: every (prompt, k) is one job with its own seed; rank r takes
  jobs r, r + world, ...; videos are written atomically (temp file, then rename); a rerun skips finished files.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from duca_common import runtime
from duca_common.cache import CacheConfig, get_preset, presets_for
from duca_common.runtime import UsageError, atomic_path, pick_device, write_json
from duca_common.text import read_prompt_lines

from opensora_duca.checkpoint import CONFIG_FILE, CheckpointError, config_fields
from opensora_duca.pipeline import DEFAULT_AES, DEFAULT_FPS, VideoSpec, flops_report
from opensora_duca.rflow import RFlowConfig, sampling_timesteps
from opensora_duca.stdit3 import STDIT3_HUB_ID, STDiT3Config, stdit3_xl_2
from opensora_duca.vae import VAE_HUB_ID, VideoVAEConfig

# OpenSora's resolution names -> pixel area; the 480p area is 480 x 854 (C.10 ASPECT_RATIO_480P["0.56"]).
# NOT VERIFIED beyond 480p 9:16: the other areas follow the same "short side x 16:9 long side" pattern.
RESOLUTION_AREAS = {"240p": 240 * 426, "360p": 360 * 640, "480p": 480 * 854, "720p": 720 * 1280,
                    "1080p": 1080 * 1920}
# "H:W" names (C.10: "9:16" means 480 high x 854 wide).
ASPECT_RATIOS = {"9:16": 9 / 16, "16:9": 16 / 9, "1:1": 1.0, "3:4": 3 / 4, "4:3": 4 / 3, "2:3": 2 / 3, "3:2": 3 / 2,
                 "1:2": 1 / 2, "2:1": 2.0}
NUM_FRAMES_NAMES = {"2s": 51, "4s": 102, "8s": 204, "16s": 408}   # C.10: "2s" maps to 51
SIZE_EPS = 1e-4                          # upstream get_h_w nudges the size up before rounding to even
DEFAULT_SEED = 1024                      # C.9: the DuCa fork reseeds with 1024 + k
VBENCH_SAMPLES = 5                       # paper.md section 2: 5 videos per prompt
VBENCH_INFO = "VBench_full_info.json"
DEFAULT_T5 = "DeepFloyd/t5-v1_1-xxl"
CACHE_METHODS = ("none", "fora", "toca", "duca", "taylorseer")
MAX_NAME_BYTES = 250                     # file-name limit (255) minus "-k.mp4" room
VIDEO_CRF = "0"                          # upstream save_sample: h264 with crf 0


# ---------------------------------------------------------------------------------------------------
# Flags and validation (everything here runs before any weights are read)
# ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("prompts and video")
    g.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    g.add_argument("--prompts-file", help="prompts, one per line, or VBench's VBench_full_info.json")
    g.add_argument("--vbench", action="store_true",
                   help=f"VBench protocol: {VBENCH_SAMPLES} samples per prompt, --prompt-as-path, VBench's prompt list")
    g.add_argument("--num-samples", type=int, help="videos per prompt (default 1; 5 with --vbench)")
    g.add_argument("--prompt-as-path", action="store_true", help="name files '{prompt}-{k}.mp4' (VBench)")
    g.add_argument("--resolution", default="480p", help=f"one of {sorted(RESOLUTION_AREAS)}")
    g.add_argument("--aspect-ratio", default="9:16", help=f"H:W, one of {sorted(ASPECT_RATIOS)}")
    g.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="pixel size; overrides the two above")
    g.add_argument("--num-frames", default="51", help=f"an integer or one of {sorted(NUM_FRAMES_NAMES)}")
    g.add_argument("--fps", type=int, default=DEFAULT_FPS)
    g.add_argument("--aes", type=float, default=DEFAULT_AES, help="aesthetic score appended to prompts; <0: none")
    g.add_argument("--steps", type=int, default=RFlowConfig.num_sampling_steps)
    g.add_argument("--cfg-scale", type=float, default=RFlowConfig.cfg_scale)
    g.add_argument("--seed", type=int, default=DEFAULT_SEED, help="sample k of a prompt uses seed + k")
    w = p.add_argument_group("weights")
    w.add_argument("--ckpt-path", help=f"STDiT3 folder / model.safetensors / hub id ({STDIT3_HUB_ID})")
    w.add_argument("--vae-path", help=f"OpenSora VAE folder / model.safetensors / hub id ({VAE_HUB_ID})")
    w.add_argument("--t5-path", default=DEFAULT_T5, help="T5 v1.1 XXL folder (model + tokenizer) or hub id")
    w.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    w.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                   help="STDiT3 and VAE dtype: bf16 on GPU as the reference, fp32 on CPU (auto)")
    c = p.add_argument_group("caching")
    c.add_argument("--cache", choices=CACHE_METHODS, default="duca", help="method (default duca, the reference fork)")
    c.add_argument("--preset", help=f"named operating point: {', '.join(x.name for x in presets_for('opensora'))}")
    c.add_argument("--fresh-ratio", type=float, help="DuCa/ToCa base fraction of MLP tokens recomputed (0.1)")
    c.add_argument("--interval", type=int, default=3, help="FORA / TaylorSeer cycle length N")
    c.add_argument("--taylor-order", type=int, default=1, help="TaylorSeer order")
    o = p.add_argument_group("outputs")
    o.add_argument("--out", default="samples", help="output folder")
    o.add_argument("--report", help="write a JSON report (settings, plan, FLOPs, timings) here")
    o.add_argument("--flops-only", action="store_true", help="count FLOPs on the meta device and exit (no weights)")
    o.add_argument("--flops-text-tokens", type=int, default=None,
                   help="valid T5 tokens assumed by --flops-only (default: the model's maximum, 300)")
    return p


def parse_num_frames(value: str) -> int:
    if value in NUM_FRAMES_NAMES:
        return NUM_FRAMES_NAMES[value]
    try:
        frames = int(value)
    except ValueError:
        raise UsageError(f"--num-frames {value!r} is invalid: pass an integer or one of {sorted(NUM_FRAMES_NAMES)}")
    if frames < 1:
        raise UsageError(f"--num-frames {frames} is invalid: pass at least 1")
    return frames


def _even_size(x: float) -> int:
    """upstream get_h_w: nudge up by 1e-4, then ceil when that is even, else floor."""
    x *= 1 + SIZE_EPS
    return int(x) + 1 if (int(x) + 1) % 2 == 0 else int(x)


def image_size(args: argparse.Namespace) -> tuple[int, int]:
    """(H, W): --image-size, or the resolution's area at the H:W aspect ratio (480p 9:16 -> 480 x 854)."""
    if args.image_size:
        h, w = args.image_size
    else:
        if args.resolution not in RESOLUTION_AREAS:
            raise UsageError(f"--resolution {args.resolution!r} is unknown: pass one of {sorted(RESOLUTION_AREAS)} "
                             f"or --image-size H W")
        if args.aspect_ratio not in ASPECT_RATIOS:
            raise UsageError(f"--aspect-ratio {args.aspect_ratio!r} is unknown: pass one of {sorted(ASPECT_RATIOS)} "
                             f"(H:W) or --image-size H W")
        a = ASPECT_RATIOS[args.aspect_ratio]
        h = _even_size((RESOLUTION_AREAS[args.resolution] * a) ** 0.5)
        w = _even_size(h / a)
    if h < 16 or w < 16:
        raise UsageError(f"image size {h}x{w} is too small: pass at least 16x16")
    return h, w


def cache_config(args: argparse.Namespace) -> CacheConfig:
    """--preset, else the method's OpenSora operating point; explicit flags override fields."""
    try:
        if args.preset:
            preset = get_preset(args.preset)
            if preset.model != "opensora":
                raise UsageError(f"--preset {args.preset} is a {preset.model} preset; use one of "
                                 f"{[x.name for x in presets_for('opensora')]}")
            return preset.config
        if args.cache == "none":
            return CacheConfig()
        if args.cache in ("duca", "toca"):   # the reference's fixed module cycles (C.11)
            base = get_preset("opensora-duca").config
            if args.cache == "toca":         # ToCa: the same cycles with every aggressive step conservative
                base = base.replace(method="toca")
            return base if args.fresh_ratio is None else base.replace(fresh_ratio=args.fresh_ratio)
        return CacheConfig(method=args.cache, interval=args.interval,
                           taylor_order=args.taylor_order if args.cache == "taylorseer" else 1)
    except ValueError as err:
        if isinstance(err, UsageError):
            raise
        raise UsageError(f"invalid cache flags: {err}") from err


def read_prompt_list(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--prompts-file {path!r} does not exist; pass a text file with one prompt per line or "
                         f"VBench's {VBENCH_INFO}")
    if file.suffix == ".json":
        try:
            prompts = [entry["prompt_en"] for entry in json.loads(file.read_text(encoding="utf-8"))]
        except (json.JSONDecodeError, TypeError, KeyError) as err:
            raise UsageError(f"--prompts-file {path!r} is not a VBench info file (a list of {{'prompt_en': ...}}): "
                             f"{err}") from err
    else:
        prompts = read_prompt_lines(file, "--prompts-file")
    if not prompts:
        raise UsageError(f"--prompts-file {path!r} holds no prompts")
    return prompts


def vbench_info_from_package() -> str:
    import importlib.util

    spec = importlib.util.find_spec("vbench")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"--vbench needs VBench's prompt list: pass --prompts-file {VBENCH_INFO} (in the vbench==0.1.5 "
                         f"wheel: pip download vbench==0.1.5 --no-deps, then unzip vbench/{VBENCH_INFO})")
    return str(Path(list(spec.submodule_search_locations)[0]) / VBENCH_INFO)


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt and args.prompts_file:
        raise UsageError("pass either --prompt or --prompts-file, not both")
    if args.prompt:
        if any(not p.strip() for p in args.prompt):
            raise UsageError("--prompt '' is empty; pass a non-empty prompt")
        return [p.strip() for p in args.prompt]
    if args.prompts_file:
        return read_prompt_list(args.prompts_file)
    if args.vbench:
        return read_prompt_list(vbench_info_from_package())
    raise UsageError("no prompts: pass --prompt TEXT, --prompts-file PATH, or --vbench")


def check_weight_path(value: str | None, flag: str, hub_id: str) -> None:
    if not value:
        raise UsageError(f"{flag} is required to sample (a local folder, its model.safetensors, or {hub_id}); "
                         f"only --flops-only runs without weights")
    p = Path(value).expanduser()
    if not p.exists() and (value.count("/") != 1 or value.startswith((".", "/", "~"))):
        raise UsageError(f"{flag} {value!r} does not exist; pass a local folder, its model.safetensors, or a hub id "
                         f"such as {hub_id}")


def check_t5_path(value: str) -> None:
    p = Path(value).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise UsageError(f"--t5-path {value!r} has no config.json; pass the t5-v1_1-xxl folder (model + tokenizer)")
    elif value.count("/") != 1 or value.startswith((".", "/", "~")):
        raise UsageError(f"--t5-path {value!r} does not exist; pass the t5-v1_1-xxl folder or a hub id such as "
                         f"{DEFAULT_T5}")


@dataclass(frozen=True)
class Job:
    prompt_index: int
    k: int              # sample index within the prompt; the seed is --seed + k
    name: str           # file name, without the folder


def sample_name(prompt: str, index: int, k: int, num_samples: int, prompt_as_path: bool) -> str:
    """``{prompt}-{k}.mp4`` (prompt as path, VBench's lookup name) or ``sample_{index:04d}-{k}.mp4``;
    without ``-{k}`` when there is one sample per prompt (as upstream)."""
    if prompt_as_path:
        if "/" in prompt or "\0" in prompt:
            raise UsageError(f"prompt {index} contains '/' and cannot be a file name; drop --prompt-as-path")
        if len(prompt.encode("utf-8")) > MAX_NAME_BYTES:
            raise UsageError(f"prompt {index} is longer than {MAX_NAME_BYTES} bytes, too long for a file name; "
                             f"drop --prompt-as-path")
        stem = prompt
    else:
        stem = f"sample_{index:04d}"
    return f"{stem}-{k}.mp4" if num_samples != 1 else f"{stem}.mp4"


def make_jobs(prompts: list[str], num_samples: int, prompt_as_path: bool) -> list[Job]:
    """Every (prompt, k) once; a prompt listed twice (VBench has 2) maps to the same files, so it runs once."""
    jobs, seen = [], set()
    for i, prompt in enumerate(prompts):
        for k in range(num_samples):
            name = sample_name(prompt, i, k, num_samples, prompt_as_path)
            if name not in seen:
                seen.add(name)
                jobs.append(Job(i, k, name))
    return jobs


@dataclass(frozen=True)
class Settings:
    prompts: list[str]
    jobs: list[Job]
    spec: VideoSpec
    rflow: RFlowConfig
    cache: CacheConfig
    aes: float | None


def settings_from_args(args: argparse.Namespace) -> Settings:
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
    if args.fps < 1:
        raise UsageError(f"--fps {args.fps} is invalid: pass at least 1 (24 as the reference)")
    h, w = image_size(args)
    spec = VideoSpec(h, w, parse_num_frames(args.num_frames), args.fps)
    try:
        sampling_timesteps(rflow, spec.height, spec.width, spec.num_frames)
    except ValueError as err:
        raise UsageError(f"--num-frames {spec.num_frames}: {err}") from err
    cache = cache_config(args)
    prompts = [] if args.flops_only else read_prompts(args)
    jobs = make_jobs(prompts, num_samples, args.prompt_as_path)
    return Settings(prompts, jobs, spec, rflow, cache, None if args.aes < 0 else args.aes)


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
            "seed": args.seed, "aes": s.aes, "cache": args.cache, "preset": args.preset,
            "cache_config": json.loads(json.dumps(asdict(s.cache), default=str)),
            "prompts": len(s.prompts), "videos": len(s.jobs)}


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


def load_components(args: argparse.Namespace, cache: CacheConfig, device: torch.device):
    from duca_common.text import T5TextEncoder

    from opensora_duca.stdit3 import load_stdit3
    from opensora_duca.vae import load_vae

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
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


def run_sampling(args: argparse.Namespace, s: Settings) -> int:
    from opensora_duca.pipeline import generate

    check_weight_path(args.ckpt_path, "--ckpt-path", STDIT3_HUB_ID)
    check_weight_path(args.vae_path, "--vae-path", VAE_HUB_ID)
    check_t5_path(args.t5_path)
    rank, world, device = init_distributed(args.device)
    out = Path(args.out)
    mine = s.jobs[rank::world]
    todo = [j for j in mine if not (out / j.name).is_file()]
    if rank == 0:
        print(f"{len(s.prompts)} prompts, {len(s.jobs)} videos over {world} process(es); rank 0 has "
              f"{len(todo)} of its {len(mine)} to do")
    seconds, records, plan = 0.0, [], None
    if todo:
        model, vae, text = load_components(args, s.cache, device)
        for job in tqdm(todo, desc=f"rank {rank}", unit="video", disable=rank != 0):
            result = generate(model, vae, text, s.prompts[job.prompt_index], args.seed + job.k, s.spec, s.rflow, s.aes)
            write_video(result.video, out / job.name, s.spec.fps)
            seconds += result.seconds
            records.append({"name": job.name, "seconds": result.seconds, "text_tokens": result.text_tokens})
            plan = model.feature_cache.last_trace.table()     # the same for every video of a run
    if world > 1:
        dist.barrier()
    missing = [j.name for j in s.jobs if not (out / j.name).is_file()]
    if rank == 0:
        if missing:
            print(f"error: {len(missing)} videos are missing (first {missing[0]!r}); rerun to finish them",
                  file=sys.stderr)
            return 1
        print(f"all {len(s.jobs)} videos are in {out}")
        write_report(args.report, {**describe(args, s), "world_size": world, "out": str(out),
                                   "rank0_sampling_seconds": seconds, "plan": plan, "rank0_videos": records})
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        return run_flops(args, settings) if args.flops_only else run_sampling(args, settings)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
