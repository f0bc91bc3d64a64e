"""The three evaluation CLIs end to end on a few tiny images, with weights the tests create.

Random Inception / LPIPS / CLIP weights make the numbers meaningless as quality measures, so each
CLI result is checked against an independent computation on the same features or pixels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from duca_eval import testing
from duca_eval.errors import EXIT_USER_ERROR
from duca_eval.report import RESULT_KEYS, SCHEMA_VERSION, run_cli

NUM_REF, NUM_SAMPLES, SIZE = 5, 4, 64


def _offline_env(tmp_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", DUCA_EVAL_OFFLINE="1", TORCH_HOME=str(tmp_root / "torch_home"))
    return env


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    # No hub look-ups (they hang ~25 s before failing) and an empty torch hub cache.
    root = tmp_path_factory.getbasetemp()
    for key, value in _offline_env(root).items():
        if key in ("HF_HUB_OFFLINE", "DUCA_EVAL_OFFLINE", "TORCH_HOME"):
            monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_assets")
    rng = np.random.default_rng(0)
    ref = root / "ref"
    testing.write_random_images(ref, NUM_REF, size=SIZE, seed=1)
    samples = rng.integers(0, 256, size=(NUM_SAMPLES, SIZE, SIZE, 3), dtype=np.uint8)
    # Smooth the samples a little so they differ from the reference distribution.
    samples = ((samples.astype(np.int32) + np.roll(samples, 1, axis=1)) // 2).astype(np.uint8)
    npz = root / "samples.npz"
    np.savez(npz, samples)
    return {
        "root": root,
        "ref": ref,
        "npz": npz,
        "samples": samples,
        "inception": testing.make_random_inception_weights(root / "inception_random.pth"),
    }


def _run_module(module: str, args: list[str], root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args, "--quiet"], capture_output=True, text=True, env=_offline_env(root),
        cwd=root, timeout=300,
    )


def _check_schema(payload: dict, protocol: str, metric_names: set[str]) -> None:
    assert set(RESULT_KEYS) <= set(payload)
    assert payload["schema_version"] == SCHEMA_VERSION and payload["protocol"] == protocol
    assert set(payload["metrics"]) == metric_names
    assert isinstance(payload["num_samples"], int) and isinstance(payload["notes"], list)
    assert isinstance(payload["inputs"], dict) and isinstance(payload["weights"], dict)


# ---------------------------------------------------------------- ImageNet


def _brute_pr(ref, smp, k=3):
    def radius(points, i):
        return np.sort(((points - points[i]) ** 2).sum(1))[k]  # index 0 is the point itself

    r_ref = np.array([radius(ref, i) for i in range(len(ref))])
    r_smp = np.array([radius(smp, i) for i in range(len(smp))])
    d = ((smp[:, None, :].astype(np.float64) - ref[None, :, :]) ** 2).sum(-1)  # (samples, refs)
    return float((d <= r_ref[None, :]).any(1).mean()), float((d <= r_smp[:, None]).any(0).mean())


@pytest.fixture
def activation_spy(monkeypatch):
    """Record the Inception activations the CLIs compute, for independent re-computation of the metrics."""
    import duca_eval.coco
    import duca_eval.imagenet
    import duca_eval.inception

    recorded = []
    original = duca_eval.inception.compute_activations

    def spy(images, extractor, *args, **kwargs):
        acts = original(images, extractor, *args, **kwargs)
        recorded.append(acts)
        return acts

    for module in (duca_eval.inception, duca_eval.imagenet, duca_eval.coco):
        monkeypatch.setattr(module, "compute_activations", spy)
    return recorded


def _textbook_fid(x, y):
    # FID with scipy's sqrtm, in an orthonormal basis Q of the span of the centred features:
    # S = Q A Q^T, so every trace is the same on the small A (a 2048-d sqrtm takes ~1 min here).
    x, y = x.astype(np.float64), y.astype(np.float64)
    m1, m2 = x.mean(0), y.mean(0)
    q, _ = np.linalg.qr(np.concatenate([x - m1, y - m2]).T)
    a1, a2 = np.cov((x - m1) @ q, rowvar=False), np.cov((y - m2) @ q, rowvar=False)
    return float(((m1 - m2) ** 2).sum() + np.trace(a1) + np.trace(a2) - 2 * np.trace(scipy.linalg.sqrtm(a1 @ a2)).real)


def _textbook_fid_to_stats(x, mu, sigma):
    x = x.astype(np.float64)
    m = x.mean(0)
    s = np.cov(x, rowvar=False)
    # Tr sqrt(S_x sigma) = Tr sqrt(C^T sigma C) for S_x = C C^T (C: centred features / sqrt(n - 1)).
    c = (x - m).T / np.sqrt(len(x) - 1)
    inner = c.T @ sigma @ c
    return float(((m - mu) ** 2).sum() + np.trace(s) + np.trace(sigma) - 2 * np.trace(scipy.linalg.sqrtm(inner)).real)


def test_imagenet_cli_end_to_end(assets, activation_spy):
    from duca_eval import imagenet
    from duca_eval.images import FolderImages

    root = assets["root"]
    # An ADM-format reference batch: statistics (here synthetic) plus the images under arr_0.
    rng = np.random.default_rng(5)
    ref_images = np.concatenate(list(FolderImages.from_folder(assets["ref"]).batches(NUM_REF)))
    mu, mu_s = rng.standard_normal(2048) * 0.01, rng.standard_normal(2023) * 0.01
    sigma, sigma_s = np.diag(rng.uniform(0, 1e-3, 2048)), np.diag(rng.uniform(0, 1e-3, 2023))
    adm_ref = root / "VIRTUAL_tiny_labeled.npz"
    np.savez(adm_ref, ref_images, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    out, stats = root / "imagenet.json", root / "ref_stats.npz"
    result = imagenet.main(
        ["--sample", str(assets["npz"]), "--ref", str(adm_ref), "--inception-weights", str(assets["inception"]),
         "--cache-dir", str(root / "cache"), "--save-ref-stats", str(stats), "--batch-size", "4", "--out", str(out),
         "--quiet"]
    )
    payload = json.loads(out.read_text())
    _check_schema(payload, "imagenet", {"fid", "sfid", "inception_score", "precision", "recall"})
    assert payload["num_samples"] == NUM_SAMPLES and payload["inputs"]["ref_num_images"] == NUM_REF
    assert payload["metrics"] == pytest.approx(result.metrics)

    ref_acts, smp_acts = activation_spy  # arr_0 of the reference (for the manifold), then the samples
    assert ref_acts.pool.shape == (NUM_REF, 2048) and ref_acts.spatial.shape == (NUM_REF, 17 * 17 * 7)
    assert smp_acts.logits.shape == (NUM_SAMPLES, 1008)
    metrics = payload["metrics"]
    # As ADM: FID / sFID against the file's statistics, precision / recall against arr_0's features.
    assert metrics["fid"] == pytest.approx(_textbook_fid_to_stats(smp_acts.pool, mu, sigma), rel=1e-6)
    assert metrics["sfid"] == pytest.approx(_textbook_fid_to_stats(smp_acts.spatial, mu_s, sigma_s), rel=1e-6)
    logits = smp_acts.logits.astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    expected_is = np.exp(np.mean(np.sum(probs * (np.log(probs) - np.log(probs.mean(0))), axis=1)))
    assert metrics["inception_score"] == pytest.approx(expected_is, rel=1e-6)
    assert (metrics["precision"], metrics["recall"]) == pytest.approx(_brute_pr(ref_acts.pool, smp_acts.pool))

    # The saved statistics are a valid reference on their own (no images: precision/recall n/a).
    with np.load(stats) as data:
        assert {"mu", "sigma", "mu_s", "sigma_s", "pool"} <= set(data.files)
        np.testing.assert_allclose(data["mu"], mu)
        np.testing.assert_allclose(data["pool"], ref_acts.pool)
    stats_only = root / "stats_only.npz"
    np.savez(stats_only, mu=mu, sigma=sigma)
    again = imagenet.metrics_from_activations(smp_acts, imagenet.load_reference(
        stats_only, None, imagenet.ReferenceOptions(cache_dir=None)))
    assert again[0]["fid"] == pytest.approx(metrics["fid"], rel=1e-9)
    assert again[0]["sfid"] is None and again[0]["precision"] is None
    assert any("precision/recall" in n for n in again[1]) and any("sFID" in n for n in again[1])


# ---------------------------------------------------------------- COCO


def test_coco_cli_end_to_end(assets, activation_spy):
    root = assets["root"]
    sample = root / "coco_samples"
    testing.write_random_images(sample, 4, size=48, seed=7)
    prompts = ["a photo of the cat", "two dogs and a ball", "", "the end of the road", "never sampled"]
    (sample / "prompts.txt").write_text("\n".join(prompts) + "\n")
    clip_dir = testing.make_tiny_clip(root / "tiny_clip")
    out, cache = root / "coco.json", root / "coco_cache"
    from duca_eval import coco

    coco.main(["--sample", str(sample), "--ref", str(assets["ref"]), "--clip-model", str(clip_dir),
               "--inception-weights", str(assets["inception"]), "--cache-dir", str(cache), "--out", str(out),
               "--quiet"])
    payload = json.loads(out.read_text())
    _check_schema(payload, "coco", {"fid", "clip_score"})
    assert payload["num_samples"] == 4 and payload["inputs"]["num_pairs"] == 4
    ref_acts, smp_acts = activation_spy  # the reference folder, then the samples
    assert payload["metrics"]["fid"] == pytest.approx(_textbook_fid(smp_acts.pool, ref_acts.pool), rel=1e-6)
    assert payload["metrics"]["fid"] > 0
    cached = list(cache.glob("ref-*.npz"))
    assert len(cached) == 1, "reference folder statistics were not cached"
    with np.load(cached[0]) as data:
        np.testing.assert_allclose(data["pool"], ref_acts.pool)

    # CLIP score by hand: embeddings through transformers' own API, max(100 * mean(cos), 0) (torchmetrics).
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    images = [Image.open(sample / f"{i:06d}.png").convert("RGB") for i in range(4)]
    batch = processor(text=prompts[:4], images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        out_all = model(**batch)
    cos = torch.nn.functional.cosine_similarity(out_all.image_embeds, out_all.text_embeds)
    expected = max(float((100 * cos).mean()), 0.0)
    assert payload["metrics"]["clip_score"] == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_pair_images_with_prompts_convention(tmp_path):
    from duca_eval.coco import pair_images_with_prompts
    from duca_eval.errors import InputError

    testing.write_random_images(tmp_path, 2, size=16, names=["000002.png", "000000.png"])
    (tmp_path / "prompts.txt").write_text("zero\none\ntwo\n")
    pairs = pair_images_with_prompts(tmp_path)
    assert [(p.index, p.path.name, p.prompt) for p in pairs] == [(0, "000000.png", "zero"), (2, "000002.png", "two")]
    other = tmp_path / "other.txt"
    other.write_text("a\nb\n")
    with pytest.raises(InputError, match="index 2 but the prompts file has 2 lines"):
        pair_images_with_prompts(tmp_path, other)
    testing.write_random_images(tmp_path, 1, size=16, names=["cat.png"])
    with pytest.raises(InputError, match="not named by its prompt index"):
        pair_images_with_prompts(tmp_path)


# ---------------------------------------------------------------- fidelity


def test_fidelity_cli_end_to_end_images_and_videos(assets):
    import torch
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from duca_eval.fidelity import load_lpips, lpips_distance

    root = assets["root"]
    backbone, heads = testing.make_random_lpips_weights(root / "lpips", "alex")
    ref, run = root / "fid_ref", root / "fid_run"
    names = ["000000.png", "000001.png", "000002.png"]
    testing.write_random_images(ref, 3, size=40, seed=11, names=names)
    testing.write_random_images(run, 3, size=40, seed=12, names=names)
    # One pair identical: PSNR inf, SSIM 1, LPIPS 0.
    (run / names[0]).write_bytes((ref / names[0]).read_bytes())
    out = root / "fidelity.json"
    proc = _run_module(
        "duca_eval.fidelity",
        ["--ref", str(ref), "--sample", str(run), "--lpips-backbone", str(backbone), "--lpips-heads", str(heads),
         "--out", str(out)],
        root,
    )
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(out.read_text())
    _check_schema(payload, "fidelity", {"psnr", "ssim", "lpips"})
    rows = {row["name"]: row for row in payload["per_item"]}
    assert rows[names[0]]["psnr"] == "inf" and rows[names[0]]["ssim"] == pytest.approx(1.0)
    assert rows[names[0]]["lpips"] == pytest.approx(0.0, abs=1e-6)
    model = load_lpips("alex", backbone, heads)
    from duca_eval.images import load_rgb

    for name in names[1:]:
        a, b = load_rgb(ref / name), load_rgb(run / name)
        assert rows[name]["psnr"] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), rel=1e-6)
        expected_ssim = structural_similarity(
            a / 255.0, b / 255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1,
            channel_axis=-1,
        )
        assert rows[name]["ssim"] == pytest.approx(expected_ssim, abs=1e-5)
        ta, tb = (torch.from_numpy(x.copy()).permute(2, 0, 1) for x in (a, b))
        assert rows[name]["lpips"] == pytest.approx(float(lpips_distance(ta, tb, model)), rel=1e-5)
        assert rows[name]["lpips"] > 0
    assert payload["metrics"]["psnr"] == "inf"
    assert payload["metrics"]["ssim"] == pytest.approx(np.mean([rows[n]["ssim"] for n in names]))

    # Videos as folders of frames: per-video means, then the mean over videos.
    vref, vrun = root / "vid_ref", root / "vid_run"
    for video, count in (("clip_a", 2), ("clip_b", 3)):
        testing.write_random_images(vref / video, count, size=24, seed=count)
        testing.write_random_images(vrun / video, count, size=24, seed=count + 10)
    from duca_eval.fidelity import main

    result = main(["--ref", str(vref), "--sample", str(vrun), "--video", "--metrics", "psnr,ssim",
                   "--out", str(root / "video.json"), "--quiet"])
    per_video = result.extra["per_video"]
    assert per_video["clip_a"]["num_frames"] == 2 and per_video["clip_b"]["num_frames"] == 3
    frames_b = [r["psnr"] for r in result.extra["per_item"] if r["video"] == "clip_b"]
    assert per_video["clip_b"]["psnr"] == pytest.approx(np.mean(frames_b))
    assert result.metrics["psnr"] == pytest.approx((per_video["clip_a"]["psnr"] + per_video["clip_b"]["psnr"]) / 2)


# ---------------------------------------------------------------- documented errors


def _cli_error(main, argv, capsys) -> str:
    assert run_cli(main, argv) == EXIT_USER_ERROR
    return capsys.readouterr().err


def test_missing_weights_fail_before_work(assets, tmp_path, capsys):
    from duca_eval import coco, fidelity, imagenet

    cache = tmp_path / "cache"
    err = _cli_error(imagenet.main, ["--sample", str(assets["npz"]), "--ref", str(assets["ref"]),
                                     "--cache-dir", str(cache), "--out", str(tmp_path / "x.json")], capsys)
    assert "weights-inception-2015-12-05-6726825d.pth" in err and "network is unreachable" in err
    assert "https://github.com/toshas/torch-fidelity/releases" in err and "--inception-weights" in err
    assert not cache.exists() and not (tmp_path / "x.json").exists()  # no work started

    err = _cli_error(imagenet.main, ["--sample", str(assets["npz"]), "--ref", str(assets["ref"]),
                                     "--inception-weights", str(tmp_path / "nope.pth")], capsys)
    assert "nope.pth" in err and "not found" in err

    err = _cli_error(fidelity.main, ["--ref", str(assets["ref"]), "--sample", str(assets["ref"])], capsys)
    assert "alexnet-owt-7be5be79.pth" in err and "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in err

    sample = tmp_path / "coco"
    testing.write_random_images(sample, 1, size=16)
    (sample / "prompts.txt").write_text("a\n")
    err = _cli_error(coco.main, ["--sample", str(sample), "--no-fid", "--clip-model", "openai/clip-vit-large-patch14"],
                     capsys)
    assert "openai/clip-vit-large-patch14" in err and "hf download" in err
    err = _cli_error(coco.main, ["--sample", str(sample), "--no-fid", "--clip-model", str(tmp_path / "no_clip")],
                     capsys)
    assert "no_clip" in err and "does not exist" in err


def test_bad_inputs_give_clear_errors(assets, tmp_path, capsys):
    from duca_eval import fidelity, imagenet

    weights = ["--inception-weights", str(assets["inception"])]
    err = _cli_error(imagenet.main, ["--sample", str(tmp_path / "missing"), "--ref", str(assets["ref"]), *weights],
                     capsys)
    assert "does not exist" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _cli_error(imagenet.main, ["--sample", str(empty), "--ref", str(assets["ref"]), *weights], capsys)
    assert "holds no images" in err
    wrong_key = tmp_path / "wrong.npz"
    np.savez(wrong_key, images=assets["samples"])
    err = _cli_error(imagenet.main, ["--sample", str(wrong_key), "--ref", str(assets["ref"]), *weights], capsys)
    assert "no 'arr_0' array" in err and "images" in err
    floats = tmp_path / "floats.npz"
    np.savez(floats, assets["samples"].astype(np.float32) / 255)
    err = _cli_error(imagenet.main, ["--sample", str(floats), "--ref", str(assets["ref"]), *weights], capsys)
    assert "expected uint8 NHWC" in err
    bad_ref = tmp_path / "bad_ref.npz"
    np.savez(bad_ref, means=np.zeros(3))
    err = _cli_error(imagenet.main, ["--sample", str(assets["npz"]), "--ref", str(bad_ref), *weights], capsys)
    assert "expected ADM statistics" in err

    # Fidelity: unpaired names are an error that lists them.
    ref, run = tmp_path / "r", tmp_path / "s"
    testing.write_random_images(ref, 2, size=16, names=["a.png", "b.png"])
    testing.write_random_images(run, 2, size=16, names=["a.png", "c.png"])
    err = _cli_error(fidelity.main, ["--ref", str(ref), "--sample", str(run), "--metrics", "psnr"], capsys)
    assert "do not pair up by name" in err and "b.png" in err and "c.png" in err
    (run / "c.png").rename(run / "b.png")
    testing.write_random_images(run, 1, size=20, names=["b.png"])
    err = _cli_error(fidelity.main, ["--ref", str(ref), "--sample", str(run), "--metrics", "psnr"], capsys)
    assert "b.png" in err and "(H, W)" in err


def test_weights_files_that_are_not_weights_are_one_line_errors(assets, tmp_path, capsys):
    """A text file passed as --inception-weights (was an UnpicklingError traceback from torch-fidelity) or as
    --lpips-backbone (was torch's nine-line weights-only explanation): exit 2, one line naming the fix."""
    from duca_eval import coco, fidelity, imagenet

    bad = tmp_path / "notes.pth"
    bad.write_text("not weights")
    out = tmp_path / "x.json"
    err = _cli_error(imagenet.main, ["--sample", str(assets["npz"]), "--ref", str(assets["npz"]),
                                     "--inception-weights", str(bad), "--no-cache", "--out", str(out)], capsys)
    assert f"{bad} is not a usable torch-fidelity Inception-v3 state dict" in err and "--inception-weights" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    sample = tmp_path / "coco"
    testing.write_random_images(sample, 1, size=16)
    (sample / "prompts.txt").write_text("a\n")
    err = _cli_error(coco.main, ["--sample", str(sample), "--ref", str(sample), "--no-clip", "--no-cache",
                                 "--inception-weights", str(bad), "--out", str(out)], capsys)
    assert "is not a usable torch-fidelity Inception-v3 state dict" in err and err.count("\n") == 1
    err = _cli_error(fidelity.main, ["--ref", str(sample), "--sample", str(sample), "--metrics", "lpips",
                                     "--lpips-backbone", str(bad), "--out", str(out)], capsys)
    assert f"cannot read LPIPS backbone weights {bad}" in err and "--lpips-backbone" in err
    assert err.count("\n") == 1 and "file an issue" not in err
    assert not out.exists()


@pytest.mark.parametrize("module", ["duca_eval.imagenet", "duca_eval.coco"])
def test_python_dash_m_entry_points_report_user_errors(module, tmp_path):
    # The real entry point: a missing sample folder is one clear line on stderr and exit status 2.
    args = ["--sample", str(tmp_path / "missing"), "--ref", str(tmp_path)]
    proc = _run_module(module, args, tmp_path)
    assert proc.returncode == EXIT_USER_ERROR
    assert proc.stderr.startswith("error: ") and "missing" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
