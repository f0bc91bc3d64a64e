"""VBench protocol pieces that run without VBench: the tabulation (normalisation, quality / semantic / total)
against numbers computed by hand from VBench's constants, the table and plot, and the scorer's up-front check of
VBench's model files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opensora_duca import inference, vbench_launch, vbench_table
from test_opensora_inference import PROMPTS, read_frames, weights  # noqa: F401  (fixture)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "opensora"
RESULTS = json.loads((FIXTURES / "vbench_results.json").read_text())


def write_scores(folder: Path, raw: dict[str, float]) -> Path:
    """VBench 0.1.5's output layout: one result file and one info file per dimension (as calc_vbench runs it)."""
    folder.mkdir(parents=True)
    for dim, score in raw.items():
        (folder / f"{dim}_eval_results.json").write_text(json.dumps({dim: [score, [{"video_path": "v.mp4"}]]}))
        (folder / f"{dim}_full_info.json").write_text(json.dumps([{"prompt_en": "p", "dimension": [dim],
                                                                    "video_list": ["v-0.mp4"]}]))
    return folder


def test_totals_equal_a_hand_computation_from_vbench_constants(tmp_path):
    run = vbench_table.load_run(f"none={write_scores(tmp_path / 'none', RESULTS['none'])}")
    # by hand: (raw rounded to 4 decimals - min) / (max - min) x weight, with VBench's min / max
    quality = ((0.95 - 0.1462) / (1 - 0.1462) + (0.96 - 0.2615) / (1 - 0.2615) + (0.98 - 0.6293) / (1 - 0.6293)
               + (0.985 - 0.706) / (0.9975 - 0.706) + 0.5500 + 0.6 + 0.5 * 0.5) / 6.5
    semantic = (0.8 + 0.4 + 0.9 + 0.8501 + 0.5 + 0.4111 / 0.8222 + (0.2 - 0.0009) / (0.2855 - 0.0009)
                + 0.24 / 0.364 + 0.26 / 0.364) / 9
    assert run.raw["aesthetic_quality"] == 0.55 and run.raw["color"] == 0.8501     # ".4f" as the reference
    assert run.scaled["quality"] == pytest.approx(quality, abs=1e-12)
    assert run.scaled["semantic"] == pytest.approx(semantic, abs=1e-12)
    assert run.scaled["total"] == pytest.approx((4 * quality + semantic) / 5, abs=1e-12)
    assert run.scaled["total"] == pytest.approx(0.7726747, abs=1e-7)       # 0.798529 quality, 0.669257 semantic
    assert run.scaled["dynamic_degree"] == 0.25 and run.scaled["scene"] == pytest.approx(0.5)


def test_table_plot_and_speedups(tmp_path):
    none = write_scores(tmp_path / "none", RESULTS["none"])
    duca = write_scores(tmp_path / "duca", RESULTS["duca"])
    reports = {}
    for name, speedup in (("none", 1.0), ("duca", 2.4921)):
        reports[name] = tmp_path / f"{name}.json"
        reports[name].write_text(json.dumps({"flops": {"speedup": speedup}}))
    out, plot, js = tmp_path / "t.md", tmp_path / "b.png", tmp_path / "s.json"
    assert vbench_table.main(["--run", f"none={none}:{reports['none']}", "--run", f"duca={duca}:{reports['duca']}",
                              "--out", str(out), "--plot", str(plot), "--json", str(js)]) == 0
    table = out.read_text()
    scores = json.loads(js.read_text())
    total_none, total_duca = scores["none"]["scaled"]["total"], scores["duca"]["scaled"]["total"]
    assert f"| none | 1.00x | {100 * total_none:.2f}% |" in table
    assert f"| duca | 2.49x | {100 * total_duca:.2f}% |" in table
    assert f"{100 * (total_duca - total_none):+.2f} |" in table
    assert "| dynamic degree (quality) | 25.00% |" in table and table.count("\n") == 2 + 2 + 3 + 16
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_incomplete_or_bad_score_folders_are_named(tmp_path, capsys):
    partial = dict(RESULTS["none"])
    del partial["scene"], partial["color"]
    folder = write_scores(tmp_path / "p", partial)
    assert vbench_table.main(["--run", f"x={folder}"]) == 2
    assert "lacks 2 of the 16 VBench dimensions (color, scene)" in capsys.readouterr().err
    (folder / "color_full_info.json").write_text(
        json.dumps([{"prompt_en": "p", "dimension": ["color"], "video_list": []}]))
    (folder / "color_eval_results.json").write_text(json.dumps({"color": [0.5, []]}))
    assert vbench_table.main(["--run", f"x={folder}"]) == 2
    assert "lists no videos" in capsys.readouterr().err
    assert vbench_table.main(["--run", "nofolder"]) == 2
    assert "NAME=SCORE_DIR" in capsys.readouterr().err


def test_malformed_score_files_and_reports_are_named_not_tracebacks(tmp_path, capsys):
    """Result files of the wrong JSON shape (a list: was an AttributeError traceback), scores outside [0, 1] or
    NaN (were tabulated), an info file that is not a list of entries, a report with a NaN or negative speed-up."""
    folder = write_scores(tmp_path / "s", RESULTS["none"])
    good = (folder / "color_eval_results.json").read_text()
    for content, words in [("[]", "holds a JSON list, not VBench's"),
                           ('{"color": [NaN, []]}', "the color score nan is not in [0, 1]"),
                           ('{"color": [1.5, []]}', "the color score 1.5 is not in [0, 1]")]:
        (folder / "color_eval_results.json").write_text(content)
        assert vbench_table.main(["--run", f"x={folder}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "color_eval_results.json" in err and words in err
    (folder / "color_eval_results.json").write_text(good)
    (folder / "color_full_info.json").write_text('{"prompt_en": "p"}')
    assert vbench_table.main(["--run", f"x={folder}"]) == 2
    assert "color_full_info.json is not VBench's list of prompt entries" in capsys.readouterr().err
    write_scores(tmp_path / "ok", RESULTS["none"])
    for speedup in ("NaN", "-2"):
        report = tmp_path / "report.json"
        report.write_text(f'{{"flops": {{"speedup": {speedup}}}}}')
        assert vbench_table.main(["--run", f"x={tmp_path / 'ok'}:{report}", "--out", str(tmp_path / "t.md")]) == 2
        assert "flops.speedup" in capsys.readouterr().err and not (tmp_path / "t.md").exists()


# ---------------------------------------------------------------------------------------------------
# Launcher: shards, no-GPU refusal, a tiny end-to-end run on the CPU, resume; scorer: its up-front checks
# ---------------------------------------------------------------------------------------------------
PACKAGE = Path(__file__).resolve().parents[1] / "Open-Sora-DuCa"
VBENCH_DIR = PACKAGE / "eval" / "vbench"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_shards_cover_every_prompt_exactly_once_for_any_count():
    for count in (0, 1, 2, 7, 946):
        for shards in range(1, 41):
            blocks = [inference.shard_bounds(count, i, shards) for i in range(shards)]
            covered = [p for lo, hi in blocks for p in range(lo, hi)]
            assert covered == list(range(count)), (count, shards)
            sizes = [hi - lo for lo, hi in blocks]
            assert max(sizes) - min(sizes) <= 1
    prompts = inference.read_prompt_list(str(inference.vbench_info_path()))
    jobs = inference.make_jobs(prompts, 5, True)
    assert len(prompts) == 946 and len(jobs) == 4720          # 2 prompts are listed twice and share files
    for shards in (1, 3, 8, 13):
        names = [j.name for i in range(shards) for j in inference.shard_jobs(jobs, i, shards)]
        assert sorted(names) == sorted(j.name for j in jobs) and len(set(names)) == len(names)
        # all 5 videos of a prompt are in one shard
        for i in range(shards):
            mine = inference.shard_jobs(jobs, i, shards)
            assert {j.prompt_index for j in mine} == {j.prompt_index for j in jobs if j.prompt_index in
                                                      {m.prompt_index for m in mine}}


def test_shipped_vbench_prompt_list_is_vbenchs():
    shipped = json.loads((VBENCH_DIR / "VBench_full_info.json").read_text())
    assert len(shipped) == 946 and {"prompt_en", "dimension"} <= set(shipped[0])
    reference = SHARED_DATA / "VBench_full_info.json"
    if reference.is_file():     # the copy in the reference repository (shared/data/README.md)
        assert shipped == json.loads(reference.read_text())


def test_launcher_without_gpu_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv(vbench_launch.ALLOW_CPU_ENV, raising=False)
    rc = vbench_launch.main(["ckpt", "51", "duca", "480p", "9:16", "--out-root", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2 and "no GPU is visible" in err and "pass --allow-cpu" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_launch_sh_starts_one_process_per_gpu(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "3,5,6"}
    res = subprocess.run(["bash", "eval/vbench/launch.sh", "hpcai-tech/OpenSora-STDiT-v3", "51", "duca", "480p", "9:16",
                          "--dry-run", "--out-root", str(tmp_path)], cwd=PACKAGE, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 3
    for i, (gpu, line) in enumerate(zip("356", lines, strict=True)):
        assert line.startswith(f"CUDA_VISIBLE_DEVICES={gpu} ")
        assert line.endswith(f"--shard {i}/3 --report {tmp_path}/samples_duca_OpenSora-STDiT-v3_vbench_logs/"
                             f"shard{i}-of-3.json")
        assert "--vbench" in line and "--resolution 480p --aspect-ratio 9:16" in line
        assert f"--save-dir {tmp_path}/samples_duca_OpenSora-STDiT-v3_vbench" in line
    assert not list(tmp_path.iterdir())


def fake_model_cache(root: Path) -> dict[str, str]:
    """Environment variables pointing VBench's caches into ``root`` (HOME too: openai-clip's cache is ~/.cache/clip)."""
    return {"HOME": str(root / "home"), "VBENCH_CACHE_DIR": str(root / "vbench"), "TORCH_HOME": str(root / "torch"),
            "HF_HOME": str(root / "hf"), "HF_HUB_CACHE": str(root / "hf" / "hub")}


def with_fake_detectron2(root: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` with an importable stand-in ``detectron2`` (the GRiT dimensions' library) on PYTHONPATH."""
    (root / "detectron2").mkdir(parents=True, exist_ok=True)
    (root / "detectron2" / "__init__.py").write_text("")
    return {**env, "PYTHONPATH": f"{root}{os.pathsep}{env.get('PYTHONPATH', os.environ.get('PYTHONPATH', ''))}"}


def run_calc(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(VBENCH_DIR / "calc_vbench.py"), *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_scorer_reports_missing_detectron2_before_anything(tmp_path):
    """Without detectron2 (it builds from github.com) the four GRiT dimensions are refused up front, naming the
    fix; the other dimensions do not need it."""
    env = fake_model_cache(tmp_path / "cache")
    res = run_calc(str(tmp_path / "no-videos-here"), "--offline", env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.count("\n") == 1
    assert ("detectron2 (for multiple_objects, spatial_relationship, object_class, color) is not installed"
            in res.stderr) and "--start/--end" in res.stderr and "VBench model file" not in res.stderr
    res = run_calc(str(tmp_path / "no-videos-here"), "--offline", "--start", "0", "--end", "6", env=env)
    assert res.returncode == 2 and "detectron2" not in res.stderr and "VBench model file(s) missing" in res.stderr


def test_scorer_reports_missing_model_files_before_reading_videos(tmp_path):
    env = with_fake_detectron2(tmp_path / "libs", fake_model_cache(tmp_path / "cache"))
    res = run_calc(str(tmp_path / "no-videos-here"), "--offline", env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    err = res.stderr
    assert "14 VBench model file(s) missing and downloads are off" in err
    assert (f"dino_vitbase16_pretrain.pth (for subject_consistency) expected at "
            f"{tmp_path}/cache/torch/hub/checkpoints/") in err
    assert f"amt-s.pth (for motion_smoothness) expected at {tmp_path}/cache/vbench/amt_model/amt-s.pth" in err
    assert (f"ViT-B-32.pt (for background_consistency, appearance_style) expected at "
            f"{tmp_path}/cache/home/.cache/clip/") in err
    assert "no-videos-here" not in err                    # the videos were not looked at
    # only the chosen dimensions' files are required: temporal_flickering (index 12) needs none
    res = run_calc(str(tmp_path / "no-videos-here"), "--offline", "--start", "12", "--end", "13", env=env)
    assert res.returncode == 2 and "video folder" in res.stderr and "does not exist" in res.stderr


def test_tiny_vbench_run_end_to_end_on_cpu(weights, tmp_path, monkeypatch, capsys):  # noqa: F811
    """2 prompts x 5 videos through the launcher (2 CPU processes), a resume that writes only what is missing,
    and the scorer's checks over the folder (the mp4 files VBench would read)."""
    info = tmp_path / "info.json"
    info.write_text(json.dumps([{"prompt_en": PROMPTS[0], "dimension": ["subject_consistency", "human_action"]},
                                {"prompt_en": PROMPTS[1], "dimension": ["color", "scene"]}]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    argv = [str(weights / "stdit"), "17", "tiny", "240p", "9:16", "--allow-cpu", "--cpu-processes", "2",
            "--out-root", str(tmp_path / "samples"), "--vae-path", str(weights / "vae"), "--t5-path",
            str(weights / "t5"), "--image-size", "16", "16", "--steps", "6", "--dtype", "fp32", "--prompts-file",
            str(info), "--cache", "duca"]
    assert vbench_launch.main(argv) == 0, capsys.readouterr().err
    out = tmp_path / "samples" / "samples_tiny_stdit_vbench"
    names = sorted(f"{p}-{k}.mp4" for p in PROMPTS for k in range(5))
    assert sorted(p.name for p in out.glob("*.mp4")) == names and (out / "run.json").is_file()
    logs = tmp_path / "samples" / "samples_tiny_stdit_vbench_logs"
    assert (logs / "shard0-of-2.log").is_file() and (logs / "shard1-of-2.log").is_file()
    shard_reports = [json.loads((logs / f"shard{i}-of-2.json").read_text()) for i in range(2)]
    assert sorted(v["name"] for r in shard_reports for v in r["rank0_videos"]) == names     # 5 + 5, timed
    assert json.loads((logs / "flops.json").read_text())["flops"]["speedup"] > 1.0
    assert read_frames(out / names[0]).shape == (17, 16, 16, 3)
    # resume: remove two videos; a rerun writes exactly those
    stamps = {n: (out / n).stat().st_mtime_ns for n in names}
    for n in names[:2]:
        (out / n).unlink()
    rerun = [a if a != "2" or argv[i - 1] != "--cpu-processes" else "1" for i, a in enumerate(argv)]
    assert vbench_launch.main([*rerun, "--no-flops"]) == 0                # one process now: same folder, same run
    assert sorted(p.name for p in out.glob("*.mp4")) == names
    assert all((out / n).stat().st_mtime_ns == stamps[n] for n in names[2:])
    # the scorer's checks: model files present (empty stand-ins), every expected video found, a videos-only view
    cache = tmp_path / "cache"
    env = with_fake_detectron2(tmp_path / "libs", fake_model_cache(cache))
    roots = {"vbench": cache / "vbench", "torch": cache / "torch", "clip": cache / "home" / ".cache" / "clip",
             "hf": cache / "hf" / "hub"}
    for _, root, rel, _, _ in _model_files():
        target = roots[root] / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    scores = tmp_path / "scores"
    res = run_calc(str(out), str(scores), "--offline", "--full-info", str(info), "--check-only", env=env)
    assert res.returncode == 0, res.stderr
    assert "10 videos, 16 of 16 dimensions to score" in res.stdout
    assert sorted(p.name for p in (scores / "videos").iterdir()) == names        # no run.json in VBench's view
    (out / names[3]).unlink()
    res = run_calc(str(out), str(scores), "--offline", "--full-info", str(info), "--check-only", env=env)
    assert res.returncode == 2 and f"1 of 10 videos are missing in {out} (first: {names[3]!r})" in res.stderr


def _model_files():
    return _calc_module().MODEL_FILES


def test_setup_env_script_dry_run(tmp_path):
    script = VBENCH_DIR / "setup_env.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env_dir = tmp_path / "venv"
    res = subprocess.run(["bash", str(script), str(env_dir), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert f"+ python3 -m venv {env_dir}" in res.stdout
    assert "install vbench==0.1.5 pyiqa==0.1.10 lvis==0.5.3" in res.stdout
    assert "detectron2.git@ff53992" in res.stdout and "transformers.__version__\\ ==\\ \\'4.33.2\\'" in res.stdout
    assert not env_dir.exists()
    bad = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr
    calc = subprocess.run(["bash", str(VBENCH_DIR / "calc.sh"), "x"], env={**os.environ, "VBENCH_ENV": str(env_dir)},
                          capture_output=True, text=True)
    assert calc.returncode == 2 and f"no VBench environment at {env_dir}" in calc.stderr


def test_output_folder_names_follow_the_reference():
    assert vbench_launch.checkpoint_base("hpcai-tech/OpenSora-STDiT-v3") == "OpenSora-STDiT-v3"
    assert vbench_launch.checkpoint_base("/ckpts/OpenSora-STDiT-v3/") == "OpenSora-STDiT-v3"
    assert vbench_launch.checkpoint_base("outputs/042-STDiT3-XL-2/epoch1-global_step16200/ema.pt") == \
        "epoch1-global_step16200_ema"
    # "ema" inside a folder name ("femaleuser") does not make an EMA checkpoint: only the file name counts
    assert vbench_launch.checkpoint_base("checkpoints/femaleuser/model.safetensors") == "model.safetensors"


FAKE_VBENCH = '''
import json, os
class VBench:
    def __init__(self, device, full_info_dir, output_path):
        self.log = os.path.join(output_path, "calls.jsonl")
        self.output_path = output_path
        with open(self.log, "a") as f:
            f.write(json.dumps({"init": [str(device), full_info_dir, output_path]}) + "\\n")
    def evaluate(self, **kwargs):
        with open(self.log, "a") as f:
            f.write(json.dumps(kwargs) + "\\n")
        name = kwargs["name"]
        with open(os.path.join(self.output_path, name + "_eval_results.json"), "w") as f:
            json.dump({name: [0.5, []]}, f)
'''


def test_scorer_calls_vbench_with_the_reference_settings_and_resumes(tmp_path):
    """A stand-in ``vbench`` package records the calls: the reference's 16 dimensions in its order, one
    ``evaluate`` per dimension with mode vbench_standard, local False, read_frame False and the 'longer' imaging
    preprocessing, on the videos-only view; a rerun scores only the dimensions without a result file."""
    (tmp_path / "fake" / "vbench").mkdir(parents=True)
    (tmp_path / "fake" / "vbench" / "__init__.py").write_text(FAKE_VBENCH)
    info = tmp_path / "info.json"
    info.write_text(json.dumps([{"prompt_en": "a cat", "dimension": ["color"]}]))
    videos = tmp_path / "videos"
    videos.mkdir()
    for k in range(5):
        (videos / f"a cat-{k}.mp4").write_bytes(b"")
    (videos / "run.json").write_text("{}")
    cache = tmp_path / "cache"
    env = {**fake_model_cache(cache),
           "PYTHONPATH": f"{tmp_path / 'fake'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env = with_fake_detectron2(tmp_path / "libs", env)
    for _, root, rel, _, _ in _model_files():
        target = {"vbench": cache / "vbench", "torch": cache / "torch", "clip": cache / "home" / ".cache" / "clip",
                  "hf": cache / "hf" / "hub"}[root] / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    scores = tmp_path / "scores"
    res = run_calc(str(videos), str(scores), "--full-info", str(info), "--device", "cpu", "--offline", env=env)
    assert res.returncode == 0, res.stderr
    calls = [json.loads(line) for line in (scores / "calls.jsonl").read_text().splitlines()]
    assert calls[0]["init"] == ["cpu", str(info.resolve()), str(scores)]
    dims = [c["name"] for c in calls[1:]]
    assert dims == list(_calc_module().DIMENSIONS) and len(dims) == 16
    assert set(dims) == set(vbench_table.DIMENSIONS)           # the table reads exactly what is scored
    for c in calls[1:]:
        assert c == {"videos_path": str(scores / "videos"), "name": c["name"], "local": False, "read_frame": False,
                     "dimension_list": [c["name"]], "mode": "vbench_standard",
                     "imaging_quality_preprocessing_mode": "longer"}
    # resume: two result files removed -> only those two dimensions are scored again
    (scores / "color_eval_results.json").unlink()
    (scores / "scene_eval_results.json").unlink()
    (scores / "calls.jsonl").unlink()
    res = run_calc(str(videos), str(scores), "--full-info", str(info), "--device", "cpu", "--offline", env=env)
    assert res.returncode == 0, res.stderr
    calls = [json.loads(line) for line in (scores / "calls.jsonl").read_text().splitlines()]
    assert [c["name"] for c in calls[1:]] == ["color", "scene"]
    # one progress line per dimension, on stderr (stdout keeps its summary lines)
    assert "[1/2] scoring color" in res.stderr and "[2/2] scoring scene" in res.stderr and "[1/2]" not in res.stdout


def _calc_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("calc_vbench", VBENCH_DIR / "calc_vbench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launcher_unwritable_out_root_fails_before_any_process(tmp_path, monkeypatch, capsys, weights):  # noqa: F811
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    rc = vbench_launch.main([str(weights / "stdit"), "17", "t", "240p", "9:16", "--allow-cpu",
                             "--out-root", str(blocker / "sub"), "--vae-path", str(weights / "vae")])
    err = capsys.readouterr().err
    assert rc == 2 and "error: --out" in err and "is a file, not a folder" in err and "Traceback" not in err


# A stand-in for one ``opensora_duca.inference --shard i/N`` process: writes its share of the videos (names as
# JSON in argv[2]) into argv[1], one every few ms, then exits with argv[3].
FAKE_WORKER = """
import json, sys, time
from pathlib import Path
for name in json.loads(sys.argv[2]):
    time.sleep(0.05)
    (Path(sys.argv[1]) / (name + ".tmp")).write_bytes(b"mp4")
    (Path(sys.argv[1]) / (name + ".tmp")).rename(Path(sys.argv[1]) / name)
sys.exit(int(sys.argv[3]))
"""
REAL_POPEN = subprocess.Popen        # a second fake_launch in one test patches over the first one's fake


def fake_launch(tmp_path, monkeypatch, *flags: str, fail_shard: int | None = None) -> tuple[int, Path, list[str]]:
    """The launcher with 2 CPU processes whose workers are FAKE_WORKER (no weights, no sampling); the up-front
    check and FLOPs report are stubbed. Returns the exit code, the video folder and the names expected."""
    info = tmp_path / "info.json"
    info.write_text(json.dumps([{"prompt_en": p, "dimension": ["scene"]} for p in ("a cat", "a red dog")]))
    out = tmp_path / "samples" / "samples_fake_stdit_vbench"
    argv = ["stdit", "17", "fake", "240p", "9:16", "--allow-cpu", "--cpu-processes", "2", "--out-root",
            str(tmp_path / "samples"), "--prompts-file", str(info), *flags]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(vbench_launch, "PROGRESS_POLL_S", 0.02)
    monkeypatch.setattr(vbench_launch.inference, "main", lambda argv: 0)

    def popen(cmd, env, stdout, stderr):
        args = inference.parse_args(cmd[3:])
        names = sorted({j.name for j in inference.settings_from_args(args).jobs})
        i, n = (int(v) for v in args.shard.split("/"))
        out.mkdir(parents=True, exist_ok=True)
        code = 3 if i == fail_shard else 0
        return REAL_POPEN([sys.executable, "-c", FAKE_WORKER, str(out), json.dumps(names[i::n]), str(code)],
                          env=env, stdout=stdout, stderr=stderr)

    monkeypatch.setattr(vbench_launch.subprocess, "Popen", popen)
    rc = vbench_launch.main(argv)
    return rc, out, sorted(f"{p}-{k}.mp4" for p in ("a cat", "a red dog") for k in range(5))


def test_launcher_progress_bar_counts_every_shards_videos_on_stderr(tmp_path, monkeypatch, capsys):
    rc, out, names = fake_launch(tmp_path, monkeypatch)
    res = capsys.readouterr()
    assert rc == 0 and sorted(p.name for p in out.glob("*.mp4")) == names
    bar = res.err.replace("\r", "\n").splitlines()
    assert any(line.startswith("videos: 100%") and "10/10" in line for line in bar), res.err
    assert "videos:" not in res.out and f"all 10 videos are in {out}; score them with" in res.out


def test_launcher_progress_bar_keeps_failures_and_verbose_0(tmp_path, monkeypatch, capsys):
    """A failed shard: its count on the bar, exit code 1 and the message as before; a rerun's bar starts at the
    videos already there; --verbose 0: no bar."""
    rc, out, _ = fake_launch(tmp_path, monkeypatch, fail_shard=1)
    err = capsys.readouterr().err
    assert rc == 1 and "10/10" in err and "error: 0 of 10 videos are missing; shard 1 (cpu1): exit 3, see " in err
    sorted(out.glob("*.mp4"))[0].unlink()
    rc, _, _ = fake_launch(tmp_path, monkeypatch)
    bar = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("videos:")]
    assert rc == 0 and "9/10" in bar[0] and "10/10" in bar[-1]
    rc, _, _ = fake_launch(tmp_path, monkeypatch, "--verbose", "0")
    res = capsys.readouterr()
    assert rc == 0 and "videos:" not in res.err and "all 10 videos" in res.out
