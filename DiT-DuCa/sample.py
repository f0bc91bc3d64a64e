r"""Sample a few images from DiT with DuCa / ToCa / FORA / TaylorSeer (the DuCa reference ``sample.py``).

The reference's command works unchanged (it samples with DuCa, as the reference does)::

    python sample.py --image-size 256 --num-sampling-steps 50 --cache-type attention --fresh-threshold 3 \
        --fresh-ratio 0.05 --ratio-scheduler ToCa --force-fresh global --soft-fresh-weight 0.25 --ddim-sample

With no ``--ckpt`` and no official checkpoint on disk it samples the embedded digits DiT instead; the flags
that describe the official model (``--image-size 256`` above) are replaced by its stored geometry, with one
note on stderr (``options.use_embedded_model_if_no_checkpoint``).

Extras: ``--cache {none,fora,toca,duca,taylorseer}``, ``--preset NAME``, ``--class-labels 207,360``,
``--out PATH``, ``--save-latents PATH.pt``, ``--report PATH.json`` and ``--flops-only`` (no weights:
the whole run is traced on the meta device and its FLOPs counted). Noise is drawn as the reference does:
``torch.manual_seed(seed)`` then one ``randn`` of the latent batch.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import torch

from dit_duca.diffusion import create_diffusion
from dit_duca.loading import (
    build_dit,
    decode_latents,
    load_checkpoint,
    load_into,
    load_vae,
    resolve_checkpoint,
    resolve_vae_folder,
)
from dit_duca.models import IMAGENET_CLASSES
from dit_duca.options import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MODEL,
    add_cache_args,
    add_model_args,
    apply_stored_architecture,
    cache_config_from_args,
    choose_vae,
    fill_default_architecture,
    latent_geometry,
    use_embedded_model_if_no_checkpoint,
    validate_common,
)
from dit_duca.precision import DTYPE_CHOICES, DTYPE_HELP, dtype_name, resolve_dtype
from duca_common.cache import TransformerDims, full_run_flops, measured_flops, reference_flops
from duca_common.errors import NonFiniteError, UsageError, run_or_exit
from duca_common.outputs import check_output_file, image_suffixes
from duca_common.runtime import HelpFormatter, atomic_path, pick_device, write_json
from duca_common.validate import SEED, FiniteWatch, check_number

REFERENCE_CLASS_LABELS = [207, 360, 387, 974, 88, 979, 417, 279]   # upstream DiT sample.py's ImageNet labels
# argparse defaults of the DuCa reference sample.py (models.md A.5 defaults table; the VAE is upstream's)
DEFAULT_CFG_SCALE = 1.5
DEFAULT_STEPS = 250
DEFAULT_VAE = "mse"
GRID_COLUMNS = 4                 # images per row of the saved grid, as upstream sample.py's save_image(nrow=4)
TERA = 1e12                      # FLOPs -> TFLOPs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter)
    add_model_args(parser, cfg_scale=DEFAULT_CFG_SCALE, steps=DEFAULT_STEPS, vae=DEFAULT_VAE)
    add_cache_args(parser, cache_type="attention")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of torch's generator, set before the noise is drawn (as the reference)")
    parser.add_argument("--class-labels", type=str, default=None,
                        help="comma-separated labels; default: the reference's 207,360,387,974,88,979,417,279")
    parser.add_argument("--out", type=str, default="sample.png", help="image grid (PNG)")
    parser.add_argument("--save-latents", type=str, default=None,
                        help="save the final latents (before decoding) as .pt")
    parser.add_argument("--report", type=str, default=None, help="write a JSON report (FLOPs, latency, cache, trace)")
    parser.add_argument("--flops-only", action="store_true",
                        help="count the FLOPs of the whole run on the meta device (no weights, no images)")
    parser.add_argument("--device", type=str, default="auto", help="auto (cuda if available, else cpu), cpu, cuda:N")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto", help=DTYPE_HELP)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar over the sampling steps")
    return parser


def parse_labels(text: str | None, num_classes: int | None) -> list[int]:
    """The class labels; ``num_classes=None`` checks the syntax only (the model decides the range)."""
    if text is None:
        if num_classes is None:
            return list(REFERENCE_CLASS_LABELS)
        if num_classes == IMAGENET_CLASSES:
            return list(REFERENCE_CLASS_LABELS)
        return [i % num_classes for i in range(len(REFERENCE_CLASS_LABELS))]
    try:
        labels = [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise UsageError(f"--class-labels {text!r} must be comma-separated integers") from None
    if not labels:
        raise UsageError("--class-labels is empty; pass comma-separated class indices, e.g. 207,360")
    bad = [v for v in labels if v < 0 or (num_classes is not None and v >= num_classes)]
    if bad:
        raise UsageError(f"--class-labels {bad} outside 0..{(num_classes or 1) - 1}; "
                         f"the model has {num_classes} classes")
    return labels


def run_dims(model, batch: int) -> TransformerDims:
    grid = model.grid_size
    return TransformerDims(batch=batch, tokens=grid[0] * grid[1], hidden=model.hidden_size, heads=model.num_heads)


def sample_latents(model, diffusion, z: torch.Tensor, labels: list[int], cfg_scale: float, ddim: bool,
                   progress: bool = False, watch: FiniteWatch | None = None) -> torch.Tensor:
    """The reference loop: [z, z] with labels [y, null]; returns the cond half. ``watch`` sees every step."""
    n = z.shape[0]
    device = z.device
    y = torch.tensor(labels, device=device)
    y_null = torch.tensor([model.num_classes] * n, device=device)
    zz = torch.cat([z, z], 0)
    model_kwargs = dict(y=torch.cat([y, y_null], 0), cfg_scale=cfg_scale)
    samples = None
    for step, out in enumerate(diffusion.sample_loop_progressive(
            model.forward_with_cfg, zz.shape, noise=zz, model_kwargs=model_kwargs, ddim=ddim, clip_denoised=False,
            progress=progress, feature_cache=model.feature_cache, grid=model.grid_size, cfg_halves=True)):
        samples = out["sample"]
        if watch is not None:
            watch.observe(samples, step)
    return samples.chunk(2, dim=0)[0]


def count_flops(args: argparse.Namespace, cache_cfg, config: dict | None, n: int) -> dict:
    """Trace the whole run on the meta device: reference-formula and measured FLOPs (no weights)."""
    side, channels = latent_geometry(args)
    model = build_dit(args.model, input_size=side, num_classes=args.num_classes, in_channels=channels,
                      config=config, device="meta").eval()
    model.configure_cache(cache_cfg)
    diffusion = create_diffusion(str(args.num_sampling_steps))
    z = torch.empty(n, model.in_channels, model.input_size, model.input_size, device="meta")
    labels = [0] * n
    measured = measured_flops(lambda: sample_latents(model, diffusion, z, labels, args.cfg_scale, args.ddim_sample))
    trace = model.feature_cache.last_trace
    dims = run_dims(model, 2 * n)
    ref = reference_flops(trace, dims)
    full = full_run_flops(dims, model.depth, args.num_sampling_steps, model.feature_cache.layout.modules)
    return {"reference_flops": ref, "reference_flops_per_image": ref / n,
            "reference_tflops_per_image": ref / n / TERA,
            "uncached_reference_flops": full, "uncached_reference_tflops_per_image": full / n / TERA,
            "reference_speedup": full / ref if ref else float("inf"),
            "measured_flops": measured, "measured_flops_per_image": measured / n,
            "measured_tflops_per_image": measured / n / TERA,
            "measured_note": "torch FlopCounterMode over the whole sampling loop on the meta device "
                             "(all network evaluations incl. embedders and final layer; no VAE)",
            "trace": trace.table(), "trace_actions": trace.actions.tolist(),
            "trunk_reused": list(map(bool, trace.trunk_reused)), "step_labels": list(trace.step_labels)}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def check_outputs(args: argparse.Namespace) -> None:
    """Every output path can be written: checked before any model is built."""
    if args.out:
        check_output_file(args.out, "--out", suffixes=image_suffixes())
    if args.save_latents:
        check_output_file(args.save_latents, "--save-latents")
    if args.report:
        check_output_file(args.report, "--report", suffixes=(".json",))


def main(argv: list[str] | None = None) -> dict:
    """Run the CLI; a bad input prints one ``error:`` line and exits with status 2 before any work."""
    args = build_parser().parse_args(argv)
    return run_or_exit(lambda: run(args))


@torch.no_grad()          # sampling only; scoped so callers (and tests) keep their grad mode
def run(args: argparse.Namespace) -> dict:
    validate_common(args)
    check_number("--seed", args.seed, SEED)
    labels = parse_labels(args.class_labels, None)
    cache_cfg, cache_desc = cache_config_from_args(args)
    check_outputs(args)
    n = len(labels)

    if args.flops_only:
        choose_vae(args, None, DEFAULT_VAE)              # no weights are read: the flags decide
        fill_default_architecture(args)
        latent_geometry(args)
        report: dict = {"args": vars(args), "cache": cache_desc, "cache_config": asdict(cache_cfg), "num_images": n}
        flops = count_flops(args, cache_cfg, None, n)
        report.update(flops)
        print(f"[flops-only] {args.model} {args.image_size}px, {args.num_sampling_steps} steps, {cache_desc}")
        print(f"reference formula: {flops['reference_tflops_per_image']:.3f} TFLOPs per image "
              f"(uncached {flops['uncached_reference_tflops_per_image']:.3f}, "
              f"speed-up {flops['reference_speedup']:.2f}x)")
        print(f"measured (meta device): {flops['measured_tflops_per_image']:.3f} TFLOPs per image")
        print(flops["trace"])
        _write_report(args.report, report)
        return report

    device = pick_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True          # as the reference
    dtype = resolve_dtype(args.dtype, device)
    # Everything that can fail does so before sampling.
    use_embedded_model_if_no_checkpoint(args)          # no checkpoint at all: the embedded digits DiT
    ckpt_path = resolve_checkpoint(args.ckpt, args.model or DEFAULT_MODEL, args.image_size or DEFAULT_IMAGE_SIZE)
    choose_vae(args, ckpt_path, DEFAULT_VAE)           # --vae none for a model trained on pixels
    if args.vae != "none":
        resolve_vae_folder(args.vae)                   # a bad --vae fails before the checkpoint is read
    ckpt = load_checkpoint(ckpt_path)
    apply_stored_architecture(args, ckpt.config, f"checkpoint {ckpt_path}")
    side, channels = latent_geometry(args)
    model = build_dit(args.model, input_size=side, num_classes=args.num_classes, in_channels=channels,
                      config=ckpt.config)
    load_into(model, ckpt, f"{args.model} at {args.image_size}px" if ckpt.config is None else "its stored config")
    labels = parse_labels(args.class_labels, model.num_classes)
    n = len(labels)
    vae = load_vae(args.vae, device)
    report = {"args": vars(args), "cache": cache_desc, "cache_config": asdict(cache_cfg), "num_images": n}
    model = model.to(device, dtype).eval()
    model.configure_cache(cache_cfg)
    diffusion = create_diffusion(str(args.num_sampling_steps))

    torch.manual_seed(args.seed)
    z = torch.randn(n, model.in_channels, model.input_size, model.input_size, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    watch = FiniteWatch(f"method {cache_cfg.method}, --cfg-scale {args.cfg_scale}", args.num_sampling_steps)
    latents = sample_latents(model, diffusion, z, labels, args.cfg_scale, args.ddim_sample,
                             progress=not args.no_progress, watch=watch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    latency = time.perf_counter() - t0
    watch.check()

    trace = model.feature_cache.last_trace
    dims = run_dims(model, 2 * n)
    ref = reference_flops(trace, dims)
    full = full_run_flops(dims, model.depth, args.num_sampling_steps, model.feature_cache.layout.modules)
    print(f"{cache_desc}; sampling {latency:.2f} s; reference FLOPs {ref / n / TERA:.3f} TFLOPs per image "
          f"(speed-up {full / ref:.2f}x)")
    if args.test_flops:
        print(f"Total FLOPs (reference formula): {ref / TERA:.4f} TFLOPs for {n} images with CFG")

    images = decode_latents(vae, latents)
    if not torch.isfinite(images).all():
        raise NonFiniteError(f"the VAE decoded NaN/inf pixels from finite latents (method {cache_cfg.method}); "
                             f"nothing was written. Check the --vae weights")
    if args.save_latents:
        with atomic_path(Path(args.save_latents)) as tmp:
            torch.save(latents.cpu(), tmp)
    if args.out:
        from torchvision.utils import save_image
        grid_images = images if images.shape[1] in (1, 3) else images[:, :3]
        with atomic_path(Path(args.out)) as tmp:
            save_image(grid_images, tmp, nrow=GRID_COLUMNS, normalize=True, value_range=(-1, 1))
        print(f"saved {args.out}")

    report.update({"checkpoint": str(ckpt_path), "device": str(device), "dtype": dtype_name(dtype),
                   "latency_s": latency,
                   "reference_flops": ref, "reference_tflops_per_image": ref / n / TERA,
                   "uncached_reference_flops": full, "reference_speedup": full / ref if ref else float("inf"),
                   "cache_peak_bytes": model.feature_cache.last_peak_bytes,
                   "trace": trace.table(), "trace_actions": trace.actions.tolist(),
                   "trunk_reused": list(map(bool, trace.trunk_reused)), "step_labels": list(trace.step_labels)})
    if args.report:
        flops = count_flops(args, cache_cfg, ckpt.config, n)
        report["measured_flops"] = flops["measured_flops"]
        report["measured_tflops_per_image"] = flops["measured_tflops_per_image"]
        report["measured_note"] = flops["measured_note"] + "; replayed with the same configuration"
    _write_report(args.report, report)
    return report


def _write_report(path: str | None, report: dict) -> None:
    if not path:
        return
    write_json(path, _jsonable(report))
    print(f"report: {path}")


if __name__ == "__main__":
    main()
