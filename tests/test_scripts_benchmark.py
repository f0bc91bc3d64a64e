"""The speed benchmark end to end on the tiny DiT, method parsing, and bad-input errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from duca_common import measure
from duca_common.cache import PRESETS
from duca_scripts import benchmark_speed, report
from duca_scripts.methods import (
    PAPER_GRID_INTERVALS,
    MethodSpecError,
    paper_grid,
    parse_method,
    parse_methods,
    peer_grid,
)
from duca_scripts.report import parse_markdown_table

STEPS = 6


# ------------------------------------------------------------------------------------------------ methods

def test_presets_parse_to_their_configs():
    spec = parse_method("dit-duca-n3-r95")
    assert spec.config == PRESETS["dit-duca-n3-r95"].config
    assert spec.family == "duca" and spec.setting.startswith("N=3, R=95%")
    assert "2.48x" in spec.paper_row


def test_engine_method_strings():
    duca = parse_method("duca:n=5,r=0.9")
    assert (duca.config.method, duca.config.interval, duca.config.selector) == ("duca", 5, "value_norm")
    assert duca.config.fresh_ratio == pytest.approx(0.1)
    toca = parse_method("toca:n=4")
    assert toca.config.selector == "attention_received" and toca.config.fresh_ratio == pytest.approx(0.07)
    ts = parse_method("taylorseer:n=4,o=2")
    assert (ts.config.interval, ts.config.taylor_order) == (4, 2)
    peer = parse_method("cachedit-dbcache:fn=2,bn=1,rdt=0.2")
    assert peer.is_peer and (peer.peer.fn, peer.peer.bn, peer.peer.rdt) == (2, 1, 0.2)
    warm = parse_method("taylorseer:n=4,o=3,warmup=3")                  # any caching method takes a warm-up
    assert warm.config.warmup_full_steps == 3 and warm.setting == "N=4, O=3, warm-up 3"
    assert parse_method("taylorseer:n=4,o=3").config.warmup_full_steps == 0


@pytest.mark.parametrize("text, words", [
    ("dcua:n=3", "unknown method"),
    ("duca:n=3,q=1", "unknown setting 'q'"),
    ("duca:r=95", "cache ratio R"),
    ("fora:n=x", "not an integer"),
    ("duca:sel=magic", "sel='magic'"),
    ("fora:n=0", "interval"),
    ("fora:n=3,warmup=x", "warmup='x' is not an integer"),
    ("fora:n=3,warmup=-1", "warmup_full_steps=-1 is invalid"),
    ("none:warmup=3", "unknown setting 'warmup'"),
])
def test_bad_method_strings_name_the_problem(text, words):
    with pytest.raises(MethodSpecError, match=words):
        parse_method(text)


def test_baseline_first_and_duplicates_refused():
    specs = parse_methods(["fora:n=3", "dit-duca-n3-r95"])
    assert [s.label for s in specs] == ["none", "fora:n=3", "dit-duca-n3-r95"]
    with pytest.raises(MethodSpecError, match="twice"):
        parse_methods(["fora:n=3", "fora:n=3"])
    with pytest.raises(MethodSpecError, match="is for pixart"):
        parse_methods(["pixart-fora-n3"])


def test_paper_grid_covers_every_method_and_interval():
    grid = paper_grid()
    assert grid[0] == "none" and len(grid) == 1 + 4 * len(PAPER_GRID_INTERVALS)
    specs = parse_methods(grid)
    assert {s.family for s in specs} == {"none", "fora", "toca", "duca", "taylorseer"}
    assert sorted({s.config.interval for s in specs if s.family == "duca"}) == list(range(2, 8))
    assert all(parse_method(p).is_peer for p in peer_grid())


# ------------------------------------------------------------------------------------------------ benchmark

@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    data = benchmark_speed.main(["--model", "tiny", "--steps", str(STEPS), "--repeats", "2", "--warmup", "1",
                                 "--methods", "dit-duca-n3-r95", "fora:n=2", "--out", str(out)])
    return out, data


def test_benchmark_writes_json_and_markdown(bench):
    out, data = bench
    saved = json.loads((out / "benchmark.json").read_text())
    assert [r["label"] for r in saved["rows"]] == ["none", "dit-duca-n3-r95", "fora:n=2"]
    table = parse_markdown_table((out / "benchmark.md").read_text())
    assert [row["method"] for row in table] == ["none", "dit-duca-n3-r95", "fora:n=2"]
    assert table[0]["FLOPs speed-up"] == "1.00x"


def test_benchmark_ratios_come_from_the_same_run(bench):
    _, data = bench
    rows = {r["label"]: r for r in data["rows"]}
    base = rows["none"]
    assert base["flops_speedup"] == 1.0 and base["wall_speedup"] == 1.0
    for label in ("dit-duca-n3-r95", "fora:n=2"):
        r = rows[label]
        assert len(r["seconds"]) == 2 and len(r["cpu_seconds"]) == 2
        assert r["flops_speedup"] == pytest.approx(base["reference_flops"] / r["reference_flops"])
        assert r["measured_flops_speedup"] == pytest.approx(base["measured_flops"] / r["measured_flops"])
        assert r["wall_speedup"] == pytest.approx(base["seconds_median"] / r["seconds_median"])
        assert r["wall_over_flops"] == pytest.approx(r["wall_speedup"] / r["flops_speedup"])
        assert r["seconds_min"] <= r["seconds_median"] <= r["seconds_max"]
        assert r["flops_speedup"] > 1.2            # caching removes work in 6 steps with N = 2 or 3
    # the reference formula counts the blocks only, measured FLOPs the whole network: measured > reference
    assert base["measured_flops"] > base["reference_flops"] > 0


def test_benchmark_reports_cache_bytes_and_engine_time(bench):
    _, data = bench
    rows = {r["label"]: r for r in data["rows"]}
    assert rows["none"]["cache_peak_bytes"] == 0
    assert rows["dit-duca-n3-r95"]["cache_peak_bytes"] > 0
    duca = rows["dit-duca-n3-r95"]
    assert set(duca["engine_seconds"]) == {"scoring", "gather_scatter", "cache_writes"}
    assert duca["engine_seconds"]["scoring"] > 0            # DuCa scores tokens in its partial steps
    assert 0 < duca["engine_fraction"] < 1
    assert "F" in duca["trace"]


@pytest.mark.parametrize("argv, words", [
    (["--steps", "0"], "--steps=0"),
    (["--repeats", "0"], "--repeats=0"),
    (["--seed", "-1"], "--seed"),
    (["--methods", "duca:n=3,bogus=1"], "unknown setting"),
    (["--model", "DiT-XXL/2"], "unknown --model"),
    (["--cfg-scale", "0"], "--cfg-scale 0 is invalid"),        # was taken as "not given": the default
    (["--device", "cuda:7"], None),
])
def test_benchmark_bad_inputs_exit_with_a_message(argv, words, capsys, tmp_path):
    import torch
    if words is None:
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA; the no-CUDA message cannot be provoked")
        words = "no GPU is visible"          # duca_common.runtime.pick_device's message
    with pytest.raises(SystemExit) as exc:
        benchmark_speed.main(["--model", "tiny", "--steps", "2", "--repeats", "1", "--out", str(tmp_path)] + argv)
    assert exc.value.code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "benchmark.json").exists()


def test_benchmark_bad_checkpoints_exit_with_one_line_before_a_model_is_built(capsys, tmp_path, monkeypatch):
    """--ckpt problems: a text file for an embedded model (was a SafetensorError traceback), --ckpt with the
    random-weights tiny model (was silently ignored), and a text .pt for a DiT config: read before the model
    is built, and one line without torch's advice to unpickle the file unsafely."""
    from duca_scripts import targets

    for suffix in (".safetensors", ".pt"):
        (tmp_path / f"bad{suffix}").write_text("not a checkpoint")
    built = []
    real = targets._dit_target
    monkeypatch.setattr(targets, "_dit_target", lambda *a, **k: built.append(a[0]) or real(*a, **k))
    for model, ckpt, words in [("digits", "bad.safetensors", f"--ckpt {tmp_path / 'bad.safetensors'} is not a "
                                                             f"readable .safetensors file"),
                               ("tiny", "bad.safetensors", "--model tiny runs random weights and takes no --ckpt"),
                               ("DiT-S/8", "bad.pt", f"cannot read checkpoint {tmp_path / 'bad.pt'}: "
                                                     f"torch.load(weights_only=True) refused it")]:
        with pytest.raises(SystemExit) as exc:
            benchmark_speed.main(["--model", model, "--ckpt", str(tmp_path / ckpt), "--steps", "2", "--repeats", "1",
                                  "--out", str(tmp_path / "out")])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err
        assert err.count("\n") == 1 and "Traceback" not in err and "file an issue" not in err
    assert built == [] and not (tmp_path / "out" / "benchmark.json").exists()


def test_cfg_scale_reaches_every_target(monkeypatch):
    """--cfg-scale is each target's guidance when given, its model's default when not; PixArt ignored it."""
    from duca_scripts import targets

    assert targets.build_target("tiny").cfg_scale == targets.DIT_CFG_SCALE
    assert targets.build_target("tiny", cfg_scale=1.0).cfg_scale == 1.0
    monkeypatch.setattr(targets, "_pixart_target", lambda device, cfg_scale: cfg_scale)   # no 600M-parameter build
    assert targets.build_target("PixArt-XL/2") == targets.PIXART_CFG_SCALE
    assert targets.build_target("PixArt-XL/2", cfg_scale=2.0) == 2.0


def test_markdown_parser_rejects_ragged_rows():
    with pytest.raises(ValueError, match="cells"):
        parse_markdown_table("| a | b |\n|---|---|\n| 1 |\n")
    assert math.isclose(float(parse_markdown_table("| a |\n|---|\n| 1.5 |\n")[0]["a"]), 1.5)


def test_flops_only_counts_on_meta_without_timing(tmp_path):
    data = benchmark_speed.main(["--model", "tiny", "--steps", str(STEPS), "--flops-only", "--methods", "dit-none",
                                 "dit-fora-n3", "--out", str(tmp_path)])
    rows = {r["label"]: r for r in data["rows"]}
    assert list(rows) == ["dit-none", "dit-fora-n3"]
    assert rows["dit-fora-n3"]["seconds"] == [] and rows["dit-fora-n3"]["wall_speedup"] is None
    # FORA N=3 over 6 steps counting down 5..0: full at 5 (first), 3 and 0, the other 3 reused (adaLN
    # still computed) -> a speed-up just under 2
    assert 1.9 < rows["dit-fora-n3"]["flops_speedup"] < 2.0
    table = parse_markdown_table((tmp_path / "benchmark.md").read_text())
    assert "FID 3.55" in table[1]["paper row (paper.md)"]


def test_benchmark_runs_a_cache_dit_peer_in_the_same_table(tmp_path):
    pytest.importorskip("cache_dit", reason="cache-dit peers need: pip install -e '.[peers]'")
    data = benchmark_speed.main(["--model", "tiny", "--steps", str(STEPS), "--repeats", "1", "--warmup", "0",
                                 "--skip-measured-flops", "--methods", "cachedit-dbcache:rdt=0.9",
                                 "--out", str(tmp_path)])
    base, peer = data["rows"]
    assert peer["family"] == "cachedit-dbcache" and peer["measured_flops"] is None
    assert 1.0 < peer["flops_speedup"] == pytest.approx(base["reference_flops"] / peer["reference_flops"])
    assert "C" in peer["trace"]                      # some evaluations reused cache-dit's residual
    assert peer["wall_speedup"] == pytest.approx(base["seconds_median"] / peer["seconds_median"])


def test_environment_gives_the_load_at_the_start_and_at_the_end(monkeypatch):
    """The report is assembled after the run: the start load is the one read when the script began."""
    monkeypatch.setattr(measure, "LOAD_AVERAGE_AT_IMPORT", 0.25)
    monkeypatch.setattr(measure.os, "getloadavg", lambda: (3.5, 2.0, 1.0))
    env = report.environment(torch.device("cpu"))                 # the scripts' import of measure's function
    assert env["load_average_1m_at_start"] == 0.25 and env["load_average_1m_at_end"] == 3.5
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_cpu_model_reads_the_model_name_and_falls_back(tmp_path, monkeypatch):
    """The CPU model comes from /proc/cpuinfo's first "model name"; without that file, from platform."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 9R14\n")
    assert measure.cpu_model(info) == "AMD EPYC 9R14"
    monkeypatch.setattr(measure.platform, "processor", lambda: "x86_64")
    assert measure.cpu_model(tmp_path / "missing") == "x86_64"
    info.write_text("processor\t: 0\nmodel name\t:\n")          # an empty name is no name
    assert measure.cpu_model(info) == "x86_64"
    monkeypatch.setattr(measure.platform, "processor", lambda: "")
    assert measure.cpu_model(tmp_path / "missing") is None
