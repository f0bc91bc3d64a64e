"""DPM-Solver++ (2M) of PixArt: the time grid of B.7 and convergence to the exact ODE solution on
Gaussian data, where the exact data predictor is known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pixart_duca.dpm_solver import DiscreteVPSchedule, dpm_solver_pp_2m, model_time, time_uniform_steps

# models.md B.7: the network's time inputs for 20 steps, before and after the fp16 cast.
REFERENCE_T_IN = [999.0, 949.05, 899.1, 849.15, 799.2, 749.25, 699.3, 649.35, 599.4, 549.45, 499.5, 449.55,
                  399.6, 349.65, 299.7, 249.75, 199.8, 149.85, 99.9, 49.95]
REFERENCE_T_IN_FP16 = [999, 949, 899, 849, 799, 749, 699.5, 649.5, 599.5, 549.5, 499.5, 449.5, 399.5, 349.75,
                       299.75, 249.75, 199.75, 149.875, 99.875, 49.9375]


def test_time_grid_matches_reference():
    ts = time_uniform_steps(20)
    assert len(ts) == 21 and ts[0] == 1.0 and ts[-1] == pytest.approx(0.001)
    t_in = [model_time(t) for t in ts[:20]]
    assert t_in == pytest.approx(REFERENCE_T_IN, abs=1e-9)
    assert torch.tensor(t_in).half().float().tolist() == REFERENCE_T_IN_FP16


def test_schedule_values():
    s = DiscreteVPSchedule.linear()
    betas = np.linspace(1e-4, 0.02, 1000)
    assert s.log_alpha(1.0) == pytest.approx(0.5 * np.log(1 - betas).sum(), rel=1e-12)
    assert s.lam(1.0) == pytest.approx(-5.0588, abs=1e-4)          # B.7: lambda_T
    mid = 0.5 * (s.log_alpha(0.003) + s.log_alpha(0.004))          # piecewise linear between grid points
    assert s.log_alpha(0.0035) == pytest.approx(mid, rel=1e-12)


def gaussian_problem(mu: float = 0.7, std: float = 0.5):
    """Data x0 ~ N(mu, std^2) per dimension: E[x0 | x_t] and the probability-flow ODE are known exactly."""
    s = DiscreteVPSchedule.linear()

    def x0_exact(x: torch.Tensor, t: float, k: int) -> torch.Tensor:
        a, sg = s.alpha(t), s.sigma(t)
        return mu + a * std ** 2 / (a * a * std ** 2 + sg * sg) * (x - a * mu)

    def ode_solution(x_T: torch.Tensor, t_from: float, t_to: float) -> torch.Tensor:
        def marginal_std(t):
            return math.sqrt(s.alpha(t) ** 2 * std ** 2 + s.sigma(t) ** 2)
        z = (x_T - s.alpha(t_from) * mu) / marginal_std(t_from)
        return s.alpha(t_to) * mu + marginal_std(t_to) * z

    return s, x0_exact, ode_solution


def test_solver_converges_to_exact_ode_solution_second_order():
    s, x0_exact, exact = gaussian_problem()
    x_T = torch.randn(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = exact(x_T, 1.0, 0.001)
    errors = {}
    for steps in (20, 40, 80, 160):
        calls = []
        out = dpm_solver_pp_2m(lambda x, t, k, calls=calls: (calls.append(k), x0_exact(x, t, k))[1],
                               x_T.clone(), steps, s)
        assert calls == list(range(steps))                         # one evaluation per step, in order
        errors[steps] = (out - target).abs().max().item()
    # 20 time-uniform steps are coarse near t = 0 (lambda is steep there) but already close ...
    assert errors[20] < 0.2 * target.abs().max().item()
    # ... and the error falls about 4x per halving of the step: a second-order solver
    assert errors[40] / errors[80] > 3.0 and errors[80] / errors[160] > 3.5
    assert errors[160] < 1e-2


def test_first_step_is_first_order_update():
    s, x0_exact, _ = gaussian_problem()
    x = torch.randn(8, dtype=torch.float64)
    ts = time_uniform_steps(20)
    out = dpm_solver_pp_2m(x0_exact, x.clone(), 1, s, timesteps=ts[:2])
    h = s.lam(ts[1]) - s.lam(ts[0])
    expected = s.sigma(ts[1]) / s.sigma(ts[0]) * x - s.alpha(ts[1]) * math.expm1(-h) * x0_exact(x, ts[0], 0)
    torch.testing.assert_close(out, expected)
