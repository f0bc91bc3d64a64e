"""One GPU, at most 10 minutes: uncached vs FORA / ToCa / DuCa / TaylorSeer wall time and peak memory on the
paper's models, eager and compiled, each speed-up next to its FLOPs speed-up.

    python -m duca_scripts.gpu_bench --out results/gpu_bench          # on a GPU machine (bash scripts/gpu_check.sh)
    python -m duca_scripts.gpu_bench --tiny --device cpu --out /tmp/g # the same code path on tiny shapes (tests)

Workloads (random weights at the real shapes; a DiT checkpoint is used with ``--dit-ckpt``):

* ``dit256``: DiT-XL/2 at 256 px (32x32 latents, 256 tokens), DDIM-50, one image + its CFG twin;
* ``dit512``: DiT-XL/2 at 512 px (64x64 latents, 1024 tokens), DDIM-50;
* ``pixart1024``: PixArt-XL/2 1024-MS (128x128 latents, 4096 tokens), DPM-Solver++ 20 steps, a 20-token
  synthetic caption;
* ``opensora480p``: STDiT3-XL/2 at 480p (480x854), ``--opensora-frames`` frames (17 -> 5 latent frames),
  rectified flow 30 steps.

Every workload runs the uncached model and the methods of the paper's rows for that model (DiT: FORA N=3,
ToCa N=3 R=93%, DuCa N=3 R=95%, TaylorSeer N=3 O=3; PixArt: FORA N=3, ToCa R=70%, DuCa R=25%, TaylorSeer
N=3 O=3; OpenSora: DuCa's cycles, FORA N=3, TaylorSeer N=3 O=3 where the plan allows them), timed the
project's one way (``duca_common.measure``: warm-up round, then ``--repeats`` interleaved rounds; CUDA
events; the CUDA allocator's peak above the start of each run). Then the cached blocks are compiled
(``compile_blocks``: attention / MLP / cross-attention, ``dynamic=True``) and the same runs are repeated.
FLOPs come from ``torch.utils.flop_counter`` over the same sampling loop on the meta device (one counter
for all four models, whole network). Precision (``--dtype auto``): each model's reference precision (DiT
fp32 with TF32 matmuls, PixArt fp16, OpenSora bf16; CPU: fp32).

The workloads run in the order above, eager first, compiled after all eager runs; when ``--budget-s``
(default 540 s, for a 10-minute slot) would be exceeded the remaining parts are skipped and named in
the output. Writes ``<out>/gpu_bench.json``, ``<out>/gpu_bench.md`` and ``<out>/gpu_bench.png`` (per workload:
wall-clock against FLOPs speed-up of each method, eager and compiled, with y = x; peak memory below; no
PNG when every part was skipped).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from duca_common.cache import CacheConfig, measured_flops, speedup
from duca_common.cache.plan import build_plan
from duca_common.errors import UsageError, run_or_exit
from duca_common.measure import Case, Timed, compare, interleaved
from duca_common.runtime import HelpFormatter, pick_device

from .report import environment, markdown_table, pyplot, save_figure, sig, write_report

WORKLOADS = ("dit256", "dit512", "pixart1024", "opensora480p")
DEFAULT_BUDGET_S = 540          # 9 of the 10 minutes a GPU slot gives: model building and writing need the rest
DEFAULT_REPEATS = 2             # the fewest interleaved rounds that show a spread
OPENSORA_FRAMES = 17            # 5 latent frames: "few frames" of the 480p setting (the reference samples 51 / 102)
OPENSORA_480P = (480, 854)      # the 480p 9:16 size of OpenSora 1.2 (models.md C.10)
PIXART_TEXT_TOKENS = 20         # a short caption (duca_scripts.targets.PIXART_BENCH_TEXT_TOKENS)
# Reference precision per family on GPU (models.md A.1, B.1, C.9); CPU runs fp32.
GPU_DTYPES = {"dit": torch.float32, "pixart": torch.float16, "opensora": torch.bfloat16}


@dataclass
class Workload:
    name: str
    family: str
    steps: int
    methods: dict[str, CacheConfig]
    # (device, dtype) -> (model, run) where run(model) samples the fixed inputs once
    make: Callable[[torch.device, torch.dtype], tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]]
    note: str = ""


def _set_cache(model: torch.nn.Module, config: CacheConfig) -> None:
    from duca_common.cache import FeatureCache
    if hasattr(model, "configure_cache"):
        model.configure_cache(config)
    else:
        model.feature_cache = FeatureCache(config, model.feature_cache.layout)


def _record_cache_bytes(cache_bytes: dict[str, int], model: torch.nn.Module, label: str, timed: Timed,
                        timed_round: bool) -> None:
    """``Case.record``: the largest cache footprint the case ``label`` has reached, in ``cache_bytes``."""
    cache_bytes[label] = max(cache_bytes.get(label, 0), model.feature_cache.last_peak_bytes)


def _dit_methods() -> dict[str, CacheConfig]:
    from duca_common.cache import get_preset
    return {name: get_preset(name).config for name in
            ("dit-none", "dit-fora-n3", "dit-toca-n3-r93", "dit-duca-n3-r95", "dit-taylorseer-n3-o3")}


def _pixart_methods() -> dict[str, CacheConfig]:
    from duca_common.cache import get_preset
    out = {name: get_preset(name).config
           for name in ("pixart-none", "pixart-fora-n3", "pixart-toca-r70", "pixart-duca-r25")}
    out["pixart-taylorseer-n3-o3"] = CacheConfig(method="taylorseer", interval=3, taylor_order=3)
    return out


def _opensora_methods() -> dict[str, CacheConfig]:
    from duca_common.cache import get_preset
    return {"opensora-none": CacheConfig(method="none"), "opensora-duca": get_preset("opensora-duca").config,
            "opensora-fora-n3": CacheConfig(method="fora", interval=3),
            "opensora-taylorseer-n3-o3": CacheConfig(method="taylorseer", interval=3, taylor_order=3)}


def dit_workload(name: str, latent_side: int, steps: int, tiny: bool, ckpt: str | None) -> Workload:
    from dit_duca.models import DiT, DiT_models

    from .targets import DIT_BENCH_LABEL, DIT_CFG_SCALE, TINY_KWARGS, dit_loop, randomize_zero_init

    def make(device, dtype):
        with torch.device(device):
            if tiny:
                model = DiT(**TINY_KWARGS)
            else:
                model = DiT_models["DiT-XL/2"](input_size=latent_side, in_channels=4, num_classes=1000)
        if tiny and device.type != "meta":
            randomize_zero_init(model)
        if ckpt is not None and device.type != "meta":
            from .targets import _load_dit_ckpt
            _load_dit_ckpt(model, Path(ckpt))
        model = model.to(dtype).eval().requires_grad_(False)
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(1, model.in_channels, model.input_size, model.input_size, generator=g)
        noise = noise.to(device) if device.type != "meta" else torch.empty(noise.shape, device="meta")
        labels = torch.tensor([DIT_BENCH_LABEL % model.num_classes], device=device)
        loop = dit_loop(DIT_CFG_SCALE)
        return model, lambda m: loop(m, noise, labels, steps, False, False)

    return Workload(name, "dit", steps, _dit_methods(), make)


def pixart_workload(steps: int, tiny: bool) -> Workload:
    from duca_common.layers import Caption
    from pixart_duca.model import PixArt, PixArtConfig, pixart_xl_2
    from pixart_duca.pipeline import MicroConditions
    from pixart_duca.pipeline import sample as pixart_sample

    config = (PixArtConfig(input_size=8, hidden_size=144, depth=2, num_heads=2, caption_channels=16, multi_scale=True,
                           lewei_scale=2.0) if tiny else pixart_xl_2(1024))

    def make(device, dtype):
        with torch.device(device):
            model = PixArt(config)
        model = model.to(dtype).eval().requires_grad_(False)
        g = torch.Generator().manual_seed(0)
        shape = (1, config.in_channels, config.input_size, config.input_size)
        text = torch.randn(1, PIXART_TEXT_TOKENS, config.caption_channels, generator=g)
        noise = torch.randn(shape, generator=g)
        if device.type == "meta":
            noise, text = torch.empty(shape, device="meta"), torch.empty(text.shape, device="meta")
        else:
            noise, text = noise.to(device), text.to(device)
        caption = Caption(text.expand(2, -1, -1).to(dtype), torch.ones(2, PIXART_TEXT_TOKENS, device=device))
        side = config.input_size * 8
        micro = MicroConditions.for_size(1, side, side, device=device) if config.multi_scale else None
        return model, lambda m: pixart_sample(m, noise, caption, steps, micro=micro)

    return Workload("pixart1024", "pixart", steps, _pixart_methods(), make)


def opensora_workload(steps: int, frames: int, tiny: bool) -> Workload:
    from duca_common.layers import Caption
    from opensora_duca.pipeline import VideoSpec, denoise, latent_shape
    from opensora_duca.rflow import RFlowConfig
    from opensora_duca.stdit3 import STDiT3, STDiT3Config, stdit3_xl_2
    from opensora_duca.vae import VideoVAEConfig

    if tiny:
        config = STDiT3Config(hidden_size=64, depth=2, num_heads=2, caption_channels=16, model_max_length=12,
                              input_sq_size=64)
        spec = VideoSpec(height=32, width=48, num_frames=frames)
    else:
        config, spec = stdit3_xl_2(), VideoSpec(height=OPENSORA_480P[0], width=OPENSORA_480P[1], num_frames=frames)
    rflow = RFlowConfig(num_sampling_steps=steps)
    text_tokens = min(PIXART_TEXT_TOKENS, config.model_max_length)

    def make(device, dtype):
        with torch.device(device):
            model = STDiT3(config)
        model = model.to(dtype).eval().requires_grad_(False)
        shape = (1, *latent_shape(VideoVAEConfig(), spec))
        g = torch.Generator().manual_seed(0)
        z = torch.randn(shape, generator=g)
        text = torch.randn(2, text_tokens, config.caption_channels, generator=g)
        if device.type == "meta":
            z, text = torch.empty(shape, device="meta"), torch.empty(text.shape, device="meta")
        else:
            z, text = z.to(device), text.to(device)
        caption = Caption(text.to(dtype), torch.ones(2, text_tokens, device=device))
        return model, lambda m: denoise(m, z, caption, spec, rflow)

    return Workload("opensora480p", "opensora", steps, _opensora_methods(), make,
                    note=f"{frames} frames at {spec.height}x{spec.width}")


def build_workloads(opts: argparse.Namespace) -> list[Workload]:
    tiny = opts.tiny
    out = []
    for name in opts.workloads:
        if name == "dit256":
            out.append(dit_workload(name, 32, 6 if tiny else 50, tiny, opts.dit_ckpt))
        elif name == "dit512":
            out.append(dit_workload(name, 64, 6 if tiny else 50, tiny, opts.dit_ckpt if opts.dit_ckpt_512 else None))
        elif name == "pixart1024":
            out.append(pixart_workload(4 if tiny else 20, tiny))
        elif name == "opensora480p":
            out.append(opensora_workload(4 if tiny else 30, opts.opensora_frames, tiny))
    return out


def compile_model(model: torch.nn.Module, backend: str) -> None:
    """``compile_blocks`` on every block list of the model (DiT / PixArt ``blocks``; STDiT3 spatial and
    temporal blocks)."""
    from .benchmark_speed import compile_blocks

    for attr in ("blocks", "spatial_blocks", "temporal_blocks"):
        if hasattr(model, attr):
            holder = type("Blocks", (), {})()
            holder.blocks = getattr(model, attr)
            compile_blocks(holder, backend=backend)


def usable_methods(work: Workload, model: torch.nn.Module) -> tuple[dict[str, CacheConfig], list[str]]:
    """The methods whose plan builds for this model's layout (others are named, not run)."""
    ok, skipped = {}, []
    for label, cfg in work.methods.items():
        try:
            build_plan(cfg, model.feature_cache.layout, work.steps)
            ok[label] = cfg
        except ValueError as exc:
            skipped.append(f"{label}: {str(exc).splitlines()[0]}")
    return ok, skipped


def run(opts: argparse.Namespace) -> dict:
    device = torch.device(opts.device)
    torch.backends.cuda.matmul.allow_tf32 = True          # as the DiT reference
    started = time.perf_counter()
    rows, skipped, notes = [], [], []
    built: dict[str, tuple] = {}
    works = build_workloads(opts)
    for mode in ("eager", "compiled") if opts.compile else ("eager",):
        for work in works:
            elapsed = time.perf_counter() - started
            if elapsed > opts.budget_s:
                skipped.append(f"{work.name} {mode}: time budget ({opts.budget_s:.0f} s) used up after {elapsed:.0f} s")
                continue
            dtype = torch.float32 if device.type != "cuda" or opts.dtype == "fp32" else (
                GPU_DTYPES[work.family] if opts.dtype == "auto" else getattr(torch, opts.dtype))
            if work.name not in built:
                model, sample = work.make(device, dtype)
                methods, not_run = usable_methods(work, model)
                notes += [f"{work.name}: not run, {s}" for s in not_run]
                flops = count_flops(work, methods, dtype)
                built[work.name] = (model, sample, methods, flops)
            model, sample, methods, flops = built[work.name]
            if mode == "compiled":
                compile_model(model, opts.compile_backend)
            cases = [Case(label, fn=partial(sample, model), setup=partial(_set_cache, model, cfg))
                     for label, cfg in methods.items()]
            cache_bytes: dict[str, int] = {}
            for case in cases:
                case.record = partial(_record_cache_bytes, cache_bytes, model, case.label)
            with torch.inference_mode():
                series = interleaved(cases, repeats=opts.repeats, warmup=1, device=device, track_memory=True,
                                     keep_results=False)
            base_label = next(iter(methods))
            for label in methods:
                s, sp = series[label], compare(series[base_label], series[label])
                f_su = speedup(flops[base_label], flops[label])
                rows.append({"workload": work.name, "note": work.note, "mode": mode, "dtype": str(dtype).split(".")[-1],
                             "method": label, "cache_method": methods[label].method, "steps": work.steps,
                             "tflops": flops[label] / 1e12, "flops_speedup": f_su,
                             "wall_seconds": s.walls, "wall_median": s.wall.median, "wall_min": s.wall.min,
                             "wall_max": s.wall.max, "wall_speedup": sp.wall,
                             "wall_speedup_rounds_min": sp.wall_rounds.min,
                             "wall_speedup_rounds_max": sp.wall_rounds.max,
                             "wall_over_flops": sp.wall / f_su if f_su else None, "cpu_speedup": sp.cpu,
                             "peak_mib": None if s.peak_bytes is None else s.peak_bytes / 2 ** 20,
                             "cache_mib": cache_bytes.get(label, 0) / 2 ** 20})
            if opts.progress:
                print(f"{work.name} {mode}: done at {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return {"environment": environment(device), "options": {k: str(v) if isinstance(v, Path) else v
                                                            for k, v in vars(opts).items()},
            "measurement": ("duca_common.measure: 1 warm-up round, then interleaved timed rounds; CUDA events on "
                            "GPU; speed-up = ratio of median wall times, range = per-round ratios; peak = CUDA "
                            "allocator peak above the start of the run (CPU: sampled RSS growth)"),
            "flops": "torch FlopCounterMode over the whole sampling loop on the meta device",
            "rows": rows, "skipped": skipped, "notes": notes, "total_seconds": time.perf_counter() - started}


def count_flops(work: Workload, methods: dict[str, CacheConfig], dtype: torch.dtype) -> dict[str, int]:
    meta, sample = work.make(torch.device("meta"), dtype)
    out = {}
    for label, cfg in methods.items():
        _set_cache(meta, cfg)
        out[label] = measured_flops(lambda: sample(meta))
    return out


def render(data: dict) -> str:
    env = data["environment"]
    head = (f"GPU benchmark on {env.get('gpu', env['device'])}, torch {env['torch']}; {data['measurement']}; "
            f"FLOPs: {data['flops']}.\n\n")
    cells = [[r["workload"], r["mode"], r["dtype"], r["method"], sig(r["tflops"]), f"{r['flops_speedup']:.2f}x",
              f"{r['wall_median'] * 1000:.1f} ({r['wall_min'] * 1000:.1f}-{r['wall_max'] * 1000:.1f})",
              f"{r['wall_speedup']:.2f}x ({r['wall_speedup_rounds_min']:.2f}-{r['wall_speedup_rounds_max']:.2f})",
              "-" if r["wall_over_flops"] is None else f"{r['wall_over_flops']:.2f}",
              "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}", sig(r["cache_mib"], 3)]
             for r in data["rows"]]
    table = markdown_table(["workload", "mode", "dtype", "method", "TFLOPs", "FLOPs speed-up", "wall ms (min-max)",
                            "wall speed-up (rounds)", "wall / FLOPs speed-up", "peak MiB", "cache MiB"], cells)
    tail = "".join(f"\n- skipped: {s}" for s in data["skipped"]) + "".join(f"\n- {n}" for n in data["notes"])
    return head + table + ("\n" + tail if tail else "") + "\n"


MODE_MARKERS = {"eager": "o", "compiled": "^"}
# Lower end of the speed-up axis: just below the uncached 1.0, so the y = x line starts inside the panel
SPEEDUP_AXIS_MIN = 0.8


def gpu_bench_plot(data: dict, path: Path) -> Path | None:
    """One column per workload that has rows: wall-clock speed-up (with the per-round range) against the
    FLOPs speed-up, eager and compiled as two markers, with y = x (speed-up equal to the FLOPs model) on top;
    peak memory per method, eager and compiled as paired bars, below. Workloads or modes skipped for the
    budget are named in the titles. No rows: no plot (None), and an old ``path`` is removed."""
    rows = data["rows"]
    if not rows:
        path.unlink(missing_ok=True)
        return None
    import math

    plt = pyplot()
    from matplotlib.lines import Line2D

    works = list(dict.fromkeys(r["workload"] for r in rows))
    kinds = list(dict.fromkeys(r["cache_method"] for r in rows))          # one colour per engine method
    colours = dict(zip(kinds, plt.get_cmap("tab10").colors, strict=False))   # the 10 colours cut to the methods
    modes = [m for m in MODE_MARKERS if any(r["mode"] == m for r in rows)]
    skipped = [s.split(":")[0] for s in data["skipped"]]          # "<workload> <mode>"
    fig, axes = plt.subplots(2, len(works), figsize=(max(4.6 * len(works) + 0.6, 6.8), 7.8), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})

    def finite(v) -> bool:
        return isinstance(v, (int, float)) and math.isfinite(v)

    for col, work in enumerate(works):
        ax, mem = axes[0, col], axes[1, col]
        wrows = [r for r in rows if r["workload"] == work]
        timed = [r for r in wrows if finite(r["flops_speedup"]) and finite(r["wall_speedup"])
                 and r["flops_speedup"] != 1.0]
        top = max([1.0] + [max(r["flops_speedup"], r["wall_speedup"], r["wall_speedup_rounds_max"]
                                if finite(r["wall_speedup_rounds_max"]) else 0.0) for r in timed])
        lim = top * 1.12
        span = lim - SPEEDUP_AXIS_MIN
        # methods at the same FLOPs speed-up (FORA and TaylorSeer share a schedule) are spread sideways by a
        # fraction of the axis so that neither hides the other; a method's compiled marker sits just right of
        # its eager one (same reason: overlapping round ranges)
        mode_shift = {"eager": -0.006 * span, "compiled": 0.006 * span}
        shift = {}
        for r in timed:
            if r["method"] not in shift:
                twins = list(dict.fromkeys(q["method"] for q in timed
                                           if abs(q["flops_speedup"] - r["flops_speedup"]) < 0.01 * span))
                for k, m in enumerate(twins):
                    shift[m] = (k - (len(twins) - 1) / 2) * 0.025 * span
        for r in timed:
            lo, hi = r["wall_speedup_rounds_min"], r["wall_speedup_rounds_max"]
            yerr = [[max(r["wall_speedup"] - lo, 0.0)], [max(hi - r["wall_speedup"], 0.0)]] if finite(lo) and \
                finite(hi) else None
            ax.errorbar(r["flops_speedup"] + shift[r["method"]] + mode_shift[r["mode"]], r["wall_speedup"], yerr=yerr,
                        fmt=MODE_MARKERS[r["mode"]], markersize=7, color=colours[r["cache_method"]],
                        capsize=3, alpha=0.9, markerfacecolor="none" if r["mode"] == "compiled" else None)
        ax.plot([0, lim], [0, lim], "--", color="grey", alpha=0.6)
        ax.axhline(1.0, color="grey", alpha=0.25, linewidth=0.8)
        ax.set_xlim(SPEEDUP_AXIS_MIN, lim)
        ax.set_ylim(0, lim)
        ax.grid(alpha=0.3)
        ax.set_xlabel("FLOPs speed-up")
        if col == 0:
            ax.set_ylabel("wall-clock speed-up (round range)")
        missing = [m for m in MODE_MARKERS if f"{work} {m}" in skipped]
        title = work + (f" ({wrows[0]['dtype']})" if wrows else "")
        if missing:
            title += f"\n{', '.join(missing)}: skipped"
        ax.set_title(title, fontsize=10)
        if not timed:
            ax.text(0.5, 0.5, "no cached method timed", ha="center", va="center", transform=ax.transAxes,
                    fontsize=9, color="grey")

        methods = list(dict.fromkeys(r["method"] for r in wrows))
        width = 0.8 / max(len(modes), 1)
        peaks = False
        for j, mode in enumerate(modes):
            for i, method in enumerate(methods):
                r = next((r for r in wrows if r["method"] == method and r["mode"] == mode), None)
                if r is None or not finite(r["peak_mib"]):
                    continue
                peaks = True
                mem.bar(i + (j - (len(modes) - 1) / 2) * width, r["peak_mib"], width,
                        color=colours[r["cache_method"]], alpha=0.9 if mode == "eager" else 0.45,
                        hatch=None if mode == "eager" else "//", edgecolor="black", linewidth=0.4)
        mem.set_xticks(range(len(methods)))
        mem.set_xticklabels([m.split("-", 1)[1] if "-" in m else m for m in methods], rotation=30, ha="right",
                            fontsize=8)
        mem.grid(axis="y", alpha=0.3)
        if col == 0:
            mem.set_ylabel("peak memory (MiB)")
        if not peaks:
            mem.text(0.5, 0.5, "no peak memory measured", ha="center", va="center", transform=mem.transAxes,
                     fontsize=9, color="grey")

    handles = [Line2D([], [], color=colours[k], marker="s", linestyle="", label=k) for k in kinds if k != "none"]
    handles += [Line2D([], [], color="black", marker=MODE_MARKERS[m], linestyle="", label=m,
                       markerfacecolor="none" if m == "compiled" else None) for m in modes]
    handles.append(Line2D([], [], color="grey", linestyle="--", label="y = x (FLOPs model)"))
    legend_rows = 1 if len(works) > 1 else 2                     # one panel is too narrow for one row
    fig.legend(handles=handles, loc="lower center", ncol=math.ceil(len(handles) / legend_rows), fontsize=8,
               frameon=False)
    env = data["environment"]
    fig.suptitle(f"{env.get('gpu', env['device'])}: wall-clock against FLOPs speed-up per method\n(bottom: peak "
                 f"memory, hatched: compiled)" + (f"\nskipped for the budget: {', '.join(skipped)}"
                                                  if skipped else ""), fontsize=10)
    return save_figure(fig, path, layout_rect=(0, 0.03 + 0.025 * legend_rows, 1, 1))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, auto, or cpu for the --tiny smoke run")
    p.add_argument("--tiny", action="store_true", help="tiny shapes of the four models (CPU tests)")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS,
                   help="dit256 / dit512: DiT-XL/2 at 256 / 512 px; pixart1024: PixArt-XL/2 1024-MS; "
                        "opensora480p: STDiT3-XL/2 at 480p; run in the order given")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                   help="interleaved timed rounds per workload and mode, after one warm-up round")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                   help="skip the remaining parts once this many seconds have passed")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager runs only")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (tests use 'eager')")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bfloat16", "float16"),
                   help="auto: each model's reference precision on GPU, fp32 on CPU")
    p.add_argument("--opensora-frames", type=int, default=OPENSORA_FRAMES,
                   help="video frames of opensora480p (17: 5 latent frames)")
    p.add_argument("--dit-ckpt", default=None, help="DiT-XL-2-256x256.pt for dit256 (default: random weights)")
    p.add_argument("--dit-ckpt-512", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--progress", action="store_true",
                   help="a line on stderr as each workload's eager or compiled part ends")
    p.add_argument("--out", type=Path, default=Path("results/gpu_bench"),
                   help="output folder for gpu_bench.json, gpu_bench.md and gpu_bench.png")
    return p


def _check(opts: argparse.Namespace) -> None:
    from duca_common.outputs import check_output_dir

    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {opts.device}: no CUDA device is visible; run it on a GPU machine, or pass "
                         f"--tiny --device cpu for the CPU smoke run")
    opts.device = str(pick_device(opts.device))         # the project's one device check: auto, cpu, cuda[:N]
    if opts.device == "cpu" and not opts.tiny:
        raise UsageError("--device resolved to cpu: the real shapes would take hours there (the time budget is "
                         "checked between parts); run it on a GPU machine, or pass --tiny for the CPU smoke run")
    if opts.repeats < 1 or opts.budget_s <= 0 or opts.opensora_frames < 1:
        raise UsageError("--repeats, --budget-s and --opensora-frames must be positive")
    if opts.dit_ckpt is not None and not Path(opts.dit_ckpt).is_file():
        raise UsageError(f"--dit-ckpt {opts.dit_ckpt}: no such file")
    check_output_dir(opts.out, "--out")


def main(argv: list[str] | None = None) -> dict:
    opts = build_parser().parse_args(argv)
    run_or_exit(lambda: _check(opts))
    data = run(opts)
    md = render(data)
    png = gpu_bench_plot(data, opts.out / "gpu_bench.png")
    plotted = ", gpu_bench.png" if png else " (no rows: no gpu_bench.png)"
    write_report(opts.out, "gpu_bench", data, md, note=f"{plotted} ({data['total_seconds']:.0f} s)")
    return data


if __name__ == "__main__":
    main()
