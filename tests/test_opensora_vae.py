"""OpenSora-VAE-v1.2: official key names and sizes on the meta device, causal temporal convs, latent size
rule and micro-chunking, shape round trip, strict safetensors loading (with old attention names)."""

from __future__ import annotations

import pytest
import torch

from opensora_duca.checkpoint import CheckpointError, save_safetensors
from opensora_duca.vae import CausalConv3d, VideoAutoencoderPipeline, VideoVAEConfig, load_vae, vae_config_dict
from opensora_tiny import tiny_vae, tiny_vae_config

# models.md C.8 / D.1
VAE_TENSORS, SPATIAL_TENSORS, TEMPORAL_TENSORS = 517, 248, 267
TEMPORAL_PARAMS, SPATIAL_PARAMS = 309_687_144, 83_653_863



def test_full_config_names_and_sizes_on_meta():
    with torch.device("meta"):
        vae = VideoAutoencoderPipeline()
    sd = vae.state_dict()
    spatial = {k: v for k, v in sd.items() if k.startswith("spatial_vae.module.")}
    temporal = {k: v for k, v in sd.items() if k.startswith("temporal_vae.")}
    assert (len(sd), len(spatial), len(temporal)) == (VAE_TENSORS, SPATIAL_TENSORS, TEMPORAL_TENSORS)
    assert sum(v.numel() for v in temporal.values()) == TEMPORAL_PARAMS
    assert sum(v.numel() for v in spatial.values()) == SPATIAL_PARAMS
    shapes = {"scale": (1, 4, 1, 1, 1), "shift": (1, 4, 1, 1, 1),
              "temporal_vae.encoder.conv_in.conv.weight": (128, 4, 3, 3, 3),
              "temporal_vae.encoder.conv_blocks.2.conv.weight": (256, 256, 3, 3, 3),
              "temporal_vae.decoder.conv_blocks.2.conv.weight": (1024, 512, 3, 3, 3),
              "temporal_vae.decoder.block_res_blocks.2.0.conv3.conv.weight": (256, 512, 1, 1, 1),
              "temporal_vae.quant_conv.conv.weight": (8, 8, 1, 1, 1),
              "spatial_vae.module.decoder.up_blocks.3.resnets.0.conv_shortcut.weight": (128, 256, 1, 1)}
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert "temporal_vae.encoder.conv_in.conv.bias" not in sd                 # no bias (C.8)
    assert not any(".conv_blocks.0." in k for k in sd)                        # Identity placeholders
    torch.testing.assert_close(tiny_vae().scale.flatten(), torch.tensor([3.85, 2.32, 2.33, 3.06]))
    torch.testing.assert_close(tiny_vae().shift.flatten(), torch.tensor([-0.10, 0.34, 0.27, 0.98]))


def test_causal_conv_only_looks_back():
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3, 3)
    x = torch.randn(1, 2, 6, 4, 4)
    y = x.clone()
    y[:, :, 4] += 1.0                                                          # change frame 4 only
    a, b = conv(x), conv(y)
    assert a.shape == (1, 3, 6, 4, 4)
    assert torch.equal(a[:, :, :4], b[:, :, :4]) and not torch.equal(a[:, :, 4:], b[:, :, 4:])
    assert CausalConv3d(2, 2, 3, time_stride=2)(x).shape == (1, 2, 3, 4, 4)   # time / 2, space kept


def test_latent_size_rule():
    cfg = VideoVAEConfig()
    assert cfg.latent_frames(51) == 15 and cfg.latent_frames(17) == 5 and cfg.latent_frames(20) == 6
    assert cfg.latent_frames(1) == 1
    assert cfg.latent_shape(51, 480, 854) == (4, 15, 60, 106)
    with pytest.raises(ValueError, match="micro_frame_size"):
        VideoVAEConfig(micro_frame_size=16)


def test_round_trip_shapes_and_micro_batching():
    vae = tiny_vae()
    video = torch.rand(1, 3, 20, 8, 8) * 2 - 1                                # 17 + 3 frames: two temporal chunks
    with torch.no_grad():
        z = vae.encode(video, sample=False)
        assert z.shape == (1, 4, 6, 4, 4)
        out = vae.decode(z, num_frames=20)
        assert out.shape == (1, 3, 20, 8, 8)
        vae.spatial_vae.micro_batch_size = 64                                 # one 2-D call for all frames
        torch.testing.assert_close(vae.decode(z, num_frames=20), out)
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        torch.testing.assert_close(vae.encode(video, g1), vae.encode(video, g2))   # sampling follows the generator
        with pytest.raises(ValueError, match="need 6 latent frames"):
            vae.decode(z[:, :, :5], num_frames=20)


def test_strict_load_round_trip_old_attention_names_and_errors(tmp_path):
    from safetensors.torch import save_file

    vae = tiny_vae()
    save_safetensors(vae, tmp_path / "ok", vae_config_dict(tiny_vae_config()))
    loaded = load_vae(str(tmp_path / "ok"))
    z = torch.randn(1, 4, 5, 4, 4)
    with torch.no_grad():
        assert torch.equal(loaded.decode(z, 17), vae.decode(z, 17))
    old = {k.replace("attentions.0.to_q", "attentions.0.query"): v for k, v in vae.state_dict().items()}
    (tmp_path / "old").mkdir()
    save_file(old, str(tmp_path / "old" / "model.safetensors"))
    (tmp_path / "old" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    assert torch.equal(load_vae(str(tmp_path / "old")).state_dict()["scale"], vae.scale)
    del old["shift"]
    save_file(old, str(tmp_path / "old" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing.*shift"):
        load_vae(str(tmp_path / "old"))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_vae(str(tmp_path / "missing"))
