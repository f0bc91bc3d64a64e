"""Every CLI against a table of bad inputs (issue 13.4): each must exit with status 2, print one ``error:``
line naming the problem, print no traceback, and leave every file as it was (nothing written, nothing lost).

The CLIs run in-process (``main(argv)``; ``SystemExit`` caught) on tiny assets built once per module.

Unwritable outputs: the tests run as root, where ``chmod`` does not stop a write. Two paths fail for root
too, and both are used: a path *under a regular file* (``blocker/out``: the folder cannot exist) and a path
under ``/proc`` (a kernel file system where nothing can be created). The output checks decide by a probe
write, not ``os.access`` (which answers "writable" for both as root), so these cases are real.

OpenSora rows: add them to ``OPENSORA_ROWS`` (the opensora helper owns that CLI).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dit_duca import sample as dit_sample
from dit_duca import sample_ddp as dit_ddp
from dit_duca import train as dit_train
from dit_duca.loading import save_checkpoint
from dit_duca.models import DiT
from duca_eval import coco as eval_coco
from duca_eval import fidelity as eval_fidelity
from duca_eval import imagenet as eval_imagenet
from duca_eval import testing as eval_testing
from duca_eval.report import run_cli
from duca_scripts import benchmark_speed, reproduce_table
from opensora_duca import inference as opensora_inference
from opensora_duca.checkpoint import save_safetensors as save_opensora
from opensora_duca.stdit3 import config_dict as stdit3_config_dict
from opensora_duca.vae import vae_config_dict
from opensora_tiny import TINY as OPENSORA_TINY
from opensora_tiny import tiny_stdit3, tiny_vae, tiny_vae_config
from pixart_duca.scripts import inference as pixart_inference
from pixart_duca.scripts import inference_ddp as pixart_ddp
from pixart_tiny import build_t5, save_pth, tiny_model

PROC = "/proc/duca-bad-inputs/out"           # cannot be created, even by root


class Evil:
    """A pickled object: loading it needs code, so weights_only loading refuses it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def _tiny_dit(nan: bool = False) -> DiT:
    torch.manual_seed(0)
    model = DiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=4, num_classes=10)
    if nan:
        with torch.no_grad():
            model.final_layer.linear.weight.fill_(float("nan"))
    return model.eval()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Assets and pre-existing outputs; the snapshot of this folder must not change in any row."""
    r = tmp_path_factory.mktemp("bad_inputs")
    save_checkpoint(_tiny_dit(), r / "dit.safetensors")
    save_checkpoint(_tiny_dit(nan=True), r / "dit_nan.safetensors")
    torch.save(_tiny_dit().state_dict(), r / "dit_raw.pt")                       # no stored architecture
    (r / "corrupt.pt").write_bytes(b"this is not a checkpoint")
    good = (r / "dit.safetensors").read_bytes()
    (r / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    torch.save({"model": Evil()}, r / "pickled.pt")
    (r / "blocker").write_text("a regular file: nothing can be created under it\n")
    (r / "a_folder").mkdir()
    (r / "latin1.txt").write_bytes("a red car\na caf\xe9 at night\n".encode("latin-1"))
    (r / "utf16.txt").write_bytes("a red car\n".encode("utf-16"))
    (r / "utf16le.txt").write_bytes("a red car\n".encode("utf-16-le"))
    (r / "prompts.txt").write_text("a red car\n", encoding="utf-8")
    save_pth(tiny_model(), r / "pixart.pth")
    build_t5(r / "t5")
    # outputs of earlier runs, which a bad rerun must not touch
    assert dit_ddp.main(_ddp_base(r, r / "ddp_seed1") + ["--global-seed", "1"]) == 0
    loose = r / "loose_pngs"
    eval_testing.write_random_images(loose, 1, size=8)
    assert pixart_inference.main(_pixart_base(r, r / "pixart_seed1") + ["--seed", "1"]) == 0
    (r / "train_done").mkdir()
    (r / "train_done" / dit_train.CHECKPOINT_NAME).write_bytes(b"an earlier run's checkpoint")
    eval_testing.write_random_images(r / "coco_sample", 1, size=16)
    # OpenSora: tiny STDiT3 / VAE folders, NaN weights, a finished run (seed 1), videos without a record
    save_opensora(tiny_stdit3(), r / "os_stdit", stdit3_config_dict(OPENSORA_TINY))
    nan = tiny_stdit3()
    with torch.no_grad():
        nan.final_layer.linear.bias.fill_(float("nan"))
    save_opensora(nan, r / "os_stdit_nan", stdit3_config_dict(OPENSORA_TINY))
    save_opensora(tiny_vae(), r / "os_vae", vae_config_dict(tiny_vae_config()))
    (r / "os_truncated").mkdir()
    stdit_file = (r / "os_stdit" / "model.safetensors").read_bytes()
    (r / "os_truncated" / "model.safetensors").write_bytes(stdit_file[: len(stdit_file) // 2])
    assert opensora_inference.main(_os_base(r, r / "os_seed1") + ["--seed", "1"]) == 0
    (r / "loose_mp4s").mkdir()
    (r / "loose_mp4s" / "sample_0000.mp4").write_bytes(b"an earlier run's video")
    return r


def _dit_base(r: Path) -> list[str]:
    return ["--ckpt", str(r / "dit.safetensors"), "--vae", "none", "--image-size", "8", "--num-sampling-steps", "2",
            "--class-labels", "1,2", "--cache", "duca", "--no-progress", "--out", str(r / "new" / "grid.png")]


def _ddp_base(r: Path, out: Path) -> list[str]:
    return ["--ckpt", str(r / "dit.safetensors"), "--vae", "none", "--image-size", "8", "--num-sampling-steps", "2",
            "--num-fid-samples", "2", "--per-proc-batch-size", "2", "--out", str(out)]


def _pixart_base(r: Path, out: Path) -> list[str]:
    return ["--model_path", str(r / "pixart.pth"), "--image_size", "64", "--txt_file", str(r / "prompts.txt"),
            "--t5_path", str(r / "t5"), "--vae_path", "none", "--steps", "2", "--out", str(out)]


def _train_base(r: Path) -> list[str]:
    return ["--results-dir", str(r / "new_train"), "--steps", "1", "--depth", "1", "--hidden-size", "16",
            "--num-heads", "2", "--batch-size", "4", "--no-progress"]


def _os_base(r: Path, out: Path, prompts_file: str | None = None) -> list[str]:
    prompts = ["--prompts-file", str(r / prompts_file)] if prompts_file else ["--prompt", "a red car"]
    return ["--ckpt-path", str(r / "os_stdit"), "--vae-path", str(r / "os_vae"), "--t5-path", str(r / "t5"),
            "--image-size", "16", "16", "--num-frames", "17", "--steps", "2", "--device", "cpu", *prompts,
            "--out", str(out), "--verbose", "0"]


def _exit_code(fn: Callable[[], object]) -> int:
    try:
        result = fn()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return result if isinstance(result, int) else 0


CLIS: dict[str, Callable[[list[str]], int]] = {
    "dit.sample": lambda argv: _exit_code(lambda: dit_sample.main(argv)),
    "dit.sample_ddp": lambda argv: _exit_code(lambda: dit_ddp.main(argv)),
    "dit.train": lambda argv: _exit_code(lambda: dit_train.main(argv)),
    "pixart.inference": lambda argv: _exit_code(lambda: pixart_inference.main(argv)),
    "pixart.inference_ddp": lambda argv: _exit_code(lambda: pixart_ddp.main(argv)),
    "eval.fidelity": lambda argv: run_cli(eval_fidelity.main, argv + ["--quiet"]),
    "eval.imagenet": lambda argv: run_cli(eval_imagenet.main, argv + ["--quiet"]),
    "eval.coco": lambda argv: run_cli(eval_coco.main, argv + ["--quiet"]),
    "scripts.benchmark_speed": lambda argv: _exit_code(lambda: benchmark_speed.main(argv)),
    "scripts.reproduce_table": lambda argv: _exit_code(lambda: reproduce_table.main(argv)),
    "opensora.inference": lambda argv: _exit_code(lambda: opensora_inference.main(argv)),
}

D, P = _dit_base, _pixart_base
# (id, cli, argv from the assets folder, text the error line must contain)
ROWS: list[tuple[str, str, Callable[[Path], list[str]], str]] = [
    # --- DiT sample.py: checkpoints
    ("missing-ckpt", "dit.sample", lambda r: D(r) + ["--ckpt", str(r / "nope.pt")], "no such file"),
    ("corrupt-ckpt", "dit.sample", lambda r: D(r) + ["--ckpt", str(r / "corrupt.pt")], "cannot read checkpoint"),
    ("truncated-ckpt", "dit.sample", lambda r: D(r) + ["--ckpt", str(r / "truncated.safetensors")],
     "cannot read checkpoint"),
    ("pickled-ckpt", "dit.sample", lambda r: D(r) + ["--ckpt", str(r / "pickled.pt")], "cannot read checkpoint"),
    ("wrong-shape-ckpt", "dit.sample", lambda r: D(r) + ["--ckpt", str(r / "dit_raw.pt"), "--model", "DiT-S/2"],
     "does not fit"),
    ("stored-arch-vs-image-size", "dit.sample", lambda r: D(r) + ["--image-size", "16"],
     "--image-size 16 contradicts checkpoint"),
    ("stored-arch-vs-model", "dit.sample", lambda r: D(r) + ["--model", "DiT-S/2"], "--model DiT-S/2 (hidden_size 384"),
    ("nan-weights", "dit.sample", lambda r: D(r) + ["--ckpt", str(r / "dit_nan.safetensors")],
     "NaN/inf at step 1 of 2 (method duca"),
    # --- DiT sample.py: numbers
    ("cfg-nan", "dit.sample", lambda r: D(r) + ["--cfg-scale", "nan"], "--cfg-scale nan is invalid"),
    ("cfg-inf", "dit.sample", lambda r: D(r) + ["--cfg-scale", "inf"], "--cfg-scale inf is invalid"),
    ("steps-1001", "dit.sample", lambda r: D(r) + ["--num-sampling-steps", "1001"], "<= 1000"),
    ("seed-negative", "dit.sample", lambda r: D(r) + ["--seed", "-1"], "--seed -1 is invalid"),
    ("fresh-ratio-nan", "dit.sample", lambda r: D(r) + ["--fresh-ratio", "nan"], "--fresh-ratio nan is invalid"),
    ("not-an-int", "dit.sample", lambda r: D(r) + ["--num-sampling-steps", "2.5"], "invalid int value"),
    # --- DiT sample.py: outputs
    ("out-under-file", "dit.sample", lambda r: D(r) + ["--out", str(r / "blocker" / "g.png")], "lies under"),
    ("out-is-folder", "dit.sample", lambda r: D(r) + ["--out", str(r / "a_folder")], "is a folder"),
    ("out-bad-suffix", "dit.sample", lambda r: D(r) + ["--out", str(r / "new" / "g.xyz")], "must end in"),
    ("report-in-proc", "dit.sample", lambda r: D(r) + ["--report", PROC + "/r.json"], "cannot be written"),
    ("latents-under-file", "dit.sample", lambda r: D(r) + ["--save-latents", str(r / "blocker" / "z.pt")],
     "--save-latents"),
    # --- DiT sample_ddp.py
    ("ddp-seed-negative", "dit.sample_ddp", lambda r: _ddp_base(r, r / "new_ddp") + ["--global-seed", "-1"],
     "--global-seed -1 is invalid"),
    ("ddp-steps-1001", "dit.sample_ddp", lambda r: _ddp_base(r, r / "new_ddp") + ["--num-sampling-steps", "1001"],
     "<= 1000"),
    ("ddp-pickled-ckpt", "dit.sample_ddp", lambda r: _ddp_base(r, r / "new_ddp") + ["--ckpt", str(r / "pickled.pt")],
     "cannot read checkpoint"),
    ("ddp-out-under-file", "dit.sample_ddp", lambda r: _ddp_base(r, r / "blocker" / "ddp"), "lies under"),
    ("ddp-out-in-proc", "dit.sample_ddp", lambda r: _ddp_base(r, Path(PROC)), "cannot be written"),
    ("ddp-other-run", "dit.sample_ddp", lambda r: _ddp_base(r, r / "ddp_seed1"),
     "global_seed: recorded 1, now 0"),
    ("ddp-unrecorded-pngs", "dit.sample_ddp", lambda r: _ddp_base(r, r / "loose_pngs"), "no run.json"),
    ("ddp-image-size-vs-ckpt", "dit.sample_ddp", lambda r: _ddp_base(r, r / "new_ddp") + ["--image-size", "16"],
     "contradicts checkpoint"),
    # --- DiT train.py
    ("train-lr-nan", "dit.train", lambda r: _train_base(r) + ["--lr", "nan"], "--lr"),
    ("train-results-under-file", "dit.train", lambda r: _train_base(r) + ["--results-dir", str(r / "blocker" / "t")],
     "lies under"),
    ("train-export-suffix", "dit.train", lambda r: _train_base(r) + ["--export", str(r / "new" / "w.pt")],
     ".safetensors"),
    ("train-existing-checkpoint", "dit.train", lambda r: _train_base(r) + ["--results-dir", str(r / "train_done")],
     "already exists"),
    ("train-resume-corrupt", "dit.train",
     lambda r: _train_base(r) + ["--results-dir", str(r / "train_done"), "--resume"], "not a training checkpoint"),
    # --- PixArt inference.py / inference_ddp.py (each row runs both)
    *[row for script in ("pixart.inference", "pixart.inference_ddp") for row in [
        (f"{script}-latin1", script, lambda r: P(r, r / "new_px") + ["--txt_file", str(r / "latin1.txt")],
         "not UTF-8: byte 0xe9 at line 2, byte offset 15"),
        (f"{script}-utf16", script, lambda r: P(r, r / "new_px") + ["--txt_file", str(r / "utf16.txt")], "UTF-16"),
        (f"{script}-utf16le", script, lambda r: P(r, r / "new_px") + ["--txt_file", str(r / "utf16le.txt")],
         "NUL byte at line 1"),
        (f"{script}-cfg-nan", script, lambda r: P(r, r / "new_px") + ["--cfg_scale", "nan"], "--cfg_scale nan"),
        (f"{script}-seed-negative", script, lambda r: P(r, r / "new_px") + ["--seed", "-1"], "--seed -1"),
        (f"{script}-fresh-ratio-inf", script, lambda r: P(r, r / "new_px") + ["--fresh_ratio", "inf"],
         "--fresh_ratio inf"),
        (f"{script}-corrupt-ckpt", script, lambda r: P(r, r / "new_px") + ["--model_path", str(r / "corrupt.pt")],
         "corrupt.pt"),
        (f"{script}-pickled-ckpt", script, lambda r: P(r, r / "new_px") + ["--model_path", str(r / "pickled.pt")],
         "pickled.pt"),
        (f"{script}-out-under-file", script, lambda r: P(r, r / "blocker" / "px"), "lies under"),
        (f"{script}-report-in-proc", script, lambda r: P(r, r / "new_px") + ["--report", PROC + "/r.json"],
         "cannot be written"),
        (f"{script}-other-run", script, lambda r: P(r, r / "pixart_seed1"), "seed: recorded 1, now 0"),
        (f"{script}-unrecorded-pngs", script, lambda r: P(r, r / "loose_pngs"), "no run.json"),
    ]],
    # --- evaluation CLIs
    ("fidelity-out-under-file", "eval.fidelity",
     lambda r: ["--ref", str(r / "loose_pngs"), "--sample", str(r / "loose_pngs"),
                "--out", str(r / "blocker" / "f.json")],
     "lies under"),
    ("fidelity-batch-zero", "eval.fidelity",
     lambda r: ["--ref", str(r / "loose_pngs"), "--sample", str(r / "loose_pngs"), "--batch-size", "0",
                "--out", str(r / "new" / "f.json")], "--batch-size 0"),
    ("imagenet-out-in-proc", "eval.imagenet",
     lambda r: ["--sample", str(r / "loose_pngs"), "--ref", str(r / "loose_pngs"), "--out", PROC + "/i.json"],
     "cannot be written"),
    ("imagenet-ref-stats-under-file", "eval.imagenet",
     lambda r: ["--sample", str(r / "loose_pngs"), "--ref", str(r / "loose_pngs"), "--out", str(r / "new" / "i.json"),
                "--save-ref-stats", str(r / "blocker" / "s.npz")], "--save-ref-stats"),
    ("coco-latin1-prompts", "eval.coco",
     lambda r: ["--sample", str(r / "coco_sample"), "--prompts", str(r / "latin1.txt"), "--no-fid", "--no-cache",
                "--out", str(r / "new" / "c.json")], "not UTF-8: byte 0xe9 at line 2"),
    # --- benchmark and table scripts
    ("benchmark-out-under-file", "scripts.benchmark_speed",
     lambda r: ["--model", "digits", "--methods", "none", "--out", str(r / "blocker" / "b")], "lies under"),
    ("table-out-in-proc", "scripts.reproduce_table",
     lambda r: ["--model", "digits", "--methods", "none", "--out", PROC], "cannot be written"),
]

# Open-Sora-DuCa/inference.py (also scripts/inference.py and every VBench launcher process).
OS, OI = _os_base, "opensora.inference"
OPENSORA_ROWS: list[tuple[str, str, Callable[[Path], list[str]], str]] = [
    ("os-latin1", OI, lambda r: OS(r, r / "new_os", "latin1.txt"), "not UTF-8: byte 0xe9 at line 2, byte offset 15"),
    ("os-utf16", OI, lambda r: OS(r, r / "new_os", "utf16.txt"), "UTF-16"),
    ("os-utf16le", OI, lambda r: OS(r, r / "new_os", "utf16le.txt"), "NUL byte at line 1"),
    ("os-cfg-nan", OI, lambda r: OS(r, r / "new_os") + ["--cfg-scale", "nan"], "--cfg-scale nan is invalid"),
    ("os-steps-zero", OI, lambda r: OS(r, r / "new_os") + ["--num-sampling-steps", "0"], "--steps 0 is invalid"),
    ("os-seed-negative", OI, lambda r: OS(r, r / "new_os") + ["--seed", "-1"], "--seed -1 is invalid"),
    ("os-fresh-ratio-inf", OI, lambda r: OS(r, r / "new_os") + ["--fresh-ratio", "inf"],
     "--fresh-ratio inf is invalid"),
    ("os-frames-5", OI, lambda r: OS(r, r / "new_os") + ["--num-frames", "5"], "undefined for 5 frames"),
    ("os-missing-ckpt", OI, lambda r: OS(r, r / "new_os") + ["--ckpt-path", str(r / "nope")], "does not exist"),
    ("os-pickled-ckpt", OI, lambda r: OS(r, r / "new_os") + ["--ckpt-path", str(r / "pickled.pt")], "pickled.pt"),
    ("os-truncated-ckpt", OI, lambda r: OS(r, r / "new_os") + ["--ckpt-path", str(r / "os_truncated")],
     "os_truncated"),
    ("os-nan-weights", OI, lambda r: OS(r, r / "new_os") + ["--ckpt-path", str(r / "os_stdit_nan"), "--cache", "duca"],
     "NaN/inf at step 1 of 2 (OpenSora, cache duca)"),
    ("os-out-under-file", OI, lambda r: OS(r, r / "blocker" / "os"), "lies under"),
    ("os-out-in-proc", OI, lambda r: OS(r, Path(PROC)), "cannot be written"),
    ("os-report-in-proc", OI, lambda r: OS(r, r / "new_os") + ["--report", PROC + "/r.json"], "cannot be written"),
    ("os-other-run", OI, lambda r: OS(r, r / "os_seed1"), "seed: recorded 1, now 1024"),
    ("os-unrecorded-mp4s", OI, lambda r: OS(r, r / "loose_mp4s"), "no run.json"),
    ("os-config-typo", OI, lambda r: [str(r / "prompts.txt")] + OS(r, r / "new_os"), "not valid Python syntax"),
    # a hub id neither cached nor reachable (HF_HUB_OFFLINE / DUCA_EVAL_OFFLINE are set here): one line, no retries
    ("os-hub-id-offline", OI, lambda r: OS(r, r / "new_os") + ["--ckpt-path", "duca-tests/no-such-repo"],
     "`hf download duca-tests/no-such-repo --local-dir no-such-repo`"),
]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("row_id,cli,argv,message", ROWS + OPENSORA_ROWS, ids=[r[0] for r in ROWS + OPENSORA_ROWS])
def test_bad_input_is_refused_cleanly(root, capsys, monkeypatch, row_id, cli, argv, message):
    monkeypatch.chdir(root)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DUCA_EVAL_OFFLINE", "1")
    before = _snapshot(root)
    capsys.readouterr()
    code = CLIS[cli](argv(root))
    err = capsys.readouterr().err
    assert code == 2, (row_id, err[-2000:])
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("usage:")
             and not line.startswith(" ")]
    error_lines = [line for line in lines if "error:" in line]
    assert len(error_lines) == 1, err[-2000:]
    assert message in error_lines[0], (message, error_lines[0])
    assert _snapshot(root) == before, "a file was written, changed or lost"


def test_every_cli_is_in_the_table():
    assert {cli for _, cli, _, _ in ROWS + OPENSORA_ROWS} == set(CLIS)
