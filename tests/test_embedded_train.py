"""dit_duca.train: a few steps on the digits, exact resume, other data sources, clear errors."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dit_duca import train as train_mod
from dit_duca.embedded import load_dit_checkpoint, read_spec
from dit_duca.train import CHECKPOINT_NAME, TrainConfig, lr_factor, parse_args, train
from dit_duca.train_data import DataError, load_training_data

# A tiny DiT so a step takes milliseconds; 16x16 digits with patch 4 give 16 tokens.
TINY = dict(depth=1, hidden_size=32, num_heads=2, patch_size=4, batch_size=8, warmup_steps=2, ckpt_every=2)


def _ema(path: Path) -> dict:
    return torch.load(path / CHECKPOINT_NAME, weights_only=True)["ema"]


def test_training_runs_and_resume_continues_exactly(tmp_path):
    straight = train(TrainConfig(steps=6, **TINY), tmp_path / "a", export=tmp_path / "a.safetensors", progress=False)
    assert straight["step"] == 6 and np.isfinite(straight["final_loss"]) and np.isfinite(straight["heldout_loss"])
    # the same run interrupted after 3 steps, then resumed to 6, ends with identical weights
    train(TrainConfig(steps=3, **TINY), tmp_path / "b", progress=False)
    resumed = train(TrainConfig(steps=6, **TINY), tmp_path / "b", resume=True, progress=False)
    assert resumed["step"] == 6
    a, b = _ema(tmp_path / "a"), _ema(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the export is the EMA, loadable strictly with its spec
    model = load_dit_checkpoint(tmp_path / "a.safetensors")
    assert all(torch.equal(model.state_dict()[k], a[k]) for k in a)
    spec = read_spec(tmp_path / "a.safetensors")
    assert (spec.depth, spec.hidden_size, spec.num_classes, spec.in_channels, spec.learn_sigma) == (1, 32, 10, 1, True)


def test_resume_refuses_other_settings_and_existing_runs(tmp_path):
    train(TrainConfig(steps=2, **TINY), tmp_path, progress=False)
    with pytest.raises(ValueError, match="different depth"):
        train(TrainConfig(steps=4, **(TINY | dict(depth=2))), tmp_path, resume=True, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(TrainConfig(steps=4, **TINY), tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(TrainConfig(steps=4, **TINY), tmp_path / "empty", resume=True, progress=False)


def test_max_minutes_stops_early_with_a_checkpoint(tmp_path, monkeypatch):
    summary = train(TrainConfig(steps=1000, max_minutes=1e-9, **TINY), tmp_path, progress=False)
    assert summary["step"] == 1 and (tmp_path / CHECKPOINT_NAME).is_file()


def test_trains_on_an_image_folder_and_on_latents(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / cls / f"{i}.png")
    data = load_training_data(str(tmp_path / "imgs"), image_size=8, channels=3)
    assert data.num_classes == 2 and data.channels == 3 and data.size == 8
    assert len(data.train) + len(data.heldout) == 16 and data.train.x.abs().max() <= 1.0
    cfg = TrainConfig(data=str(tmp_path / "imgs"), image_size=8, channels=3, steps=2, **(TINY | dict(patch_size=2)))
    out = train(cfg, tmp_path / "run_imgs", export=tmp_path / "imgs.safetensors", progress=False)
    assert out["step"] == 2 and read_spec(tmp_path / "imgs.safetensors").num_classes == 2

    latents = rng.normal(size=(20, 4, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "lat.npz", latents=latents, labels=np.arange(20) % 5)
    torch.save({"latents": torch.from_numpy(latents)}, tmp_path / "lat.pt")
    npz = load_training_data(str(tmp_path / "lat.npz"), image_size=0, channels=0)
    pt = load_training_data(str(tmp_path / "lat.pt"), image_size=0, channels=0)
    assert (npz.num_classes, npz.channels, npz.size) == (5, 4, 4) and pt.num_classes == 1
    cfg = TrainConfig(data=str(tmp_path / "lat.npz"), steps=2, **(TINY | dict(patch_size=2)))
    assert train(cfg, tmp_path / "run_lat", progress=False)["step"] == 2


def test_bad_data_sources_fail_with_clear_messages(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_training_data(str(tmp_path / "missing"), 16, 1)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_training_data(str(tmp_path / "notes.txt"), 16, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_training_data(str(tmp_path / "empty"), 16, 1)
    np.savez(tmp_path / "bad.npz", images=np.zeros((20, 1, 4, 4), np.float32))
    with pytest.raises(DataError, match="expected 'latents'"):
        load_training_data(str(tmp_path / "bad.npz"), 16, 1)
    np.savez(tmp_path / "flat.npz", latents=np.zeros((20, 16), np.float32))
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        load_training_data(str(tmp_path / "flat.npz"), 16, 1)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(DataError, match="must hold a tensor"):
        load_training_data(str(tmp_path / "list.pt"), 16, 1)


def test_unreadable_latent_files_name_data_and_the_fix(tmp_path, capsys):
    """A .npz that is not a zip (numpy's message named neither the file nor --data and suggested unpickling),
    one holding object arrays, and a .pt that torch refuses (its message advised loading unsafely)."""
    (tmp_path / "text.npz").write_text("not an archive")
    np.savez(tmp_path / "objects.npz", latents=np.array([{"a": 1}], dtype=object))
    (tmp_path / "text.pt").write_text("not a tensor file")
    for name, words in [("text.npz", "is not a .npz archive (not a zip file)"),
                        ("objects.npz", "cannot read it as a numeric .npz"),
                        ("text.pt", "torch.load(weights_only=True) refused it")]:
        path = tmp_path / name
        with pytest.raises(DataError) as exc:
            load_training_data(str(path), 16, 1)
        message = str(exc.value)
        assert message.startswith(f"--data {path}") and words in message and "\n" not in message
        assert "If you trust the file" not in message and "file an issue" not in message
    with pytest.raises(SystemExit) as stop:
        train_mod.main(["--results-dir", str(tmp_path / "run"), "--data", str(tmp_path / "text.npz"), "--steps", "1"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: --data") and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("argv,message", [
    (["--depth", "0"], "--depth must be >= 1"),
    (["--class-dropout", "1.5"], "--class-dropout must be in"),
    (["--ema-decay", "1.0"], "--ema-decay must be in"),
    (["--data", "/no/such/folder"], "no such file or folder"),
    (["--export", "model.pt"], "--export must end in .safetensors"),
    (["--resume"], "no checkpoint at"),
])
def test_bad_flags_fail_before_training(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        parse_args(["--results-dir", str(tmp_path)] + argv)
    assert message in capsys.readouterr().err


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=100, warmup_steps=10)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    # then cosine decay from 1 to 0.1 over steps 10..100: halfway (step 55) 0.1 + 0.9 / 2; at step 33 the
    # progress is 23/90 and the factor 0.1 + 0.9 (1 + cos(pi 23/90)) / 2 (a linear decay would give 0.77)
    assert lr_factor(55, cfg) == pytest.approx(0.55)
    assert lr_factor(33, cfg) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 23 / 90)))
    assert lr_factor(100, cfg) == pytest.approx(train_mod.FINAL_LR_FRACTION)


def test_digits_at_32px_are_the_16px_digits_at_four_times_the_tokens():
    """--image-size 32 trains the 256-token embedded model on the same split (docs/embedded.md)."""
    d16, d32 = load_training_data("digits", 16, 1), load_training_data("digits", 32, 1)
    assert d32.size == 32 and d32.channels == 1 and d32.num_classes == 10
    assert len(d32.train) == len(d16.train) and torch.equal(d32.train.labels, d16.train.labels)
    # 2x2 average pooling of the 32 px digits gives the 16 px digits exactly (both are bilinear from 8x8).
    assert torch.equal(torch.nn.functional.avg_pool2d(d32.heldout.x, 2), d16.heldout.x)
    assert TrainConfig(image_size=32).spec(d32).tokens == 256
    with pytest.raises(DataError, match="below the digits' own 8x8"):
        load_training_data("digits", 4, 1)
