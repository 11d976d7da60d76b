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
import warnings
from typing import Tuple

import numpy as np
from scipy import special
from scipy.optimize import minimize

from mlipuq.calibration.metrics_common import prepare
from mlipuq.calibration.recalibrate_base import Recalibrator, check_std, target_numbers
from mlipuq.errors import user_stacklevel
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


def _t_objective(x, z: np.ndarray, groups: np.ndarray, counts: np.ndarray
                 ) -> Tuple[float, np.ndarray]:
    """Mean negative log-likelihood of ``z`` under s_g·T_ν and its gradient (float64).

    x = (log ν, log s_0, ..., log s_{K-1}); ``groups`` is the scale index of each
    z (all 0 for one common scale), ``counts`` the number of z per index.
    """
    dof, log_s = math.exp(x[0]), np.asarray(x[1:], dtype=np.float64)
    t2 = (z / np.exp(log_s)[groups]) ** 2
    log1p = np.log1p(t2 / dof)
    tail = t2 / (dof + t2)
    value = -(special.gammaln(0.5 * (dof + 1)) - special.gammaln(0.5 * dof)
              - 0.5 * math.log(dof * math.pi)) + 0.5 * (dof + 1) * np.mean(log1p) \
        + float(counts @ log_s) / z.size
    d_dof = -(0.5 * special.digamma(0.5 * (dof + 1)) - 0.5 * special.digamma(0.5 * dof)
              - 0.5 / dof) + 0.5 * np.mean(log1p) - 0.5 * (dof + 1) * np.mean(tail) / dof
    d_log_s = (counts - (dof + 1) * np.bincount(groups, weights=tail, minlength=log_s.size)) / z.size
    return float(value), np.concatenate([[d_dof * dof], d_log_s])


def _newton_polish(x: np.ndarray, args: tuple, bounds, steps: int = 3) -> np.ndarray:
    """A few Newton steps on the free coordinates of x (not at a bound), Hessian by
    central differences of the analytic gradient: the optimizer stops where its
    gradient is ~1e-11, and the polish takes it to rounding level."""
    x = np.array(x, dtype=np.float64)
    lows, highs = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
    for _ in range(steps):
        free = (lows + 1e-9 < x) & (x < highs - 1e-9)
        if not free.any():
            break
        grad = _t_objective(x, *args)[1]
        hess = np.empty((x.size, x.size))
        for i in range(x.size):
            step = np.zeros(x.size)
            step[i] = 1e-5
            hess[:, i] = (_t_objective(x + step, *args)[1] - _t_objective(x - step, *args)[1]) / 2e-5
        h = hess[np.ix_(free, free)]
        if not np.all(np.isfinite(h)) or np.any(np.linalg.eigvalsh(0.5 * (h + h.T)) <= 0):
            break
        new = x.copy()
        new[free] -= np.linalg.solve(h, grad[free])
        new = np.clip(new, lows, highs)
        old = _t_objective(x, *args)[0]
        if _t_objective(new, *args)[0] > old + 1e-14 * max(1.0, abs(old)):
            break
        x = new
    return x


class StudentTRecalibrator(Recalibrator):
    """Student-t recalibration: ν and a scale fitted by maximum likelihood.

    ``fit`` maximises :math:`\\sum_i \\log t_\\nu(z_i / s) - \\log s` over
    (ν, s), z = (y − μ)/σ on validation data, with ν within ``dof_bounds``
    (L-BFGS-B on log ν, log s with the analytic gradient, from ν = 5 and the
    scalar factor). With ``per_species``, each element gets its own scale
    :math:`s_Z` (one ν for all): the raw stds of a model need not rank the errors
    of H, C and O atoms alike.
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
    per_species
        One scale per element (``fit`` and ``transform`` then take ``numbers=``,
        the atomic number of each target). An element with fewer than
        ``MIN_SPECIES_TARGETS`` calibration targets, or none, gets the largest of
        the fitted elements' scales (a conservative guess, not a fit).

    Attributes
    ----------
    dof_ : float
        Degrees of freedom ν.
    t_scale_ : float
        s: the t scale per unit raw σ (with ``per_species``: the largest ``species_t_scale_``,
        used for elements without their own).
    scale_ : float
        ``t_scale_ * std_factor(dof_)``: the std multiplier of :meth:`transform`
        (with ``per_species``: of elements without their own scale).
    species_, species_t_scale_, species_count_ : ndarray
        With ``per_species``: the elements with their own scale, their s, and
        their number of calibration targets (empty otherwise).
    """

    per_atom_options = ("per_species",)
    #: calibration targets an element needs for a scale of its own (10 atoms' forces)
    MIN_SPECIES_TARGETS = 30

    def __init__(self, dof_bounds: Tuple[float, float] = (1.0, 1000.0),
                 per_species: bool = False):
        self.dof_bounds = dof_bounds
        self.per_species = per_species

    @property
    def needs_numbers(self) -> bool:
        """True when fit and transform need ``numbers=`` (a scale per element)."""
        return bool(getattr(self, "per_species", False))

    def fit(self, y_pred, y_std, y_true, *, numbers=None) -> "StudentTRecalibrator":
        """Fit ν and s (or s per element) on validation data (any common shape, unit
        of the quantity; ``numbers`` as for the conformal recalibrator)."""
        low, high = (float(b) for b in self.dof_bounds)
        if not 0 < low < high:
            raise ValueError(f"dof_bounds must satisfy 0 < low < high, got {self.dof_bounds!r}")
        shape = np.shape(y_pred)
        pred, std, true = prepare(y_pred, y_std, y_true)
        z = ((true - pred) / std).reshape(-1)
        species, groups = self._groups(numbers, shape, z)
        z, groups = z[groups >= 0], groups[groups >= 0]
        counts = np.bincount(groups, minlength=max(species.size, 1)).astype(np.float64)
        rms = np.sqrt(np.bincount(groups, weights=z * z) / counts)
        if not species.size:  # elements with a scale of their own passed this test in _groups
            _check_zeros(z, rms[0])
        bounds = [(math.log(low), math.log(high))] + [(-30.0, 30.0)] * counts.size
        start = [math.log(min(max(5.0, low), high)), *np.log(rms)]
        args = (z, groups, counts)
        # analytic gradient and tolerances near machine precision: the fit is a smooth
        # function of the data, so two runs that differ by rounding agree to ~1e-10
        best = minimize(_t_objective, start, args=args, jac=True, method="L-BFGS-B",
                        bounds=bounds, options={"ftol": 0.0, "gtol": 1e-13, "maxiter": 1000})
        x = _newton_polish(best.x, args, bounds)
        self.dof_ = float(min(max(math.exp(x[0]), low), high))  # exp(log b) may pass b by an ulp
        scales = np.exp(x[1:])
        self.species_ = species
        self.species_t_scale_ = scales if species.size else np.zeros(0)
        self.species_count_ = counts.astype(np.int64) if species.size else np.zeros(0, np.int64)
        self.t_scale_ = float(scales.max())
        self.scale_ = self.t_scale_ * std_factor(self.dof_)
        return self

    def _groups(self, numbers, shape, z) -> Tuple[np.ndarray, np.ndarray]:
        """Elements with their own scale, and each target's scale index (-1: an
        element too rare for one, or with half its errors or more exactly zero, left
        out of the fit); one group without ``per_species`` or when no element
        qualifies."""
        n = int(np.prod(shape))
        if not self.needs_numbers:
            return np.zeros(0, np.int64), np.zeros(n, np.int64)
        elements, inverse, counts = np.unique(target_numbers(numbers, shape), return_inverse=True,
                                              return_counts=True)
        inverse = inverse.reshape(-1)
        rms = np.sqrt(np.bincount(inverse, weights=z * z) / counts)
        zero = np.bincount(inverse, weights=_is_zero(z, rms[inverse])) / counts
        own = (counts >= self.MIN_SPECIES_TARGETS) & (zero < 0.5)
        if np.any(zero[counts >= self.MIN_SPECIES_TARGETS] >= 0.5):
            warnings.warn("elements Z=" + ", ".join(str(int(e)) for e in elements[zero >= 0.5])
                          + ": half their validation force errors or more are zero; they get "
                          "the largest fitted scale instead of their own",
                          stacklevel=user_stacklevel())
        if not own.any():
            return np.zeros(0, np.int64), np.zeros(n, np.int64)
        index = np.where(own, np.cumsum(own) - 1, -1)
        return elements[own].astype(np.int64), index[inverse]

    def multiplier(self, y_std, numbers=None) -> np.ndarray:
        """The std multiplier of each target (``scale_``, or its element's)."""
        self._check_fitted()
        species = np.asarray(getattr(self, "species_", np.zeros(0)), dtype=np.int64)
        if not (self.needs_numbers and species.size):
            return np.full(np.shape(y_std), self.scale_)
        z = target_numbers(numbers, np.shape(y_std))
        pos = np.minimum(np.searchsorted(species, z), species.size - 1)
        scale = np.where(species[pos] == z, np.asarray(self.species_t_scale_)[pos], self.t_scale_)
        return (scale * std_factor(self.dof_)).reshape(np.shape(y_std))

    def transform(self, y_std, *, numbers=None) -> np.ndarray:
        """Gaussian-equivalent std: ``y_std`` times :meth:`multiplier` (same shape and unit)."""
        std = check_std(y_std)
        return self.multiplier(std, numbers) * std

    def interval(self, level: float, y_pred, y_std, *, numbers=None
                 ) -> Tuple[np.ndarray, np.ndarray]:
        """Central t interval of coverage ``level`` from the raw ``y_std`` (unit of y)."""
        pred = np.asarray(y_pred, dtype=np.float64)
        half = half_width(self.transform(y_std, numbers=numbers), self.dof_, level)
        return pred - half, pred + half


def _is_zero(z: np.ndarray, rms) -> np.ndarray:
    """Errors that are zero to rounding, relative to the RMS of their group."""
    return np.abs(z) <= 1e-9 * rms


def _check_zeros(z: np.ndarray, rms: float) -> None:
    """Refuse a t fit where half the errors or more are zero: the likelihood then
    grows without bound as s -> 0 (at ν = 1)."""
    zero = float(np.mean(_is_zero(z, rms))) if z.size else 1.0
    if zero >= 0.5:
        raise ValueError(
            f"{zero:.0%} of the validation errors are zero "
            "(e.g. forces of symmetric structures): a Student-t scale cannot be fitted; "
            "calibrate on structures with non-zero errors or use method='scalar'")
