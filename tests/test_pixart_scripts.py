"""End to end on CPU with tiny weights: scripts/inference.py (reference flags, report, --flops-only, errors
before any work) and scripts/inference_ddp.py (2 torchrun processes give the same images as 1; resume)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixart_duca.scripts import inference, inference_ddp
from pixart_tiny import build_t5, build_vae, save_pth, tiny_model

PROMPTS = ["a man on a horse", "Red cat on the park! http://x.com/a.jpg", "two gray fire hydrants",
           "a dog with a tennis racket", "the blue carriage in a historic city"]
REFERENCE_FLAGS = ["--fresh_threshold", "3", "--fresh_ratio", "0.30", "--cache_type", "attention",
                   "--force_fresh", "global", "--soft_fresh_weight", "0.25", "--ratio_scheduler", "ToCa"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("pixart")
    save_pth(tiny_model(), root / "tiny.pth")
    build_t5(root / "t5_ckpts" / "t5-v1_1-xxl")          # upstream's layout: t5_ckpts/t5-v1_1-xxl
    build_vae(root / "vae")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


def base_args(assets: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_path", str(assets / "tiny.pth"), "--image_size", "64", "--txt_file", str(assets / "prompts.txt"),
            "--t5_path", str(assets / "t5_ckpts"), "--out", str(out), "--steps", "6", *extra]


def pixels(folder: Path, n: int) -> list[np.ndarray]:
    return [np.asarray(Image.open(folder / f"{i:06d}.png")) for i in range(n)]


def test_inference_reference_flags_with_vae_and_report(assets, tmp_path):
    out, report = tmp_path / "out", tmp_path / "r.json"
    args = base_args(assets, out, "--bs", "2", "--vae_path", str(assets / "vae"), "--report", str(report),
                     *REFERENCE_FLAGS)
    assert inference.main(args) == 0
    images = pixels(out, len(PROMPTS))
    assert all(im.shape == (64, 64, 3) for im in images) and images[0].std() > 0
    assert (out / "prompts.txt").read_text().splitlines() == PROMPTS
    rep = json.loads(report.read_text())
    assert rep["cache_config"]["method"] == "duca" and rep["cache_config"]["selector"] == "cross_entropy"
    assert rep["cache_config"]["fresh_ratio"] == 0.30
    f = rep["flops"]
    assert f["reference_full"] > f["reference_cached"] > 0 and f["measured_full"] > f["measured_cached"] > 0
    assert rep["trace_first_batch"]["trunk_reused"] == [False, False, True, False, False, True]


def test_presets_and_cache_off(assets, tmp_path):
    runs = {}
    for name, flags in {"none": ["--cache", "none"], "r25": ["--preset", "pixart-duca-r25"],
                        "kv": ["--preset", "pixart-toca-r70", "--cache_type", "kv-norm"]}.items():
        assert inference.main(base_args(assets, tmp_path / name, "--bs", "5", "--vae_path", "none", *flags)) == 0
        runs[name] = pixels(tmp_path / name, len(PROMPTS))
    for name in ("r25", "kv"):
        diff = np.mean([np.abs(a.astype(int) - b.astype(int)).mean()
                        for a, b in zip(runs[name], runs["none"], strict=True)])
        assert 0 < diff < 40, name


def test_flops_only_needs_no_weights(assets, tmp_path, capsys):
    report = tmp_path / "f.json"
    assert inference.main(["--flops-only", "--model_path", str(assets / "tiny.pth"), "--image_size", "64",
                           "--prompt", "a cat", "--t5_path", str(assets / "t5_ckpts"), "--report", str(report),
                           "--preset", "pixart-duca-r25"]) == 0
    rep = json.loads(report.read_text())
    assert rep["flops"]["text_tokens_total"] == 2 * 3 and rep["flops"]["text_lengths_from"] == "T5 tokenizer"
    assert "reference FLOPs per image" in capsys.readouterr().out


@pytest.mark.parametrize("change,message", [
    (["--txt_file", "MISSING"], "does not exist"),
    (["--txt_file", "EMPTY"], "is empty"),
    (["--txt_file", "HOLE"], "empty lines"),
    (["--model_path", "WRONG"], "not a PixArt-alpha checkpoint"),
    (["--image_size", "128"], "but --image_size is 128"),
    (["--fresh_ratio", "1.5"], "fresh_ratio"),
    (["--t5_path", "MISSING"], "--t5_path"),
    (["--preset", "dit-duca-n3-r95"], "dit preset"),
])
def test_clear_errors_before_any_work(assets, tmp_path, capsys, change, message):
    (tmp_path / "EMPTY").write_text("\n")
    (tmp_path / "HOLE").write_text("a cat\n\na dog\n")
    torch.save({"state_dict": {"net.weight": torch.zeros(2)}}, tmp_path / "WRONG")
    change = [str(tmp_path / c) if c in ("MISSING", "EMPTY", "HOLE", "WRONG") else c for c in change]
    args = base_args(assets, tmp_path / "out", "--vae_path", "none") + change
    for script in (inference, inference_ddp):
        assert script.main(args) == 2
        assert message in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*.png"))


def test_bad_weight_paths_and_prompt_files_name_the_flag(assets, tmp_path, capsys, monkeypatch):
    """A text file as --model_path (torch's weights-only essay, advising to unpickle unsafely, was the message),
    missing local folders written with a trailing slash (taken for hub ids; --t5_path failed only after the
    transformer was loaded), and an empty --txt_file (the message did not name the flag)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    (tmp_path / "EMPTY").write_text("\n")
    for change, words in [(["--model_path", "notes.pth"], "cannot read 'notes.pth' as a torch checkpoint "
                                                          "(torch.load(weights_only=True) refused it"),
                          (["--model_path", "PixArt-XL-2-256x256/", "--image_size", "256"],
                           "--model_path 'PixArt-XL-2-256x256/' does not exist"),
                          (["--t5_path", "t5_ckpts/"], "--t5_path 't5_ckpts/' does not exist"),
                          (["--vae_path", "sd-vae-ft-ema/"], "--vae_path 'sd-vae-ft-ema/' does not exist"),
                          (["--txt_file", "EMPTY"], "--txt_file 'EMPTY' is empty")]:
        args = base_args(assets, tmp_path / "out", "--vae_path", "none") + change
        for script in (inference, inference_ddp):
            assert script.main(args) == 2
            err = capsys.readouterr().err
            assert err.startswith("error: ") and words in err, err
            assert err.count("\n") == 1 and "file an issue" not in err
    assert not (tmp_path / "out").exists()


def test_ddp_two_processes_equal_one_and_resume(assets, tmp_path):
    common = ["--bs", "2", "--vae_path", "none", *REFERENCE_FLAGS]
    one = tmp_path / "one"
    assert inference_ddp.main(base_args(assets, one, *common)) == 0
    two = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    script = Path(inference_ddp.__file__)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), *base_args(assets, two, *common)], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = pixels(one, len(PROMPTS)), pixels(two, len(PROMPTS))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert (two / "prompts.txt").read_text().splitlines() == PROMPTS
    # resume: only the missing image's batch is redone; finished files are left untouched
    stamp = {i: (one / f"{i:06d}.png").stat().st_mtime_ns for i in range(len(PROMPTS))}
    (one / "000003.png").unlink()
    assert inference_ddp.main(base_args(assets, one, *common)) == 0
    assert np.array_equal(pixels(one, 4)[3], a[3])
    assert all((one / f"{i:06d}.png").stat().st_mtime_ns == stamp[i] for i in (0, 1, 2, 4))
    # a different prompt list cannot be mixed into the same folder
    (tmp_path / "other.txt").write_text("a cat\n")
    assert inference_ddp.main(base_args(assets, one, *common) + ["--txt_file", str(tmp_path / "other.txt")]) == 2
