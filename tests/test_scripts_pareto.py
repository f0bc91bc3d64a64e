"""The frontier script (duca_scripts.pareto): interpolation, goal verdicts, a small run on the embedded model."""

import csv

import pytest

from duca_scripts import pareto
from duca_scripts.report import parse_markdown_table

try:
    import cache_dit  # noqa: F401  (optional extra "peers")
    HAVE_CACHE_DIT = True
except ImportError:
    HAVE_CACHE_DIT = False


def test_interpolate_inside_the_range_only():
    pts = [(2.0, 40.0), (4.0, 30.0), (4.0, 32.0), (6.0, 20.0)]
    assert pareto.interpolate(pts, 3.0) == pytest.approx(35.5)      # 40 -> mean(30, 32) = 31
    assert pareto.interpolate(pts, 6.0) == pytest.approx(20.0)
    assert pareto.interpolate(pts, 1.5) is None and pareto.interpolate(pts, 6.5) is None
    assert pareto.interpolate([(2.0, float("inf"))], 2.0) is None


def test_goal_verdicts_compare_best_project_method_with_best_peer():
    front = {"taylorseer": {x: 41.0 - x for x in pareto.FRONTIER_SPEEDUPS},
             "fora": {x: 30.0 for x in pareto.FRONTIER_SPEEDUPS},
             "cachedit-dmd": {x: (37.5 if x < 5 else None) for x in pareto.FRONTIER_SPEEDUPS}}
    v = {g["speedup"]: g for g in pareto.goal_verdicts(front, "psnr")}
    assert v[3.0]["best_project"] == "taylorseer" and v[3.0]["project_score"] == 38.0 and v[3.0]["met"]
    assert v[4.0]["met"] is False and v[4.0]["best_peer"] == "cachedit-dmd"     # 37 < 37.5
    assert v[5.0]["met"] and not v[5.0]["peer_measured"]                     # no peer reaches 5x
    front["diffusers-magcache"] = {x: 38.5 for x in pareto.FRONTIER_SPEEDUPS}         # diffusers hooks are peers
    v = {g["speedup"]: g for g in pareto.goal_verdicts(front, "psnr")}
    assert v[3.0]["best_peer"] == "diffusers-magcache" and v[3.0]["met"] is False    # 38 < 38.5
    dist = pareto.goal_verdicts({"a": {x: 0.1 for x in pareto.FRONTIER_SPEEDUPS},
                                 "cachedit-b": {x: 0.2 for x in pareto.FRONTIER_SPEEDUPS}}, "feature_distance")
    assert all(g["met"] for g in dist)                                        # lower is better for distances


@pytest.mark.parametrize("argv, words", [
    (["--model", "tiny"], "use --model digits or digits256"),
    (["--images", "1"], "images must be >= 2"),
    (["--intervals", "0"], "intervals"),
    (["--ckpt", "/nonexistent.safetensors"], "does not exist"),
    (["--magcache-thresholds", "0"], "--magcache-thresholds must be > 0"),
])
def test_bad_options_exit_2_naming_the_problem(argv, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        pareto.main(argv + ["--out", str(tmp_path)])
    assert exc.value.code == 2 and words in capsys.readouterr().err


def test_bad_threads_and_unwritable_out_exit_2_before_any_model(tmp_path, capsys, monkeypatch):
    """--threads 0 (was torch's RuntimeError traceback) and an --out under a file (was NotADirectoryError
    after the model and the classifier were loaded; an unwritable --out lost the whole run at the end)."""
    from duca_scripts import targets

    monkeypatch.setattr(targets, "build_target", lambda *a, **k: pytest.fail("a model was built"))
    monkeypatch.setattr(pareto, "build_target", lambda *a, **k: pytest.fail("a model was built"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    under_a_file = f"--out {blocker / 'o'} lies under {blocker}, which is a file"
    for argv, words in [(["--threads", "0", "--out", str(tmp_path / "o")], "--threads must be >= 1, got 0"),
                        (["--out", str(blocker / "o")], under_a_file)]:
        with pytest.raises(SystemExit) as exc:
            pareto.main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("error: ") and words in err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_engine_warmup_reaches_every_engine_row_and_no_peer():
    rows = pareto.grid((3,), (0.5,), True, engine_warmup=3)
    engine = [text for fam, text in rows if fam != "none" and not fam.startswith(("cachedit", "diffusers"))]
    peers = [text for fam, text in rows if fam.startswith(("cachedit", "diffusers"))]
    assert engine and all(text.endswith(",warmup=3") for text in engine)
    assert peers and not any("warmup=3" in text for text in peers)
    assert pareto.grid((3,), (0.5,), True) == [(f, t.replace(",warmup=3", "")) for f, t in rows]
    with pytest.raises(pareto.ParetoError, match="--engine-warmup must be >= 0"):
        pareto.ParetoOptions(engine_warmup=-1).validate()


def test_both_shipped_models_are_accepted(tmp_path):
    for name in ("digits", "digits256"):
        pareto.ParetoOptions(model=name, out=tmp_path).validate()          # raises ParetoError otherwise


def test_small_frontier_run_writes_every_family(tmp_path):
    peers = [] if HAVE_CACHE_DIT else ["--no-cachedit"]
    data = pareto.main(["--images", "3", "--steps", "6", "--intervals", "3", "--thresholds", "0.5",
                        "--magcache-thresholds", "0.3", "--baseline-every", "4", "--out", str(tmp_path), *peers])
    rows = data["rows"]
    families = {r["family"] for r in rows}
    expected = {f for f, _ in pareto.PAPER_FAMILIES + pareto.NEW_FAMILIES}
    expected |= {f for f, _, _ in pareto.DIFFUSERS_FAMILIES}          # diffusers' hooks need no extra
    if HAVE_CACHE_DIT:
        expected |= {f for f, _ in pareto.PEER_FAMILIES}
    assert families == expected | {"none"}
    base = rows[0]
    assert base["method"] == "none" and base["flops_speedup"] == 1.0 and base["feature_distance"] == 0.0
    # the uncached run was timed first, again after every 4th row, and last (interleaved)
    assert len(data["baseline_timings"]) == 2 + (len(rows) - 2) // 4
    for r in rows[1:]:
        assert r["flops_speedup"] > 1.0 and r["cpu_speedup"] > 0 and 0.0 <= r["accuracy"] <= 1.0
        assert r["psnr"] > 0 and r["feature_distance"] >= 0 and r["frechet_to_uncached"] >= 0
    md = (tmp_path / "frontier.md").read_text()
    tables = [parse_markdown_table(part) for part in md.split("\n\n") if part.startswith("| method")]
    assert len(tables) == 3 and {t["method"] for t in tables[0]} == expected
    with open(tmp_path / "frontier.csv", newline="") as f:
        assert {r["family"] for r in csv.DictReader(f)} == expected
    assert (tmp_path / "pareto.png").stat().st_size > 10_000 and (tmp_path / "rows.csv").is_file()


def test_grid_runs_the_diffusers_hooks_over_their_options():
    labels = [text for _, text in pareto.grid((2, 8), (0.04, 1.0), peers=True, cachedit=False,
                                              magcache_thresholds=(0.06,))]
    assert {"diffusers-fbcache:t=0.04", "diffusers-fbcache:t=1", "diffusers-pab:skip=8,lo=-1,hi=1000",
            "diffusers-taylorseer:interval=2,o=1", "diffusers-magcache:t=0.06,k=10,r=0.04"} <= set(labels)
    assert not any(text.startswith("cachedit") for text in labels)
    assert not any(text.startswith("diffusers") for _, text in pareto.grid((2,), (0.1,), peers=False))


def test_flops_from_the_plan_equal_a_recorded_run():
    """The frontier takes FLOPs from the plan (fast); they must be what the engine records on a real run."""
    from duca_scripts.methods import parse_method
    from duca_scripts.reproduce_table import _meta_flops
    from duca_scripts.targets import build_target

    target = build_target("tiny")
    for text in ("none", "fora:n=3", "toca:n=3", "duca:n=4", "taylorseer:n=3", "foca:n=3", "hicache:n=3", "dualca:n=4"):
        spec = parse_method(text)
        recorded, _, trace = _meta_flops(target, spec, 10)
        from_plan, plan_trace = pareto.reference_flops_per_image(target, spec, 10)
        assert from_plan == recorded, text
        assert plan_trace.trunk_reused == trace.trunk_reused
