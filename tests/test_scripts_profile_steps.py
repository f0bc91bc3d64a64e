"""The per-step-kind profile (issue 14.3): step kinds, FLOPs per step, the batch, outputs."""

import json

import pytest
from PIL import Image

from duca_scripts import profile_steps


def test_step_kinds_add_up_to_the_run(tmp_path):
    data = profile_steps.main(["--model", "tiny", "--method", "duca:n=3,r=0.5", "--steps", "7", "--images", "2",
                               "--baseline-steps", "1", "--out", str(tmp_path)])
    assert data["images"] == 2 and len(data["per_step_cpu_seconds"]) == 7
    assert len(data["uncached_step_cpu_seconds"]) == 1
    full = [t for t, k in zip(data["per_step_cpu_seconds"], data["per_step_kind"], strict=True) if k == "full"]
    assert data["full_over_uncached_step"] == pytest.approx(
        sum(full) / len(full) / data["uncached_step_cpu_seconds"][0])
    assert "full step of the cached run against an uncached step" in (tmp_path / "profile.md").read_text()
    kinds = {r["kind"]: r for r in data["rows"]}
    # DuCa's cycle of 3: a full step, then conservative and aggressive steps alternate
    assert set(kinds) == {"full", "conservative", "aggressive"}
    assert sum(r["steps"] for r in data["rows"]) == 7
    assert kinds["full"]["time_per_flop_vs_full"] == pytest.approx(1.0)
    assert kinds["aggressive"]["tflops_mean"] == 0.0
    assert 0 < kinds["conservative"]["flops_fraction_of_full"] < 1
    assert sum(data["per_step_tflops"]) == pytest.approx(data["run_tflops"])
    # the batch reaches the model: twice the images (CFG), so a full step's FLOPs double from 1 to 2 images
    one = profile_steps.main(["--model", "tiny", "--method", "duca:n=3,r=0.5", "--steps", "7", "--images", "1"])
    full_one = {r["kind"]: r for r in one["rows"]}["full"]["tflops_mean"]
    assert kinds["full"]["tflops_mean"] == pytest.approx(2 * full_one)
    saved = json.loads((tmp_path / "profile.json").read_text())
    assert saved["images"] == 2 and "2 image(s) + CFG twin" in (tmp_path / "profile.md").read_text()
    assert sorted(set(saved["per_step_kind"])) == ["aggressive", "conservative", "full"]
    with Image.open(tmp_path / "profile.png") as im:                  # per-step times and FLOPs as a plot
        assert im.format == "PNG" and im.size[0] > 500 and im.size[1] > 400
    assert (tmp_path / "profile.png").stat().st_size > 10_000


def test_progress_goes_to_stderr_and_can_be_turned_off(capsys):
    argv = ["--model", "tiny", "--method", "duca:n=3,r=0.5", "--steps", "3"]
    profile_steps.main(argv)
    shown = capsys.readouterr()
    assert "sampling" in shown.err and "sampling:" not in shown.out and "| full |" in shown.out
    profile_steps.main([*argv, "--no-progress"])
    assert "sampling" not in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["--model", "tiny", "--images", "0"], "--images 0 is invalid"),
    (["--model", "tiny", "--threads", "-1"], "--threads -1 is invalid"),         # went to torch.set_num_threads
    (["--model", "tiny", "--method", "none"], "is the uncached baseline"),       # was an IndexError
    (["--model", "tiny", "--method", "cachedit-dbcache"], "is a peer library's cache"),   # read as all-full
    (["--model", "PixArt-XL/2"], "preset 'dit-duca-n3-r95' is for dit, not pixart"),   # presets of the model's family
    (["--model", "DiT-XXL/2", "--method", "duca:n=3"], "unknown --model 'DiT-XXL/2'"),
])
def test_bad_inputs_exit_2_in_one_line_before_a_model_is_built(argv, words, capsys, monkeypatch):
    from duca_scripts import targets

    built = []
    monkeypatch.setattr(targets, "_dit_target", lambda *a, **k: built.append(a[0]))
    monkeypatch.setattr(targets, "_pixart_target", lambda *a, **k: built.append("pixart"))
    with pytest.raises(SystemExit) as exc:
        profile_steps.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and words in err
    assert built == []


def test_the_profiled_step_of_a_kind_is_its_typical_one(tmp_path):
    # the first conservative steps of DuCa at DiT-XL/2 recompute 0 tokens: the step nearest the median is
    # profiled instead of the first (ties: the earlier step)
    times = [3.0, 0.07, 0.005, 0.4, 0.005, 0.6, 0.5]
    assert profile_steps.typical_step([1, 3, 5, 6], times) == 3          # median 0.45: 0.4 and 0.5 tie
    assert profile_steps.typical_step([1, 3, 6], times) == 3
    assert profile_steps.typical_step([0], times) == 0
    data = profile_steps.main(["--model", "tiny", "--method", "duca:n=3,r=0.5", "--steps", "7", "--profile-ops",
                               "--top", "5", "--out", str(tmp_path)])
    kinds = {r["kind"] for r in data["rows"]}
    assert set(data["profiled_steps"]) == kinds == set(data["ops"])
    steps = data["profiled_steps"]
    assert data["per_step_tflops"][steps["aggressive"]] == 0.0
    assert 0 < data["per_step_tflops"][steps["conservative"]] < data["per_step_tflops"][steps["full"]]
    assert f"conservative step {data['profiled_steps']['conservative']}" in (tmp_path / "profile.md").read_text()
