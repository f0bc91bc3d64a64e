"""OpenSora's upstream-style entry point: the (resolution, aspect ratio) tables equal the reference's for every
pair, the config file is read as data with clear errors, flags override it, and
``python scripts/inference.py configs/opensora-v1-2/inference/sample.py ...`` runs from ``Open-Sora-DuCa/`` and
from the repository root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from opensora_duca import aspect, inference
from opensora_duca.config import ConfigError, parse_config
from test_opensora_inference import base_args, read_frames, weights  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "Open-Sora-DuCa"
CONFIG = "configs/opensora-v1-2/inference/sample.py"
# numbers produced by running the reference's opensora/datasets/aspect.py (see the file's "_source")
TABLES = json.loads((ROOT / "tests" / "fixtures" / "opensora" / "aspect_tables.json").read_text())


def test_every_resolution_and_aspect_ratio_pair_equals_the_reference():
    assert set(aspect.RESOLUTIONS) == set(TABLES["by_key"])
    pairs = 0
    for resolution, table in TABLES["by_key"].items():
        assert aspect.RESOLUTIONS[resolution][0] == TABLES["pixels"][resolution]
        assert set(aspect.RESOLUTIONS[resolution][1]) == set(table)
        for key, size in table.items():
            assert aspect.image_size(resolution, key) == tuple(size), (resolution, key)
            pairs += 1
        for name, size in TABLES["by_name"][resolution].items():
            if size is None:                 # the reference asserts: not in that resolution's table
                with pytest.raises(inference.UsageError, match="is not in the"):
                    aspect.image_size(resolution, name)
            else:
                assert aspect.image_size(resolution, name) == tuple(size), (resolution, name)
    assert pairs == 336
    # the two entries the earlier formula got one pixel wrong
    assert aspect.image_size("240p", "2:3") == (262, 393) and aspect.image_size("480p", "4:3") == (740, 555)
    assert {k: aspect.num_frames(k) for k in TABLES["num_frames"]} == TABLES["num_frames"]
    with pytest.raises(inference.UsageError, match="--resolution '123p' is unknown"):
        aspect.image_size("123p", "9:16")


def test_shipped_config_holds_the_reference_settings():
    cfg = parse_config(PACKAGE / CONFIG)
    v = cfg.values
    assert (v["resolution"], v["aspect_ratio"], v["num_frames"], v["fps"], v["save_fps"]) == \
        ("240p", "9:16", 51, 24, 24)
    assert (v["scheduler.num_sampling_steps"], v["scheduler.cfg_scale"], v["aes"], v["flow"]) == (30, 7.0, 6.5, None)
    assert v["model.from_pretrained"] == "hpcai-tech/OpenSora-STDiT-v3" and v["dtype"] == "bf16"
    assert v["cache.preset"] == "opensora-duca"
    args = inference.parse_args([str(PACKAGE / CONFIG)])
    assert inference.image_size(args) == (240, 426) and args.seed == 1024 and args.out == "./samples/samples/"
    assert inference.cache_config(args) == inference.get_preset("opensora-duca").config


def test_flags_override_the_config(tmp_path):
    config = str(PACKAGE / CONFIG)
    args = inference.parse_args([config, "--resolution", "480p", "--num-sampling-steps", "5", "--save-dir",
                                 str(tmp_path), "--cfg-scale", "4.5", "--prompt", "a", "b", "--seed", "7"])
    assert inference.image_size(args) == (480, 854)
    assert (args.steps, args.cfg_scale, args.out, args.prompt, args.seed) == (5, 4.5, str(tmp_path), ["a", "b"], 7)
    # the cache method on the command line replaces the config's preset
    assert inference.cache_config(inference.parse_args([config, "--cache", "none"])).method == "none"
    # upstream's --prompt-path, --start-index / --end-index slice the file and offset the names
    prompts = tmp_path / "p.txt"
    prompts.write_text("p0\np1\np2\np3\n")
    args = inference.parse_args([config, "--prompt-path", str(prompts), "--start-index", "1", "--end-index", "3"])
    s = inference.settings_from_args(args)
    assert s.prompts == ["p1", "p2"] and [j.name for j in s.jobs] == ["sample_0001.mp4", "sample_0002.mp4"]
    # the config's relative path is also found from any folder (package data)
    assert inference.find_config(CONFIG) == PACKAGE / CONFIG


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.py"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,line,message", [
    ('fps = 24\nresoluton = "480p"\n', 2,
     "unknown key 'resoluton' (did you mean 'resolution'?); allowed keys: ['aes', 'align'"),
    ('model = dict(\n    type="STDiT3-XL/2",\n    from_pretraind="x",\n)\n', 3,
     "unknown key 'model.from_pretraind' (did you mean 'from_pretrained'?); allowed keys of model: "
     "['enable_flash_attn', 'enable_layernorm_kernel', 'from_pretrained', 'qk_norm', 'type']"),
    ('import os\n', 1, "is not allowed"),
    ('fps = int("24")\n', 1, "is not a literal"),
    ('seed = 1\nfps = "24"\n', 2, "fps = '24' has the wrong type: expected int"),
    ('fps = True\n', 1, "has the wrong type"),
    ('scheduler = dict(type="ddim")\n', 1, "scheduler.type = 'ddim' is not supported: allowed ['rflow']"),
    ('fps = 24\nfps = 30\n', 2, "'fps' is assigned twice (first on line 1)"),
    ('model = {"type": "STDiT3-XL/2"}\n', 1, "model must be dict(key=value, ...)"),
    ('x, y = 1, 2\n', 1, "is not allowed"),
])
def test_bad_configs_name_the_key_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        parse_config(path)
    assert f"config {path}:{line}: " in str(err.value) and message in str(err.value)


def test_a_config_is_never_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    path = write(tmp_path, f'fps = 24\n__import__("pathlib").Path({str(marker)!r}).touch()\n')
    assert inference.main([str(path), "--prompt", "x", "--flops-only"]) == 2
    err = capsys.readouterr().err
    assert f"config {path}:2:" in err and "is not allowed" in err and "Traceback" not in err
    assert not marker.exists()


def run_script(cwd: Path, script: str, config: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, config, *flags], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_upstream_command_runs_from_its_folder_and_from_the_root(weights, tmp_path, monkeypatch):  # noqa: F811
    # tiny weights and sizes on the command line; everything else comes from the shipped config (its bf16 is
    # overridden to fp32, as a CPU user would)
    flags = base_args(weights, tmp_path / "a", "--prompt", "a beautiful waterfall", "--steps", "2", "--dtype", "fp32")
    res = run_script(PACKAGE, "scripts/inference.py", CONFIG, *flags)
    assert res.returncode == 0, res.stderr
    assert read_frames(tmp_path / "a" / "sample_0000.mp4").shape == (17, 16, 16, 3)
    # from the repository root with the paths adjusted (in-process: the same code, without a second start-up)
    monkeypatch.chdir(ROOT)
    flags[flags.index("--out") + 1] = str(tmp_path / "b")
    assert inference.main([f"Open-Sora-DuCa/{CONFIG}", *flags]) == 0
    assert (read_frames(tmp_path / "b" / "sample_0000.mp4") == read_frames(tmp_path / "a" / "sample_0000.mp4")).all()
