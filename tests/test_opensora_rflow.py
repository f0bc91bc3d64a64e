"""RFlow (models.md C.9): the transformed 480p/51-frame timestep grid, exact Euler integration of an analytic
velocity field with CFG, and config validation."""

from __future__ import annotations

import pytest
import torch

from opensora_duca.rflow import RFlowConfig, rflow_sample, sampling_timesteps, transform_ratio

# C.9: t' at 480x854, 51 frames, bf16 model kwargs (first, middle and last entries), and bf16 rounding.
REFERENCE_T = {0: 1000.0, 1: 992.931, 10: 906.433, 20: 707.763, 28: 257.048, 29: 143.121}


def test_transformed_timesteps_match_the_reference():
    assert transform_ratio(480, 854, 51).item() == 4.84375               # bf16: 854 -> 856, sqrt(15) -> 3.875
    ts = sampling_timesteps(RFlowConfig(), 480, 854, 51)
    assert len(ts) == 30
    for i, value in REFERENCE_T.items():
        assert ts[i] == pytest.approx(value, abs=1e-3)
    seen = torch.tensor(ts).to(torch.bfloat16).tolist()
    assert seen[:4] == [1000, 992, 984, 976] and seen[-3:] == [350, 258, 143]
    plain = sampling_timesteps(RFlowConfig(use_timestep_transform=False), 480, 854, 51)
    assert plain == pytest.approx([1000 - 1000 * i / 30 for i in range(30)])
    assert transform_ratio(512, 512, 1, torch.float32).item() == 1.0       # one frame, 512^2: identity


def test_euler_is_exact_on_a_point_mass_flow_with_cfg():
    """For data = a point x0 the velocity is (x0 - z)/tau; Euler is exact on the straight path, and the guided
    velocity v_u + s (v_c - v_u) is the flow to x0_u + s (x0_c - x0_u)."""
    x0_c, x0_u = torch.randn(2, 4, 2, 3, 3), torch.randn(2, 4, 2, 3, 3)
    target = torch.cat([x0_c, x0_u])
    seen_t = []

    def model(z, t):
        seen_t.append(t[0].item())
        v = (target - z) / (t / 1000).view(-1, 1, 1, 1, 1)
        return torch.cat([v, torch.zeros_like(v)], dim=1)                  # 8 channels, the last 4 unused

    z = torch.randn(2, 4, 2, 3, 3)
    ts = sampling_timesteps(RFlowConfig(), 480, 854, 51)
    out = rflow_sample(model, z, ts, 7.0)
    torch.testing.assert_close(out, x0_u + 7.0 * (x0_c - x0_u), rtol=1e-4, atol=1e-4)
    assert seen_t == pytest.approx(ts)


@pytest.mark.parametrize("field,value", [("num_sampling_steps", 0), ("cfg_scale", 0.5), ("transform_scale", 0.0)])
def test_bad_config_is_named(field, value):
    with pytest.raises(ValueError, match=f"RFlowConfig.{field}"):
        RFlowConfig(**{field: value})


def test_frame_counts_the_reference_transform_cannot_handle_are_refused():
    with pytest.raises(ValueError, match="undefined for 5 frames"):
        sampling_timesteps(RFlowConfig(), 480, 854, 5)
    assert len(sampling_timesteps(RFlowConfig(), 480, 854, 1)) == 30
