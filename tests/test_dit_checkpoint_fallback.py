"""DiT scripts without the official checkpoint, pixel-space checkpoints, and bad inputs under torchrun.

* ``sample.py`` with no ``--ckpt`` and no official file samples the embedded digits DiT; the reference
  command (``--image-size 256``, ``--model DiT-XL/2``) runs, its official-model flags replaced, with one note.
  With ``--ckpt`` a contradicting flag is still refused.
* A ``dit_duca.train`` export trained on pixels gets ``--vae none`` when ``--vae`` is left out, in
  ``sample.py`` and ``sample_ddp.py`` alike (one helper, ``options.choose_vae``).
* ``sample_ddp.py`` does not fall back to the digits model; its refusal says so and names both fixes.
* Under torchrun a bad input is printed once (rank 0) and the ranks exit 2 together; torchrun exits 1.
* The missing-checkpoint message reads as one line (it printed "Download it with; mkdir ...").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dit_duca import sample as sample_cli
from dit_duca import sample_ddp
from dit_duca.embedded import DEFAULT_EMBEDDED_PATH, DiTSpec, save_dit
from dit_duca.loading import CheckpointNotFoundError, resolve_checkpoint, save_checkpoint
from dit_duca.models import DiT
from dit_duca.options import choose_vae
from duca_common.errors import UsageError, one_line

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt"
TINY_SPEC = DiTSpec(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=4, num_classes=10)


def _no_official_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """Run where no official DiT-XL/2 file can be found (skip on a machine that has one in the package)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIT_CHECKPOINT_DIR", str(tmp_path))
    try:
        resolve_checkpoint(None, "DiT-XL/2", 256)
    except CheckpointNotFoundError:
        return
    pytest.skip("the official checkpoint is present on this machine")


def _tiny_export(path: Path, data: str) -> Path:
    """A tiny ``dit_duca.train``-style export: weights, spec and the training-data description."""
    torch.manual_seed(0)
    return save_dit(TINY_SPEC.build().state_dict(), TINY_SPEC, path, {"data": data})


@pytest.fixture(scope="module")
def pixel_export(tmp_path_factory):
    return _tiny_export(tmp_path_factory.mktemp("export") / "pixels.safetensors", "sklearn digits (train split)")


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------------------------ 1. fallback

def test_reference_command_without_checkpoint_samples_the_embedded_model(tmp_path, monkeypatch, capsys):
    _no_official_checkpoint(tmp_path, monkeypatch)
    report = sample_cli.main(["--model", "DiT-XL/2", "--image-size", "256", "--num-sampling-steps", "2",
                              "--cache", "duca", "--ddim-sample", "--out", str(tmp_path / "s.png"), "--no-progress",
                              "--device", "cpu"])
    err = capsys.readouterr().err
    assert report["checkpoint"] == str(DEFAULT_EMBEDDED_PATH) and (tmp_path / "s.png").is_file()
    assert report["args"]["image_size"] == 16 and report["args"]["vae"] == "none"
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, err
    assert "--model DiT-XL/2 --image-size 256" in notes[0] and OFFICIAL_URL in notes[0]
    assert not _error_lines(err)


def test_fallback_replaces_an_explicit_vae_and_names_it(tmp_path, monkeypatch, capsys):
    _no_official_checkpoint(tmp_path, monkeypatch)
    report = sample_cli.main(["--image-size", "512", "--vae", "ema", "--num-classes", "1000", "--num-sampling-steps",
                              "1", "--class-labels", "3", "--out", str(tmp_path / "s.png"), "--no-progress",
                              "--device", "cpu"])
    note = capsys.readouterr().err
    assert report["args"]["vae"] == "none" and report["args"]["num_classes"] == 10
    assert "--image-size 512 --num-classes 1000 --vae ema" in note
    assert "DiT-XL-2-512x512.pt" in note


def test_explicit_checkpoint_that_contradicts_a_flag_is_still_refused(tmp_path, monkeypatch, capsys):
    _no_official_checkpoint(tmp_path, monkeypatch)
    with pytest.raises(SystemExit) as exc:
        sample_cli.main(["--ckpt", str(DEFAULT_EMBEDDED_PATH), "--image-size", "256", "--num-sampling-steps", "1",
                         "--out", str(tmp_path / "s.png"), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "note:" not in err
    assert "--image-size 256 contradicts checkpoint" in _error_lines(err)[0]
    assert not (tmp_path / "s.png").exists()


def test_no_fallback_file_either_names_the_download(tmp_path, monkeypatch, capsys):
    _no_official_checkpoint(tmp_path, monkeypatch)
    monkeypatch.setattr("dit_duca.embedded.DEFAULT_EMBEDDED_PATH", tmp_path / "absent.safetensors")
    with pytest.raises(SystemExit) as exc:
        sample_cli.main(["--num-sampling-steps", "1", "--out", str(tmp_path / "s.png"), "--no-progress"])
    assert exc.value.code == 2
    assert OFFICIAL_URL in _error_lines(capsys.readouterr().err)[0]


# ------------------------------------------------------------------------------------------------ 2a. VAE

def test_pixel_export_samples_without_a_vae_in_both_scripts(tmp_path, pixel_export):
    out = tmp_path / "ddp"
    assert sample_ddp.main(["--ckpt", str(pixel_export), "--num-fid-samples", "2", "--per-proc-batch-size", "2",
                            "--num-sampling-steps", "2", "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["settings"]["vae"] == "none"
    assert np.load(tmp_path / "ddp.npz")["arr_0"].shape == (2, 8, 8, 3)
    report = sample_cli.main(["--ckpt", str(pixel_export), "--num-sampling-steps", "2", "--class-labels", "1",
                              "--out", str(tmp_path / "s.png"), "--no-progress", "--device", "cpu"])
    assert report["args"]["vae"] == "none" and report["args"]["image_size"] == 8


def test_a_vae_named_for_a_pixel_export_is_refused(tmp_path, pixel_export, capsys):
    flags = ["--ckpt", str(pixel_export), "--vae", "mse", "--num-sampling-steps", "2"]
    assert sample_ddp.main(flags + ["--num-fid-samples", "2", "--out", str(tmp_path / "ddp")]) == 2
    assert "--vae mse contradicts checkpoint" in _error_lines(capsys.readouterr().err)[0]
    assert not (tmp_path / "ddp").exists()
    with pytest.raises(SystemExit) as exc:
        sample_cli.main(flags + ["--out", str(tmp_path / "s.png"), "--no-progress"])
    assert exc.value.code == 2
    assert "drop --vae or pass --vae none" in _error_lines(capsys.readouterr().err)[0]


def test_vae_default_follows_what_the_checkpoint_was_trained_on(tmp_path, pixel_export):
    latents = _tiny_export(tmp_path / "latents.safetensors", "latents z.npz (100, 1, 8, 8)")
    plain = save_checkpoint(DiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=1, num_heads=4,
                                num_classes=10), tmp_path / "plain.safetensors")
    (tmp_path / "official.pt").write_bytes(b"not read: only a safetensors export says what it was trained on")
    for ckpt, expected in [(pixel_export, "none"), (latents, "ema"), (plain, "ema"), (tmp_path / "official.pt", "ema"),
                           (None, "ema")]:
        args = argparse.Namespace(vae=None)
        choose_vae(args, ckpt, "ema")
        assert args.vae == expected, ckpt
    args = argparse.Namespace(vae="mse")
    choose_vae(args, latents, "ema")
    assert args.vae == "mse"
    with pytest.raises(UsageError, match="samples pixels"):
        choose_vae(argparse.Namespace(vae="ema"), pixel_export, "ema")


def test_sample_ddp_without_checkpoint_says_it_does_not_fall_back(tmp_path, monkeypatch, capsys):
    _no_official_checkpoint(tmp_path, monkeypatch)
    assert sample_ddp.main(["--num-fid-samples", "2", "--out", str(tmp_path / "o")]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert "does not fall back to the embedded digits DiT" in lines[0]
    assert f"--ckpt {DEFAULT_EMBEDDED_PATH}" in lines[0] and OFFICIAL_URL in lines[0]
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ 2b. torchrun

@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = DiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=1, num_heads=4, num_classes=10)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.mark.parametrize("bad,message", [
    (["--image-size", "16"], "error: --image-size 16 contradicts checkpoint"),          # found after loading
    (["--num-fid-samples", "x"], "sample_ddp.py: error: argument --num-fid-samples"),   # argparse's own
], ids=["checkpoint", "argparse"])
def test_torchrun_bad_input_is_printed_once_and_every_rank_exits_2(tmp_path, tiny_ckpt, bad, message):
    out = tmp_path / "o"
    flags = ["--ckpt", str(tiny_ckpt), "--vae", "none", "--num-sampling-steps", "2", "--num-fid-samples", "2",
             "--per-proc-batch-size", "1", "--out", str(out), *bad]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                          str(ROOT / "DiT-DuCa" / "sample_ddp.py"), *flags],
                         cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                         timeout=120)
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(message.split(" --")[0]), res.stderr[-3000:]
    assert message in errors[0]
    # torchrun exits 1 for any failed worker (it does not pass the status through); its summary shows the first
    # worker's own status 2 (it may stop the other, already past the line, with SIGTERM: exitcode -15)
    assert res.returncode == 1
    assert "exitcode  : 2" in res.stderr
    assert 'sample_ddp.py", line' not in res.stderr  # no worker traceback
    assert not out.exists()


def test_torchrun_help_is_printed_once(tmp_path):
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                          str(ROOT / "DiT-DuCa" / "sample_ddp.py"), "--help"],
                         cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("usage: sample_ddp.py") == 1 and "--num-fid-samples" in res.stdout


# ------------------------------------------------------------------------------------------------ 2c. message

def test_missing_checkpoint_message_is_one_readable_line(tmp_path, monkeypatch):
    _no_official_checkpoint(tmp_path, monkeypatch)
    with pytest.raises(CheckpointNotFoundError) as exc:
        resolve_checkpoint(None, "DiT-XL/2", 256)
    line = one_line(exc.value)
    assert line == str(exc.value)                   # nothing to join: no "Download it with; mkdir" any more
    assert (f"download it with `mkdir -p pretrained_models && curl -L -o pretrained_models/DiT-XL-2-256x256.pt "
            f"{OFFICIAL_URL}`, or pass --ckpt PATH") in line
    assert line.endswith("Only DiT-XL/2 at 256 and 512 has official weights.")   # from OFFICIAL_CHECKPOINTS
