"""Predictive distributions of a :class:`~mlipuq.prediction.Prediction`: Gaussian or Student-t.

Responsibility: the formulas that read a predicted mean, a std and optional
Student-t degrees of freedom ν as a distribution, for the prediction itself
(:meth:`~mlipuq.prediction.Prediction.interval`), the metrics and plots
(:mod:`mlipuq.calibration`) and the Student-t recalibration
(:mod:`mlipuq.calibration.student_t`). Neutral ground: it imports no other
mlipuq module.

Convention: ``std`` is always the *Gaussian-equivalent* std, the half-width
of the central 68.27 % interval (the std itself for a Gaussian). A t with
ν ≤ 2 has no finite variance; this std stays finite and keeps its usual
meaning for code that reads it as a Gaussian σ. The t scale is
``std / std_factor(ν)``.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from scipy import stats
from scipy.special import betaln, ndtr, ndtri

__all__ = ["ONE_SIGMA", "ROBUST_MAX_DOF", "check_dof", "crps_values_t", "gaussian_z",
           "half_width", "nll_values_t", "std_factor", "std_quantiles", "variance_factor"]

#: Level of the central interval whose half-width is the reported std (±1σ of a Gaussian).
ONE_SIGMA = math.erf(1.0 / math.sqrt(2.0))
#: Largest ν of the wrappers' default force predictive (``calibrate(val)`` without a
#: method): ν is fitted on the calibration data but at most this, the tail of a
#: four-member committee's (ν = K − 1) and the heaviest integer ν with a finite
#: variance. The validation data say how the errors are distributed where they were
#: drawn; under shift the ratio of error to std moves by a factor the calibration
#: data cannot show, and a scale mixture over that factor is a heavier-tailed t.
#: Chosen on the shift benchmark (docs/shift.md#heavy-tails-for-every-wrapper).
ROBUST_MAX_DOF = 3.0


def check_dof(dof, what: str = "dof") -> Optional[float]:
    """``dof`` as a float > 0, or None (Gaussian); ``ValueError`` otherwise."""
    if dof is None:
        return None
    value = float(dof)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} (Student-t degrees of freedom) must be > 0, got {dof!r}")
    return value


def std_factor(dof: Optional[float]) -> float:
    """:math:`m(\\nu) = t_\\nu^{-1}(0.8413)`: Gaussian-equivalent std over t scale (1 for None)."""
    if dof is None:
        return 1.0
    return float(stats.t.ppf(0.5 + ONE_SIGMA / 2.0, dof))


def std_quantiles(q, dof: Optional[float]) -> np.ndarray:
    """Quantiles at levels ``q`` of the standardised predictive, in units of the
    Gaussian-equivalent std: :math:`\\Phi^{-1}(q)`, or :math:`t_\\nu^{-1}(q)/m(\\nu)`."""
    q = np.asarray(q, dtype=np.float64)
    if dof is None:
        return ndtri(q)
    return stats.t.ppf(q, dof) / std_factor(dof)


def variance_factor(dof: Optional[float]) -> float:
    """Variance of the predictive over std²: 1 for a Gaussian,
    :math:`\\nu / ((\\nu - 2) m(\\nu)^2)` for a t with ν > 2, infinite for ν ≤ 2."""
    if dof is None:
        return 1.0
    if dof <= 2.0:
        return math.inf
    return dof / (dof - 2.0) / std_factor(dof) ** 2


def gaussian_z(z: np.ndarray, dof: Optional[float]) -> np.ndarray:
    """Gaussian z with the same CDF level as the t-standardised error.

    ``z = (y − μ)/std`` with the Gaussian-equivalent std; returns
    :math:`\\Phi^{-1}(T_\\nu(z\\,m(\\nu)))` (``z`` itself for ``dof=None``),
    computed from the survival function so that far tails stay finite
    where double precision allows. Interval metrics on these values are the
    t predictive's.
    """
    z = np.asarray(z, dtype=np.float64)
    if dof is None:
        return z
    tail = stats.t.sf(np.abs(z) * std_factor(dof), dof)
    return -np.sign(z) * ndtri(tail)


def nll_values_t(err: np.ndarray, std: np.ndarray, dof: Optional[float]) -> np.ndarray:
    """Per-prediction NLL (nats) of ``err = y_true − y_pred`` under the t predictive
    (Gaussian for ``dof=None``)."""
    if dof is None:
        return 0.5 * math.log(2 * math.pi) + np.log(std) + 0.5 * (err / std) ** 2
    scale = std / std_factor(dof)
    return -stats.t.logpdf(err / scale, dof) + np.log(scale)


def half_width(std, dof: Optional[float], level: float) -> np.ndarray:
    """Half-width of the central interval of coverage ``level`` (unit of ``std``)."""
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return np.asarray(std, dtype=np.float64) * float(std_quantiles(0.5 + float(level) / 2.0, dof))


def crps_values_t(err: np.ndarray, std: np.ndarray, dof: Optional[float]) -> np.ndarray:
    """Per-prediction CRPS (unit of ``err``) of ``err = y_true − y_pred`` under the t
    predictive (Gaussian for ``dof=None``); infinite for ν ≤ 1 (no finite mean).

    With t scale s = std/m(ν) and z = err/s (Jordan, Krüger and Lerch, J. Stat.
    Softw. 90(12), 2019, the location-scale t):

    .. math:: s\\left[z(2F_\\nu(z) - 1) + 2f_\\nu(z)\\frac{\\nu + z^2}{\\nu - 1}
              - \\frac{2\\sqrt\\nu\\,B(\\tfrac12, \\nu - \\tfrac12)}
                     {(\\nu - 1)\\,B(\\tfrac12, \\tfrac\\nu2)^2}\\right]
    """
    err, std = np.asarray(err, dtype=np.float64), np.asarray(std, dtype=np.float64)
    if dof is None:
        z = err / std
        pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        return std * (z * (2.0 * ndtr(z) - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))
    if dof <= 1.0:
        return np.full(np.broadcast(err, std).shape, np.inf)
    scale = std / std_factor(dof)
    z = err / scale
    const = 2.0 * math.sqrt(dof) / (dof - 1.0) * math.exp(betaln(0.5, dof - 0.5)
                                                         - 2.0 * betaln(0.5, 0.5 * dof))
    return scale * (z * (2.0 * stats.t.cdf(z, dof) - 1.0)
                    + 2.0 * stats.t.pdf(z, dof) * (dof + z * z) / (dof - 1.0) - const)

