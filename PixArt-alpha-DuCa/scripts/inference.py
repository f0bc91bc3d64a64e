r"""Sample PixArt-alpha images with DuCa / ToCa / FORA caching (the reference ``scripts/inference.py`` flags).

    python scripts/inference.py --model_path PixArt-XL-2-256x256.pth --image_size 256 --bs 100 \
        --txt_file test.txt --fresh_threshold 3 --fresh_ratio 0.30 --cache_type attention \
        --force_fresh global --soft_fresh_weight 0.25 --ratio_scheduler ToCa
    python scripts/inference.py --flops-only --image_size 256 --preset pixart-duca-r25 --prompt "a cat"

Images go to ``--out/{index:06d}.png`` (index = line of the prompt file) with a copy of the prompts and the
run record ``run.json`` (duca_common.run_record), written before the first image. A rerun with the same
settings finishes the folder (finished images are kept); one with other settings is refused naming them.
Noise: image i from its own generator seeded by (--seed, i) (duca_common.seeding), as inference_ddp.py, so
both scripts give the same images. (Upstream draws one generator batch after batch, so its image i
depends on --bs; ours does not.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

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


def run(args: argparse.Namespace) -> int:
    cli.check_sampling_args(args)
    cache = cli.cache_config_from_args(args)
    cli.check_outputs(args)
    prompts = cli.read_prompts(args)
    config = cli.model_config_for(args)
    hw = cli.image_hw(config, args)
    batch = min(args.bs, len(prompts))

    if args.flops_only:
        lengths, source = cli.text_lengths_for_flops(args, prompts[:batch])
        report = cli.describe_run(args, cache, config, hw)
        report.update(cli.flops_section(config, cache, batch, hw, lengths + lengths, args.steps))
        report["flops"]["text_lengths_from"] = source
        f = report["flops"]
        print(report["plan"])
        print(f"reference FLOPs per image: {f['reference_cached_per_image'] / 1e12:.3f} T cached vs "
              f"{f['reference_full_per_image'] / 1e12:.3f} T uncached ({f['reference_speedup']:.2f}x); measured "
              f"{f['measured_speedup']:.2f}x  [{source}]")
        cli.write_report(args.report, report)
        return 0

    if not args.model_path:
        raise cli.UsageError("--model_path is required to sample (only --flops-only runs without weights)")
    cli.resolve_t5_path(args.t5_path)
    cli.check_vae_path(args.vae_path)
    device = cli.pick_device(args.device)
    out = Path(args.out)
    record = cli.run_record(args, prompts, cache, config, hw, device)
    check_resume(out, record, flag="--out", outputs=[cli.IMAGE_GLOB])
    parts = cli.load_components(args, cache, device)
    write_record(out, record)                     # before the first image: the folder now belongs to this run
    cli.write_prompts_copy(out, prompts)

    batches = [list(range(s, min(s + args.bs, len(prompts)))) for s in range(0, len(prompts), args.bs)]
    todo = [b for b in batches if not all(cli.image_path(out, i).is_file() for i in b)]
    seconds, first = 0.0, None
    for indices in tqdm(todo, desc="batches", unit="batch"):
        noise = cli.image_noise(indices, args.seed, latent_shape(parts.model.config, len(indices), *hw), device)
        result = cli.generate(parts, [prompts[i] for i in indices], noise, args, hw)
        for i, image in zip(indices, result.images, strict=True):
            if not cli.image_path(out, i).is_file():        # a finished image is never rewritten
                cli.save_image(image, cli.image_path(out, i))
        seconds += result.seconds
        if first is None:
            first = result
    print(f"{len(prompts)} images in {out} ({len(batches) - len(todo)} of {len(batches)} batches were already there; "
          f"{seconds:.1f} s in the sampling loops)")
    if args.report:
        report = cli.describe_run(args, cache, parts.model.config, hw)
        report.update(cli.flops_section(parts.model.config, cache, min(args.bs, len(prompts)), hw,
                                        first.text_lengths if first else [cli.TEXT_TOKENS] * 2 * batch, args.steps))
        report.update(images=len(prompts), out=str(out), sampling_seconds=seconds,
                      cache_peak_bytes=parts.model.feature_cache.last_peak_bytes)
        if first is not None:
            report.update(trace_first_batch=first.trace.to_dict(), trace_table_first_batch=first.trace.table())
        cli.write_report(args.report, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
