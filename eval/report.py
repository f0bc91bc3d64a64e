"""Results: JSON files, markdown tables and the shared command-line plumbing.

Every CLI writes one JSON object with this schema (``SCHEMA_VERSION`` 1)::

    {
      "schema_version": 1,
      "protocol": "imagenet" | "coco" | "fidelity",
      "metrics": {name: number | null | "inf" | "-inf" | "nan"},   # null: not computable, see notes
      "num_samples": int,
      "inputs": {name: path or value},
      "weights": {name: path or hub id},
      "notes": [str, ...],
      ... protocol-specific keys (fidelity: "per_item", "per_video")
    }

Non-finite numbers (PSNR of identical images is +inf) are written as the strings "inf", "-inf",
"nan" so that the file stays standard JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duca_common.errors import UsageError, one_line
from duca_common.runtime import atomic_write_bytes

from .errors import EXIT_USER_ERROR, EvalError

SCHEMA_VERSION = 1
RESULT_KEYS = ("schema_version", "protocol", "metrics", "num_samples", "inputs", "weights", "notes")


@dataclass
class EvalResult:
    protocol: str
    metrics: dict[str, float | None]
    num_samples: int
    inputs: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        payload = {
            "schema_version": SCHEMA_VERSION,
            "protocol": self.protocol,
            "metrics": self.metrics,
            "num_samples": self.num_samples,
            "inputs": self.inputs,
            "weights": self.weights,
            "notes": self.notes,
            **self.extra,
        }
        return _json_safe(payload)


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_json(result: EvalResult, path: str | Path) -> Path:
    path = Path(path).expanduser()
    atomic_write_bytes(path, (json.dumps(result.to_json_dict(), indent=2, allow_nan=False) + "\n").encode("utf-8"))
    return path


def format_value(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(format_value(v) if not isinstance(v, str) else v for v in row) + " |" for row in rows]
    return "\n".join(lines)


def metrics_table(result: EvalResult) -> str:
    rows = [(name, value) for name, value in result.metrics.items()]
    return markdown_table(["metric", "value"], rows)


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is passed through."""
    from duca_common.runtime import pick_device

    try:
        return str(pick_device(name))
    except UsageError as exc:
        raise EvalError(str(exc)) from None


def add_common_args(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument("--out", default=default_out, help=f"JSON result file (default: {default_out})")
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def check_outputs(args: argparse.Namespace) -> None:
    """Every output path of an evaluation CLI can be written: checked before any network is loaded
    (``--out`` JSON, ``--save-ref-stats`` .npz, the ``--cache-dir`` folder unless ``--no-cache``)."""
    from duca_common.outputs import check_output_dir, check_output_file

    check_output_file(args.out, "--out", suffixes=(".json",))
    if getattr(args, "save_ref_stats", None):
        check_output_file(args.save_ref_stats, "--save-ref-stats", suffixes=(".npz",))
    if getattr(args, "cache_dir", None) and not getattr(args, "no_cache", False):
        check_output_dir(args.cache_dir, "--cache-dir")
    from duca_common.validate import COUNT, check_numbers

    check_numbers([(flag, getattr(args, dest, None), COUNT) for flag, dest in
                   (("--batch-size", "batch_size"), ("--is-split-size", "is_split_size"),
                    ("--ref-resize", "ref_resize"))])


def run_cli(main: Callable[[list[str] | None], EvalResult], argv: list[str] | None = None) -> int:
    """Run ``main``; print user errors as one line on stderr and return :data:`EXIT_USER_ERROR`."""
    try:
        main(argv)
    except (EvalError, UsageError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def finish(result: EvalResult, out: str | Path) -> EvalResult:
    """Write the JSON file and print the markdown table and notes."""
    path = write_json(result, out)
    print(metrics_table(result))
    for note in result.notes:
        print(f"note: {note}")
    print(f"results written to {path}")
    return result
