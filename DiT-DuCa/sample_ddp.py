r"""Sample many images in parallel for FID (torchrun; NCCL on GPUs, gloo on CPU), then write the ADM ``.npz``.

The reference command works unchanged::

    torchrun --nnodes=1 --nproc_per_node=6 sample_ddp.py --model DiT-XL/2 --per-proc-batch-size 150 \
        --image-size 256 --cfg-scale 1.5 --num-sampling-steps 50 --cache-type attention --fresh-ratio 0.05 \
        --ratio-scheduler ToCa --force-fresh global --fresh-threshold 3 --ddim-sample --soft-fresh-weight 0.25 \
        --num-fid-samples 50000

Determinism and resumption:

* Sample i draws its label and noise (and DDPM step noise) from its own generator seeded by
  (global seed, i). Batch j always holds samples ``[j*B, (j+1)*B)`` (B = --per-proc-batch-size) and
  batches go round-robin to the ranks, so every batch is computed with the same contents and shapes:
  the images do not depend on the number of processes.
* ``NNNNNN.png`` files are written atomically (temporary file, then rename). A rerun skips the batches
  whose samples all exist and recomputes a partly written batch whole, writing only the missing files.
* ``<folder>.npz`` (key ``arr_0``, uint8, N x H x W x 3, the ADM evaluator's format) is written once every
  sample exists. ``run.json`` in the folder is the run record (``duca_common.run_record``: checkpoint
  SHA-256, architecture, sizes, seed, steps, guidance, cache config, batch size), written before the first
  sample; a folder whose record differs, or that holds PNGs without a record, is refused naming the
  differing setting. A batch that turns NaN is reported (step, method) and nothing of it is written.

Checkpoint and VAE: ``--ckpt``, or the official file found as in ``sample.py``; unlike ``sample.py`` there is
no fallback to the embedded digits DiT (the refusal names the download and ``--ckpt`` of the digits model).
``--vae`` left out is ``ema`` (upstream), or ``none`` for a checkpoint trained on pixels, as in ``sample.py``.
A bad input under torchrun is printed once, by rank 0, and every rank exits 2 (see :func:`main`).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dit_duca.diffusion import create_diffusion
from dit_duca.loading import (
    CheckpointNotFoundError,
    build_dit,
    decode_latents,
    load_checkpoint,
    load_into,
    load_vae,
    resolve_checkpoint,
    resolve_vae_folder,
    to_uint8_images,
)
from dit_duca.options import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MODEL,
    add_cache_args,
    add_model_args,
    apply_stored_architecture,
    cache_config_from_args,
    choose_vae,
    latent_geometry,
    validate_common,
)
from dit_duca.precision import DTYPE_CHOICES, DTYPE_HELP, dtype_name, resolve_dtype
from duca_common.errors import EXIT_USAGE, UsageError, one_line, print_error
from duca_common.outputs import check_output_dir
from duca_common.run_record import RECORD_NAME, RunRecord, check_resume, file_identity, write_record
from duca_common.runtime import HelpFormatter, atomic_path, atomic_write_bytes, init_distributed, pick_device
from duca_common.seeding import sample_seed
from duca_common.validate import COUNT, SEED, FiniteWatch, check_numbers

MANIFEST = RECORD_NAME
# argparse defaults of upstream DiT sample_ddp.py (models.md A.5 defaults table: 250 steps, CFG 1.5, ema VAE)
DEFAULT_CFG_SCALE = 1.5
DEFAULT_STEPS = 250
DEFAULT_VAE = "ema"
DEFAULT_PER_PROC_BATCH = 32
DEFAULT_NUM_FID_SAMPLES = 50_000      # FID-50K, as upstream (the ADM evaluation suite's sample count)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter)
    add_model_args(parser, cfg_scale=DEFAULT_CFG_SCALE, steps=DEFAULT_STEPS, vae=DEFAULT_VAE)
    add_cache_args(parser, cache_type="random")
    parser.add_argument("--sample-dir", type=str, default="samples",
                        help="where the upstream-style sample folder is made when --out is not given")
    parser.add_argument("--out", type=str, default=None,
                        help="sample folder (default: an upstream-style name under --sample-dir)")
    parser.add_argument("--per-proc-batch-size", type=int, default=DEFAULT_PER_PROC_BATCH,
                        help="samples per batch (batches go round-robin to the ranks); part of the run record, as "
                             "the cache ranks tokens within a batch")
    parser.add_argument("--num-fid-samples", type=int, default=DEFAULT_NUM_FID_SAMPLES,
                        help="samples to write as PNGs (then stacked into <folder>.npz unless --no-npz)")
    parser.add_argument("--global-seed", type=int, default=0,
                        help="sample i draws its label, noise and DDPM step noise from a generator seeded by "
                             "(global seed, i)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=DTYPE_HELP)
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                        help="TF32 matmuls on Ampere+ GPUs (upstream default)")
    parser.add_argument("--no-npz", action="store_true", help="do not write the .npz at the end")
    parser.add_argument("--stop-after-batches", type=int, default=None, help=argparse.SUPPRESS)  # tests: interrupt
    return parser


def default_folder(args: argparse.Namespace, ckpt_name: str, cache_tag: str) -> Path:
    model = args.model.replace("/", "-")
    sampler = "ddim" if args.ddim_sample else "ddpm"
    name = (f"{model}-{ckpt_name}-size-{args.image_size}-vae-{Path(args.vae).name}-cfg-{args.cfg_scale}-seed-"
            f"{args.global_seed}-{sampler}{args.num_sampling_steps}-{cache_tag}")
    return Path(args.sample_dir) / name


def cache_tag(cfg) -> str:
    if cfg.method == "none":
        return "nocache"
    tag = f"{cfg.method}-n{cfg.interval}"
    if cfg.method in ("toca", "duca"):
        tag += f"-r{cfg.fresh_ratio:g}-{cfg.selector}"
    if cfg.method == "taylorseer":
        tag += f"-o{cfg.taylor_order}"
    return tag


def png_path(folder: Path, index: int) -> Path:
    return folder / f"{index:06d}.png"


def save_png_atomic(array: np.ndarray, path: Path) -> None:
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def write_npz(folder: Path, num: int) -> Path:
    """Stack ``000000.png`` .. into ``<folder>.npz`` (arr_0, uint8 NHWC), written atomically."""
    from PIL import Image
    first = np.asarray(Image.open(png_path(folder, 0)).convert("RGB"))
    arr = np.empty((num, *first.shape), dtype=np.uint8)
    for i in range(num):
        arr[i] = np.asarray(Image.open(png_path(folder, i)).convert("RGB"))
    out = folder.with_name(folder.name + ".npz")
    with atomic_path(out) as tmp:
        np.savez(tmp, arr_0=arr)
    return out


def missing_in_batch(folder: Path, batch: int, bs: int, total: int) -> list[int]:
    return [i for i in range(batch * bs, min((batch + 1) * bs, total)) if not png_path(folder, i).exists()]


class PerSampleNoise:
    """DDPM step noise from each sample's generator; the uncond CFG half copies the cond half (unused)."""

    def __init__(self, generators: list[torch.Generator], cfg: bool) -> None:
        self.generators, self.cfg = generators, cfg

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        shape = like.shape[1:]
        rows = torch.stack([torch.randn(shape, generator=g) for g in self.generators]).to(like.device, like.dtype)
        return torch.cat([rows, rows]) if self.cfg else rows


def run_settings(args: argparse.Namespace, ckpt_path: Path, stored: dict | None, cache_cfg) -> dict:
    """What decides the images (compared on resume). The batch size is there because a batch's contents
    change the cache's token selection (the DiT schedule ranks tokens within the batch)."""
    return {"sampler": "dit_duca.sample_ddp", "checkpoint": file_identity(ckpt_path),
            "architecture": stored if stored is not None else {"model": args.model},
            "vae": args.vae, "image_size": args.image_size, "num_classes": args.num_classes,
            "in_channels": args.in_channels, "cfg_scale": args.cfg_scale,
            "num_sampling_steps": args.num_sampling_steps, "ddim_sample": args.ddim_sample,
            "global_seed": args.global_seed, "noise": "per sample: duca_common.seeding.sample_seed(seed, index)",
            "cache": asdict(cache_cfg), "per_proc_batch_size": args.per_proc_batch_size,
            "dtype": dtype_name(resolve_dtype(args.dtype, "cuda"))}


def resolve_fid_checkpoint(args: argparse.Namespace) -> Path:
    """The checkpoint to sample. Unlike ``sample.py`` there is no fallback to the embedded digits DiT: FID
    sampling is for the model being evaluated, and 50,000 digits scored against ImageNet would be a number
    that means nothing. The refusal says so and names both fixes."""
    try:
        return resolve_checkpoint(args.ckpt, args.model or DEFAULT_MODEL, args.image_size or DEFAULT_IMAGE_SIZE)
    except CheckpointNotFoundError as exc:
        from dit_duca.embedded import DEFAULT_EMBEDDED_PATH
        raise CheckpointNotFoundError(f"{exc} sample_ddp.py does not fall back to the embedded digits DiT as "
                                      f"sample.py does (FID needs the model you evaluate); to sample the digits "
                                      f"model pass --ckpt {DEFAULT_EMBEDDED_PATH}") from None


def prepare(args: argparse.Namespace, device: torch.device):
    """Validate everything before any sampling: flags, output folder, checkpoint, run record, model, VAE.
    Nothing is written: the caller writes the run record once every rank has accepted the inputs."""
    validate_common(args)
    check_numbers([("--global-seed", args.global_seed, SEED),
                   ("--per-proc-batch-size", args.per_proc_batch_size, COUNT),
                   ("--num-fid-samples", args.num_fid_samples, COUNT)])
    resolve_dtype(args.dtype, device)                    # fp16 on CPU fails here, before any work
    cache_cfg, cache_desc = cache_config_from_args(args)
    check_output_dir(args.out if args.out else args.sample_dir, "--out" if args.out else "--sample-dir")
    ckpt_path = resolve_fid_checkpoint(args)
    choose_vae(args, ckpt_path, DEFAULT_VAE)             # --vae none for a model trained on pixels, as sample.py
    latent_geometry(args)
    if args.vae != "none":
        resolve_vae_folder(args.vae)                     # a bad --vae fails before the checkpoint is read
    ckpt = load_checkpoint(ckpt_path)
    apply_stored_architecture(args, ckpt.config, f"checkpoint {ckpt_path}")
    side, channels = latent_geometry(args)
    folder = Path(args.out) if args.out else default_folder(args, ckpt_path.stem, cache_tag(cache_cfg))
    flag = "--out" if args.out else "--sample-dir"
    check_output_dir(folder, flag)
    record = RunRecord(run_settings(args, ckpt_path, ckpt.config, cache_cfg),
                       info={"num_fid_samples": args.num_fid_samples, "cache_description": cache_desc,
                             "checkpoint_path": str(ckpt_path), "model": args.model})
    check_resume(folder, record, flag=flag, outputs=["*.png"])
    model = build_dit(args.model, input_size=side, num_classes=args.num_classes, in_channels=channels,
                      config=ckpt.config)
    load_into(model, ckpt, f"{args.model} at {args.image_size}px" if ckpt.config is None else "its stored config")
    vae = load_vae(args.vae, device)                     # a bad VAE fails before the folder is touched
    return model, vae, cache_cfg, cache_desc, folder, record


class Refusal(Exception):
    """A bad input found under torchrun, with the exact text to print (rank 0 prints it, once)."""


class HelpRequested(Exception):
    """``--help`` under torchrun, with the help text (rank 0 prints it, once)."""


def parse_args_quietly(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parse_args`` whose errors raise :class:`Refusal` (usage and error line) and whose ``--help`` raises
    :class:`HelpRequested`, instead of printing on every rank and exiting at once."""
    def error(message: str):
        raise Refusal(f"{parser.format_usage()}{parser.prog}: error: {message}\n")

    def print_help(file=None):
        raise HelpRequested(parser.format_help())
    parser.error = error
    parser.print_help = print_help
    return parser.parse_args(argv)


def first_refusal(refusal: str | None, world: int) -> str | None:
    """Every rank learns the first refusal of any rank (in rank order), so all of them stop together."""
    gathered: list[str | None] = [None] * world
    dist.all_gather_object(gathered, refusal)
    return next((r for r in gathered if r is not None), None)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 2 a bad input (one ``error:`` line, nothing sampled), 3 samples still missing.

    Under torchrun every rank checks the inputs before any sampling and the ranks agree (one collective):
    rank 0 alone prints the refusal, once, and only then do the ranks leave, each with 2. torchrun then
    prints its own failure summary (``ChildFailedError``, ``exitcode : 2``; a rank still exiting when the
    first has gone is stopped with SIGTERM) and exits with 1, as it does for any failed worker."""
    parser = build_parser()
    rank, world, device = init_distributed(pick_device("auto"))
    distributed = world > 1
    args, prepared, refusal = None, None, None
    try:
        args = parse_args_quietly(parser, argv) if distributed else parser.parse_args(argv)
        prepared = prepare(args, device)
    except UsageError as exc:
        refusal = f"error: {one_line(exc)}\n"
    except Refusal as exc:
        refusal = str(exc)
    except HelpRequested as exc:                         # every rank was given --help: no collective needed
        if rank == 0:
            sys.stdout.write(str(exc))
        dist.destroy_process_group()
        return 0
    if distributed:
        refusal = first_refusal(refusal, world)
    if refusal is not None:
        if rank == 0:
            sys.stderr.write(refusal)
            sys.stderr.flush()
        if distributed:
            dist.barrier()                               # the line is out before any rank exits (and is killed)
            dist.destroy_process_group()
        return EXIT_USAGE
    try:
        return run(args, prepared, rank, world, device)
    except UsageError as exc:                            # a batch turned NaN: that rank reports it
        return print_error(exc)


@torch.no_grad()          # sampling only; scoped so callers (and tests) keep their grad mode
def run(args: argparse.Namespace, prepared: tuple, rank: int, world: int, device: torch.device) -> int:
    distributed = world > 1
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    model, vae, cache_cfg, cache_desc, folder, record = prepared
    if rank == 0:
        write_record(folder, record)                     # every rank accepted the inputs
    if distributed:
        dist.barrier()                                   # rank 0 has created the folder and manifest
    model = model.to(device, resolve_dtype(args.dtype, device)).eval()
    model.configure_cache(cache_cfg)
    diffusion = create_diffusion(str(args.num_sampling_steps))
    using_cfg = args.cfg_scale > 1.0
    bs, total = args.per_proc_batch_size, args.num_fid_samples
    num_batches = math.ceil(total / bs)
    mine = [b for b in range(rank, num_batches, world) if missing_in_batch(folder, b, bs, total)]
    if rank == 0:
        done = total - sum(len(missing_in_batch(folder, b, bs, total)) for b in range(num_batches))
        print(f"{cache_desc}; {total} samples in {folder} ({done} already there), {world} process(es), "
              f"batch {bs}, {'DDIM' if args.ddim_sample else 'DDPM'}-{args.num_sampling_steps}, cfg {args.cfg_scale}")

    from tqdm.auto import tqdm
    bar = tqdm(total=len(mine), desc=f"rank {rank}", disable=rank != 0)
    for count, b in enumerate(mine):
        if args.stop_after_batches is not None and count >= args.stop_after_batches:
            break
        indices = list(range(b * bs, min((b + 1) * bs, total)))
        gens = [torch.Generator().manual_seed(sample_seed(args.global_seed, i)) for i in indices]
        y = torch.tensor([int(torch.randint(0, model.num_classes, (1,), generator=g)) for g in gens], device=device)
        z = torch.stack([torch.randn(model.in_channels, model.input_size, model.input_size, generator=g)
                         for g in gens]).to(device)
        if using_cfg:
            z = torch.cat([z, z], 0)
            y = torch.cat([y, torch.full_like(y, model.num_classes)], 0)
            fn, kwargs = model.forward_with_cfg, dict(y=y, cfg_scale=args.cfg_scale)
        else:
            fn, kwargs = model.forward, dict(y=y)
        watch = FiniteWatch(f"method {cache_cfg.method}, --cfg-scale {args.cfg_scale}, samples {indices[0]}.."
                            f"{indices[-1]}", args.num_sampling_steps)
        for step, out in enumerate(diffusion.sample_loop_progressive(
                fn, z.shape, noise=z, model_kwargs=kwargs, ddim=args.ddim_sample, clip_denoised=False,
                feature_cache=model.feature_cache, grid=model.grid_size, cfg_halves=using_cfg,
                step_noise=PerSampleNoise(gens, using_cfg))):
            latents = out["sample"]
            watch.observe(latents, step)
        watch.check()                                   # a NaN batch is reported, never written as black images
        if using_cfg:
            latents, _ = latents.chunk(2, dim=0)
        images = to_uint8_images(decode_latents(vae, latents)).numpy()
        for i, img in zip(indices, images, strict=True):
            path = png_path(folder, i)
            if not path.exists():
                save_png_atomic(img, path)
        bar.update(1)
    bar.close()

    if distributed:
        dist.barrier()
    code = 0
    if rank == 0:
        remaining = sum(len(missing_in_batch(folder, b, bs, total)) for b in range(num_batches))
        if remaining:
            print(f"{remaining} samples still missing in {folder}; rerun the same command to finish")
            code = 3
        elif not args.no_npz:
            out = write_npz(folder, total)
            print(f"wrote {out} ({total} x {args.image_size} x {args.image_size} x 3, uint8, key arr_0)")
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
