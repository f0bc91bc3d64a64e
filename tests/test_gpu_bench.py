"""The prepared GPU script on tiny shapes on CPU: every workload, eager and compiled, one table with the ratios."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import pytest

from duca_scripts import gpu_bench
from duca_scripts.report import parse_markdown_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_bench")
    err = io.StringIO()                                        # module scope: no capsys; the stderr lines kept
    with contextlib.redirect_stderr(err):
        data = gpu_bench.main(["--tiny", "--device", "cpu", "--compile-backend", "eager", "--repeats", "1",
                               "--out", str(out)])
    sys.stderr.write(err.getvalue())
    err = err.getvalue().strip().splitlines()
    return out, data, err


def test_every_workload_runs_eager_and_compiled_with_flops_ratios(bench):
    out, data, _ = bench
    saved = json.loads((out / "gpu_bench.json").read_text())
    assert saved["skipped"] == [] and len(saved["rows"]) == len(data["rows"])
    parts = {(r["workload"], r["mode"]) for r in data["rows"]}
    assert parts == {(w, m) for w in gpu_bench.WORKLOADS for m in ("eager", "compiled")}
    families = {"dit256": "dit", "dit512": "dit", "pixart1024": "pixart", "opensora480p": "opensora"}
    for (work, mode) in parts:
        rows = [r for r in data["rows"] if (r["workload"], r["mode"]) == (work, mode)]
        assert rows[0]["method"] == f"{families[work]}-none" and rows[0]["flops_speedup"] == 1.0
        assert {r["method"].split("-")[1] for r in rows} >= {"none", "fora", "duca", "taylorseer"}
        assert {r["cache_method"] for r in rows} >= {"none", "fora", "duca", "taylorseer"}   # the plot's colours
        for r in rows[1:]:
            assert r["flops_speedup"] > 1.0 and r["wall_median"] > 0
            assert r["wall_over_flops"] == pytest.approx(r["wall_speedup"] / r["flops_speedup"])
    table = parse_markdown_table((out / "gpu_bench.md").read_text().split("\n\n", 1)[1].strip())
    assert len(table) == len(data["rows"]) and "wall / FLOPs speed-up" in table[0]


def test_the_plot_is_a_png_named_on_the_last_line(bench):
    out, _, err = bench
    png = (out / "gpu_bench.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000      # four panels of markers and bars, not a blank
    assert "gpu_bench.png" in err[-1] and err[-1].startswith(f"wrote {out}/gpu_bench.json")


def test_the_plot_takes_any_subset_of_the_rows(bench, tmp_path):
    """Parts skipped for the budget (a whole workload, or its compiled runs) and rows without a peak."""
    _, data, _ = bench
    part = {**data, "skipped": ["pixart1024 eager: budget", "pixart1024 compiled: budget",
                                "dit512 compiled: budget"],
            "rows": [{**r, "peak_mib": None} for r in data["rows"] if r["workload"] != "pixart1024"
                     and (r["workload"], r["mode"]) != ("dit512", "compiled")]}
    assert gpu_bench.gpu_bench_plot(part, tmp_path / "a.png").read_bytes().startswith(PNG_MAGIC)
    one = {**data, "rows": [r for r in data["rows"] if r["workload"] == "dit256" and r["mode"] == "eager"]}
    assert gpu_bench.gpu_bench_plot(one, tmp_path / "b.png").read_bytes().startswith(PNG_MAGIC)


def test_budget_skips_the_remaining_parts_by_name(tmp_path, capsys):
    (tmp_path / "gpu_bench.png").write_bytes(b"an old run's plot")
    data = gpu_bench.main(["--tiny", "--device", "cpu", "--workloads", "dit256", "--budget-s", "1e-9",
                           "--out", str(tmp_path)])
    assert data["rows"] == [] and [s.split(":")[0] for s in data["skipped"]] == ["dit256 eager", "dit256 compiled"]
    # no rows, no plot (an old one would show another run), and the last line says so
    assert not (tmp_path / "gpu_bench.png").exists()
    assert "(no rows: no gpu_bench.png)" in capsys.readouterr().err.strip().splitlines()[-1]


def test_no_gpu_is_refused_with_one_line(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the no-GPU refusal cannot be provoked")
    with pytest.raises(SystemExit) as exc:
        gpu_bench.main(["--out", str(tmp_path / "g")])
    assert exc.value.code == 2 and "no CUDA device is visible" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_device_goes_through_the_projects_device_check(tmp_path, capsys):
    """--device auto is accepted (cpu here, with --tiny) and a device that is not one is refused in one line."""
    with pytest.raises(SystemExit) as exc:
        gpu_bench.main(["--tiny", "--device", "gpu", "--out", str(tmp_path / "g")])
    assert exc.value.code == 2 and "--device 'gpu' is not a device" in capsys.readouterr().err
    opts = gpu_bench.build_parser().parse_args(["--tiny", "--device", "auto", "--out", str(tmp_path / "g")])
    gpu_bench._check(opts)
    import torch
    assert opts.device == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SystemExit) as exc:                   # the real shapes on a CPU: hours, so refused
        gpu_bench.main(["--device", "cpu", "--out", str(tmp_path / "g")])
    assert exc.value.code == 2 and "pass --tiny for the CPU smoke run" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_gpu_check_script_without_a_gpu_exits_2_with_one_line(tmp_path):
    """scripts/gpu_check.sh hides every GPU (CUDA_VISIBLE_DEVICES=''), so this runs on any machine."""
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
    done = subprocess.run(["bash", str(script), str(tmp_path / "g")], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "error: gpu_check: no CUDA device is visible; run it on a GPU machine\n"
    assert not (tmp_path / "g").exists()
