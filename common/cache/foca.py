"""``foca``: forecast, then calibrate (after FoCa, arXiv 2508.16211), one forecaster per cached module.

FoCa reads the hidden features along the sampling trajectory as the solution of an ODE and pairs a
predictor (BDF2) with a corrector (Heun) so that long skips stay stable. Our version keeps the structure,
forecast then calibrate, with a calibration that uses what a full step actually measures:

* **forecast**: TaylorSeer's expansion (``taylor.TaylorTerms``: finite differences over the last full
  computations, order ``CacheConfig.taylor_order``, default 2 in the ``dit-foca-n5-o2`` preset);
* **calibrate**: at every full step, before its differences are refreshed, the forecaster compares the
  increment it *would* have forecast for this step, ``f = F(p) - y_prev``, with the increment that
  happened, ``d = y - y_prev``, and keeps the least-squares gain ``g = <d, f> / <f, f>`` per sample
  (clamped to ``GAIN_RANGE``). Forecasts of the next cycle are ``y + g * (F(p') - y)``: a module whose
  forecasts overshot is damped, one that undershot is stretched. It costs one dot product per module
  and full step, and no extra memory beyond one scalar per sample.

Left out of FoCa, with why: the BDF2 predictor and the Heun corrector. On forecasts made from full
computations only, the Heun corrector with a linearly extrapolated slope is algebraically TaylorSeer's
order-2 expansion (the same numbers), and recursing through the forecasts themselves (as cache-dit's
``FoCaCalibrator`` does) diverged on the embedded digits model from N = 6 (12 dB PSNR against the
uncached samples at N = 6, 5 dB at N = 8; docs/results.md). The measured gain is our calibration, not
the paper's. The plan is TaylorSeer's: full every N steps, forecast in between.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .taylor import TaylorTerms

# The gain may damp a forecast to reuse (0) or stretch it to twice its increment (2); beyond that a
# single noisy cycle would decide the next one.
GAIN_RANGE = (0.0, 2.0)
# Below this squared norm the forecast increment carries no direction to fit a gain to.
MIN_INCREMENT_NORM2 = 1e-12


@dataclass
class CalibratedTerms(TaylorTerms):
    """TaylorSeer's terms plus a per-sample gain on the forecast increment, refitted at every full step."""

    gain: torch.Tensor | None = None

    def increment(self, step: int) -> torch.Tensor | None:
        """The Taylor forecast minus the last computed value (None before two full computations)."""
        if len(self.terms) < 2:
            return None
        return self.forecast_taylor(step) - self.terms[0]

    def forecast_taylor(self, step: int) -> torch.Tensor:
        return TaylorTerms.forecast(self, step)

    def update(self, y: torch.Tensor, step: int, order: int) -> None:
        predicted = self.increment(step)
        if predicted is not None:
            happened = y - self.terms[0]
            dims = tuple(range(1, y.ndim))
            num = (happened.float() * predicted.float()).sum(dims, keepdim=True)
            den = (predicted.float() * predicted.float()).sum(dims, keepdim=True).clamp_min(MIN_INCREMENT_NORM2)
            self.gain = (num / den).clamp(*GAIN_RANGE).to(y.dtype)
        super().update(y, step, order)

    def tensors(self) -> list[torch.Tensor]:
        return [*self.terms, *([] if self.gain is None else [self.gain])]

    def forecast(self, step: int) -> torch.Tensor:
        inc = self.increment(step)
        if inc is None:
            return self.forecast_taylor(step)
        return self.terms[0] + (inc if self.gain is None else self.gain * inc)
