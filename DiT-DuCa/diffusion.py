"""Gaussian diffusion for DiT, written to the reference definition (models.md A.5).

* 1000-step linear beta schedule (1e-4 .. 0.02, float64), epsilon prediction with a learned
  variance interpolation (``learn_sigma``: output channels = 2 x input channels).
* Timestep respacing exactly as upstream ``space_timesteps`` (one section, ``round`` of an
  accumulating float stride): 50 steps keep ``[0, 20, 41, ..., 979, 999]``. The network always sees the
  **original** timestep (``timestep_map``).
* Samplers: DDIM with eta 0 and DDPM with the learned variance (IDDPM), ``clip_denoised=False`` by
  default as DiT's sample scripts use.
* Training loss (DiT / IDDPM ``LossType.MSE`` with ``LEARNED_RANGE``): MSE on epsilon plus the
  variational-bound term for the variance with the mean held fixed.
* Sampling loops open the model's cache session and call ``run.set_step(p)`` before every
  evaluation, ``p = 0..K-1`` in evaluation order (the engine maps it to the reference's counting-down
  step index ``i = K-1-p``).

Usage::

    diffusion = create_diffusion("50")            # or "250", or "" for the 1000-step training process
    samples = diffusion.ddim_sample_loop(model.forward_with_cfg, z.shape, noise=z,
                                         model_kwargs=dict(y=y, cfg_scale=1.5),
                                         feature_cache=model.feature_cache, grid=model.grid_size,
                                         cfg_halves=True)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

NUM_DIFFUSION_TIMESTEPS = 1000          # base schedule length (models.md A.5)
LINEAR_BETA_START = 1e-4                # linear betas 1e-4 .. 0.02 over the 1000 base steps (models.md A.5)
LINEAR_BETA_END = 0.02
# discretized_gaussian_log_likelihood, as upstream DiT diffusion_utils (from guided-diffusion / IDDPM):
CDF_TANH_COEF = 0.044715                # tanh approximation of the standard normal CDF (the GELU-tanh constant)
PIXEL_BIN_HALF_WIDTH = 1.0 / 255.0      # 8-bit data scaled to [-1, 1]: bins of width 2/255
LOG_CLAMP_MIN = 1e-12                   # floor before log() of a CDF value
PIXEL_EDGE = 0.999                      # |x| above this is the first/last bin (open-ended CDF tail)
POSTERIOR_VAR_FLOOR = 1e-20             # 1-step process: its only posterior variance is 0; avoids log(0)


# ------------------------------------------------------------------------------------------------
# Schedules and respacing
# ------------------------------------------------------------------------------------------------

def linear_betas(num_diffusion_timesteps: int = NUM_DIFFUSION_TIMESTEPS) -> np.ndarray:
    """Linear betas of DDPM (1e-4 .. 0.02 for 1000 steps, scaled for other lengths), float64."""
    scale = NUM_DIFFUSION_TIMESTEPS / num_diffusion_timesteps
    return np.linspace(scale * LINEAR_BETA_START, scale * LINEAR_BETA_END, num_diffusion_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: str | list[int]) -> set[int]:
    """The original timesteps kept when respacing (upstream ``respace.space_timesteps``).

    ``section_counts`` is "50", "250", "10,15,20" or a list of counts; "ddimN" strides evenly.
    Within a section of size S keeping K steps, the kept offsets are ``round(k * (S-1)/(K-1))`` with
    the stride accumulated as a float (Python ``round``: half to even).
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for i in range(1, num_timesteps):
                if len(range(0, num_timesteps, i)) == desired:
                    return set(range(0, num_timesteps, i))
            raise ValueError(f"cannot create exactly {desired} steps with an integer stride from {num_timesteps}")
        try:
            section_counts = [int(x) for x in section_counts.split(",")]
        except ValueError as exc:
            raise ValueError(f"timestep respacing {section_counts!r} is not a comma-separated list of "
                             "integers") from exc
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps: list[int] = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide a section of {size} steps into {section_count}")
        if section_count < 1:
            raise ValueError(f"a section must keep at least one step, got {section_count}")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        taken = []
        for _ in range(section_count):
            taken.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        all_steps += taken
        start_idx += size
    return set(all_steps)


def respaced_timesteps(num_steps: int, num_timesteps: int = NUM_DIFFUSION_TIMESTEPS) -> list[int]:
    """Sorted kept timesteps for ``create_diffusion(str(num_steps))``."""
    return sorted(space_timesteps(num_timesteps, str(num_steps)))


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------

def _extract(arr: np.ndarray, timesteps: torch.Tensor, broadcast_shape: tuple[int, ...]) -> torch.Tensor:
    """``arr[timesteps]`` (float64 table, cast to float32 as upstream), broadcast to ``broadcast_shape``."""
    res = torch.from_numpy(arr).to(device=timesteps.device)[timesteps].float()
    while res.dim() < len(broadcast_shape):
        res = res[..., None]
    return res + torch.zeros(broadcast_shape, device=timesteps.device)


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.mean(dim=list(range(1, tensor.dim())))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + ((mean1 - mean2) ** 2) * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + CDF_TANH_COEF * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, *, means: torch.Tensor,
                                        log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of data in [-1, 1] discretised to 256 bins (IDDPM), elementwise, in nats."""
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + PIXEL_BIN_HALF_WIDTH))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - PIXEL_BIN_HALF_WIDTH))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=LOG_CLAMP_MIN))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=LOG_CLAMP_MIN))
    cdf_delta = cdf_plus - cdf_min
    log_cdf_delta = torch.log(cdf_delta.clamp(min=LOG_CLAMP_MIN))
    return torch.where(x < -PIXEL_EDGE, log_cdf_plus, torch.where(x > PIXEL_EDGE, log_one_minus_cdf_min, log_cdf_delta))


# ------------------------------------------------------------------------------------------------
# The process
# ------------------------------------------------------------------------------------------------

class GaussianDiffusion:
    """A diffusion process over ``len(betas)`` steps with epsilon prediction.

    ``learn_sigma=True`` means the model outputs ``2C`` channels: epsilon, then ``v`` in [-1, 1] that
    interpolates the log-variance between the posterior variance (v = -1) and beta (v = +1).
    ``timestep_map[j]`` is the original timestep of step j; the network is called with it.
    """

    def __init__(self, betas: np.ndarray, *, learn_sigma: bool = True, timestep_map: list[int] | None = None,
                 original_num_steps: int | None = None) -> None:
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.betas = betas
        self.learn_sigma = learn_sigma
        self.num_timesteps = len(betas)
        self.timestep_map = list(range(self.num_timesteps)) if timestep_map is None else list(timestep_map)
        self.original_num_steps = original_num_steps or self.num_timesteps

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # log of the posterior variance, clipped: index 0 (variance 0) takes index 1's value
        if len(self.posterior_variance) > 1:
            self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1],
                                                                   self.posterior_variance[1:]))
        else:
            floored = max(self.posterior_variance[0], POSTERIOR_VAR_FLOOR)
            self.posterior_log_variance_clipped = np.array([np.log(floored)])
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # -- the network call --------------------------------------------------------------------------
    def _call_model(self, model: Callable, x: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None) -> torch.Tensor:
        """Call the network with the original timesteps (``timestep_map[t]``)."""
        map_tensor = torch.tensor(self.timestep_map, device=t.device, dtype=t.dtype)
        return model(x, map_tensor[t], **(model_kwargs or {}))

    # -- forward process ---------------------------------------------------------------------------
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = torch.randn_like(x_start)
        return (_extract(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
                + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        mean = (_extract(self.posterior_mean_coef1, t, x_t.shape) * x_start
                + _extract(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        variance = _extract(self.posterior_variance, t, x_t.shape)
        log_variance = _extract(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, variance, log_variance

    def _predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (_extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
                - _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)

    def _predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        return ((_extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart)
                / _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape))

    # -- reverse process -------------------------------------------------------------------------
    def p_mean_variance(self, model: Callable, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = False,
                        model_kwargs: dict | None = None, model_output: torch.Tensor | None = None) -> dict:
        """Mean, variance and x0 of p(x_{t-1} | x_t) from one network evaluation."""
        b, c = x.shape[:2]
        if model_output is None:
            model_output = self._call_model(model, x, t, model_kwargs)
        if self.learn_sigma:
            if model_output.shape[1] != 2 * c:
                raise ValueError(f"a learn_sigma model must output {2 * c} channels for {c} input channels, "
                                 f"got {model_output.shape[1]}")
            model_output, model_var_values = torch.split(model_output, c, dim=1)
            min_log = _extract(self.posterior_log_variance_clipped, t, x.shape)
            max_log = _extract(np.log(self.betas), t, x.shape)
            frac = (model_var_values + 1) / 2          # v in [-1, 1] -> [0, 1]
            model_log_variance = frac * max_log + (1 - frac) * min_log
            model_variance = torch.exp(model_log_variance)
        else:
            # fixed large variance (IDDPM FIXED_LARGE): beta, with the posterior variance at step 0
            variance = np.append(self.posterior_variance[1], self.betas[1:])
            model_variance = _extract(variance, t, x.shape)
            model_log_variance = _extract(np.log(variance), t, x.shape)
        pred_xstart = self._predict_xstart_from_eps(x, t, model_output)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        model_mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": model_mean, "variance": model_variance, "log_variance": model_log_variance,
                "pred_xstart": pred_xstart, "eps": model_output}

    def p_sample(self, model: Callable, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = False,
                 model_kwargs: dict | None = None, step_noise: Callable | None = None) -> dict:
        """One DDPM step: ``mean + exp(0.5 logvar) * N(0, I)``, no noise at t = 0.

        ``step_noise(x)`` supplies the noise (default ``torch.randn_like(x)``, the global RNG)."""
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        noise = torch.randn_like(x) if step_noise is None else step_noise(x)
        nonzero_mask = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
        sample = out["mean"] + nonzero_mask * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample(self, model: Callable, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = False,
                    model_kwargs: dict | None = None, eta: float = 0.0, step_noise: Callable | None = None) -> dict:
        """One DDIM step; with eta 0: ``x0 sqrt(abar_prev) + sqrt(1 - abar_prev) eps_hat``."""
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = _extract(self.alphas_cumprod, t, x.shape)
        alpha_bar_prev = _extract(self.alphas_cumprod_prev, t, x.shape)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        mean_pred = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps
        # Upstream draws this noise even with eta 0; drawing it keeps the global RNG stream identical.
        noise = torch.randn_like(x) if step_noise is None else step_noise(x)
        nonzero_mask = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
        sample = mean_pred + nonzero_mask * sigma * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    # -- loops -------------------------------------------------------------------------------------
    def sample_loop_progressive(self, model: Callable, shape: tuple[int, ...], *, noise: torch.Tensor | None = None,
                                model_kwargs: dict | None = None, device: torch.device | str | None = None,
                                ddim: bool = True, eta: float = 0.0, clip_denoised: bool = False,
                                progress: bool = False, feature_cache=None, grid: tuple[int, int] | None = None,
                                cfg_halves: bool = False, profile: bool = False,
                                step_noise: Callable | None = None) -> Iterator[dict]:
        """Yield the result of every step, from step K-1 down to 0.

        With ``feature_cache`` (a model's :class:`~duca_common.cache.FeatureCache`) the whole loop runs
        in one cache session; step ``i`` (counting down) is evaluation ``p = K-1-i``.
        """
        if device is None:
            device = noise.device if noise is not None else torch.device("cpu")
        img = noise if noise is not None else torch.randn(*shape, device=device)
        indices = list(range(self.num_timesteps))[::-1]
        iterator = indices
        if progress:
            from tqdm.auto import tqdm
            iterator = tqdm(indices, desc="sampling", leave=False)
        step_fn = self.ddim_sample if ddim else self.p_sample
        extra = {"eta": eta, "step_noise": step_noise} if ddim else {"step_noise": step_noise}
        session = (feature_cache.session(self.num_timesteps, grid=grid, cfg_halves=cfg_halves, profile=profile)
                   if feature_cache is not None else contextlib.nullcontext(None))
        with session as run:
            for p, i in enumerate(iterator):
                if run is not None:
                    run.set_step(p)
                t = torch.tensor([i] * shape[0], device=img.device)
                with torch.no_grad():
                    out = step_fn(model, img, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs, **extra)
                yield out
                img = out["sample"]

    def sample_loop(self, model: Callable, shape: tuple[int, ...], **kwargs) -> torch.Tensor:
        final = None
        for out in self.sample_loop_progressive(model, shape, **kwargs):
            final = out
        return final["sample"]

    def ddim_sample_loop(self, model: Callable, shape: tuple[int, ...], **kwargs) -> torch.Tensor:
        return self.sample_loop(model, shape, ddim=True, **kwargs)

    def p_sample_loop(self, model: Callable, shape: tuple[int, ...], **kwargs) -> torch.Tensor:
        return self.sample_loop(model, shape, ddim=False, **kwargs)

    # -- training ----------------------------------------------------------------------------------
    def _vb_terms_bpd(self, model: Callable, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                      model_output: torch.Tensor, clip_denoised: bool = False) -> torch.Tensor:
        """Variational-bound term in bits per dim: KL at t > 0, decoder NLL at t = 0."""
        true_mean, _, true_log_variance_clipped = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_output=model_output)
        kl = normal_kl(true_mean, true_log_variance_clipped, out["mean"], out["log_variance"])
        kl = mean_flat(kl) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(x_start, means=out["mean"],
                                                           log_scales=0.5 * out["log_variance"])
        decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
        return torch.where(t == 0, decoder_nll, kl)

    def training_losses(self, model: Callable, x_start: torch.Tensor, t: torch.Tensor,
                        model_kwargs: dict | None = None, noise: torch.Tensor | None = None) -> dict:
        """Per-sample losses of DiT / IDDPM (``LossType.MSE``): ``loss = mse + vb``.

        ``mse`` is the epsilon MSE; ``vb`` trains the learned variance through the variational bound
        with the predicted mean detached (so it only shapes the variance). Without ``learn_sigma`` the
        loss is the MSE alone. ``t`` are indices into this process (original timesteps for the
        1000-step process).
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms = {}
        model_output = self._call_model(model, x_t, t, model_kwargs)
        b, c = x_t.shape[:2]
        if self.learn_sigma:
            if model_output.shape[:2] != (b, 2 * c):
                raise ValueError(f"a learn_sigma model must output {2 * c} channels for {c} input channels, "
                                 f"got shape {tuple(model_output.shape)}")
            model_output, model_var_values = torch.split(model_output, c, dim=1)
            frozen_out = torch.cat([model_output.detach(), model_var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(None, x_start, x_t, t, frozen_out)
        if model_output.shape != x_start.shape:
            raise ValueError(f"model output {tuple(model_output.shape)} does not match the input "
                             f"{tuple(x_start.shape)}")
        terms["mse"] = mean_flat((noise - model_output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion that keeps only ``use_timesteps`` of a base process (upstream ``respace.py``).

    New betas ``beta'_j = 1 - abar[t_j] / abar[t_{j-1}]`` with ``abar`` of the virtual step before the
    first = 1; ``timestep_map`` holds the kept original timesteps.
    """

    def __init__(self, use_timesteps: set[int] | list[int], base_betas: np.ndarray, *,
                 learn_sigma: bool = True) -> None:
        base = GaussianDiffusion(base_betas, learn_sigma=learn_sigma)
        last_alpha_cumprod = 1.0
        new_betas, timestep_map = [], []
        kept = set(use_timesteps)
        for i, alpha_cumprod in enumerate(base.alphas_cumprod):
            if i in kept:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                timestep_map.append(i)
        if len(timestep_map) != len(kept):
            raise ValueError(f"respacing keeps timesteps outside 0..{len(base_betas) - 1}")
        super().__init__(np.array(new_betas), learn_sigma=learn_sigma, timestep_map=timestep_map,
                         original_num_steps=len(base_betas))


def create_diffusion(timestep_respacing: str | int | None = "", *, learn_sigma: bool = True,
                     diffusion_steps: int = NUM_DIFFUSION_TIMESTEPS) -> SpacedDiffusion:
    """DiT's ``create_diffusion``: linear schedule, MSE loss, learned range variance.

    ``timestep_respacing`` "" or None keeps all ``diffusion_steps`` (training); "50" or "250" respace
    for sampling; an int is taken as its string.
    """
    betas = linear_betas(diffusion_steps)
    if timestep_respacing is None or timestep_respacing == "":
        timestep_respacing = [diffusion_steps]
    elif isinstance(timestep_respacing, int):
        timestep_respacing = str(timestep_respacing)
    return SpacedDiffusion(space_timesteps(diffusion_steps, timestep_respacing), betas, learn_sigma=learn_sigma)
