r"""VBench totals, a markdown table and a bar plot from VBench's result files, in the project's environment.

    python -m opensora_duca.vbench_table --run none=vbench/none_scores:vbench/none_logs/flops.json \
        --run duca=vbench/duca_scores:vbench/duca_logs/flops.json --out vbench/table.md --plot vbench/bars.png

Each ``--run NAME=SCORE_DIR[:REPORT]`` names a folder written by ``eval/vbench/calc.sh`` (VBench 0.1.5's
``{dimension}_eval_results.json`` + ``{dimension}_full_info.json`` per dimension) and optionally a JSON report of
``opensora_duca.inference`` (``--flops-only`` or a sampling report) whose ``flops.speedup`` is the FLOPs
speed-up of that run's cache method over no cache. The first run is the baseline of the "change" columns.

How the scores are combined (the reference's ``eval/vbench/tabulate_vbench_scores.py``, which uses VBench's
own constants):

1. each dimension's score (VBench's mean over videos) is rounded to 4 decimals, then normalised
   ``(score - min) / (max - min)`` with VBench's per-dimension min / max and multiplied by its weight
   (dynamic degree 0.5, every other dimension 1);
2. quality = sum of the 7 quality dimensions / sum of their weights (6.5); semantic = sum of the 9
   semantic dimensions / 9;
3. total = (4 * quality + 1 * semantic) / 5.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from duca_common.errors import UsageError, print_error
from duca_common.outputs import check_output_file
from duca_common.runtime import HelpFormatter, atomic_path, atomic_write_bytes

# The 16 dimensions and the constants below are the reference's (tabulate_vbench_scores.py: QUALITY_LIST,
# SEMANTIC_LIST, NORMALIZE_DIC, DIM_WEIGHT, QUALITY_WEIGHT, SEMANTIC_WEIGHT), named with underscores as
# VBench's result files name them.
QUALITY_DIMENSIONS = ("subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
                      "aesthetic_quality", "imaging_quality", "dynamic_degree")
SEMANTIC_DIMENSIONS = ("object_class", "multiple_objects", "human_action", "color", "spatial_relationship", "scene",
                       "appearance_style", "temporal_style", "overall_consistency")
DIMENSIONS = QUALITY_DIMENSIONS + SEMANTIC_DIMENSIONS
# (min, max) of each dimension's raw score, for the normalisation to [0, 1]
NORMALIZATION: dict[str, tuple[float, float]] = {
    "subject_consistency": (0.1462, 1.0), "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0), "motion_smoothness": (0.706, 0.9975), "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0), "imaging_quality": (0.0, 1.0), "object_class": (0.0, 1.0),
    "multiple_objects": (0.0, 1.0), "human_action": (0.0, 1.0), "color": (0.0, 1.0),
    "spatial_relationship": (0.0, 1.0), "scene": (0.0, 0.8222), "appearance_style": (0.0009, 0.2855),
    "temporal_style": (0.0, 0.364), "overall_consistency": (0.0, 0.364),
}
DIMENSION_WEIGHTS: dict[str, float] = {d: 1.0 for d in DIMENSIONS} | {"dynamic_degree": 0.5}
QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4.0, 1.0
RAW_DECIMALS = 4                 # the reference formats each raw score with ".4f" before normalising
RESULTS_SUFFIX, INFO_SUFFIX = "_eval_results.json", "_full_info.json"
SUMMARY = ("total", "quality", "semantic")


@dataclass
class RunScores:
    name: str
    raw: dict[str, float]                       # VBench's score per dimension (rounded as the reference)
    speedup: float | None = None                # FLOPs speed-up over no cache, from the sampling report
    scaled: dict[str, float] = field(default_factory=dict)    # normalised x weight, plus total/quality/semantic


def read_results(score_dir: str | Path) -> dict[str, float]:
    """The 16 dimension scores of a VBench output folder; every problem named with the file."""
    folder = Path(score_dir)
    if not folder.is_dir():
        raise UsageError(f"VBench score folder {folder} does not exist; run eval/vbench/calc.sh on the videos first")
    raw: dict[str, float] = {}
    for file in sorted(folder.glob(f"*{RESULTS_SUFFIX}")):
        info = file.with_name(file.name[: -len(RESULTS_SUFFIX)] + INFO_SUFFIX)
        try:
            info_data = json.loads(info.read_text(encoding="utf-8"))
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"{file} has no {info.name} beside it; rerun eval/vbench/calc.sh") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"{file} or {info.name} is not VBench JSON ({err}); rerun eval/vbench/calc.sh") from None
        if not isinstance(data, dict):
            raise UsageError(f"{file} holds a JSON {type(data).__name__}, not VBench's {{dimension: [score, "
                             f"per-video results]}}; rerun eval/vbench/calc.sh")
        if not isinstance(info_data, list) or (info_data and not isinstance(info_data[0], dict)):
            raise UsageError(f"{info} is not VBench's list of prompt entries; rerun eval/vbench/calc.sh")
        if not info_data or not info_data[0].get("video_list"):         # the reference's sanity check
            raise UsageError(f"{info} lists no videos: VBench found none of this dimension's files")
        for dim, value in data.items():
            if dim not in NORMALIZATION:
                raise UsageError(f"{file}: unknown VBench dimension {dim!r}; expected one of {list(DIMENSIONS)}")
            if dim in raw:
                raise UsageError(f"{folder}: dimension {dim!r} is scored in two files; keep one")
            try:
                score = float(value[0])
            except (TypeError, ValueError, IndexError, KeyError):
                raise UsageError(f"{file}: {dim} holds {str(value)[:40]!r}, not [score, per-video results]") from None
            if not 0.0 <= score <= 1.0:          # every VBench dimension is a mean of per-video scores in [0, 1]
                raise UsageError(f"{file}: the {dim} score {score} is not in [0, 1]; rerun eval/vbench/calc.sh")
            raw[dim] = float(f"{score:.{RAW_DECIMALS}f}")
    missing = [d for d in DIMENSIONS if d not in raw]
    if missing:
        raise UsageError(f"{folder} lacks {len(missing)} of the 16 VBench dimensions ({', '.join(missing)}); "
                         f"score them with eval/vbench/calc.sh")
    return raw


def scaled_scores(raw: dict[str, float]) -> dict[str, float]:
    """Normalised x weighted dimension scores, and quality, semantic and total (module docstring)."""
    scaled = {}
    for dim in DIMENSIONS:
        low, high = NORMALIZATION[dim]
        scaled[dim] = (raw[dim] - low) / (high - low) * DIMENSION_WEIGHTS[dim]
    quality = sum(scaled[d] for d in QUALITY_DIMENSIONS) / sum(DIMENSION_WEIGHTS[d] for d in QUALITY_DIMENSIONS)
    semantic = sum(scaled[d] for d in SEMANTIC_DIMENSIONS) / sum(DIMENSION_WEIGHTS[d] for d in SEMANTIC_DIMENSIONS)
    total = (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)
    return {"total": total, "quality": quality, "semantic": semantic, **scaled}


def read_speedup(report: str | Path) -> float:
    """``flops.speedup`` of an opensora_duca.inference report (--flops-only or sampling)."""
    try:
        data = json.loads(Path(report).read_text(encoding="utf-8"))
        speedup = float(data["flops"]["speedup"])
    except FileNotFoundError:
        raise UsageError(f"report {report} does not exist; pass the JSON the launcher wrote "
                         f"(<out>_logs/flops.json) or an inference --report") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        raise UsageError(f"report {report} has no flops.speedup; pass an opensora_duca.inference report") from None
    if not math.isfinite(speedup) or speedup <= 0:
        raise UsageError(f"report {report}: flops.speedup {speedup} is not a positive number; pass an "
                         f"opensora_duca.inference report")
    return speedup


def load_run(spec: str) -> RunScores:
    """``NAME=SCORE_DIR[:REPORT]``."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise UsageError(f"--run {spec!r} is invalid: pass NAME=SCORE_DIR or NAME=SCORE_DIR:REPORT.json")
    folder, _, report = rest.partition(":")
    run = RunScores(name, read_results(folder), read_speedup(report) if report else None)
    run.scaled = scaled_scores(run.raw)
    return run


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def markdown_table(runs: list[RunScores]) -> str:
    """Summary table (speed-up, total, quality, semantic, change vs the first run) and the 16 dimensions
    (normalised x weight, as VBench's leaderboard)."""
    base = runs[0]
    lines = ["| run | FLOPs speed-up | total | quality | semantic | total vs " + base.name + " |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        speed = "n/a" if r.speedup is None else f"{r.speedup:.2f}x"
        delta = 100 * (r.scaled["total"] - base.scaled["total"])
        lines.append(f"| {r.name} | {speed} | {_pct(r.scaled['total'])} | {_pct(r.scaled['quality'])} | "
                     f"{_pct(r.scaled['semantic'])} | {delta:+.2f} |")
    lines += ["", "| dimension | " + " | ".join(r.name for r in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for dim in DIMENSIONS:
        kind = "quality" if dim in QUALITY_DIMENSIONS else "semantic"
        lines.append(f"| {dim.replace('_', ' ')} ({kind}) | " + " | ".join(_pct(r.scaled[dim]) for r in runs) + " |")
    return "\n".join(lines) + "\n"


def bar_plot(runs: list[RunScores], path: str | Path) -> Path:
    """Grouped bars: one group per dimension (and total / quality / semantic), one bar per run, in %."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(SUMMARY) + list(DIMENSIONS)
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(16, 5))
    for i, r in enumerate(runs):
        xs = [k + (i - (len(runs) - 1) / 2) * width for k in range(len(keys))]
        ax.bar(xs, [100 * r.scaled[k] for k in keys], width, label=r.name)
    ax.set_xticks(range(len(keys)), [k.replace("_", " ") for k in keys], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("normalised score x weight (%)")
    ax.set_title("VBench (VBench 0.1.5 normalisation; total = (4 quality + semantic) / 5)")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="NAME=SCORE_DIR[:REPORT]",
                   help="a scored run (repeatable; the first is the baseline)")
    p.add_argument("--out", help="write the markdown table here (default: print it)")
    p.add_argument("--plot", help="write the bar plot (PNG) here")
    p.add_argument("--json", help="write every scaled score here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for flag, path, suffix in (("--out", args.out, ".md"), ("--plot", args.plot, ".png"),
                                   ("--json", args.json, ".json")):
            if path:
                check_output_file(path, flag, suffixes=(suffix,))
        runs = [load_run(spec) for spec in args.run]
        if len({r.name for r in runs}) != len(runs):
            raise UsageError("two --run entries share a name; give each run its own NAME")
        table = markdown_table(runs)
        if args.out:
            atomic_write_bytes(Path(args.out), table.encode("utf-8"))
        else:
            print(table, end="")
        if args.plot:
            bar_plot(runs, args.plot)
        if args.json:
            atomic_write_bytes(Path(args.json), json.dumps(
                {r.name: {"raw": r.raw, "scaled": r.scaled, "speedup": r.speedup} for r in runs}, indent=2).encode())
        return 0
    except UsageError as err:
        return print_error(err)


if __name__ == "__main__":
    sys.exit(main())
