"""VBench sampling on every local GPU, one process per GPU (``eval/vbench/launch.sh`` runs this).

    bash eval/vbench/launch.sh CKPT NUM_FRAMES NAME RESOLUTION ASPECT_RATIO [NUM_SAMPLING_STEPS [FLOW]] [flags]

The five positional arguments are the reference's (``DuCa-Open-Sora/eval/vbench/launch.sh``), and so are the
optional sixth and seventh (sampling steps, motion score). Any ``--flag`` is passed to every
``opensora_duca.inference`` process (``--cache none`` for the baseline, ``--vae-path``, ``--t5-path``, ...).

* Prompts: VBench's list (``eval/vbench/VBench_full_info.json``, 946 prompts, shipped from the vbench==0.1.5
  wheel), 5 videos per prompt named ``{prompt}-{k}.mp4`` with seed 1024 + k (the reference's ``--prompt-as-path
  --num-sample 5``); the two prompts VBench lists twice share their files, so 4,720 videos.
* Output: ``{--out-root}/samples_{NAME}_{CKPT_BASE}_vbench`` (the reference's folder name; CKPT_BASE is the
  checkpoint's base name, or its folder's name + ``_ema`` for an EMA file), logs and the FLOPs report in the
  sibling ``..._vbench_logs`` (with one sampling report per process: the seconds of every video).
* GPUs: those in ``CUDA_VISIBLE_DEVICES``, else every GPU torch sees. Process i gets one GPU and the i-th of N
  contiguous blocks of prompts (``inference --shard i/N``), so every prompt is sampled exactly once for any
  GPU count. With no GPU the launcher stops and says so, unless ``--allow-cpu`` (or
  ``DUCA_VBENCH_ALLOW_CPU=1``) is given; then ``--cpu-processes`` processes run on the CPU.
* Resumable: rerun the same command; each process skips the videos already written (they belong to the
  recorded run: ``run.json`` is checked first), and every video is written atomically.
* Progress: while the processes run, one bar on stderr counts the finished videos of all shards (the output
  folder is listed every ``PROGRESS_POLL_S`` seconds; videos already there from an earlier run count from the
  start); ``--verbose 0`` (the inference flag, passed to every process) turns it off.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from tqdm.auto import tqdm

from duca_common.errors import UsageError, print_error
from duca_common.runtime import HelpFormatter
from opensora_duca import inference

ALLOW_CPU_ENV = "DUCA_VBENCH_ALLOW_CPU"
SHIPPED_CONFIG = "configs/opensora-v1-2/inference/sample.py"
# Seconds between two listings of the output folder for the progress bar: a 480p video takes minutes on a GPU,
# so a few seconds is fine-grained enough, and stat-ing the 4,720 expected files costs milliseconds.
PROGRESS_POLL_S = 5.0


def checkpoint_base(ckpt: str) -> str:
    """The reference's CKPT_BASE: ``basename(dirname)_ema`` for an EMA file (e.g. ``run/ema.pt``), else the base
    name. The reference tests the whole path for "ema"; only the file name is tested here, so a folder such as
    ``checkpoints/femaleuser/`` does not turn every checkpoint into an EMA one."""
    path = Path(ckpt.rstrip("/"))
    return f"{path.parent.name}_ema" if "ema" in path.name else path.name


def visible_gpus() -> list[str]:
    """CUDA_VISIBLE_DEVICES entries when set, else the indices of the GPUs torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("ckpt", help="STDiT3 folder / model.safetensors / hub id")
    p.add_argument("num_frames", help="frames, e.g. 51 or 2s")
    p.add_argument("name", help="a name for the run (part of the output folder)")
    p.add_argument("resolution", help="e.g. 480p")
    p.add_argument("aspect_ratio", help="H:W, e.g. 9:16")
    p.add_argument("num_sampling_steps", nargs="?", help="RFlow steps (default: the config's 30)")
    p.add_argument("flow", nargs="?", help="motion score appended to the prompts (default: none)")
    p.add_argument("--out-root", default="samples", help="folder that receives the run's folders (default samples)")
    p.add_argument("--config", default=SHIPPED_CONFIG, help=f"inference config (default {SHIPPED_CONFIG})")
    p.add_argument("--allow-cpu", action="store_true", default=os.environ.get(ALLOW_CPU_ENV) == "1",
                   help=f"sample on the CPU when no GPU is visible (also {ALLOW_CPU_ENV}=1); hours per 480p video")
    p.add_argument("--cpu-processes", type=int, default=1, help="processes with --allow-cpu and no GPU (1)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOPs report (meta device, no weights)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return p


def finished_videos(out: Path, names: set[str]) -> int:
    """How many of the expected videos are in ``out`` (a video appears there only once complete: atomic writes)."""
    return sum((out / name).is_file() for name in names)


def wait_with_progress(procs: list[subprocess.Popen], out: Path, names: set[str], show: bool) -> list[int]:
    """Every process's exit code, once all have exited; meanwhile a bar on stderr of the finished videos of all
    shards, updated every ``PROGRESS_POLL_S`` seconds and when a process exits."""
    with tqdm(total=len(names), initial=finished_videos(out, names), desc="videos", unit="video", file=sys.stderr,
              disable=not show, dynamic_ncols=True) as bar:
        while True:
            running = [proc for proc in procs if proc.poll() is None]
            if show:
                bar.update(finished_videos(out, names) - bar.n)
            if not running:
                break
            try:
                running[0].wait(timeout=PROGRESS_POLL_S)
            except subprocess.TimeoutExpired:
                pass
    return [proc.wait() for proc in procs]


def child_flags(args: argparse.Namespace, extra: list[str], out: Path) -> list[str]:
    flags = [args.config, "--vbench", "--ckpt-path", args.ckpt, "--num-frames", args.num_frames,
             "--resolution", args.resolution, "--aspect-ratio", args.aspect_ratio, "--save-dir", str(out)]
    if args.num_sampling_steps is not None:
        flags += ["--num-sampling-steps", args.num_sampling_steps]
    if args.flow is not None:
        flags += ["--flow", args.flow]
    return flags + extra


def run(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)    # unknown --flags go to every inference process
    stem = f"samples_{args.name}_{checkpoint_base(args.ckpt)}_vbench"
    out, logs = Path(args.out_root) / stem, Path(args.out_root) / f"{stem}_logs"
    flags = child_flags(args, extra, out)

    gpus = visible_gpus()
    if gpus:
        workers = [(g, {"CUDA_VISIBLE_DEVICES": g}) for g in gpus]
        device_flags: list[str] = []
    elif args.allow_cpu:
        if args.cpu_processes < 1:
            raise UsageError(f"--cpu-processes {args.cpu_processes} is invalid: pass at least 1")
        workers = [(f"cpu{i}", {"CUDA_VISIBLE_DEVICES": ""}) for i in range(args.cpu_processes)]
        device_flags = ["--device", "cpu"]
    else:
        raise UsageError(f"no GPU is visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, "
                         f"torch sees none): VBench sampling is 4,720 videos; pass --allow-cpu (or set "
                         f"{ALLOW_CPU_ENV}=1) to sample on the CPU anyway")
    n = len(workers)
    reports = [] if "--report" in extra else [["--report", str(logs / f"shard{i}-of-{n}.json")] for i in range(n)]
    commands = [[sys.executable, "-m", "opensora_duca.inference", *flags, *device_flags, "--shard", f"{i}/{n}",
                 *(reports[i] if reports else [])] for i in range(n)]
    if args.dry_run:
        for (_name, env), cmd in zip(workers, commands, strict=True):
            print(" ".join(f"{k}={v}" for k, v in env.items()), " ".join(cmd))
        return 0

    # Everything is checked once here (flags, prompts, weights paths, the output folder and its run.json)
    # before N processes start; the FLOPs of one video are recorded for the table.
    if inference.main([*flags, *device_flags, "--check-only", "--verbose", "0"]) != 0:
        return 2
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"the logs folder {logs} cannot be created ({err.strerror}); "
                         f"pass another --out-root") from None
    if not args.no_flops:
        if inference.main([*flags, "--flops-only", "--report", str(logs / "flops.json")]) != 0:
            return 2
    settings_args = inference.parse_args([*flags, *device_flags])
    settings = inference.settings_from_args(settings_args)
    print(f"{n} process(es) on {', '.join(w for w, _ in workers)}; videos in {out}, logs in {logs}", flush=True)
    procs = []
    for i, ((name, env), cmd) in enumerate(zip(workers, commands, strict=True)):
        log = open(logs / f"shard{i}-of-{n}.log", "w")
        procs.append((name, log, subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log,
                                                  stderr=subprocess.STDOUT)))

    def stop(signum, frame):              # Ctrl-C / kill: stop the processes this launcher started
        for _, _, proc in procs:
            if proc.poll() is None:
                proc.terminate()
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = wait_with_progress([proc for _, _, proc in procs], out, {j.name for j in settings.jobs},
                                   show=settings_args.verbose != 0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for _, log, _ in procs:
            log.close()
    failed = [f"shard {i} ({name}): exit {code}, see {logs / f'shard{i}-of-{n}.log'}"
              for i, ((name, _, _), code) in enumerate(zip(procs, codes, strict=True)) if code != 0]
    missing = [j.name for j in settings.jobs if not (out / j.name).is_file()]
    if failed or missing:
        print(f"error: {len(missing)} of {len(settings.jobs)} videos are missing; " + "; ".join(failed)
              + " -- rerun the same command to finish (finished videos are kept)", file=sys.stderr)
        return 1
    print(f"all {len(settings.jobs)} videos are in {out}; score them with: bash eval/vbench/calc.sh {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except UsageError as err:
        return print_error(err)


if __name__ == "__main__":
    sys.exit(main())
