"""opensora_duca.inference end to end on a tiny STDiT3 + tiny VAE + tiny T5: the DuCa preset's schedule in the
report, mp4 output, VBench naming, resume, rank sharding = one process, FLOPs on meta, clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from duca_common.cache import Action, BlockLayout, build_plan
from opensora_duca import inference
from opensora_duca.checkpoint import save_safetensors
from opensora_duca.stdit3 import config_dict
from opensora_duca.vae import vae_config_dict
from opensora_tiny import TINY, tiny_stdit3, tiny_vae, tiny_vae_config
from pixart_tiny import build_t5
from test_opensora_model import REFERENCE_SCHEDULE

PACKAGE = Path(__file__).resolve().parents[1] / "Open-Sora-DuCa"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"   # reference copies (shared/data/README.md)
PROMPTS = ["a man on a horse", "a red dog in the park"]



@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("opensora")
    save_safetensors(tiny_stdit3(), root / "stdit", config_dict(TINY))
    save_safetensors(tiny_vae(), root / "vae", vae_config_dict(tiny_vae_config()))
    build_t5(root / "t5")
    return root


def base_args(w: Path, out: Path, *extra: str) -> list[str]:
    return ["--ckpt-path", str(w / "stdit"), "--vae-path", str(w / "vae"), "--t5-path", str(w / "t5"),
            "--image-size", "16", "16", "--num-frames", "17", "--device", "cpu", "--out", str(out), *extra]


def read_frames(path: Path):
    import av
    import numpy as np

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_reference_sizes():
    args = inference.parse_args([])
    assert inference.image_size(args) == (480, 854)                     # C.10: 480p, 9:16 (H:W)
    assert inference.parse_num_frames(args.num_frames) == 51 and inference.parse_num_frames("2s") == 51
    args.aspect_ratio = "16:9"
    assert inference.image_size(args) == (854, 480)
    assert (args.steps, args.cfg_scale, args.seed, args.fps) == (30, 7.0, 1024, 24)


def test_duca_end_to_end_records_the_reference_schedule(weights, tmp_path):
    report = tmp_path / "r.json"
    rc = inference.main(base_args(weights, tmp_path / "out", "--prompt", PROMPTS[0], "--cache", "duca",
                                  "--report", str(report)))
    assert rc == 0
    frames = read_frames(tmp_path / "out" / "sample_0000.mp4")
    assert frames.shape == (17, 16, 16, 3)
    data = json.loads(report.read_text())
    plan = data["plan"].splitlines()[1:]
    letters = [cell.split(":")[1] for line in plan for cell in line.split()]
    assert letters == REFERENCE_SCHEDULE
    assert data["cache_config"]["method"] == "duca" and data["videos"] == 1


def test_vbench_names_resume_and_rank_sharding(weights, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join([PROMPTS[0]] * 2) + "\n")              # a repeated prompt runs once, as in VBench
    common = ("--vbench", "--prompts-file", str(prompts), "--steps", "1", "--cache", "none")
    assert inference.main(base_args(weights, tmp_path / "one", *common)) == 0
    names = sorted(p.name for p in (tmp_path / "one").glob("*.mp4"))
    assert names == sorted(f"{PROMPTS[0]}-{k}.mp4" for k in range(5))
    assert not list((tmp_path / "one").glob(".tmp-*"))
    # resume: finished files are not rewritten
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "one").glob("*.mp4")}
    assert inference.main(base_args(weights, tmp_path / "one", *common)) == 0
    assert stamp == {p: p.stat().st_mtime_ns for p in (tmp_path / "one").glob("*.mp4")}
    # two ranks (rank 1 first, then rank 0 checks completeness) write the same videos as one process
    monkeypatch.setattr(inference.dist, "barrier", lambda: None)
    for rank in (1, 0):
        monkeypatch.setattr(inference, "init_distributed", lambda flag, r=rank: (r, 2, torch.device("cpu")))
        assert inference.main(base_args(weights, tmp_path / "two", *common)) == 0
    for name in names:
        assert (read_frames(tmp_path / "one" / name) == read_frames(tmp_path / "two" / name)).all()
    # different seeds per sample k
    assert not (read_frames(tmp_path / "one" / names[0]) == read_frames(tmp_path / "one" / names[1])).all()


def test_cache_flags_map_to_configs():
    parse = inference.parse_args
    duca = inference.cache_config(parse(["--cache", "duca"]))
    assert duca == inference.get_preset("opensora-duca").config
    toca = inference.cache_config(parse(["--cache", "toca", "--fresh-ratio", "0.2"]))
    assert toca.method == "toca" and toca.fresh_ratio == 0.2
    plan = build_plan(toca, BlockLayout(2, ("attn", "cross_attn", "mlp"), ("mlp",), "attn", "cross_attn"), 30)
    assert plan.count(Action.SKIP) == 0          # ToCa: the same cycles with every aggressive step conservative
    assert inference.cache_config(parse(["--cache", "none"])).method == "none"
    # --fresh-ratio applies to a preset too; a method that contradicts the preset is refused
    preset = inference.cache_config(parse(["--preset", "opensora-duca", "--fresh-ratio", "0.3"]))
    assert preset.fresh_ratio == 0.3 and preset.method == "duca"
    with pytest.raises(inference.UsageError, match="contradicts --preset"):
        inference.cache_config(parse(["--preset", "opensora-duca", "--cache", "fora"]))
    tay = inference.cache_config(parse(["--cache", "taylorseer", "--interval", "4", "--taylor-order", "2"]))
    assert (tay.method, tay.interval, tay.taylor_order) == ("taylorseer", 4, 2)


def test_flops_only_on_meta(weights, tmp_path):
    report = tmp_path / "f.json"
    args = ["--flops-only", "--ckpt-path", str(weights / "stdit"), "--image-size", "64", "64", "--num-frames", "17",
            "--flops-text-tokens", "8", "--report", str(report)]
    assert inference.main(args + ["--cache", "duca"]) == 0
    duca = json.loads(report.read_text())["flops"]
    assert inference.main(args + ["--cache", "none"]) == 0
    none = json.loads(report.read_text())["flops"]
    assert none["measured_cached"] == none["measured_full"] == duca["measured_full"] > 0
    assert 1.5 < duca["speedup"] < 3.5 and duca["latent_shape"] == [4, 5, 8, 8]


# sha256 of the reference's prompt list (shared/data/vbench_all_dimension.txt: 946 lines joined by "\n"), so the
# shipped copy is checked against it on machines without the shared folder
REFERENCE_VBENCH_PROMPTS_SHA256 = "5200dacbe64c779b47563d0760bb487674322a1ed5bfc7dc4ebc088579aa0b5a"


def test_vbench_prompt_list_matches_the_reference_copy():
    import hashlib

    prompts = inference.read_prompt_list(str(inference.vbench_info_path()))   # the copy shipped in the package
    assert len(prompts) == 946
    assert hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest() == REFERENCE_VBENCH_PROMPTS_SHA256
    txt = SHARED_DATA / "vbench_all_dimension.txt"
    if txt.is_file():                                   # the reference copy itself, where the shared folder is
        assert prompts == txt.read_text(encoding="utf-8").splitlines()
    jobs = inference.make_jobs(prompts, 5, True)
    assert len(jobs) == 5 * len(set(prompts)) and jobs[0].name == f"{prompts[0]}-0.mp4"


@pytest.mark.parametrize("extra,message", [
    (["--prompts-file", "nowhere.txt"], "does not exist"),
    (["--prompt", "x", "--preset", "dit-none"], "is a dit preset"),
    (["--prompt", "x", "--resolution", "123p", "--image-size"], None),
    (["--prompt", "x", "--num-frames", "0"], "--num-frames 0 is invalid"),
    (["--prompt", "x", "--num-frames", "5"], "undefined for 5 frames"),
    (["--prompt", "x", "--steps", "0"], "--steps 0 is invalid: pass an integer >= 1"),
    (["--prompt", "x", "--cfg-scale", "nan"], "--cfg-scale nan is invalid"),
    (["--prompt", "x", "--seed", "-1"], "--seed -1 is invalid"),
    (["--prompt", "x", "--vbench", "--num-samples", "3"], "drop --num-samples"),
    (["--prompt", "x", "--fresh-ratio", "2"], "--fresh-ratio 2 is invalid"),
])
def test_bad_inputs_fail_before_work(weights, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    args = base_args(weights, out, *extra)
    if message is None:   # unknown resolution (drop the explicit size so it is used)
        args = [a for a in args if a not in ("--image-size", "16")]
        message = "--resolution '123p' is unknown"
    assert inference.main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_relative_weight_folders_are_not_taken_for_hub_ids(weights, tmp_path, capsys, monkeypatch):
    """A missing local folder written as in the README (`OpenSora-STDiT-v3/`, one slash) passed --check-only as a
    hub id, so the VBench launcher started its processes and each failed at load; now --check-only refuses it."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    for flag, value in [("--ckpt-path", "OpenSora-STDiT-v3/"), ("--vae-path", "OpenSora-VAE-v1.2/"),
                        ("--t5-path", "t5-v1_1-xxl/"), ("--ckpt-path", "hpcai-tech/.hidden")]:
        args = base_args(weights, out, "--prompt", "x", "--check-only")
        args[args.index(flag) + 1] = value
        assert inference.main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag} {value!r} does not exist") and "hub id" in err
    args = base_args(weights, out, "--prompt", "x", "--check-only")
    args[args.index("--ckpt-path") + 1] = "hpcai-tech/OpenSora-STDiT-v3"      # a hub id is still one
    monkeypatch.setattr(inference, "hub_offline", lambda: False)                 # (and the hub reachable)
    monkeypatch.setattr(inference, "hub_reachable", lambda: True)
    assert inference.main(args) == 0
    capsys.readouterr()


# The README's upstream command: the shipped config names three hub ids (STDiT3, VAE, T5).
UPSTREAM = ["configs/opensora-v1-2/inference/sample.py", "--num-frames", "2s", "--resolution", "480p",
            "--aspect-ratio", "9:16", "--prompt", "a beautiful waterfall", "--device", "cpu"]
HUB_IDS = {"--ckpt-path": "hpcai-tech/OpenSora-STDiT-v3", "--vae-path": "hpcai-tech/OpenSora-VAE-v1.2",
           "--t5-path": "DeepFloyd/t5-v1_1-xxl"}


def fake_hub_cache(root: Path, repos: dict[str, str | dict[str, str]]) -> Path:
    """A Hugging Face cache layout (refs/main -> snapshots/<commit>/<file>) holding ``repos``: id -> one empty
    file, or id -> {file: text}. Adds to what is there."""
    for repo, files in repos.items():
        folder = root / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text("0" * 40)
        (folder / "snapshots" / ("0" * 40)).mkdir(parents=True, exist_ok=True)
        for file, text in (files.items() if isinstance(files, dict) else [(files, "")]):
            (folder / "snapshots" / ("0" * 40) / file).write_text(text)
    return root


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """No network and nothing cached, deterministically: an empty cache folder; the probe answers False and
    counts its calls; building anything after the check fails the test."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    probes = []
    monkeypatch.setattr(inference, "hub_reachable", lambda: probes.append(1) or False)

    def reached(*_):
        raise AssertionError("the hub check must stop the run before any process group or model")

    monkeypatch.setattr(inference, "init_distributed", reached)
    monkeypatch.setattr(inference, "load_components", reached)
    return probes


@pytest.mark.parametrize("offline", [True, False])
def test_unreachable_hub_ids_fail_in_one_line_before_any_work(no_hub, tmp_path, capsys, monkeypatch, offline):
    """Offline, upstream's command spent 28 s in huggingface_hub's retries (4 s with HF_HUB_OFFLINE=1) before
    failing at load; now one line with the fix comes before anything is built, in both modes."""
    monkeypatch.setattr(inference, "hub_offline", lambda: offline)
    monkeypatch.chdir(PACKAGE)
    out = tmp_path / "out"
    assert inference.main([*UPSTREAM, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    for flag, repo in HUB_IDS.items():
        name = repo.split("/")[1]
        assert f"{flag} {repo}" in err and f"`hf download {repo} --local-dir {name}`" in err
        assert f"{flag} {name}" in err                                     # the flag to pass instead
    if offline:                    # huggingface_hub reads only its cache: no probe needed
        assert no_hub == [] and "unset HF_HUB_OFFLINE" in err
    else:
        assert no_hub == [1] and "https://huggingface.co) cannot be reached" in err
        assert "HF_HUB_OFFLINE" not in err         # offline mode cannot serve what the cache lacks
    assert not out.exists()
    # --check-only (what the VBench launcher runs once before its N processes) refuses the same way
    assert inference.main([*UPSTREAM, "--out", str(out), "--check-only"]) == 2
    assert "hf download" in capsys.readouterr().err


def test_cached_hub_ids_run_offline_and_name_the_switch_otherwise(no_hub, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.chdir(PACKAGE)
    out = tmp_path / "out"
    cache = fake_hub_cache(Path(constants.HF_HUB_CACHE), {HUB_IDS["--ckpt-path"]: "model.safetensors"})
    monkeypatch.setattr(inference, "hub_offline", lambda: True)
    assert inference.main([*UPSTREAM, "--out", str(out), "--check-only"]) == 2
    err = capsys.readouterr().err                 # only what the cache lacks is named
    assert "--ckpt-path" not in err and "--vae-path hpcai-tech/OpenSora-VAE-v1.2" in err and "--t5-path" in err
    fake_hub_cache(cache, {HUB_IDS["--vae-path"]: "model.safetensors", HUB_IDS["--t5-path"]: "config.json"})
    # T5 needs its config, tokenizer and weights: a config alone, or an index whose shards are not all there,
    # is refused here, not after STDiT3 and the VAE have loaded
    t5 = HUB_IDS["--t5-path"]
    shards = {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}
    index = json.dumps({"weight_map": shards})
    for files in ({}, {"spiece.model": "", "pytorch_model.bin.index.json": index,
                       "pytorch_model-00001-of-00002.bin": ""}):
        fake_hub_cache(cache, {t5: files})
        assert inference.main([*UPSTREAM, "--out", str(out), "--check-only"]) == 2
        err = capsys.readouterr().err
        assert f"--t5-path {t5}" in err and "--vae-path" not in err
    fake_hub_cache(cache, {t5: {"pytorch_model-00002-of-00002.bin": ""}})
    monkeypatch.setattr(inference, "init_distributed", lambda device: (0, 1, torch.device("cpu")))
    assert inference.main([*UPSTREAM, "--out", str(out), "--check-only", "--verbose", "0"]) == 0
    assert no_hub == []
    # cached, but huggingface_hub not in offline mode and the hub unreachable (it would retry ~25 s per file):
    # the run switches huggingface_hub to offline mode itself, says so once, and goes on
    monkeypatch.setattr(inference, "hub_offline", lambda: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")              # recorded, so the run's own setting is undone after
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    capsys.readouterr()
    assert inference.main([*UPSTREAM, "--out", str(out), "--check-only", "--verbose", "0"]) == 0
    err = capsys.readouterr().err
    assert no_hub == [1] and err.count("\n") == 1 and err.startswith("note: the Hugging Face hub")
    assert "using the cache (HF_HUB_OFFLINE=1 for this run)" in err and "hf download" not in err
    assert constants.is_offline_mode() and os.environ["HF_HUB_OFFLINE"] == "1"
    # a second rank under torchrun switches too, but says nothing
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("RANK", "1")
    assert inference.main([*UPSTREAM, "--out", str(out), "--check-only", "--verbose", "0"]) == 0
    assert capsys.readouterr().err == "" and constants.is_offline_mode()


def test_hub_checks_only_hub_ids_and_only_when_there_is_work(weights, no_hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(inference, "hub_offline", lambda: False)
    monkeypatch.setattr(inference, "init_distributed", lambda device: (0, 1, torch.device("cpu")))
    out = tmp_path / "out"
    assert inference.main(base_args(weights, out, "--prompt", "x", "--check-only", "--verbose", "0")) == 0
    assert no_hub == []                           # local folders: no probe
    monkeypatch.setattr(inference, "hub_reachable", lambda: True)
    args = base_args(weights, out, "--prompt", "x", "--check-only", "--verbose", "0")
    args[args.index("--t5-path") + 1] = HUB_IDS["--t5-path"]
    assert inference.main(args) == 0              # reachable: the download is left to the loader


def test_hub_probe_is_controlled_by_the_environment(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")     # not an HF_ENDPOINT of this machine
    """The real probe, without a network call: behind a proxy (which a TCP probe cannot see through) it answers
    True; a machine declared offline answers False, proxy or not."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy",
                 "DUCA_EVAL_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert inference.hub_reachable() is True
    monkeypatch.setenv("DUCA_EVAL_OFFLINE", "1")
    assert inference.hub_reachable() is False


def test_missing_weights_and_empty_prompt_lines(weights, tmp_path, capsys):
    out = tmp_path / "out"
    args = base_args(weights, out, "--prompt", "x")
    args[args.index("--ckpt-path") + 1] = str(tmp_path / "no-stdit")
    assert inference.main(args) == 2 and "--ckpt-path" in capsys.readouterr().err
    bad = tmp_path / "p.txt"
    bad.write_text("a\n\nb\n")
    assert inference.main(base_args(weights, out, "--prompts-file", str(bad))) == 2
    assert "empty lines (line 2, 1 in all)" in capsys.readouterr().err
    args = base_args(weights, out, "--prompt", "x")
    args[args.index("--t5-path") + 1] = str(tmp_path / "no-t5")
    assert inference.main(args) == 2 and "--t5-path" in capsys.readouterr().err
    assert not out.exists()


def test_resume_refuses_other_settings_and_unrecorded_videos(weights, tmp_path, capsys):
    """Issue 13: the settings are recorded before the first video; a rerun with another seed, prompt list or
    cache method into the same folder is refused naming the setting, and so is a folder of videos without a
    record; nothing is added or lost."""
    out = tmp_path / "out"
    common = ("--prompt", PROMPTS[0], "--steps", "1", "--cache", "none")
    assert inference.main(base_args(weights, out, *common)) == 0
    record = json.loads((out / "run.json").read_text())["settings"]
    assert record["seed"] == 1024 and record["cache"]["method"] == "none" and record["prompts"]["count"] == 1
    assert set(record["stdit3"]) == {"folder_sha256", "bytes"}
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    for extra, setting in [(("--seed", "7"), "seed: recorded 1024, now 7"),
                           (("--cache", "duca"), "cache: recorded"),
                           (("--prompt", PROMPTS[1]), "prompts: recorded")]:
        args = base_args(weights, out, *common)
        if extra[0] == "--prompt":
            args[args.index("--prompt") + 1] = extra[1]
        else:
            args += list(extra)
        assert inference.main(args) == 2
        err = capsys.readouterr().err
        assert "holds a run with other settings" in err and setting in err and err.count("\n") == 1
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # videos without a record cannot be attributed to this run
    (out / "run.json").unlink()
    assert inference.main(base_args(weights, out, *common)) == 2
    assert "but no run.json" in capsys.readouterr().err


def test_unwritable_outputs_and_bad_prompt_files_fail_before_any_model(weights, tmp_path, capsys, monkeypatch):
    def no_models(*a, **k):
        raise AssertionError("a model was built")
    monkeypatch.setattr(inference, "load_components", no_models)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        (base_args(weights, blocker / "out", "--prompt", "x"), "--out", "is a file, not a folder"),
        (base_args(weights, tmp_path / "o", "--prompt", "x", "--report", str(blocker / "r.json")), "--report",
         "is a file, not a folder"),
    ]
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("a cat\nun caf\xe9\n".encode("latin-1"))
    cases.append((base_args(weights, tmp_path / "o", "--prompts-file", str(latin1)), "--prompts-file",
                  "is not UTF-8: byte 0xe9 at line 2, byte offset 12"))
    info = tmp_path / "info.json"
    info.write_bytes('[{"prompt_en": "caf\xe9"}]'.encode("latin-1"))
    cases.append((base_args(weights, tmp_path / "o", "--prompts-file", str(info)), "--prompts-file",
                  "is not UTF-8: byte 0xe9 at line 1, byte offset 19"))
    for args, flag, message in cases:
        assert inference.main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag}") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
    # a BOM is accepted
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfa cat\n")
    assert inference.read_prompt_list(str(bom)) == ["a cat"]


def test_nan_weights_are_reported_not_written(weights, tmp_path, capsys):
    nan = tmp_path / "nan"
    model = tiny_stdit3()
    with torch.no_grad():
        model.final_layer.linear.bias.fill_(float("nan"))
    save_safetensors(model, nan, config_dict(TINY))
    args = base_args(weights, tmp_path / "out", "--prompt", "x", "--steps", "2", "--cache", "duca")
    args[args.index("--ckpt-path") + 1] = str(nan)
    assert inference.main(args) == 2
    err = capsys.readouterr().err
    assert "NaN/inf at step 1 of 2 (OpenSora, cache duca)" in err and "nothing was written" in err
    assert not list((tmp_path / "out").glob("*.mp4"))


def test_noise_seeds_reference_by_default_per_sample_on_request():
    jobs = inference.make_jobs(["a", "b"], 3, False)
    ref = [inference.noise_seed("reference", 1024, j, 3) for j in jobs]
    assert ref == [1024, 1025, 1026] * 2                      # the DuCa fork: sample k of every prompt
    per = {s: [inference.noise_seed("per-sample", s, j, 3) for j in jobs] for s in (0, 1)}
    assert len(set(per[0]) | set(per[1])) == 12               # no overlap across prompts, samples or seeds
    # with --start-index the index continues the full list's numbering
    later = inference.make_jobs(["b"], 3, False, start_index=1)
    assert [inference.noise_seed("per-sample", 0, j, 3, start_index=1) for j in later] == per[0][3:]
    assert inference.parse_args(["--prompt", "x"]).noise_seeding == "reference"
