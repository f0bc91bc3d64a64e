"""Sample PixArt-alpha images with DuCa / ToCa / FORA caching (the reference ``scripts/inference.py`` flags).

    python scripts/inference.py --model_path PixArt-XL-2-256x256.pth --image_size 256 --bs 100 \
        --txt_file test.txt --fresh_threshold 3 --fresh_ratio 0.30 --cache_type attention \
        --force_fresh global --soft_fresh_weight 0.25 --ratio_scheduler ToCa
    python scripts/inference.py --flops-only --image_size 256 --preset pixart-duca-r25 --prompt "a cat"

Images go to ``--out/{index:06d}.png`` (index = line of the prompt file) with a copy of the prompts.
Noise: one generator seeded with --seed, drawn batch after batch on the sampling device, as upstream.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from pixart_duca import cli
from pixart_duca.pipeline import latent_shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except cli.UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    cli.check_sampling_args(args)
    cache = cli.cache_config_from_args(args)
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
    cli.write_prompts_copy(out, prompts)
    parts = cli.load_components(args, cache, device)

    generator = torch.Generator(device).manual_seed(args.seed)
    seconds, first = 0.0, None
    for start in tqdm(range(0, len(prompts), args.bs), desc="batches", unit="batch"):
        chunk = prompts[start:start + args.bs]
        noise = torch.randn(latent_shape(parts.model.config, len(chunk), *hw), generator=generator, device=device)
        result = cli.generate(parts, chunk, noise, args, hw)
        for i, image in enumerate(result.images):
            cli.save_image(image, out / cli.IMAGE_NAME.format(index=start + i))
        seconds += result.seconds
        if first is None:
            first = result
    print(f"{len(prompts)} images in {out} ({seconds:.1f} s in the sampling loops)")
    if args.report:
        report = cli.describe_run(args, cache, parts.model.config, hw)
        report.update(cli.flops_section(parts.model.config, cache, len(first.images), hw, first.text_lengths,
                                        args.steps))
        report.update(images=len(prompts), out=str(out), sampling_seconds=seconds,
                      trace_first_batch=first.trace.to_dict(), trace_table_first_batch=first.trace.table(),
                      cache_peak_bytes=parts.model.feature_cache.last_peak_bytes)
        cli.write_report(args.report, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
