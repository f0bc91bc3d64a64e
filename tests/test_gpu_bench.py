"""The prepared GPU script on tiny shapes on CPU: every workload, eager and compiled, one table with the ratios."""

from __future__ import annotations

import json

import pytest

from duca_scripts import gpu_bench
from duca_scripts.report import parse_markdown_table


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_bench")
    data = gpu_bench.main(["--tiny", "--device", "cpu", "--compile-backend", "eager", "--repeats", "1",
                           "--out", str(out)])
    return out, data


def test_every_workload_runs_eager_and_compiled_with_flops_ratios(bench):
    out, data = bench
    saved = json.loads((out / "gpu_bench.json").read_text())
    assert saved["skipped"] == [] and len(saved["rows"]) == len(data["rows"])
    parts = {(r["workload"], r["mode"]) for r in data["rows"]}
    assert parts == {(w, m) for w in gpu_bench.WORKLOADS for m in ("eager", "compiled")}
    families = {"dit256": "dit", "dit512": "dit", "pixart1024": "pixart", "opensora480p": "opensora"}
    for (work, mode) in parts:
        rows = [r for r in data["rows"] if (r["workload"], r["mode"]) == (work, mode)]
        assert rows[0]["method"] == f"{families[work]}-none" and rows[0]["flops_speedup"] == 1.0
        assert {r["method"].split("-")[1] for r in rows} >= {"none", "fora", "duca", "taylorseer"}
        for r in rows[1:]:
            assert r["flops_speedup"] > 1.0 and r["wall_median"] > 0
            assert r["wall_over_flops"] == pytest.approx(r["wall_speedup"] / r["flops_speedup"])
    table = parse_markdown_table((out / "gpu_bench.md").read_text().split("\n\n", 1)[1].strip())
    assert len(table) == len(data["rows"]) and "wall / FLOPs speed-up" in table[0]


def test_budget_skips_the_remaining_parts_by_name(tmp_path):
    data = gpu_bench.main(["--tiny", "--device", "cpu", "--workloads", "dit256", "--budget-s", "1e-9",
                           "--out", str(tmp_path)])
    assert data["rows"] == [] and [s.split(":")[0] for s in data["skipped"]] == ["dit256 eager", "dit256 compiled"]


def test_no_gpu_is_refused_with_one_line(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the no-GPU refusal cannot be provoked")
    with pytest.raises(SystemExit) as exc:
        gpu_bench.main(["--out", str(tmp_path / "g")])
    assert exc.value.code == 2 and "no CUDA device is visible" in capsys.readouterr().err
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
