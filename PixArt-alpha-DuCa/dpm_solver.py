"""DPM-Solver++ (2M), time-uniform steps, on PixArt's discrete VP schedule (models.md B.7).

Written here rather than taken from diffusers: ``DPMSolverMultistepScheduler`` discretises time on the
integer training timesteps (its step grid and the model's time input differ from the continuous-time
solver PixArt's inference uses, ``t_k = linspace(1, 1e-3, K + 1)`` with ``t_in = (t - 1e-3) * 1000``
and a piecewise-linear log-alpha), so it would give different images. This module reproduces the
reference solver: the schedule, the time grid, the model-time conversion and the first- and
second-order multistep updates.

All schedule values are Python floats computed once per run, so the update is plain tensor arithmetic
and also runs on the meta device (used for measured FLOPs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# The PixArt training schedule (B.7): linear betas from 1e-4 to 0.02 over 1000 steps.
TRAIN_STEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02
T_END = 1.0 / TRAIN_STEPS      # discrete schedule: the solver stops at t = 1/N (eps of the reference)
T_START = 1.0
# DPM-Solver's lower_order_final only applies below this many steps (B.7).
LOWER_ORDER_FINAL_BELOW = 10
DEFAULT_STEPS = 20
DEFAULT_CFG = 4.5


@dataclass(frozen=True)
class DiscreteVPSchedule:
    """``log alpha(t)``, piecewise linear between ``t_n = (n + 1) / N`` and ``0.5 cumsum(log(1 - beta))``."""

    t_grid: np.ndarray
    log_alpha_grid: np.ndarray

    @classmethod
    def linear(cls, steps: int = TRAIN_STEPS, beta_start: float = BETA_START,
               beta_end: float = BETA_END) -> DiscreteVPSchedule:
        betas = np.linspace(beta_start, beta_end, steps, dtype=np.float64)
        t = np.arange(1, steps + 1, dtype=np.float64) / steps
        return cls(t, 0.5 * np.cumsum(np.log(1.0 - betas)))

    def log_alpha(self, t: float) -> float:
        return float(np.interp(t, self.t_grid, self.log_alpha_grid))

    def alpha(self, t: float) -> float:
        return math.exp(self.log_alpha(t))

    def sigma(self, t: float) -> float:
        return math.sqrt(1.0 - math.exp(2.0 * self.log_alpha(t)))

    def lam(self, t: float) -> float:
        """Half log-SNR: log alpha - log sigma."""
        la = self.log_alpha(t)
        return la - 0.5 * math.log(1.0 - math.exp(2.0 * la))


def time_uniform_steps(num_steps: int, t_start: float = T_START, t_end: float = T_END) -> list[float]:
    """``linspace(t_start, t_end, num_steps + 1)`` (skip_type 'time_uniform')."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} is invalid: allowed an integer >= 1")
    return [float(v) for v in np.linspace(t_start, t_end, num_steps + 1)]


def model_time(t: float, train_steps: int = TRAIN_STEPS) -> float:
    """Continuous t -> the network's timestep input for a discrete schedule: (t - 1/N) * N."""
    return (t - 1.0 / train_steps) * train_steps


DataPredictor = Callable[[torch.Tensor, float, int], torch.Tensor]


def dpm_solver_pp_2m(x0_pred: DataPredictor, x: torch.Tensor, num_steps: int = DEFAULT_STEPS,
                     schedule: DiscreteVPSchedule | None = None, timesteps: list[float] | None = None,
                     lower_order_final: bool = True, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Integrate from ``timesteps[0]`` to ``timesteps[-1]`` with ``num_steps`` model evaluations.

    ``x0_pred(x, t, k)`` returns the data prediction at continuous time ``t``; ``k`` is the evaluation
    index (0 first), which the sampler hands to the cache session. Step 1 is first order; later steps
    use the two latest predictions (multistep, 'dpmsolver' form of the correction, B.7).
    """
    schedule = schedule or DiscreteVPSchedule.linear()
    ts = timesteps or time_uniform_steps(num_steps)
    if len(ts) != num_steps + 1:
        raise ValueError(f"{len(ts)} time points given for {num_steps} steps; need num_steps + 1")
    lam = [schedule.lam(t) for t in ts]
    alpha = [schedule.alpha(t) for t in ts]
    sigma = [schedule.sigma(t) for t in ts]
    prev: list[torch.Tensor] = []                       # data predictions at ts[k-1], ts[k]
    for k in range(num_steps):
        prev = (prev + [x0_pred(x, ts[k], k)])[-2:]
        order = 1 if k == 0 else 2
        if lower_order_final and num_steps < LOWER_ORDER_FINAL_BELOW:
            order = min(order, num_steps - k)
        h = lam[k + 1] - lam[k]
        phi1 = math.expm1(-h)
        x = (sigma[k + 1] / sigma[k]) * x - (alpha[k + 1] * phi1) * prev[-1]
        if order == 2:
            r0 = (lam[k] - lam[k - 1]) / h
            d1 = (prev[-1] - prev[-2]) / r0
            x = x - (0.5 * alpha[k + 1] * phi1) * d1
        if progress is not None:
            progress(k)
    return x


def eps_to_x0(eps: torch.Tensor, x: torch.Tensor, t: float, schedule: DiscreteVPSchedule) -> torch.Tensor:
    """Data prediction from a noise prediction: x0 = (x - sigma_t eps) / alpha_t."""
    return (x - schedule.sigma(t) * eps) / schedule.alpha(t)
