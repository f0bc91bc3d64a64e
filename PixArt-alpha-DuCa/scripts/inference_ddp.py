r"""Data-parallel PixArt sampling over a prompt file (torchrun), e.g. the COCO-30k protocol.

    torchrun --nproc_per_node=6 scripts/inference_ddp.py --model_path PixArt-XL-2-256x256.pth --image_size 256 \
        --bs 100 --txt_file COCO_caption_prompts_30k.txt --fresh_threshold 3 --fresh_ratio 0.75 \
        --cache_type attention --force_fresh global --soft_fresh_weight 0.25 --ratio_scheduler ToCa

* Image ``--out/{index:06d}.png`` is prompt line ``index``; ``--out/prompts.txt`` is a copy of the list.
* Identical images for any number of processes: the prompts are cut into fixed global batches
  ``[b*bs, (b+1)*bs)`` (so each batch, and the cache's token selection inside it, is the same whoever runs
  it), rank r runs batches b = r, r + world, ...; the noise of image i is drawn from its own generator
  seeded by (``--seed``, i) (duca_common.seeding: no two seeds share an image's noise).
* ``--out/run.json`` records every setting that decides the images (checkpoint SHA-256, prompts hash,
  seed, steps, guidance, cache config, size, batch size, dtype) before the first image; a rerun into a
  folder recorded with other settings is refused naming them, so a COCO-30k folder never mixes runs.
* Writes are atomic (temp file then rename); a rerun skips batches whose images all exist.
* NCCL on GPU, gloo on CPU. Runs without torchrun as a single process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from duca_common import runtime
from duca_common.errors import print_error
from duca_common.run_record import check_resume, write_record
from duca_common.runtime import HelpFormatter
from pixart_duca import cli
from pixart_duca.pipeline import latent_shape


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    cli.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except cli.UsageError as err:
        return print_error(err)             # one line, exit status 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device_flag: str) -> tuple[int, int, torch.device]:
    return runtime.init_distributed(cli.pick_device(device_flag))


def run(args: argparse.Namespace) -> int:
    # Every check runs on every rank before anything heavy: all ranks fail alike, nothing is half written.
    cli.check_sampling_args(args)
    cache = cli.cache_config_from_args(args)
    if args.flops_only:
        raise cli.UsageError("--flops-only is a single-process option: use scripts/inference.py --flops-only")
    cli.check_outputs(args)
    prompts = cli.read_prompts(args)
    cli.check_vae_path(args.vae_path)
    if not args.model_path:
        raise cli.UsageError("--model_path is required")
    cli.resolve_t5_path(args.t5_path)
    config = cli.model_config_for(args)
    hw = cli.image_hw(config, args)
    out = Path(args.out)
    device = cli.pick_device(args.device)
    record = cli.run_record(args, prompts, cache, config, hw, device)
    check_resume(out, record, flag="--out", outputs=[cli.IMAGE_GLOB])
    rank, world, device = init_distributed(args.device)
    parts = cli.load_components(args, cache, device)
    if rank == 0:
        write_record(out, record)                 # before the first image: the folder now belongs to this run
        cli.write_prompts_copy(out, prompts)
    if world > 1:
        dist.barrier()

    batches = [list(range(s, min(s + args.bs, len(prompts)))) for s in range(0, len(prompts), args.bs)]
    mine = [b for k, b in enumerate(batches) if k % world == rank]
    todo = [b for b in mine if not all(cli.image_path(out, i).is_file() for i in b)]
    if rank == 0:
        print(f"{len(prompts)} prompts, {len(batches)} batches of {args.bs} over {world} process(es); "
              f"rank 0 has {len(todo)} of its {len(mine)} batches to do")
    seconds = 0.0
    for batch in tqdm(todo, desc=f"rank {rank}", unit="batch", disable=rank != 0):
        noise = cli.image_noise(batch, args.seed, latent_shape(parts.model.config, len(batch), *hw), device)
        result = cli.generate(parts, [prompts[i] for i in batch], noise, args, hw)
        for i, image in zip(batch, result.images, strict=True):
            if not cli.image_path(out, i).is_file():          # a finished image is never rewritten
                cli.save_image(image, cli.image_path(out, i))
        seconds += result.seconds
    if world > 1:
        dist.barrier()
    if rank == 0:
        missing = [i for i in range(len(prompts)) if not cli.image_path(out, i).is_file()]
        if missing:
            print(f"error: {len(missing)} images are missing (first index {missing[0]}); rerun to finish them",
                  file=sys.stderr)
            return 1
        print(f"all {len(prompts)} images are in {out}")
        if args.report:
            report = cli.describe_run(args, cache, config, hw)
            lengths, source = cli.text_lengths_for_flops(args, prompts[:args.bs])
            report.update(cli.flops_section(config, cache, len(lengths), hw, lengths + lengths, args.steps))
            report["flops"]["text_lengths_from"] = source
            report.update(images=len(prompts), world_size=world, out=str(out), rank0_sampling_seconds=seconds)
            cli.write_report(args.report, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
