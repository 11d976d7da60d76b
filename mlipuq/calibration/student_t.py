"""Student-t predictive distributions: a heavy-tailed recalibration.

Why. A committee of K members estimates its variance from K samples; for
small K the standardised errors z = (y − μ)/σ are far from Gaussian: most
are small, a few very large (measured: ν ≈ 2 for a 3-member EMT Cu
ensemble). A Gaussian with one scale factor must then choose between
covering the tail (intervals far too wide for most structures, miscalibration
area 0.2) or the bulk. A Student-t with ν degrees of freedom has that shape:
for the mean of K Gaussian samples with an estimated variance it is exact
with ν = K − 1, and in general ν is fitted.

The predictive for a target with predicted mean μ and std σ (the wrapper's
raw std) is

.. math:: y = \\mu + s\\,\\sigma\\,T_\\nu,

with (ν, s) maximising the t log-likelihood of the validation z-scores
(:class:`StudentTRecalibrator`, ``calibrate(val, method="student_t")``).

**What the std means then.** A t with ν ≤ 2 has no finite variance, so the
std a :class:`~mlipuq.prediction.Prediction` reports is the *Gaussian-
equivalent* std: the half-width of the central 68.27 % interval (for a
Gaussian exactly its std), :math:`\\sigma' = s\\,\\sigma\\,t_\\nu^{-1}(0.8413)`.
Code that reads the std as a Gaussian σ (thresholds, MD stops, propagation)
stays meaningful; the prediction's ``energy_dof`` / ``forces_dof`` carry ν,
and :meth:`~mlipuq.prediction.Prediction.interval`, the metrics
(``dof=``) and ``mlipuq evaluate`` use the t itself. The functions here work
on that convention (:mod:`mlipuq.predictive`, where they live): ``std`` is
always the Gaussian-equivalent std.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
from scipy import special
from scipy.optimize import minimize

from mlipuq.calibration.metrics_common import prepare
from mlipuq.calibration.recalibrate_base import Recalibrator, check_std
from mlipuq.predictive import (  # noqa: F401  (re-exported: the t formulas)
    ONE_SIGMA,
    check_dof,
    gaussian_z,
    half_width,
    nll_values_t,
    std_factor,
)

__all__ = ["StudentTRecalibrator", "gaussian_z", "half_width", "nll_values_t", "std_factor",
           "check_dof"]


def _t_objective(x, z: np.ndarray) -> Tuple[float, np.ndarray]:
    """Mean negative log-likelihood of ``z`` under s·T_ν, x = (log ν, log s), and
    its gradient (float64)."""
    dof, log_s = math.exp(x[0]), x[1]
    t2 = (z / math.exp(log_s)) ** 2
    log1p = np.log1p(t2 / dof)
    value = -(special.gammaln(0.5 * (dof + 1)) - special.gammaln(0.5 * dof)
              - 0.5 * math.log(dof * math.pi)) + 0.5 * (dof + 1) * np.mean(log1p) + log_s
    d_dof = -(0.5 * special.digamma(0.5 * (dof + 1)) - 0.5 * special.digamma(0.5 * dof)
              - 0.5 / dof) + 0.5 * np.mean(log1p) - 0.5 * (dof + 1) * np.mean(t2 / (dof + t2)) / dof
    d_log_s = 1.0 - (dof + 1) * np.mean(t2 / (dof + t2))
    return float(value), np.array([d_dof * dof, d_log_s])


def _newton_polish(x: np.ndarray, z: np.ndarray, bounds, steps: int = 3) -> np.ndarray:
    """A few Newton steps on the free coordinates of x (not at a bound), Hessian by
    central differences of the analytic gradient: the optimizer stops where its
    gradient is ~1e-11, and the polish takes it to rounding level."""
    x = np.array(x, dtype=np.float64)
    for _ in range(steps):
        free = np.array([lo + 1e-9 < xi < hi - 1e-9 for xi, (lo, hi) in zip(x, bounds)])
        if not free.any():
            break
        grad = _t_objective(x, z)[1]
        hess = np.empty((2, 2))
        for i in range(2):
            step = np.zeros(2)
            step[i] = 1e-5
            hess[:, i] = (_t_objective(x + step, z)[1] - _t_objective(x - step, z)[1]) / 2e-5
        h = hess[np.ix_(free, free)]
        if not np.all(np.isfinite(h)) or np.any(np.linalg.eigvalsh(0.5 * (h + h.T)) <= 0):
            break
        new = x.copy()
        new[free] -= np.linalg.solve(h, grad[free])
        new = np.clip(new, [b[0] for b in bounds], [b[1] for b in bounds])
        old = _t_objective(x, z)[0]
        if _t_objective(new, z)[0] > old + 1e-14 * max(1.0, abs(old)):
            break
        x = new
    return x


class StudentTRecalibrator(Recalibrator):
    """Student-t recalibration: ν and a scale fitted by maximum likelihood.

    ``fit`` maximises :math:`\\sum_i \\log t_\\nu(z_i / s) - \\log s` over
    (ν, s), z = (y − μ)/σ on validation data, with ν within ``dof_bounds``
    (L-BFGS-B on log ν, log s with the analytic gradient, from ν = 5 and the
    scalar factor).
    ``transform`` returns the Gaussian-equivalent std
    :math:`s\\,m(\\nu)\\,\\sigma` (module notes); ``dof_`` is ν, which
    :class:`~mlipuq.calibration.recalibrate.PredictionRecalibrator` puts into
    the recalibrated prediction. Large ν (Gaussian errors) make it the scalar
    recalibration.

    Parameters
    ----------
    dof_bounds
        Lowest and highest ν considered (default 1 to 1000: from Cauchy-like
        tails to Gaussian).

    Attributes
    ----------
    dof_ : float
        Degrees of freedom ν.
    t_scale_ : float
        s: the t scale per unit raw σ.
    scale_ : float
        ``t_scale_ * std_factor(dof_)``: the std multiplier of :meth:`transform`.
    """

    def __init__(self, dof_bounds: Tuple[float, float] = (1.0, 1000.0)):
        self.dof_bounds = dof_bounds

    def fit(self, y_pred, y_std, y_true) -> "StudentTRecalibrator":
        """Fit ν and s on validation data (any common shape, unit of the quantity)."""
        low, high = (float(b) for b in self.dof_bounds)
        if not 0 < low < high:
            raise ValueError(f"dof_bounds must satisfy 0 < low < high, got {self.dof_bounds!r}")
        pred, std, true = prepare(y_pred, y_std, y_true)
        z = (true - pred) / std
        rms = math.sqrt(float(np.mean(z * z)))
        zero = float(np.mean(np.abs(z) <= 1e-9 * rms))
        if zero >= 0.5:  # the likelihood then grows without bound as s -> 0 (at ν = 1)
            raise ValueError(
                f"{zero:.0%} of the validation errors are zero "
                "(e.g. forces of symmetric structures): a Student-t scale cannot be fitted; "
                "calibrate on structures with non-zero errors or use method='scalar'")
        start = [math.log(min(max(5.0, low), high)), math.log(rms)]
        # analytic gradient and tolerances near machine precision: the fit is a smooth
        # function of the data, so two runs that differ by rounding agree to ~1e-10
        best = minimize(_t_objective, start, args=(z.reshape(-1),), jac=True, method="L-BFGS-B",
                        bounds=[(math.log(low), math.log(high)), (-30.0, 30.0)],
                        options={"ftol": 0.0, "gtol": 1e-13, "maxiter": 1000})
        best.x = _newton_polish(best.x, z.reshape(-1), [(math.log(low), math.log(high)),
                                                        (-30.0, 30.0)])
        self.dof_ = float(math.exp(best.x[0]))
        self.t_scale_ = float(math.exp(best.x[1]))
        self.scale_ = self.t_scale_ * std_factor(self.dof_)
        return self

    def transform(self, y_std) -> np.ndarray:
        """Gaussian-equivalent std ``scale_ * y_std`` (same shape and unit)."""
        self._check_fitted()
        return self.scale_ * check_std(y_std)

    def interval(self, level: float, y_pred, y_std) -> Tuple[np.ndarray, np.ndarray]:
        """Central t interval of coverage ``level`` from the raw ``y_std`` (unit of y)."""
        self._check_fitted()
        pred = np.asarray(y_pred, dtype=np.float64)
        half = half_width(self.transform(y_std), self.dof_, level)
        return pred - half, pred + half
