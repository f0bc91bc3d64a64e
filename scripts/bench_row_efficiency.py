"""Time per FLOP of a DiT block's products against the number of rows they run on (issue 14.3).

    python -m duca_scripts.bench_row_efficiency --model DiT-XL/2 --threads 1 --out docs/results/dit_xl2_row_efficiency

A conservative step of a token-wise method runs each block's MLP on the k recomputed tokens of every
image only, and a full step runs it on every token (512 rows for one image with its CFG twin). DuCa R=95%
at DiT-XL/2, 20 steps, with the reference's ratio schedule (models.md A.7: the share grows with depth and
falls with the step) recomputes 10-107 of 256 tokens per image in a block: 20-214 rows for one image with
its CFG twin, and none in its last three conservative steps. The FLOPs model charges both at the same
rate; on a CPU the product with few rows goes through the same weights for far fewer FLOPs. This benchmark
measures that rate directly,
on ``depth`` distinct weight sets (one per block, as in the model, so the weights come from memory and not
from the cache), for:

* ``mlp``: ``fc2(gelu(fc1(x)))`` at each of ``--rows`` and at the full-step row count;
* ``adaLN``: the modulation product ``linear(silu(c))`` on the rows of one step (the batch) and on the rows
  of every step at once (``--steps`` x batch): what computing every step's modulation before sampling
  would cost, against ``--steps`` separate products;
* ``read``: every block's MLP weights read once (a ``sum`` of each weight, a pure stream): the memory
  bandwidth of the products' weights; ``copy``: the same weights copied once into a buffer, what packing
  every weight for every call would cost;
* with ``--column-major``, ``mlp column-major``: the MLP at each row count with the same weights stored
  column-major (``W.t().contiguous().t()``, the same ``[out, in]`` tensor to ``F.linear``), which makes MKL
  take another path, and whether its outputs equal the row-major product's bit for bit (first block);
* with ``--prepacked``, the MLP on weights packed once before timing, what removing the per-call packing
  would give: ``mlp mkl-packed`` (``torch.ops.mkl._mkl_linear``, packed for each row count: MKL's packed
  GEMM only serves the row count it was packed for) and ``mlp onednn-prepacked``
  (``torch.ops.mkldnn._linear_pointwise`` on ``_reorder_linear_weight``), each with its largest difference
  from the row-major product (first block).

Timed the project's one way (``duca_common.measure``: interleaved rounds, CPU time beside wall, the
spread). Efficiency = GFLOP/s of the row count / GFLOP/s of the full-step row count; "s beyond the FLOPs
share" = the product's time minus the time it would take at the full-step rate. The roofline of a product
is the larger of its FLOPs at the full-step rate and its weights' bytes at the measured read bandwidth:
what a kernel that reads each weight once while computing at the full-step rate would take. "s beyond the
roofline" is what the CPU BLAS spends on top of that (at few rows largely the per-call packing of the
weights: MKL's prepacked product is 23% faster at 24 rows, docs/benchmarks.md).
Writes ``<out>/row_efficiency.json``, ``.md`` and ``.png`` (GFLOP/s and efficiency against rows) and prints
the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dit_duca.models import DiT_models
from duca_common.errors import UsageError, run_or_exit
from duca_common.measure import Case, interleaved
from duca_common.runtime import HelpFormatter

from .report import environment, markdown_table, pyplot, save_figure, write_report

# One image with its CFG twin (the benchmarks' setting, docs/benchmarks.md), 32x32 latents with patch 2
# (256 px): 256 tokens per image.
DEFAULT_IMAGES = 1
LATENT_SIZE_256PX = 32
# A sweep over the 20-214 rows per block of DuCa N=3 R=95%'s conservative steps at one image + CFG twin
# (the plan of preset dit-duca-n3-r95 at DiT-XL/2, 20 steps; see the module text)
DEFAULT_ROWS = (24, 48, 72, 96, 144, 192)
DEFAULT_STEPS = 20                    # the DiT-XL/2 CPU benchmark's DDIM steps (docs/benchmarks.md)
FLOAT32_BYTES = 4
READ_LABEL = "read:mlp weights"
COPY_LABEL = "copy:mlp weights"
COLUMN_MAJOR = "mlp column-major"
MKL_PACKED = "mlp mkl-packed"
ONEDNN_PREPACKED = "mlp onednn-prepacked"
MLP_VARIANTS = ("mlp", COLUMN_MAJOR, MKL_PACKED, ONEDNN_PREPACKED)


def dims_of(model: str) -> tuple[int, int, int, int]:
    """(depth, hidden, mlp hidden, tokens per image) of a DiT config, from its constructor on the meta device."""
    if model not in DiT_models:
        raise UsageError(f"--model {model!r}: choose a DiT config ({', '.join(DiT_models)})")
    with torch.device("meta"):
        m = DiT_models[model](input_size=LATENT_SIZE_256PX)
    block = m.blocks[0]
    return len(m.blocks), block.mlp.fc1.in_features, block.mlp.fc1.out_features, m.x_embedder.num_patches


def mlp_flops(rows: int, hidden: int, mlp_hidden: int, depth: int) -> int:
    return 2 * 2 * rows * hidden * mlp_hidden * depth            # fc1 and fc2, multiply-add = 2 FLOPs


def adaln_flops(rows: int, hidden: int, depth: int) -> int:
    return 2 * rows * hidden * 6 * hidden * depth


def mlp_weight_bytes(hidden: int, mlp_hidden: int, depth: int) -> int:
    return 2 * hidden * mlp_hidden * depth * FLOAT32_BYTES                # fc1 and fc2 weights


def adaln_weight_bytes(hidden: int, depth: int) -> int:
    return hidden * 6 * hidden * depth * FLOAT32_BYTES


def run(model: str, images: int, rows: list[int], steps: int, repeats: int, warmup: int,
        threads: int | None, column_major: bool = False, prepacked: bool = False) -> dict:
    if threads:
        torch.set_num_threads(threads)
    depth, hidden, mlp_hidden, tokens = dims_of(model)
    batch = 2 * images                                            # CFG twin
    full_rows = batch * tokens
    g = torch.Generator().manual_seed(0)

    def weights(n_out: int, n_in: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.randn(n_out, n_in, generator=g) * n_in ** -0.5, torch.zeros(n_out)) for _ in range(depth)]

    fc1, fc2, ada = weights(mlp_hidden, hidden), weights(hidden, mlp_hidden), weights(6 * hidden, hidden)

    fc1_col = [(w.t().contiguous().t(), b) for w, b in fc1] if column_major else []
    fc2_col = [(w.t().contiguous().t(), b) for w, b in fc2] if column_major else []

    def mlp(x: torch.Tensor, first: list, second: list, linear=F.linear) -> torch.Tensor:
        for (w1, b1), (w2, b2) in zip(first, second, strict=True):
            y = linear(F.gelu(linear(x, w1, b1), approximate="tanh"), w2, b2)
        return y

    def onednn_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")

    fc1_onednn = [(torch.ops.mkldnn._reorder_linear_weight(w), b) for w, b in fc1] if prepacked else []
    fc2_onednn = [(torch.ops.mkldnn._reorder_linear_weight(w), b) for w, b in fc2] if prepacked else []

    def mkl_packed_mlp(rows: int):
        """The MLP on weights MKL packed for ``rows`` rows (a packed copy of every weight, kept while timing)."""
        packed = [[(torch.ops.mkl._mkl_reorder_linear_weight(w, rows), w, b) for w, b in fc] for fc in (fc1, fc2)]

        def run(x: torch.Tensor, n: int = depth) -> torch.Tensor:
            for (p1, w1, b1), (p2, w2, b2) in zip(packed[0][:n], packed[1][:n], strict=True):
                h = torch.ops.mkl._mkl_linear(x, p1, w1, b1, rows)
                y = torch.ops.mkl._mkl_linear(F.gelu(h, approximate="tanh"), p2, w2, b2, rows)
            return y

        return run

    def adaln(c: torch.Tensor) -> None:
        for w, b in ada:
            F.linear(F.silu(c), w, b)

    def read_mlp_weights() -> None:
        for (w1, _), (w2, _) in zip(fc1, fc2, strict=True):
            w1.sum()
            w2.sum()

    buffers = (torch.empty_like(fc1[0][0]), torch.empty_like(fc2[0][0]))

    def copy_mlp_weights() -> None:
        for (w1, _), (w2, _) in zip(fc1, fc2, strict=True):
            buffers[0].copy_(w1)
            buffers[1].copy_(w2)

    mlp_rows = sorted(set(rows) | {full_rows})
    cases, flops, differences = [], {}, {}
    for r in mlp_rows:
        x = torch.randn(r, hidden, generator=g)
        variants = {"mlp": lambda x, n=depth: mlp(x, fc1[:n], fc2[:n])}
        if column_major:
            variants[COLUMN_MAJOR] = lambda x, n=depth: mlp(x, fc1_col[:n], fc2_col[:n])
        if prepacked:
            variants[MKL_PACKED] = mkl_packed_mlp(r)
            variants[ONEDNN_PREPACKED] = lambda x, n=depth: mlp(x, fc1_onednn[:n], fc2_onednn[:n], onednn_linear)
        with torch.inference_mode():
            first_block = variants["mlp"](x, 1)
            for name, fn in list(variants.items())[1:]:          # every variant against the row-major "mlp"
                differences[f"{name}:{r}"] = float((fn(x, 1) - first_block).abs().max())
        for name, fn in variants.items():
            cases.append(Case(f"{name}:{r}", fn=lambda x=x, fn=fn: fn(x)))
            flops[f"{name}:{r}"] = mlp_flops(r, hidden, mlp_hidden, depth)
    for r in (batch, steps * batch):
        c = torch.randn(r, hidden, generator=g)
        cases.append(Case(f"adaLN:{r}", fn=lambda c=c: adaln(c)))
        flops[f"adaLN:{r}"] = adaln_flops(r, hidden, depth)
    cases.append(Case(READ_LABEL, fn=read_mlp_weights))
    cases.append(Case(COPY_LABEL, fn=copy_mlp_weights))
    with torch.inference_mode(), tqdm(total=len(cases) * (warmup + repeats), desc=f"{model} products") as bar:
        series = interleaved(cases, repeats=repeats, warmup=warmup, keep_results=False, progress=bar.update)

    def seconds(label: str) -> float:
        s = series[label]
        return s.cpu.median if s.cpus else s.wall.median

    full_rate = flops[f"mlp:{full_rows}"] / seconds(f"mlp:{full_rows}")
    mlp_bytes = mlp_weight_bytes(hidden, mlp_hidden, depth)
    weight_bytes = {**dict.fromkeys(MLP_VARIANTS, mlp_bytes), "adaLN": adaln_weight_bytes(hidden, depth)}
    read_rate = mlp_bytes / seconds(READ_LABEL)                               # bytes per second
    out_rows = []
    for label, s in series.items():
        if label in (READ_LABEL, COPY_LABEL):
            continue
        product, r = label.split(":")
        t = seconds(label)
        rate = flops[label] / t
        roofline = max(flops[label] / full_rate, weight_bytes[product] / read_rate)
        out_rows.append({"product": product, "rows": int(r), "cpu_seconds": s.cpus, "wall_seconds": s.walls,
                         "seconds": t, "gflops": flops[label] / 1e9, "gflop_per_s": rate / 1e9,
                         "efficiency_vs_full_step": rate / full_rate,
                         "seconds_beyond_flops_share": t - flops[label] / full_rate,
                         "roofline_seconds": roofline, "seconds_beyond_roofline": t - roofline})
        if product in MLP_VARIANTS[1:]:
            out_rows[-1]["max_abs_diff_to_row_major"] = differences[label]
            out_rows[-1]["bit_identical_to_row_major"] = differences[label] == 0.0
    per_step, all_steps = seconds(f"adaLN:{batch}"), seconds(f"adaLN:{steps * batch}")
    return {"environment": environment(torch.device("cpu")), "model": model, "depth": depth, "hidden": hidden,
            "mlp_hidden": mlp_hidden, "tokens_per_image": tokens, "images": images, "full_step_rows": full_rows,
            "steps": steps, "repeats": repeats, "warmup": warmup, "rows": out_rows,
            "mlp_weight_read": {"seconds": seconds(READ_LABEL), "bytes": mlp_bytes, "gb_per_s": read_rate / 1e9},
            "mlp_weight_copy": {"seconds": seconds(COPY_LABEL), "bytes": mlp_bytes,
                                "gb_per_s": mlp_bytes / seconds(COPY_LABEL) / 1e9},
            "adaln_per_run_seconds": {"one product per step": steps * per_step, "every step at once": all_steps}}


def render(data: dict) -> str:
    env = data["environment"]
    head = (f"**{data['model']}**: {data['depth']} blocks, hidden {data['hidden']}, MLP {data['mlp_hidden']}; "
            f"{data['images']} image(s) + CFG twin x {data['tokens_per_image']} tokens = {data['full_step_rows']} "
            f"rows in a full step; {data['repeats']} interleaved rounds after {data['warmup']} warm-up, "
            f"{env['threads']} thread(s); time = CPU seconds (median) over all blocks\n\n")
    def product(r: dict) -> str:
        if "bit_identical_to_row_major" not in r:
            return r["product"]
        if r["bit_identical_to_row_major"]:
            return f"{r['product']} (bit-identical)"
        return f"{r['product']} (differs by {r['max_abs_diff_to_row_major']:.1e})"

    cells = [[product(r), str(r["rows"]), f"{r['seconds']:.3f}", f"{r['gflop_per_s']:.1f}",
              f"{r['efficiency_vs_full_step']:.2f}", f"{r['seconds_beyond_flops_share']:+.3f}",
              f"{r['roofline_seconds']:.3f}", f"{r['seconds_beyond_roofline']:+.3f}"] for r in data["rows"]]
    table = markdown_table(["product", "rows", "CPU s (all blocks)", "GFLOP/s", "efficiency vs full step",
                            "s beyond the FLOPs share", "roofline s", "s beyond the roofline"], cells)
    a, w, c = data["adaln_per_run_seconds"], data["mlp_weight_read"], data["mlp_weight_copy"]
    tail = (f"\nMLP weights of all blocks ({w['bytes'] / 2**20:.0f} MiB) read once in {w['seconds']:.3f} s: "
            f"{w['gb_per_s']:.1f} GB/s, the bandwidth in the roofline; copied once in {c['seconds']:.3f} s "
            f"({c['gb_per_s']:.1f} GB/s)\n"
            f"adaLN modulation for a {data['steps']}-step run: {a['one product per step']:.3f} s as one product "
            f"per step, {a['every step at once']:.3f} s as one product for every step at once\n")
    return head + table + tail


def row_efficiency_plot(data: dict, path: Path) -> Path:
    """GFLOP/s and efficiency vs the full step against the row count, one line per product (log rows)."""
    plt = pyplot()

    products = list(dict.fromkeys(r["product"] for r in data["rows"]))
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 4.6))
    for ax, (key, label) in zip(axes, [("gflop_per_s", "GFLOP/s (CPU time)"),
                                       ("efficiency_vs_full_step", "efficiency vs full step")], strict=True):
        for product in products:
            pts = sorted((r["rows"], r[key]) for r in data["rows"] if r["product"] == product)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=4, label=product)
        ax.axvline(data["full_step_rows"], color="grey", alpha=0.4, linestyle="--")
        ax.set_xscale("log")
        ax.set_xlabel("rows per product (dashed: a full step)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].axhline(1.0, color="grey", alpha=0.4)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{data['model']}: block products' rate against their row count "
                 f"({data['environment']['threads']} thread(s), {data['repeats']} rounds)", fontsize=10)
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--model", default="DiT-XL/2", help="a DiT config (shapes only; random weights)")
    p.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="images per step (rows x2 for CFG)")
    p.add_argument("--rows", type=int, nargs="+", default=list(DEFAULT_ROWS), help="MLP row counts to time")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="sampling steps for the adaLN comparison")
    p.add_argument("--repeats", type=int, default=3, help="timed interleaved rounds (every product once per round)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--column-major", action="store_true",
                   help="also time the MLP with its weights stored column-major (and check it is bit-identical)")
    p.add_argument("--prepacked", action="store_true",
                   help="also time the MLP on weights packed once (MKL per row count, oneDNN) and give the difference")
    p.add_argument("--out", type=Path, default=Path("results/row_efficiency"),
                   help="output folder for row_efficiency.json, .md and .png")
    return p


def _check(args: argparse.Namespace) -> None:
    from duca_common.outputs import check_output_dir

    dims_of(args.model)
    for name in ("images", "steps", "repeats"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if any(r < 1 for r in args.rows):
        raise UsageError(f"--rows must be >= 1, got {args.rows}")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    if args.prepacked and not (torch.backends.mkl.is_available() and torch.backends.mkldnn.is_available()):
        raise UsageError("--prepacked needs a PyTorch built with MKL and oneDNN (x86 CPU wheels); drop --prepacked")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}; omit it for torch's choice")
    check_output_dir(args.out, "--out")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    run_or_exit(lambda: _check(args))
    data = run(args.model, args.images, args.rows, args.steps, args.repeats, args.warmup, args.threads,
               args.column_major, args.prepacked)
    md = render(data)
    row_efficiency_plot(data, args.out / "row_efficiency.png")
    write_report(args.out, "row_efficiency", data, md, note=", row_efficiency.png")
    return data


if __name__ == "__main__":
    main()
