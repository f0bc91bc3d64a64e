"""VBench protocol pieces that run without VBench: the tabulation (normalisation, quality / semantic / total)
against numbers computed by hand from VBench's constants, the table and plot, and the scorer's up-front check of
VBench's model files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from opensora_duca import vbench_table

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "opensora"
RESULTS = json.loads((FIXTURES / "vbench_results.json").read_text())


def write_scores(folder: Path, raw: dict[str, float]) -> Path:
    """VBench 0.1.5's output layout: one result file and one info file per dimension (as calc_vbench runs it)."""
    folder.mkdir(parents=True)
    for dim, score in raw.items():
        (folder / f"{dim}_eval_results.json").write_text(json.dumps({dim: [score, [{"video_path": "v.mp4"}]]}))
        (folder / f"{dim}_full_info.json").write_text(json.dumps([{"prompt_en": "p", "dimension": [dim],
                                                                    "video_list": ["v-0.mp4"]}]))
    return folder


def test_totals_equal_a_hand_computation_from_vbench_constants(tmp_path):
    run = vbench_table.load_run(f"none={write_scores(tmp_path / 'none', RESULTS['none'])}")
    # by hand: (raw rounded to 4 decimals - min) / (max - min) x weight, with VBench's min / max
    quality = ((0.95 - 0.1462) / (1 - 0.1462) + (0.96 - 0.2615) / (1 - 0.2615) + (0.98 - 0.6293) / (1 - 0.6293)
               + (0.985 - 0.706) / (0.9975 - 0.706) + 0.5500 + 0.6 + 0.5 * 0.5) / 6.5
    semantic = (0.8 + 0.4 + 0.9 + 0.8501 + 0.5 + 0.4111 / 0.8222 + (0.2 - 0.0009) / (0.2855 - 0.0009)
                + 0.24 / 0.364 + 0.26 / 0.364) / 9
    assert run.raw["aesthetic_quality"] == 0.55 and run.raw["color"] == 0.8501     # ".4f" as the reference
    assert run.scaled["quality"] == pytest.approx(quality, abs=1e-12)
    assert run.scaled["semantic"] == pytest.approx(semantic, abs=1e-12)
    assert run.scaled["total"] == pytest.approx((4 * quality + semantic) / 5, abs=1e-12)
    assert run.scaled["total"] == pytest.approx(0.7726747, abs=1e-7)       # 0.798529 quality, 0.669257 semantic
    assert run.scaled["dynamic_degree"] == 0.25 and run.scaled["scene"] == pytest.approx(0.5)


def test_table_plot_and_speedups(tmp_path):
    none = write_scores(tmp_path / "none", RESULTS["none"])
    duca = write_scores(tmp_path / "duca", RESULTS["duca"])
    reports = {}
    for name, speedup in (("none", 1.0), ("duca", 2.4921)):
        reports[name] = tmp_path / f"{name}.json"
        reports[name].write_text(json.dumps({"flops": {"speedup": speedup}}))
    out, plot, js = tmp_path / "t.md", tmp_path / "b.png", tmp_path / "s.json"
    assert vbench_table.main(["--run", f"none={none}:{reports['none']}", "--run", f"duca={duca}:{reports['duca']}",
                              "--out", str(out), "--plot", str(plot), "--json", str(js)]) == 0
    table = out.read_text()
    scores = json.loads(js.read_text())
    total_none, total_duca = scores["none"]["scaled"]["total"], scores["duca"]["scaled"]["total"]
    assert f"| none | 1.00x | {100 * total_none:.2f}% |" in table
    assert f"| duca | 2.49x | {100 * total_duca:.2f}% |" in table
    assert f"{100 * (total_duca - total_none):+.2f} |" in table
    assert "| dynamic degree (quality) | 25.00% |" in table and table.count("\n") == 2 + 2 + 3 + 16
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_incomplete_or_bad_score_folders_are_named(tmp_path, capsys):
    partial = dict(RESULTS["none"])
    del partial["scene"], partial["color"]
    folder = write_scores(tmp_path / "p", partial)
    assert vbench_table.main(["--run", f"x={folder}"]) == 2
    assert "lacks 2 of the 16 VBench dimensions (color, scene)" in capsys.readouterr().err
    (folder / "color_full_info.json").write_text(json.dumps([{"prompt_en": "p", "dimension": ["color"], "video_list": []}]))
    (folder / "color_eval_results.json").write_text(json.dumps({"color": [0.5, []]}))
    assert vbench_table.main(["--run", f"x={folder}"]) == 2
    assert "lists no videos" in capsys.readouterr().err
    assert vbench_table.main(["--run", "nofolder"]) == 2
    assert "NAME=SCORE_DIR" in capsys.readouterr().err
