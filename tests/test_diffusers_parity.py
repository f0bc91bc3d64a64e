"""Parity with diffusers (a hard dependency, so these run live): our DiT vs ``DiTTransformer2DModel`` through
the diffusers-format key conversion (and loading diffusers-format DiT folders), our PixArt vs
``PixArtTransformer2DModel``, and our DDIM vs ``DDIMScheduler`` (different timestep grids by design:
docs/diffusers.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import get_timestep_embedding

from diffusers_tiny import diffusers_dit, diffusers_pixart, dit_ddim_scheduler, tiny_dit
from dit_duca import diffusers_format as df
from dit_duca import sample as sample_cli
from dit_duca.diffusion import create_diffusion, linear_betas
from dit_duca.loading import (
    CheckpointError,
    build_dit,
    load_checkpoint,
    load_into,
    resolve_checkpoint,
)
from dit_duca.models import DiT
from duca_common.layers import pack_caption, timestep_embedding
from pixart_tiny import T5_DIM, TINY, TINY_MS
from pixart_tiny import tiny_model as tiny_pixart

# float32 agreement bound for two implementations of the same forward (different GEMM groupings)
PARITY_ATOL = 1e-6


DIT_INPUTS = dict(x=torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1)),
                  t=torch.tensor([999, 500, 20, 0]), y=torch.tensor([1, 2, 10, 3]))


# ------------------------------------------------------------------------------------------------ DiT keys

def test_dit_key_map_round_trips_and_copies_embedders_per_block():
    model = tiny_dit()
    sd = model.state_dict()
    diff = df.to_diffusers(sd, model.depth)
    assert set(diff) == set(DiTTransformer2DModel.from_config(df.diffusers_config(model)).state_dict())
    assert torch.equal(diff["transformer_blocks.1.attn1.to_k.weight"], sd["blocks.1.attn.qkv.weight"][64:128])
    for i in range(model.depth):
        assert torch.equal(diff[f"transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table.weight"],
                           sd["y_embedder.embedding_table.weight"])
    back = df.from_diffusers(diff)
    assert set(back) == set(sd) - set(df.DROPPED_KEYS)
    assert all(torch.equal(back[k], sd[k]) for k in back)


def test_dit_matches_diffusers_dit_on_the_same_weights():
    model = tiny_dit()
    x, t, y = DIT_INPUTS["x"], DIT_INPUTS["t"], DIT_INPUTS["y"]
    with torch.no_grad():
        ours = model(x, t, y)
        theirs = diffusers_dit(model)(x, timestep=t, class_labels=y).sample
    assert (ours - theirs).abs().max().item() <= PARITY_ATOL
    # diffusers recomputes the same position table we store
    assert torch.equal(diffusers_dit(model).pos_embed.pos_embed, model.pos_embed.data)


def test_diffusers_dit_as_shipped_differs_only_by_the_documented_settings():
    """As shipped, diffusers' DiT embeds t with frequencies exp(-ln(1e4) k / 127) (downscale_freq_shift=1)
    where DiT divides by 128, and normalises before the MLP with eps 1e-5 (its default) where DiT uses 1e-6."""
    model = tiny_dit()
    x, t, y = DIT_INPUTS["x"], DIT_INPUTS["t"], DIT_INPUTS["y"]
    shipped_config = {k: v for k, v in df.diffusers_config(model).items() if k != "norm_eps"}
    shipped = DiTTransformer2DModel.from_config(shipped_config).eval()
    shipped.load_state_dict(df.to_diffusers(model.state_dict(), model.depth), strict=True)
    assert shipped.transformer_blocks[0].norm3.eps == 1e-5
    # the frequency table is the documented formula, and differs from DiT's
    proj = shipped.transformer_blocks[0].norm1.emb.time_proj(t.float())
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - 1))
    args = t.double()[:, None] * freqs[None]
    assert torch.allclose(proj.double(), torch.cat([torch.cos(args), torch.sin(args)], dim=1), atol=1e-4)
    assert torch.allclose(timestep_embedding(t.float()), get_timestep_embedding(t, 256, True, 0), atol=1e-5)
    with torch.no_grad():
        ours = model(x, t, y)
        as_shipped = shipped(x, timestep=t, class_labels=y).sample
        df.match_official_dit(shipped)              # frequencies fixed, eps 1e-5 kept: a tiny residue only
        eps_only = shipped(x, timestep=t, class_labels=y).sample
    assert (ours - as_shipped).abs().max().item() > 1e-2
    assert 0 < (ours - eps_only).abs().max().item() < 1e-4


# ------------------------------------------------------------------------------------------------ DiT folders

def test_diffusers_dit_folder_loads_through_the_dit_loader(tmp_path):
    model = tiny_dit()
    root = tmp_path / "pipe"
    df.save_diffusers(model, root / "transformer")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    # diffusers itself reads the exported folder
    loaded_by_diffusers = DiTTransformer2DModel.from_pretrained(root / "transformer").eval()
    df.match_official_dit(loaded_by_diffusers)
    x, t, y = DIT_INPUTS["x"], DIT_INPUTS["t"], DIT_INPUTS["y"]
    for spec in (root, root / "transformer"):        # pipeline snapshot or the transformer folder
        path = resolve_checkpoint(str(spec), "DiT-XL/2", 256)
        ckpt = load_checkpoint(path)
        ours = build_dit("DiT-XL/2", input_size=32, num_classes=1000, config=ckpt.config)
        load_into(ours, ckpt, "its stored config")
        assert ours.depth == 3 and ours.hidden_size == 64 and ours.num_classes == 10
        with torch.no_grad():
            assert torch.equal(ours(x, t, y), model(x, t, y))
            reference = loaded_by_diffusers(x, timestep=t, class_labels=y).sample
            assert (ours(x, t, y) - reference).abs().max() <= PARITY_ATOL


def test_a_pipeline_saved_by_diffusers_loads(tmp_path):
    """A DiTPipeline written by diffusers' own save_pretrained (its config keys, its file names)."""
    from diffusers_tiny import dit_pipeline

    model = tiny_dit(num_classes=1000)
    dit_pipeline(model).save_pretrained(tmp_path / "pipe")
    ckpt = load_checkpoint(resolve_checkpoint(str(tmp_path / "pipe"), "DiT-XL/2", 256))
    ours = build_dit("DiT-XL/2", input_size=32, num_classes=1000, config=ckpt.config)
    load_into(ours, ckpt, "its stored config")
    x, t, y = DIT_INPUTS["x"], DIT_INPUTS["t"], DIT_INPUTS["y"]
    with torch.no_grad():
        assert torch.equal(ours(x, t, y), model(x, t, y))


def test_sharded_diffusers_weights_load(tmp_path):
    """Large transformers are saved as shards listed in diffusion_pytorch_model.safetensors.index.json."""
    from safetensors.torch import save_file

    model = tiny_dit()
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(df.diffusers_config(model)))
    state = df.to_diffusers(model.state_dict(), model.depth)
    names = sorted(state)
    shards = {"part-00001.safetensors": names[: len(names) // 2], "part-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, str(folder / shard))
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    ckpt = load_checkpoint(folder)
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in model.state_dict().items())
    (folder / "part-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lists the shard part-00002.safetensors, which is missing"):
        load_checkpoint(folder)


def test_sample_cli_takes_a_diffusers_folder(tmp_path):
    model = tiny_dit(in_channels=1, depth=2)
    df.save_diffusers(model, tmp_path / "dit")
    lat = tmp_path / "lat.pt"
    sample_cli.main(["--ckpt", str(tmp_path / "dit"), "--vae", "none", "--image-size", "8", "--num-sampling-steps",
                     "3", "--ddim-sample", "--cache", "none", "--seed", "3", "--class-labels", "1,2",
                     "--out", str(tmp_path / "s.png"), "--save-latents", str(lat), "--no-progress"])
    torch.manual_seed(3)
    z = torch.randn(2, 1, 8, 8)
    zz, y = torch.cat([z, z]), torch.tensor([1, 2, 10, 10])
    expected = create_diffusion("3").ddim_sample_loop(model.forward_with_cfg, zz.shape, noise=zz,
                                                      model_kwargs=dict(y=y, cfg_scale=1.5)).chunk(2)[0]
    assert torch.equal(torch.load(lat, weights_only=True), expected)


def _write(folder, config, state):
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "diffusion_pytorch_model.safetensors"))


def test_diffusers_dit_folder_errors(tmp_path):
    model = tiny_dit()
    config, state = df.diffusers_config(model), df.to_diffusers(model.state_dict(), model.depth)
    with pytest.raises(CheckpointError, match="not a diffusers DiT folder"):
        df.read_diffusers_dit(tmp_path)                                      # empty folder
    _write(tmp_path / "pixart", dict(config, norm_type="ada_norm_single"), state)
    with pytest.raises(CheckpointError, match="PixArt-alpha"):
        load_checkpoint(tmp_path / "pixart")
    _write(tmp_path / "unet", dict(config, _class_name="UNet2DConditionModel"), state)
    with pytest.raises(CheckpointError, match="holds a UNet2DConditionModel"):
        load_checkpoint(tmp_path / "unet")
    bad = dict(state)
    bad["transformer_blocks.2.norm1.emb.timestep_embedder.linear_1.bias"] = torch.zeros(64)
    _write(tmp_path / "emb", config, bad)
    with pytest.raises(CheckpointError, match=r"per-block copies of t_embedder.mlp.0.bias differ \(blocks \[2\]"):
        load_checkpoint(tmp_path / "emb")
    partial = {k: v for k, v in state.items() if "attn1.to_v" not in k}
    _write(tmp_path / "qkv", config, partial)
    with pytest.raises(CheckpointError, match="need all of"):
        load_checkpoint(tmp_path / "qkv")
    _write(tmp_path / "wide", dict(config, num_attention_heads=8), state)   # config says 128 wide, weights 64
    with pytest.raises(CheckpointError, match="patch embedding has shape"):
        load_checkpoint(tmp_path / "wide")
    narrow = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=4, mlp_ratio=2.0,
                 num_classes=10)
    with pytest.raises(CheckpointError, match="only has 4 x hidden"):
        df.diffusers_config(narrow)


# ------------------------------------------------------------------------------------------------ PixArt

@pytest.mark.parametrize("config", [TINY, TINY_MS], ids=["256-style", "1024-MS-style"])
def test_pixart_matches_diffusers_pixart_on_the_same_weights(config):
    model = tiny_pixart(config)
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([999.0, 10.0])
    tokens = torch.randn(2, 12, T5_DIM, generator=g)
    mask = (torch.arange(12) < torch.tensor([[5], [12]])).float()           # one padded caption, one full
    ours_kw, added = {}, {"resolution": None, "aspect_ratio": None}
    if config.multi_scale:
        hw, ar = torch.tensor([[64.0, 64.0]] * 2), torch.tensor([[1.0]] * 2)
        ours_kw, added = dict(img_hw=hw, aspect_ratio=ar), {"resolution": hw, "aspect_ratio": ar}
    with torch.no_grad():
        ours = model(x, t, pack_caption(tokens, mask), **ours_kw)
        theirs = diffusers_pixart(model)(x, encoder_hidden_states=tokens, encoder_attention_mask=mask, timestep=t,
                                         added_cond_kwargs=added).sample
    assert (ours - theirs).abs().max().item() <= PARITY_ATOL


# ------------------------------------------------------------------------------------------------ DDIM

def ddim_update(x: np.ndarray, eps: np.ndarray, abar: float, abar_prev: float) -> np.ndarray:
    """The DDIM (eta 0) update both samplers implement: sqrt(abar') x0 + sqrt(1 - abar') eps."""
    x0 = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
    return math.sqrt(abar_prev) * x0 + math.sqrt(1 - abar_prev) * eps


@pytest.mark.parametrize("num_steps", [50, 1000])
def test_ddim_differs_from_diffusers_exactly_by_the_timestep_grid(num_steps):
    """Ours (= the reference's ADM respacing) steps t_j = round(j (T-1)/(K-1)) -> t_{j-1}; diffusers' DDIM
    ('leading') steps s_j = j floor(T/K) -> s_j - floor(T/K). Same x, same eps: the difference is the DDIM
    update on one grid minus the update on the other; with K = T the grids coincide."""
    diffusion = create_diffusion(str(num_steps), learn_sigma=False)
    sch = dit_ddim_scheduler()
    sch.set_timesteps(num_steps)
    abar = np.cumprod(1.0 - linear_betas())                                      # float64
    ours_t = diffusion.timestep_map[::-1]                                        # evaluation order
    stride = len(abar) // num_steps
    assert sch.timesteps.tolist() == [stride * j for j in range(num_steps)][::-1]
    g = torch.Generator().manual_seed(0)
    worst, worst_vs_formula = 0.0, 0.0
    for p in range(num_steps):
        x, eps = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 4, 4, 4, generator=g)
        i = num_steps - 1 - p
        ours = diffusion.ddim_sample(lambda *_, e=eps: e, x, torch.tensor([i]), step_noise=torch.zeros_like)["sample"]
        theirs = sch.step(eps, sch.timesteps[p], x).prev_sample
        s = int(sch.timesteps[p])
        expected = (ddim_update(x.double().numpy(), eps.double().numpy(), abar[ours_t[p]],
                                abar[ours_t[p + 1]] if p + 1 < num_steps else 1.0)
                    - ddim_update(x.double().numpy(), eps.double().numpy(), abar[s],
                                  abar[s - stride] if s - stride >= 0 else 1.0))
        measured = (ours - theirs).double().numpy()
        worst = max(worst, float(np.abs(measured).max()))
        worst_vs_formula = max(worst_vs_formula, float(np.abs(measured - expected).max()))
    # float32 schedules and arithmetic on both sides, amplified by 1/sqrt(abar) <= 158 at t = 999
    assert worst_vs_formula < 2e-5
    if num_steps == 1000:
        assert worst < 2e-5                                  # same grid: the same sampler
    else:
        assert 0.05 < worst < 0.1                            # K = 50: 0.093 at the second step (979 vs 960)
