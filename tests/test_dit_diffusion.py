"""DiT diffusion: respacing lists, DDIM and DDPM updates against closed forms, training losses."""

import math

import numpy as np
import pytest
import torch

from dit_duca.diffusion import create_diffusion, linear_betas, respaced_timesteps, space_timesteps
from dit_duca.models import DiT

# models.md A.5
KEPT_50 = [0, 20, 41, 61, 82, 102, 122, 143, 163, 183, 204, 224, 245, 265, 285, 306, 326, 347, 367, 387, 408, 428,
           449, 469, 489, 510, 530, 550, 571, 591, 612, 632, 652, 673, 693, 714, 734, 754, 775, 795, 816, 836, 856,
           877, 897, 917, 938, 958, 979, 999]


def test_respacing_50_and_250():
    assert respaced_timesteps(50) == KEPT_50
    kept = respaced_timesteps(250)
    assert len(kept) == 250 and kept[:4] == [0, 4, 8, 12] and kept[-3:] == [991, 995, 999]
    # the rule: round(k * 999/249) with an accumulating float
    acc, expected = 0.0, []
    for _ in range(250):
        expected.append(round(acc))
        acc += 999 / 249
    assert kept == expected
    assert create_diffusion("50").timestep_map == KEPT_50
    assert sorted(space_timesteps(1000, "ddim50")) == list(range(0, 1000, 20))


def test_respaced_betas_preserve_alpha_bar():
    base = np.cumprod(1 - linear_betas())
    d = create_diffusion("50")
    np.testing.assert_allclose(d.alphas_cumprod, base[KEPT_50], rtol=1e-12)
    assert linear_betas()[0] == 1e-4 and linear_betas()[-1] == 0.02


class Recorder:
    """A fake model: records the timesteps it is called with, returns fixed eps / v."""

    def __init__(self, eps: torch.Tensor, v: torch.Tensor | None = None):
        self.eps, self.v, self.calls = eps, v, []

    def __call__(self, x, t, **kwargs):
        self.calls.append(t.clone())
        return torch.cat([self.eps, self.v], 1) if self.v is not None else self.eps


def test_ddim_step_closed_form_and_original_timesteps():
    d = create_diffusion("50")
    x = torch.randn(2, 1, 4, 4, dtype=torch.float32)
    eps = torch.randn_like(x)
    model = Recorder(eps, torch.zeros_like(x))
    i = 30
    t = torch.tensor([i, i])
    out = d.ddim_sample(model, x, t)
    assert model.calls[0].tolist() == [KEPT_50[i]] * 2            # the network sees the original timestep
    ab, abp = d.alphas_cumprod[i], d.alphas_cumprod[i - 1]
    x0 = math.sqrt(1 / ab) * x - math.sqrt(1 / ab - 1) * eps
    expected = x0 * math.sqrt(abp) + math.sqrt(1 - abp) * eps
    torch.testing.assert_close(out["sample"], expected, atol=1e-5, rtol=1e-5)
    # the last step returns x0 (alpha_bar_prev = 1)
    out0 = d.ddim_sample(model, x, torch.tensor([0, 0]))
    ab0 = d.alphas_cumprod[0]
    torch.testing.assert_close(out0["sample"], math.sqrt(1 / ab0) * x - math.sqrt(1 / ab0 - 1) * eps,
                               atol=1e-5, rtol=1e-5)


def test_ddpm_step_closed_form_learned_sigma():
    d = create_diffusion("50")
    x = torch.randn(2, 1, 4, 4)
    eps = torch.randn_like(x)
    v = torch.rand_like(x) * 2 - 1
    model = Recorder(eps, v)
    i = 17
    t = torch.tensor([i, i])
    torch.manual_seed(123)
    out = d.p_sample(model, x, t)
    torch.manual_seed(123)
    z = torch.randn_like(x)
    betas = d.betas
    ab, abp = d.alphas_cumprod[i], d.alphas_cumprod[i - 1]
    x0 = math.sqrt(1 / ab) * x - math.sqrt(1 / ab - 1) * eps
    coef1 = betas[i] * math.sqrt(abp) / (1 - ab)
    coef2 = (1 - abp) * math.sqrt(1 - betas[i]) / (1 - ab)
    mean = coef1 * x0 + coef2 * x
    min_log = math.log(betas[i] * (1 - abp) / (1 - ab))
    max_log = math.log(betas[i])
    frac = (v + 1) / 2
    logvar = frac * max_log + (1 - frac) * min_log
    torch.testing.assert_close(out["sample"], mean + torch.exp(0.5 * logvar) * z, atol=1e-5, rtol=1e-5)
    # index 0's min_log is index 1's (clipped posterior variance); no noise at i = 0
    post1 = betas[1] * (1 - d.alphas_cumprod[0]) / (1 - d.alphas_cumprod[1])
    assert d.posterior_log_variance_clipped[0] == pytest.approx(math.log(post1))
    out0 = d.p_sample(model, x, torch.tensor([0, 0]))
    x0_0 = math.sqrt(1 / d.alphas_cumprod[0]) * x - math.sqrt(1 / d.alphas_cumprod[0] - 1) * eps
    torch.testing.assert_close(out0["sample"], x0_0, atol=1e-5, rtol=1e-5)   # coef1 = 1, coef2 = 0 at i = 0


def test_sample_loop_counts_down_and_sets_engine_step():
    d = create_diffusion("10")
    x = torch.randn(1, 1, 4, 4)
    model = Recorder(torch.zeros_like(x), torch.zeros_like(x))
    d.ddim_sample_loop(model, x.shape, noise=x)
    assert [int(c[0]) for c in model.calls] == sorted(respaced_timesteps(10), reverse=True)


def test_training_losses_tiny_model_cpu():
    torch.manual_seed(0)
    model = DiT(input_size=16, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=4, num_classes=10)
    model.train()
    d = create_diffusion("")
    assert d.num_timesteps == 1000 and d.timestep_map == list(range(1000))
    x0 = torch.rand(8, 1, 16, 16) * 2 - 1
    t = torch.tensor([0, 1, 10, 100, 500, 900, 998, 999])
    y = torch.randint(0, 10, (8,))
    terms = d.training_losses(model, x0, t, model_kwargs=dict(y=y))
    assert set(terms) == {"loss", "mse", "vb"} and terms["loss"].shape == (8,)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    assert torch.isfinite(terms["loss"]).all()
    terms["loss"].mean().backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0
    # with the official zero-init output layer, eps = 0 so mse = E[noise^2] ~ 1
    assert 0.5 < terms["mse"].mean().item() < 1.5


def test_training_losses_vb_only_trains_variance():
    """The vb term must not push gradients into the epsilon channels (the mean is detached)."""
    d = create_diffusion("")
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    out = torch.randn(4, 2, 4, 4, requires_grad=True)
    terms = d.training_losses(lambda x, t, **k: out, x0, torch.tensor([5, 50, 500, 0]))
    terms["vb"].sum().backward()
    assert out.grad[:, :1].abs().sum() == 0 and out.grad[:, 1:].abs().sum() > 0
