"""DiT sampling scripts: FLOPs of the presets, sample.py, torchrun sample_ddp.py, loading and fail-fast errors."""

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
from dit_duca.diffusion import create_diffusion
from dit_duca.loading import CheckpointNotFoundError, load_vae, resolve_checkpoint, save_checkpoint
from dit_duca.models import DiT
from duca_common.cache import TransformerDims, get_preset, reference_flops
from duca_common.vae import remap_deprecated_attention_keys

ROOT = Path(__file__).resolve().parents[1]
DIT_XL = TransformerDims(batch=2, tokens=256, hidden=1152, heads=16)
SEED_FLAGS = ["--image-size", "256", "--num-sampling-steps", "50", "--cache-type", "attention", "--fresh-threshold",
              "3", "--fresh-ratio", "0.05", "--ratio-scheduler", "ToCa", "--force-fresh", "global",
              "--soft-fresh-weight", "0.25", "--ddim-sample"]


def tiny_model(in_channels=1, input_size=8, num_classes=10):
    torch.manual_seed(0)
    model = DiT(input_size=input_size, patch_size=2, in_channels=in_channels, hidden_size=32, depth=2, num_heads=4,
                num_classes=num_classes)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(tiny_model(), path)
    return path


# ------------------------------------------------------------------------------------------------ FLOPs

# paper.md section 2 (FLOPs speed-up over DDIM-50). The published numbers are rounded to two decimals
# (<= 0.2% for values >= 2.3) and come from secondary tables; DuCa N=5 (3.78x, [S]) is 0.6% above what
# the reference rules give (3.756x). A 1% relative tolerance covers both and still separates every
# preset from its neighbours (the closest pair, ToCa 2.32x and DuCa 2.48x, differ by 7%).
PAPER_SPEEDUPS = {"dit-fora-n3": 2.77, "dit-toca-n3-r93": 2.32, "dit-duca-n3-r95": 2.48, "dit-duca-n5-r95": 3.78,
                  "dit-duca-readme": 2.48, "dit-taylorseer-n3-o3": 2.77, "dit-taylorseer-n5-o3": 4.53}


@pytest.fixture(scope="module")
def xl_shaped_tiny():
    """Depth 28 and 256 tokens as DiT-XL/2 at 256px (what the trace depends on), tiny width."""
    torch.manual_seed(0)
    return DiT(input_size=32, patch_size=2, in_channels=4, hidden_size=8, depth=28, num_heads=1, mlp_ratio=1,
               num_classes=1000).eval()


def _traced_flops(model, preset):
    model.configure_cache(get_preset(preset).config)
    z = torch.randn(1, 4, 32, 32)
    sample_cli.sample_latents(model, create_diffusion("50"), z, [207], 1.5, ddim=True)
    return reference_flops(model.feature_cache.last_trace, DIT_XL)


def test_preset_flops_speedups_through_the_model_match_paper(xl_shaped_tiny):
    base = _traced_flops(xl_shaped_tiny, "dit-none")
    assert base / 1e12 == pytest.approx(23.735, abs=5e-4)            # uncached DiT-XL/2 DDIM-50
    for preset, paper in PAPER_SPEEDUPS.items():
        assert base / _traced_flops(xl_shaped_tiny, preset) == pytest.approx(paper, rel=0.01), preset


def test_flops_only_xl2_seed_command(tmp_path):
    report_path = tmp_path / "r.json"
    report = sample_cli.main(SEED_FLAGS + ["--flops-only", "--class-labels", "207", "--report", str(report_path)])
    assert report["uncached_reference_tflops_per_image"] == pytest.approx(23.735, abs=5e-4)
    assert report["reference_speedup"] == pytest.approx(2.48, rel=0.01)
    # measured FLOPs also count the embedders and the final layer (< 0.2% here) and the attention score's own
    # q.k product in full steps (duca_common.cache.attention_score, 1.5% here), which the formula leaves out
    assert report["measured_flops"] == pytest.approx(report["reference_flops"], rel=0.02)
    assert json.loads(report_path.read_text())["cache_config"]["selector"] == "attention_received"


# ------------------------------------------------------------------------------------------------ sample.py

def test_sample_tiny_matches_reference_noise_draw(tmp_path, tiny_ckpt):
    out, lat, rep = tmp_path / "s.png", tmp_path / "lat.pt", tmp_path / "r.json"
    report = sample_cli.main(["--ckpt", str(tiny_ckpt), "--vae", "none", "--image-size", "8", "--num-sampling-steps",
                              "5", "--ddim-sample", "--cache", "none", "--seed", "3", "--class-labels", "1,2,3",
                              "--out", str(out), "--save-latents", str(lat), "--report", str(rep), "--no-progress"])
    assert out.is_file() and rep.is_file()
    latents = torch.load(lat, weights_only=True)
    model = tiny_model()
    torch.manual_seed(3)
    z = torch.randn(3, 1, 8, 8)
    zz, y = torch.cat([z, z]), torch.tensor([1, 2, 3, 10, 10, 10])
    expected = create_diffusion("5").ddim_sample_loop(model.forward_with_cfg, zz.shape, noise=zz,
                                                      model_kwargs=dict(y=y, cfg_scale=1.5)).chunk(2)[0]
    assert torch.equal(latents, expected)
    assert report["reference_speedup"] == pytest.approx(1.0)
    for key in ("reference_flops", "measured_flops", "latency_s", "cache_peak_bytes", "trace"):
        assert key in json.loads(rep.read_text())


@pytest.mark.parametrize("where", ["root", "inside"])
def test_sample_script_runs_from_root_and_from_its_folder(tmp_path, tiny_ckpt, where):
    script = "DiT-DuCa/sample.py" if where == "root" else "sample.py"
    cwd = ROOT if where == "root" else ROOT / "DiT-DuCa"
    cmd = [sys.executable, script, *SEED_FLAGS, "--image-size", "8", "--num-sampling-steps", "4", "--vae", "none",
           "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "g.png"), "--no-progress"]
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "duca (reference flags)" in res.stdout and (tmp_path / "g.png").is_file()


@pytest.mark.parametrize("flags,message", [
    (["--cache-type", "norm"], "invalid choice"),
    (["--force-fresh", "local"], "invalid choice"),
    (["--fresh-ratio", "1.5"], "--fresh-ratio"),
    (["--preset", "nope"], "unknown cache preset"),
    (["--preset", "pixart-duca-r25"], "not DiT"),
    (["--preset", "dit-fora-n3", "--cache", "duca"], "contradicts"),
    (["--class-labels", "1,x"], "comma-separated"),
    (["--num-sampling-steps", "0"], "--num-sampling-steps"),
])
def test_bad_flags_fail_fast(capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        sample_cli.main(["--flops-only", "--model", "DiT-S/8"] + flags)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_paths_fail_fast(tmp_path, tiny_ckpt, capsys):
    base = ["--vae", "none", "--image-size", "8", "--no-progress", "--out", str(tmp_path / "x.png")]
    cases = [
        (["--ckpt", str(tmp_path / "missing.pt")], "no such file"),
        (["--ckpt", str(tiny_ckpt), "--vae", str(tmp_path / "novae")], "--vae"),
    ]
    raw = tmp_path / "raw.pt"                           # a plain state dict: built as --model, does not fit
    torch.save(tiny_model().state_dict(), raw)
    cases.append((["--ckpt", str(raw), "--model", "DiT-S/2"], "does not fit"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    cases.append((["--ckpt", str(garbage)], "cannot read checkpoint"))
    for flags, message in cases:
        with pytest.raises(SystemExit) as exc:
            sample_cli.main(base + flags)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err, flags
    assert not (tmp_path / "x.png").exists()


def test_missing_default_checkpoint_names_the_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIT_CHECKPOINT_DIR", str(tmp_path))
    found = [d / "DiT-XL-2-256x256.pt" for d in [ROOT / "pretrained_models", ROOT / "DiT-DuCa" / "pretrained_models"]]
    if any(p.exists() for p in found):
        pytest.skip("the official checkpoint is present on this machine")
    with pytest.raises(CheckpointNotFoundError, match="dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt"):
        resolve_checkpoint(None, "DiT-XL/2", 256)


# ------------------------------------------------------------------------------------------------ VAE

def _tiny_vae_folder(tmp_path, deprecated: bool):
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    folder = tmp_path / ("vae_old" if deprecated else "vae")
    vae.save_pretrained(folder)
    if deprecated:
        new_to_old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        state = {}
        for k, v in vae.state_dict().items():
            for new, old in new_to_old.items():
                k = k.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
            state[k] = v.contiguous()
        assert any(".query." in k for k in state)
        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder, vae


def test_vae_deprecated_attention_keys_load_strictly(tmp_path):
    folder, ref = _tiny_vae_folder(tmp_path, deprecated=True)
    vae = load_vae(str(folder))
    for k, v in ref.state_dict().items():
        assert torch.equal(vae.state_dict()[k], v), k
    deprecated = {"decoder.mid_block.attentions.0.proj_attn.weight": torch.zeros(2, 2, 1, 1)}
    assert remap_deprecated_attention_keys(deprecated).keys() == {"decoder.mid_block.attentions.0.to_out.0.weight"}


def test_sample_with_tiny_vae(tmp_path):
    folder, _ = _tiny_vae_folder(tmp_path, deprecated=False)
    ckpt = save_checkpoint(tiny_model(in_channels=4, input_size=4), tmp_path / "t4.pt")
    sample_cli.main(["--ckpt", str(ckpt), "--vae", str(folder), "--image-size", "32", "--num-sampling-steps", "3",
                     "--ddim-sample", "--class-labels", "0,1", "--out", str(tmp_path / "v.png"), "--no-progress"])
    from PIL import Image
    assert Image.open(tmp_path / "v.png").size[1] == 32 + 2 * 2       # one row of two 32px images, padding 2


# ------------------------------------------------------------------------------------------------ sample_ddp.py

def _ddp_flags(ckpt, out, extra=()):
    return ["--ckpt", str(ckpt), "--vae", "none", "--image-size", "8", "--num-sampling-steps", "4",
            "--num-fid-samples", "7", "--per-proc-batch-size", "2", "--out", str(out), *extra]


def test_ddp_two_processes_equal_one_and_resume(tmp_path, tiny_ckpt):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                          str(ROOT / "DiT-DuCa" / "sample_ddp.py"), *_ddp_flags(tiny_ckpt, tmp_path / "two")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    two = np.load(tmp_path / "two.npz")["arr_0"]
    assert two.shape == (7, 8, 8, 3) and two.dtype == np.uint8
    assert len({a.tobytes() for a in two}) == 7                      # distinct samples

    one_dir = tmp_path / "one"
    assert sample_ddp.main(_ddp_flags(tiny_ckpt, one_dir)) == 0
    assert np.array_equal(np.load(tmp_path / "one.npz")["arr_0"], two)

    # interrupted run: one batch done, then a PNG of it lost; the rerun completes with nothing duplicated
    part = tmp_path / "part"
    assert sample_ddp.main(_ddp_flags(tiny_ckpt, part, ["--stop-after-batches", "1"])) == 3
    assert not (tmp_path / "part.npz").exists()
    assert sorted(p.name for p in part.glob("*.png")) == ["000000.png", "000001.png"]
    (part / "000001.png").unlink()
    assert sample_ddp.main(_ddp_flags(tiny_ckpt, part)) == 0
    assert sorted(p.name for p in part.glob("*.png")) == [f"{i:06d}.png" for i in range(7)]
    assert not list(part.glob(".*tmp"))
    assert np.array_equal(np.load(tmp_path / "part.npz")["arr_0"], two)

    # a folder from another configuration is refused before sampling
    assert sample_ddp.main(_ddp_flags(tiny_ckpt, part, ["--cfg-scale", "4.0"])) == 2


def test_ddp_bad_output_folder_and_checkpoint(tmp_path, tiny_ckpt, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert sample_ddp.main(_ddp_flags(tiny_ckpt, afile)) == 2
    assert "not a folder" in capsys.readouterr().err
    assert sample_ddp.main(_ddp_flags(tmp_path / "nope.pt", tmp_path / "o")) == 2
    assert "no such file" in capsys.readouterr().err
    assert sample_ddp.main(_ddp_flags(tiny_ckpt, tmp_path / "o") + ["--vae", str(tmp_path / "novae")]) == 2
    assert "--vae" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
