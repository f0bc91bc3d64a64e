"""Writers for the benchmark and table outputs: JSON, markdown and CSV, plus the run's environment."""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from duca_common import runtime
from duca_common.measure import environment  # noqa: F401  (re-exported: every script's report uses it)

# Resolution of the saved plots (pixels per inch): readable at the figure sizes the scripts use
FIGURE_DPI = 110


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on the benchmark machines); imported on first
    use, so scripts that write no plot never load matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path, dpi: int = FIGURE_DPI,
                layout_rect: tuple[float, float, float, float] | None = None) -> Path:
    """Lay out a matplotlib figure (within ``layout_rect`` when given), write it to ``path`` (creating its
    folder) and close it."""
    import matplotlib.pyplot as plt

    if layout_rect is None:
        fig.tight_layout()
    else:
        fig.tight_layout(rect=layout_rect)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, data: dict) -> Path:
    return runtime.write_json(path, _jsonable(data))


def write_report(out: Path, stem: str, data: dict, md: str, note: str = "") -> None:
    """A benchmark's result: ``<out>/<stem>.json`` and ``<out>/<stem>.md``, the table printed, and a line on
    stderr naming the files (``note`` appended to it)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stem}.json", data)
    (out / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {out}/{stem}.json and .md{note}", file=sys.stderr)


def fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "inf" if value > 0 else "-"
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def sig(value: float | None, digits: int = 4) -> str:
    """``digits`` significant digits (FLOPs of a tiny model and of DiT-XL/2 in one column)."""
    return "-" if value is None else f"{value:.{digits}g}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    """The first pipe table in ``text`` as a list of {header: cell} (used by tests and docs tooling)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        raise ValueError("no markdown table found")
    headers = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) != len(headers):
            raise ValueError(f"row has {len(cells)} cells, header has {len(headers)}: {ln}")
        rows.append(dict(zip(headers, cells, strict=True)))
    return rows


def write_csv(path: Path, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(headers)
        writer.writerows(rows)
    return path
