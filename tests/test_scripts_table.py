"""The paper-table reproduction end to end on the tiny DiT with a two-point grid (+ a cache-dit peer)."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from duca_scripts import reproduce_table
from duca_scripts.methods import parse_method, parse_methods
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


FID_METHODS = ["dit-duca-n3-r95", "toca:n=4"]
# records each call's argv exactly as bash expanded it: NUL-separated words, one call per line
STUB = '#!/bin/sh\n{ printf "%s\\0" "$(basename "$0")" "$@"; printf "\\n"; } >> "$CALLS"\n'


def _run_launcher(script, cwd, tmp_path):
    """Run ``fid50k.sh`` with ``torchrun`` and ``python`` replaced by stubs; returns the bash-expanded argv
    of every call and the completed process."""
    stubs = tmp_path / "stub-bin"
    stubs.mkdir(exist_ok=True)
    for name in ("torchrun", "python"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    calls = tmp_path / "calls.log"
    calls.write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if k != "NGPU"}
    env.update(PATH=f"{stubs}{os.pathsep}{env['PATH']}", CALLS=str(calls))
    res = subprocess.run(["bash", str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    records = calls.read_bytes().decode().split("\0\n")
    return [r.split("\0") for r in records if r], res


def _after_module(argv, module):
    i = argv.index("-m")
    assert argv[i + 1] == module, argv
    return argv[i + 2:]


def _drop_flag(argv, flag):
    i = argv.index(flag)
    return argv[:i] + argv[i + 2:]


@pytest.mark.skipif(shutil.which("bash") is None, reason="the launcher is a bash script")
def test_fid50k_launcher_evaluates_exactly_what_it_samples(tmp_path, monkeypatch):
    """fid50k.sh, run by bash with recording stubs for torchrun and python: every sampler line parses with
    dit_duca.sample_ddp's own parser (unknown flags fail), every evaluator line with duca_eval.imagenet's,
    and the .npz each sampler writes is the --sample its evaluator reads (it read ``<sample-dir>.npz``
    while sample_ddp wrote ``<sample-dir>/<auto-name>.npz``). Then each sampler line really runs (tiny
    checkpoint, 2 samples) and the evaluator's file exists."""
    from dit_duca import sample_ddp
    from dit_duca.loading import save_checkpoint
    from dit_duca.models import DiT, DiT_models
    from dit_duca.options import cache_config_from_args
    from duca_eval import imagenet

    monkeypatch.chdir(tmp_path)                # relative paths, as a user types them
    Path("weights.pt").write_bytes(b"")
    Path("ref.npz").write_bytes(b"")
    out = Path("table")
    meta_flops = reproduce_table._meta_flops

    def flops_after_the_launcher(*args):
        assert (out / "fid50k.sh").is_file()  # the launcher needs no FLOPs: written before they are counted
        return meta_flops(*args)

    monkeypatch.setattr(reproduce_table, "_meta_flops", flops_after_the_launcher)
    data = reproduce_table.main(["--model", "DiT-S/8", "--protocol", "fid50k", "--ckpt", "weights.pt", "--ref",
                                 "ref.npz", "--methods", *FID_METHODS, "--steps", "4", "--out", str(out)])
    labels = ["none", *FID_METHODS]
    assert [r["method"] for r in data["rows"]] == labels
    script = out / "fid50k.sh"
    text = script.read_text()
    assert "--preset dit-duca-n3-r95" in text
    assert "--cache toca --fresh-threshold 4 --fresh-ratio 0.07 --cache-type attention" in text

    calls, res = _run_launcher(script, tmp_path, tmp_path)
    assert res.returncode == 0, res.stderr
    assert [c[0] for c in calls] == ["torchrun", "python"] * len(labels)
    specs = {s.label: s for s in parse_methods(labels)}
    for label, row, sampler, evaluator in zip(labels, data["rows"], calls[::2], calls[1::2], strict=True):
        assert f"--nproc_per_node={reproduce_table.DEFAULT_GPUS}" in sampler
        argv = _after_module(sampler, "dit_duca.sample_ddp")
        args = sample_ddp.build_parser().parse_args(argv)
        assert args.model in DiT_models and args.num_fid_samples == reproduce_table.FID_NUM_SAMPLES
        assert cache_config_from_args(args)[0] == specs[label].config
        # where sample_ddp writes its .npz: <folder>.npz, folder = --out or a generated name under --sample-dir
        cfg = cache_config_from_args(args)[0]
        folder = (Path(args.out) if args.out else
                  sample_ddp.default_folder(args, Path(args.ckpt).stem, sample_ddp.cache_tag(cfg)))
        written = folder.with_name(folder.name + ".npz")
        eargs = imagenet.build_parser().parse_args(_after_module(evaluator, "duca_eval.imagenet"))
        assert Path(eargs.sample).resolve() == written.resolve() == Path(row["samples"]).resolve(), label
        assert Path(eargs.ref) == Path("ref.npz").resolve() and Path(eargs.out) == Path(row["eval"]).resolve()
    assert len({c[-1] for c in calls[1::2]}) == len(labels)       # one evaluation JSON per method

    # the sampler lines as written (minus --model: the tiny checkpoint stores its own architecture), at 8 px
    torch.manual_seed(0)
    save_checkpoint(DiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=4,
                        num_classes=10).eval(), "tiny.safetensors")
    small = ["--ckpt", "tiny.safetensors", "--vae", "none", "--image-size", "8", "--num-fid-samples", "2",
             "--per-proc-batch-size", "2"]
    for sampler, evaluator in zip(calls[::2], calls[1::2], strict=True):
        assert sample_ddp.main(_drop_flag(_after_module(sampler, "dit_duca.sample_ddp"), "--model") + small) == 0
        sample = imagenet.build_parser().parse_args(_after_module(evaluator, "duca_eval.imagenet")).sample
        assert np.load(sample)["arr_0"].shape == (2, 8, 8, 3)


@pytest.mark.skipif(shutil.which("bash") is None, reason="the launcher is a bash script")
def test_fid50k_launcher_checks_its_inputs_before_sampling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("weights.pt").write_bytes(b"")
    reproduce_table.main(["--model", "DiT-S/8", "--protocol", "fid50k", "--ckpt", "weights.pt", "--ref", "ref.npz",
                          "--methods", "fora:n=2", "--steps", "2", "--out", "table"])
    calls, res = _run_launcher(tmp_path / "table" / "fid50k.sh", tmp_path, tmp_path)
    assert res.returncode == 2 and calls == []         # nothing sampled for a --ref that is not there
    assert "ref.npz does not exist" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, words", [
    (["--protocol", "fid50k"], "needs --ckpt"),
    (["--protocol", "fid50k", "--ckpt", "w.pt", "--ref", "r.npz"], "which take a DiT config"),
    (["--images", "0"], "--images 0"),
    (["--cfg-scale", "0.5"], "--cfg-scale 0.5 is invalid"),
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
