"""Attention-score selection: time and peak memory of the chunked score against the explicit attention map.

    python -m duca_scripts.bench_attention_score --threads 1 --out results/attention_score

One self-attention core (q, k, v already projected) at the DiT-S shape (batch 2 = one image + its CFG
twin, 6 heads of 64 channels) at 256 / 1024 / 4096 tokens (``--tokens``), three ways:

* ``map``: what the DiT attention did before (``--cache-type attention`` full steps): the explicit
  batch x heads x tokens^2 softmax, its product with v, and the column sums of the head-mean map;
* ``chunked``: ``duca_common.cache.attention_score.sdpa_and_received``: SDPA for the output, the score in
  query chunks from SDPA's row log-sum-exp (no tokens^2 tensor);
* ``sdpa``: SDPA alone (what a full step costs with value-norm or random selection), for reference.

Timed the project's one way (``duca_common.measure``: interleaved rounds, CPU beside wall, the spread);
peak memory is the growth of heap bytes in use sampled during each call (CPU, ``duca_common.measure``;
CUDA: the allocator's peak).
Writes ``<out>/attention_score.json`` and ``.md`` and prints the table.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from duca_common.cache.attention_score import sdpa_and_received
from duca_common.errors import UsageError, run_or_exit
from duca_common.measure import Case, compare, interleaved
from duca_common.runtime import HelpFormatter

from .report import environment, markdown_table, write_report

# DiT-S/2 (models.md A.1): hidden 384 = 6 heads x 64; batch 2 is one image with its CFG twin.
DIT_S_HEADS, DIT_S_HEAD_DIM, CFG_BATCH = 6, 64, 2
DEFAULT_TOKENS = (256, 1024, 4096)       # 256 px DiT/2 latents, 512 px, and a 1024 px PixArt-like length
PATHS = ("map", "chunked", "sdpa")


def map_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    attn = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return attn @ v, attn.mean(dim=1).sum(dim=1)


def chunked_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    return sdpa_and_received(q, k, v, scale)


def sdpa_path(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    return F.scaled_dot_product_attention(q, k, v)


FUNCTIONS = {"map": map_path, "chunked": chunked_path, "sdpa": sdpa_path}


def run(tokens: list[int], repeats: int, warmup: int, device: str, threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    rows = []
    bar = tqdm(total=len(tokens) * len(PATHS) * (warmup + repeats), desc="attention cores")
    for n in tokens:
        g = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(CFG_BATCH, DIT_S_HEADS, n, DIT_S_HEAD_DIM, generator=g).to(dev) for _ in range(3))
        scale = DIT_S_HEAD_DIM ** -0.5
        cases = [Case(p, fn=partial(FUNCTIONS[p], q, k, v, scale)) for p in PATHS]
        with torch.inference_mode():
            series = interleaved(cases, repeats=repeats, warmup=warmup, device=dev, track_memory=True,
                                 progress=bar.update)
        ref_out, ref_score = series["map"].result
        out, score = series["chunked"].result
        map_bytes = CFG_BATCH * DIT_S_HEADS * n * n * 4
        for p in PATHS:
            s = series[p]
            sp = compare(series["map"], s)
            rows.append({"tokens": n, "path": p, "wall_seconds": s.walls, "cpu_seconds": s.cpus,
                         "wall_median": s.wall.median, "wall_min": s.wall.min, "wall_max": s.wall.max,
                         "cpu_median": s.cpu.median if s.cpu else None,
                         "speedup_vs_map": sp.best, "speedup_vs_map_min": (sp.cpu_rounds or sp.wall_rounds).min,
                         "speedup_vs_map_max": (sp.cpu_rounds or sp.wall_rounds).max,
                         "peak_mib": None if s.peak_bytes is None else s.peak_bytes / 2 ** 20,
                         "map_mib": map_bytes / 2 ** 20})
        rows[-2]["max_abs_score_error"] = float((score - ref_score).abs().max())
        rows[-2]["max_abs_output_error"] = float((out - ref_out).abs().max())
    bar.close()
    return {"environment": environment(dev), "repeats": repeats, "warmup": warmup,
            "shape": f"batch {CFG_BATCH}, {DIT_S_HEADS} heads x {DIT_S_HEAD_DIM} (DiT-S)", "rows": rows}


def render(data: dict) -> str:
    env = data["environment"]
    head = (f"Attention core at {data['shape']}, {data['repeats']} interleaved rounds after {data['warmup']} warm-up, "
            f"device {env['device']} ({env['threads']} threads); time = CPU seconds on CPU (wall on CUDA), "
            f"median (min-max); peak = memory growth during the call\n\n")
    cells = []
    for r in data["rows"]:
        t = r["cpu_median"] if r["cpu_median"] is not None else r["wall_median"]
        cells.append([str(r["tokens"]), r["path"], f"{t * 1000:.1f}", f"{r['wall_median'] * 1000:.1f} "
                      f"({r['wall_min'] * 1000:.1f}-{r['wall_max'] * 1000:.1f})",
                      f"{r['speedup_vs_map']:.2f}x ({r['speedup_vs_map_min']:.2f}-{r['speedup_vs_map_max']:.2f})",
                      "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}", f"{r['map_mib']:.0f}"])
    return head + markdown_table(["tokens", "path", "time ms", "wall ms (min-max)", "speed-up vs map (rounds)",
                                  "peak MiB", "map size MiB"], cells)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS),
                   help="sequence lengths to time (tokens per image)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed interleaved rounds per token count (every path once per round)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path("results/attention_score"),
                   help="output folder for attention_score.json and .md")
    return p


def _check(args: argparse.Namespace) -> None:
    from duca_common.outputs import check_output_dir

    if any(n < 1 for n in args.tokens):
        raise UsageError(f"--tokens must be >= 1, got {args.tokens}")
    if args.repeats < 1 or args.warmup < 0:
        raise UsageError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    check_output_dir(args.out, "--out")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    run_or_exit(lambda: _check(args))
    data = run(args.tokens, args.repeats, args.warmup, args.device, args.threads)
    md = render(data)
    write_report(args.out, "attention_score", data, md + "\n")
    return data


if __name__ == "__main__":
    main()
