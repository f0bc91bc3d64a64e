"""The paper-table reproduction end to end on the tiny DiT with a two-point grid (+ a cache-dit peer)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from duca_scripts import reproduce_table
from duca_scripts.methods import parse_method
from duca_scripts.report import parse_markdown_table
from duca_scripts.targets import build_target

STEPS = 6
IMAGES = 3
try:
    import cache_dit  # noqa: F401  (optional extra "peers")
    HAVE_CACHE_DIT = True
except ImportError:
    HAVE_CACHE_DIT = False
needs_cache_dit = pytest.mark.skipif(not HAVE_CACHE_DIT, reason="cache-dit peers need: pip install -e '.[peers]'")
PEER = "cachedit-dbcache:rdt=0.9"
METHODS = ["duca:n=3", "fora:n=2"] + ([PEER] if HAVE_CACHE_DIT else [])


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = tmp_path_factory.mktemp("table")
    data = reproduce_table.main(["--model", "tiny", "--methods", *METHODS, "--images", str(IMAGES), "--batch-size", "2",
                                 "--steps", str(STEPS), "--out", str(out)])
    return out, data


def test_markdown_and_csv_parse_with_every_row(table):
    out, data = table
    md = parse_markdown_table((out / "table.md").read_text())
    assert [r["method"] for r in md] == ["none"] + METHODS
    assert set(reproduce_table.TABLE_HEADERS) == set(md[0])
    with open(out / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == [r["method"] for r in md]
    for r in rows:
        assert float(r["flops_speedup"]) >= 1.0 and float(r["seconds"]) > 0
    assert json.loads((out / "table.json").read_text())["rows"][1]["method"] == "duca:n=3"


def test_ratios_and_fidelity_come_from_the_same_run(table):
    _, data = table
    rows = {r["method"]: r for r in data["rows"]}
    base = rows["none"]
    assert base["psnr"] is None and base["flops_speedup"] == 1.0
    for name in METHODS:
        r = rows[name]
        assert r["flops_speedup"] == pytest.approx(base["tflops_per_image"] / r["tflops_per_image"])
        assert r["wall_speedup"] == pytest.approx(base["seconds"] / r["seconds"])
        assert math.isfinite(r["psnr"]) and r["psnr"] > 0     # cached samples differ from the uncached ones
    # interleaved rounds: every method timed once per round; the speed-up range holds the per-round ratios
    assert len(base["seconds_rounds"]) == reproduce_table.DEFAULT_REPEATS == len(base["cpu_seconds_rounds"])
    for name in METHODS:
        r = rows[name]
        assert len(r["seconds_rounds"]) == reproduce_table.DEFAULT_REPEATS
        # with two rounds the ratio of medians (means) is the mediant of the per-round ratios: between them
        for kind in ("cpu", "wall"):
            lo, hi = r[f"{kind}_speedup_rounds_min"], r[f"{kind}_speedup_rounds_max"]
            assert lo * (1 - 1e-9) <= r[f"{kind}_speedup"] <= hi * (1 + 1e-9)
    assert rows["fora:n=2"]["flops_speedup"] > 1.4          # every other step reused (adaLN still runs)
    if HAVE_CACHE_DIT:
        assert rows[PEER]["measured_flops_speedup"] is None   # value-dependent: not replayable on meta


def test_plots_and_heatmaps_are_pngs(table):
    from PIL import Image

    out, data = table
    with Image.open(out / "pareto.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    heatmaps = sorted(p.name for p in (out / "heatmaps").iterdir())
    assert heatmaps == ["duca_n_3.png", "fora_n_2.png"]   # one per engine method; none for the baseline or peers
    with Image.open(out / "heatmaps" / "duca_n_3.png") as im:
        assert im.format == "PNG"


@needs_cache_dit
def test_peer_wrapping_is_undone_and_reproducible():
    from duca_scripts.peers import attach_peer

    target = build_target("tiny")
    z, y = target.noise(2, 0), target.labels(2)
    reference = target.sample(z, y, STEPS)
    peer = parse_method(PEER).peer
    outs = []
    for _ in range(2):
        with attach_peer(target, peer, STEPS) as run:
            outs.append(target.sample(z, y, STEPS))
        assert run.cached_evaluations > 0 and len(run.evaluations) == STEPS
    assert torch.equal(outs[0], outs[1])                       # context refreshed per run
    assert len(target.model.blocks) == 2
    assert torch.equal(target.sample(z, y, STEPS), reference)  # hooks removed


def test_fid50k_protocol_writes_a_launcher(tmp_path):
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"")
    data = reproduce_table.main(["--model", "tiny", "--protocol", "fid50k", "--ckpt", str(ckpt), "--ref", "ref.npz",
                                 "--methods", "dit-duca-n3-r95", "toca:n=4", "--steps", "4", "--out", str(tmp_path)])
    script = (tmp_path / "fid50k.sh").read_text()
    assert script.count("torchrun") == 3 and script.count("duca_eval.imagenet") == 3
    assert "--preset dit-duca-n3-r95" in script
    assert "--cache toca --fresh-threshold 4 --fresh-ratio 0.07 --cache-type attention" in script
    assert [r["method"] for r in data["rows"]] == ["none", "dit-duca-n3-r95", "toca:n=4"]


@pytest.mark.parametrize("argv, words", [
    (["--protocol", "fid50k"], "needs --ckpt"),
    (["--images", "0"], "--images 0"),
    (["--methods", "taylorseer:o=x"], "not an integer"),
    (["--model", "digits", "--ckpt", "/nonexistent/digits.safetensors"], "does not exist"),
])
def test_bad_inputs_exit_with_a_message(argv, words, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        reproduce_table.main(["--model", "tiny", "--steps", "2", "--out", str(tmp_path)] + argv)
    assert exc.value.code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "table.md").exists()


@pytest.mark.parametrize("method", ["none", "fora:n=4", "toca:n=4", "duca:n=5,r=0.9,sel=random", "taylorseer:n=4,o=2",
                                    "foca:n=5", "hicache:n=3,o=1", "dualca:n=4,r=0.93,o=2"])
def test_fid50k_flags_give_back_the_same_config(method):
    """The flags written into the FID-50k launcher describe exactly the benchmarked config when DiT's
    sample_ddp parses them (every method, whatever flags it takes)."""
    import shlex

    from dit_duca import sample_ddp
    from dit_duca.options import cache_config_from_args

    spec = parse_method(method)
    args = sample_ddp.build_parser().parse_args(shlex.split(reproduce_table.cache_flags(spec)))
    assert cache_config_from_args(args)[0] == spec.config
