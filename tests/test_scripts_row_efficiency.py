"""The row-efficiency benchmark (issue 14.3): FLOPs per product, the full-step reference, outputs, bad flags."""

import json

import pytest
from PIL import Image

from duca_scripts import bench_row_efficiency as bench


def test_flops_and_the_full_step_reference(tmp_path, capsys):
    depth, hidden, mlp_hidden, tokens = bench.dims_of("DiT-S/2")
    assert (depth, hidden, mlp_hidden, tokens) == (12, 384, 1536, 256)        # models.md A.1, 256 px
    data = bench.main(["--model", "DiT-S/2", "--rows", "4", "24", "--steps", "3", "--repeats", "1",
                       "--warmup", "0", "--threads", "1", "--out", str(tmp_path)])
    rows = {(r["product"], r["rows"]): r for r in data["rows"]}
    full = 2 * tokens                                                          # one image + its CFG twin
    assert data["full_step_rows"] == full
    assert set(rows) == {("mlp", 4), ("mlp", 24), ("mlp", full), ("adaLN", 2), ("adaLN", 6)}
    assert rows[("mlp", full)]["efficiency_vs_full_step"] == pytest.approx(1.0)
    assert rows[("mlp", full)]["seconds_beyond_flops_share"] == pytest.approx(0.0, abs=1e-12)
    assert rows[("mlp", 24)]["gflops"] == pytest.approx(4 * 24 * hidden * mlp_hidden * depth / 1e9)
    assert rows[("adaLN", 6)]["gflops"] == pytest.approx(2 * 6 * hidden * 6 * hidden * depth / 1e9)
    for r in data["rows"]:
        assert r["seconds"] > 0 and len(r["cpu_seconds"]) == 1
        # time = FLOPs at the full-step rate + the part beyond it
        full_rate = rows[("mlp", full)]["gflop_per_s"]
        assert r["seconds"] == pytest.approx(r["gflops"] / full_rate + r["seconds_beyond_flops_share"])
        # roofline = the larger of the FLOPs at the full-step rate and the weights at the read bandwidth
        weights = (2 * hidden * mlp_hidden if r["product"] == "mlp" else 6 * hidden * hidden) * depth * 4
        read = data["mlp_weight_read"]
        assert read["bytes"] == 2 * hidden * mlp_hidden * depth * 4
        assert r["roofline_seconds"] == pytest.approx(
            max(r["gflops"] / full_rate, weights / (read["gb_per_s"] * 1e9)))
        assert r["seconds"] == pytest.approx(r["roofline_seconds"] + r["seconds_beyond_roofline"])
    for key in ("mlp_weight_read", "mlp_weight_copy"):
        w = data[key]
        assert w["seconds"] > 0 and w["gb_per_s"] == pytest.approx(w["bytes"] / w["seconds"] / 1e9)
    assert "bit_identical_to_row_major" not in rows[("mlp", 24)]                # only with --column-major
    per_run = data["adaln_per_run_seconds"]
    assert per_run["one product per step"] == pytest.approx(3 * rows[("adaLN", 2)]["seconds"])
    assert per_run["every step at once"] == pytest.approx(rows[("adaLN", 6)]["seconds"])
    saved = json.loads((tmp_path / "row_efficiency.json").read_text())
    assert saved["model"] == "DiT-S/2" and len(saved["rows"]) == 5
    assert "| mlp | 24 |" in (tmp_path / "row_efficiency.md").read_text()
    assert "read once in" in (tmp_path / "row_efficiency.md").read_text()
    printed = capsys.readouterr()
    assert "| mlp | 24 |" in printed.out
    assert printed.err.strip().splitlines()[-1] == f"wrote {tmp_path}/row_efficiency.json and .md, row_efficiency.png"
    assert "| mlp | 24 |" not in printed.err and "DiT-S/2 products" in printed.err      # the bar: stderr only
    with Image.open(tmp_path / "row_efficiency.png") as im:                     # the sweep as a plot
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 300
    assert (tmp_path / "row_efficiency.png").stat().st_size > 10_000


def test_column_major_weights_are_timed_beside_row_major(tmp_path):
    data = bench.main(["--model", "DiT-S/2", "--rows", "24", "--steps", "2", "--repeats", "1", "--warmup", "0",
                       "--threads", "1", "--column-major", "--out", str(tmp_path)])
    rows = {(r["product"], r["rows"]): r for r in data["rows"]}
    full = data["full_step_rows"]
    assert {("mlp column-major", 24), ("mlp column-major", full)} <= set(rows)
    for r in (24, full):
        col, row = rows[("mlp column-major", r)], rows[("mlp", r)]
        assert col["gflops"] == row["gflops"] and isinstance(col["bit_identical_to_row_major"], bool)
    # whether the layouts agree bit for bit is MKL's choice of kernel; the table says which it was
    word = "bit-identical" if rows[("mlp column-major", full)]["bit_identical_to_row_major"] else "differs"
    assert f"mlp column-major ({word}) | {full} |" in (tmp_path / "row_efficiency.md").read_text()


def test_prepacked_weights_are_timed_beside_row_major(tmp_path):
    data = bench.main(["--model", "DiT-S/2", "--rows", "24", "--steps", "2", "--repeats", "1", "--warmup", "0",
                       "--threads", "1", "--prepacked", "--out", str(tmp_path)])
    rows = {(r["product"], r["rows"]): r for r in data["rows"]}
    for product in ("mlp mkl-packed", "mlp onednn-prepacked"):
        for r in (24, data["full_step_rows"]):
            row = rows[(product, r)]
            assert row["gflops"] == rows[("mlp", r)]["gflops"]
            # the same products on packed copies of the same weights: equal up to rounding
            assert 0.0 <= row["max_abs_diff_to_row_major"] < 1e-4
            assert row["bit_identical_to_row_major"] == (row["max_abs_diff_to_row_major"] == 0.0)
    assert "bit_identical_to_row_major" not in rows[("mlp", 24)]
    assert "| mlp onednn-prepacked (" in (tmp_path / "row_efficiency.md").read_text()


@pytest.mark.parametrize("argv, words", [
    (["--model", "PixArt-XL/2"], "choose a DiT config"),
    (["--rows", "0"], "--rows must be >= 1"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--threads", "-1"], "--threads must be >= 1"),
])
def test_bad_flags_exit_2_before_any_work(argv, words, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        bench.main(argv + ["--out", str(out)])
    assert exc.value.code == 2 and words in capsys.readouterr().err and not out.exists()
