"""The shared robustness helpers: output-path checks, numeric bounds, NaN watch, run record, prompt encoding,
device choice, per-sample seeds and the one checkpoint error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from duca_common import errors, outputs, run_record, seeding, validate
from duca_common.runtime import pick_device
from duca_common.text import read_prompt_lines

# ------------------------------------------------------------------------------------------------ output paths

def test_output_checks_accept_new_and_existing_paths(tmp_path):
    assert outputs.check_output_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()                     # a check creates nothing
    (tmp_path / "f.json").write_text("{}")
    outputs.check_output_file(tmp_path / "f.json", "--report")
    outputs.check_output_file(tmp_path / "new" / "r.json", "--report")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]   # and leaves no probe


@pytest.mark.parametrize("case,message", [
    ("under_file", "lies under"),
    ("is_file", "is a file, not a folder"),
    ("proc", "cannot be written"),
])
def test_output_dir_refusals(tmp_path, case, message):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    path = {"under_file": blocker / "sub", "is_file": blocker, "proc": Path("/proc/duca-test/out")}[case]
    with pytest.raises(errors.UsageError, match=message) as exc:
        outputs.check_output_dir(path, "--out")
    assert "--out" in str(exc.value) and "\n" not in str(exc.value)


def test_output_file_refusals(tmp_path):
    with pytest.raises(errors.UsageError, match="is a folder"):
        outputs.check_output_file(tmp_path, "--report")
    with pytest.raises(errors.UsageError, match="must end in .png"):
        outputs.check_output_file(tmp_path / "x.jpg", "--out", suffixes=(".png",))
    (tmp_path / "f").write_text("x")
    with pytest.raises(errors.UsageError, match="lies under"):
        outputs.check_output_file(tmp_path / "f" / "r.json", "--report")


# ------------------------------------------------------------------------------------------------ numbers

@pytest.mark.parametrize("value,bound,ok", [
    (1.5, validate.GUIDANCE, True), (float("nan"), validate.GUIDANCE, False), (float("inf"), validate.GUIDANCE, False),
    (0.5, validate.GUIDANCE, False), (0, validate.SEED, True), (-1, validate.SEED, False),
    (2**63, validate.SEED, False),
    (1.0, validate.FRACTION, True), (1.01, validate.FRACTION, False), (1000, validate.INTERVAL, True),
    (1001, validate.INTERVAL, False), (2.5, validate.STEPS, False), (True, validate.STEPS, False),
])
def test_bounds(value, bound, ok):
    if ok:
        validate.check_number("--x", value, bound)
    else:
        with pytest.raises(errors.UsageError, match=r"^--x .* is invalid: pass"):
            validate.check_number("--x", value, bound)


def test_with_high_names_the_reason():
    bound = validate.STEPS.with_high(1000, "the diffusion has 1000 steps")
    with pytest.raises(errors.UsageError, match="<= 1000.*1000 steps"):
        validate.check_number("--num-sampling-steps", 1001, bound)


def test_finite_watch_names_the_first_bad_step():
    watch = validate.FiniteWatch("duca", 5)
    for step in range(5):
        x = torch.zeros(2, 3)
        if step >= 2:
            x[0, 0] = float("nan") if step == 2 else float("inf")
        watch.observe(x, step)
    assert watch.first_bad_step == 2
    with pytest.raises(errors.NonFiniteError, match="step 3 of 5 \\(duca\\)"):
        watch.check()
    clean = validate.FiniteWatch("none", 1)
    clean.observe(torch.ones(2), 0)
    clean.check()


# ------------------------------------------------------------------------------------------------ run record

def test_run_record_resume_refusal_and_unattributed_files(tmp_path):
    folder = tmp_path / "run"
    rec = run_record.RunRecord({"seed": 0, "steps": 20, "cache": {"method": "duca", "fresh_ratio": 0.3}},
                               info={"images": 10})
    assert run_record.open_run(folder, rec, flag="--out", outputs=["*.png"]) is False
    stored = json.loads((folder / "run.json").read_text())
    assert stored["settings"]["seed"] == 0 and stored["record_version"] == run_record.RECORD_VERSION
    more = run_record.RunRecord(rec.settings, info={"images": 20})          # info is not compared
    assert run_record.open_run(folder, more, flag="--out", outputs=["*.png"]) is True
    other = run_record.RunRecord({**rec.settings, "cache": {"method": "duca", "fresh_ratio": 0.75}})
    with pytest.raises(errors.UsageError, match="--out .* other settings \\(cache: recorded") as exc:
        run_record.check_resume(folder, other, flag="--out", outputs=["*.png"])
    assert "0.75" in str(exc.value) and "0.3" in str(exc.value)
    assert json.loads((folder / "run.json").read_text())["settings"] == stored["settings"]   # untouched

    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "000000.png").write_bytes(b"x")
    with pytest.raises(errors.UsageError, match="no run.json"):
        run_record.check_resume(loose, rec, flag="--out", outputs=["*.png"])
    (folder / "run.json").write_text("{not json")
    with pytest.raises(errors.UsageError, match="unreadable"):
        run_record.check_resume(folder, rec, flag="--out")


def test_file_identity_is_content_not_name(tmp_path):
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    c.write_bytes(b"weightz")
    assert run_record.file_identity(a) == run_record.file_identity(b) != run_record.file_identity(c)
    assert run_record.file_identity("owner/model") == {"id": "owner/model"}
    assert run_record.text_identity(["a", "b"]) != run_record.text_identity(["a", "c"])


# ------------------------------------------------------------------------------------------------ prompts

@pytest.mark.parametrize("data,expect", [
    ("a cat\ncafé\n".encode(), ["a cat", "café"]),
    (b"\xef\xbb\xbfa cat\r\nb\n", ["a cat", "b"]),
    ("a cat\ncafé\n".encode("latin-1"), "byte 0xe9 at line 2, byte offset 9"),
    ("a cat\n".encode("utf-16"), "UTF-16"),
    ("a cat\n".encode("utf-16-le"), "NUL byte at line 1, byte offset 1"),
])
def test_prompt_file_encodings(tmp_path, data, expect):
    path = tmp_path / "p.txt"
    path.write_bytes(data)
    if isinstance(expect, list):
        assert read_prompt_lines(path, "--txt_file") == expect
    else:
        with pytest.raises(errors.UsageError, match=expect) as exc:
            read_prompt_lines(path, "--txt_file")
        assert "--txt_file" in str(exc.value) and "p.txt" in str(exc.value)


# ------------------------------------------------------------------------------------------------ misc

def test_pick_device(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(errors.UsageError, match="not a device"):
        pick_device("gpu0")
    # auto / None follow CUDA's visibility; both branches are checked whatever this machine has
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(None) == pick_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(None) == pick_device("auto") == torch.device("cpu")
    with pytest.raises(errors.UsageError,
                       match="--device cuda asked for CUDA but no GPU is visible; pass --device cpu"):
        pick_device("cuda")


def test_sample_seeds_do_not_overlap_across_seeds():
    seeds = {seeding.sample_seed(s, i) for s in range(4) for i in range(50)}
    assert len(seeds) == 200                                      # seed + index would give 53 distinct values
    a = torch.randn(3, generator=seeding.sample_generator(0, 1))
    assert torch.equal(a, torch.randn(3, generator=seeding.sample_generator(0, 1)))
    assert not torch.equal(a, torch.randn(3, generator=seeding.sample_generator(1, 0)))


def test_one_checkpoint_error_class():
    from dit_duca.loading import CheckpointError as dit_error
    from opensora_duca.checkpoint import CheckpointError as opensora_error
    from pixart_duca.checkpoint import CheckpointError as pixart_error
    assert dit_error is pixart_error is opensora_error is errors.CheckpointError
    assert issubclass(errors.CheckpointError, errors.UsageError)


def test_help_formatter_shows_only_defaults_that_say_something():
    """--help: "(default: X)" for a value, not for None / False or a help text that names its default; the
    description keeps its lines (usage examples with continuation lines)."""
    import argparse

    from duca_common.runtime import HelpFormatter

    parser = argparse.ArgumentParser(prog="x", description="Example:\n  python x --a 1 \\\n      --b 2",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="sampling steps")
    parser.add_argument("--zero", type=int, default=0, help="zero is a value")
    parser.add_argument("--ckpt", default=None, help="a checkpoint")
    parser.add_argument("--full", action="store_true", help="the full run")
    parser.add_argument("--no-compile", action="store_false", dest="compile", help="eager runs only")
    parser.add_argument("--samples", type=int, default=None, help="samples (default 20, --full 100)")
    text = parser.format_help()
    assert "sampling steps (default: 20)" in text and "zero is a value (default: 0)" in text
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: True)" not in text
    assert "samples (default 20, --full 100)\n" in text
    assert "  python x --a 1 \\\n      --b 2" in text


def test_network_probe_uses_the_urls_own_port(monkeypatch):
    """A mirror on another port (HF_ENDPOINT=http://host:PORT) is probed on that port, not on 443."""
    import socket

    from duca_eval import weights

    for name in (*weights.OFFLINE_ENV_VARS, "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert weights.network_reachable(f"http://127.0.0.1:{port}", timeout_s=2.0)
    assert not weights.network_reachable(f"http://127.0.0.1:{port}", timeout_s=2.0)  # closed: refused
    assert not weights.network_reachable("http://127.0.0.1:notaport")


def test_network_probe_trusts_a_proxy_unless_declared_offline(monkeypatch):
    """Behind a proxy the TCP probe cannot see the host, so the proxy is trusted (the download reports failures);
    NO_PROXY hosts (with or without a port) are probed directly; a machine declared offline stays offline, proxy
    or not. The connection itself is a stand-in that records each probe and refuses it: no DNS, no network."""
    from duca_eval import weights

    for name in (*weights.OFFLINE_ENV_VARS, "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                 "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    probes = []

    def refuse(address, timeout=None):
        probes.append(address)
        raise OSError("refused (test stand-in)")

    monkeypatch.setattr(weights.socket, "create_connection", refuse)
    hub = "https://hub.invalid"
    assert not weights.network_reachable(hub) and probes == [("hub.invalid", 443)]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert weights.network_reachable(hub) and len(probes) == 1                   # trusted, not probed
    assert not weights.network_reachable("http://hub.invalid") and len(probes) == 2   # an https proxy only
    monkeypatch.setenv("ALL_PROXY", "http://proxy.invalid:3128")
    assert weights.network_reachable("http://hub.invalid") and len(probes) == 2
    monkeypatch.setenv("NO_PROXY", "hub.invalid")
    assert not weights.network_reachable(hub) and len(probes) == 3               # bypassed: probed directly
    monkeypatch.setenv("NO_PROXY", "mirror.invalid:8080")                        # an entry with a port
    assert not weights.network_reachable("http://mirror.invalid:8080") and probes[-1] == ("mirror.invalid", 8080)
    assert weights.network_reachable("http://mirror.invalid:9090") and len(probes) == 4   # another port: proxied
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.setenv("DUCA_EVAL_OFFLINE", "1")
    assert not weights.network_reachable(hub) and len(probes) == 4               # declared offline: no probe
