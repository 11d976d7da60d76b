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
from scipy import stats
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


class StudentTRecalibrator(Recalibrator):
    """Student-t recalibration: ν and a scale fitted by maximum likelihood.

    ``fit`` maximises :math:`\\sum_i \\log t_\\nu(z_i / s) - \\log s` over
    (ν, s), z = (y − μ)/σ on validation data, with ν within ``dof_bounds``
    (L-BFGS-B on log ν, log s, from ν = 5 and the scalar factor).
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

        def objective(x):
            dof, scale = math.exp(x[0]), math.exp(x[1])
            return float(-np.sum(stats.t.logpdf(z / scale, dof)) + z.size * x[1])

        start = [math.log(min(max(5.0, low), high)), math.log(math.sqrt(np.mean(z * z)) or 1.0)]
        best = minimize(objective, start, method="L-BFGS-B",
                        bounds=[(math.log(low), math.log(high)), (-30.0, 30.0)])
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
