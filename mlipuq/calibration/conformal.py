"""Split-conformal intervals as a recalibration method (``method="conformal"``).

Split conformal prediction (Vovk et al. 2005; Lei et al. 2018) with the
normalised score :math:`s_i = |y_i - \\hat y_i| / \\sigma_i`: on n calibration
targets, take

.. math:: \\hat q = s_{(k)}, \\qquad k = \\lceil (n + 1)\\,c \\rceil,

the k-th smallest score, for a target coverage c. If the calibration targets
and a new target are exchangeable, the interval
:math:`\\hat y \\pm \\hat q\\,\\sigma` covers the new reference with probability

.. math:: c \\le P(|y - \\hat y| \\le \\hat q\\,\\sigma) \\le c + \\frac{1}{n + 1}

(the upper bound when scores have no ties), over the draw of the calibration
set and the new point, whatever the model and its σ. If k > n the quantile is
infinite: :class:`ConformalRecalibrator` raises a ``ValueError`` instead; a
coverage c needs at least :func:`min_calibration_size` ``= ⌈c/(1 − c)⌉``
calibration targets (9 for 90 %, 19 for 95 %).

Where the guarantee stops:

* **Marginal, not conditional.** It holds on average over new targets drawn
  like the calibration set, not for each structure, σ range or region of
  configuration space. ``per_species=True`` runs the same argument within
  each element (a per-group, "Mondrian" conformal quantile), nothing finer
  (and for forces subject to the caveat below).
* **Distribution shift.** Targets drawn differently from the calibration set
  (other temperatures or phases, MD that leaves the training region, active
  learning picking the most uncertain structures) are not exchangeable with it
  and get no guarantee.
* **Forces are approximate.** The guarantee needs the n calibration scores
  and the new one to be exchangeable. Structures drawn i.i.d. are, so the
  energy guarantee is exact. Force components are not: the 3·N_atoms
  components of one structure share its geometry and its model error, so they
  are correlated, and n pooled components are not n exchangeable scores. What
  remains is asymptotic: for new structures drawn like the calibration
  structures, the fraction of all their force components that are covered
  tends to c as the number of calibration *structures* grows (the pooled
  quantile weights each structure by its number of atoms). The bounds
  [c, c + 1/(n + 1)] with n the number of components do not hold; the error
  shrinks with the number of structures, not of components, and the coverage
  realised on one test set scatters more than for independent scores. An
  exact force guarantee would need one score per structure (one random
  component, or the largest one for a band on all forces at once), which
  this recalibrator does not do. ``per_species`` has the same status within
  each element.

Gaussian consumers. Everything downstream of a recalibrator reads a std.
:meth:`ConformalRecalibrator.transform` returns :math:`\\sigma' = \\hat q
\\sigma / z_c`, :math:`z_c = \\Phi^{-1}((1 + c)/2)`, so that the Gaussian
central interval at level c, :math:`\\hat y \\pm z_c\\sigma'`, is exactly the
conformal interval. Gaussian intervals at any other level are extrapolations
under a Gaussian shape the conformal method never assumed; only
:meth:`ConformalRecalibrator.interval` at the fitted coverage is exact.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Optional, Tuple

import numpy as np
from scipy.special import ndtri

from mlipuq.calibration.metrics_common import prepare
from mlipuq.calibration.recalibrate_base import Recalibrator, check_std, target_numbers

__all__ = ["ConformalRecalibrator", "conformal_quantile", "min_calibration_size"]


def _check_coverage(coverage) -> Fraction:
    """The coverage as the exact decimal fraction it prints as (0.7 -> 7/10)."""
    try:
        value = float(coverage)
    except (TypeError, ValueError):
        raise ValueError(f"coverage must be a number in (0, 1), got {coverage!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"coverage must lie in (0, 1), got {coverage!r}")
    return Fraction(repr(value))


def min_calibration_size(coverage: float) -> int:
    """Fewest calibration scores with a finite conformal quantile at ``coverage``.

    The smallest n with :math:`\\lceil (n + 1) c \\rceil \\le n`, i.e.
    :math:`n = \\lceil c / (1 - c) \\rceil`.
    """
    c = _check_coverage(coverage)
    return max(1, math.ceil(c / (1 - c)))


def conformal_quantile(scores, coverage: float) -> float:
    """The split-conformal quantile: the ⌈(n + 1)·coverage⌉-th smallest score.

    ``coverage`` is read as the decimal fraction it prints as (0.7 is exactly
    7/10), so that (n + 1)·coverage is computed without rounding error.

    Parameters
    ----------
    scores
        Non-conformity scores, any shape (flattened); here
        :math:`|y - \\hat y| / \\sigma`, dimensionless.
    coverage
        Target coverage c in (0, 1).

    Returns
    -------
    float
        :math:`s_{(k)}`, :math:`k = \\lceil (n + 1) c \\rceil` (unit of the scores).

    Raises
    ------
    ValueError
        If k > n (the quantile is infinite): the message says how many
        scores the coverage needs. Also for no scores, or non-finite ones.
    """
    c = _check_coverage(coverage)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(s).all():
        raise ValueError(f"scores hold {int(s.size - np.isfinite(s).sum())} non-finite value(s)")
    n = s.size
    k = math.ceil((n + 1) * c)
    if k > n:
        raise ValueError(
            f"coverage {float(coverage)} needs at least {min_calibration_size(coverage)} "
            f"calibration points for a finite conformal quantile (⌈(n+1)·coverage⌉ ≤ n), "
            f"got {n}"
        )
    return float(np.partition(s, k - 1)[k - 1])


class ConformalRecalibrator(Recalibrator):
    """Split-conformal intervals :math:`\\hat y \\pm \\hat q\\sigma` at a target coverage.

    Fits the conformal quantile :math:`\\hat q` of the normalised scores
    :math:`|y - \\hat y|/\\sigma` (see the module docstring for the formula, the
    finite-sample guarantee and where it stops). :meth:`transform` returns
    :math:`\\sigma' = \\hat q\\sigma / z_c` with
    :math:`z_c = \\Phi^{-1}((1 + c)/2)`: a Gaussian central interval at level
    c built from σ' is exactly the conformal interval; at other levels it is a
    Gaussian extrapolation without guarantee. :meth:`interval` returns the
    conformal interval itself and refuses other levels.

    Parameters
    ----------
    coverage
        Target coverage c in (0, 1) of the central interval.
    per_species
        One quantile per chemical element (fit and transform then need the
        atomic number of every target, ``numbers=``): coverage holds for each
        element separately. Only for per-atom targets (forces);
        :class:`~mlipuq.calibration.recalibrate.PredictionRecalibrator`
        applies it to forces and gives energies one quantile.

    Attributes
    ----------
    quantile_ : float
        Conformal quantile of all scores (dimensionless, in units of σ).
    scale_ : float
        ``quantile_ / z_c``: the std multiplier when ``per_species`` is False.
    n_calibration_ : int
        Number of calibration scores.
    species_ : ndarray of int64
        Atomic numbers with their own quantile (empty unless ``per_species``).
    species_quantile_ : ndarray
        Conformal quantile per element of ``species_`` (dimensionless).
    species_count_ : ndarray of int64
        Calibration scores per element of ``species_``.
    """

    #: options that apply only to per-atom targets (PredictionRecalibrator drops them for energies)
    per_atom_options = ("per_species",)

    def __init__(self, coverage: float = 0.9, per_species: bool = False):
        self.coverage = coverage
        self.per_species = per_species

    @property
    def needs_numbers(self) -> bool:
        """True when fit and transform need ``numbers=`` (per-species quantiles)."""
        return bool(self.per_species)

    @property
    def z_c(self) -> float:
        """:math:`\\Phi^{-1}((1 + c)/2)`: the Gaussian half-width at the coverage, in σ."""
        return float(ndtri(0.5 + float(self.coverage) / 2.0))

    # ------------------------------------------------------------------ fit
    def fit(self, y_pred, y_std, y_true, *, numbers=None) -> "ConformalRecalibrator":
        """Fit the conformal quantile(s) on calibration data.

        Parameters
        ----------
        y_pred, y_std, y_true
            Calibration predictions, std and references (any common shape,
            unit of the quantity); σ must be positive.
        numbers
            Atomic number of each target, needed when ``per_species``: the
            shape of ``y_pred``, or ``(len(y_pred),)`` (one per row, e.g. per
            atom for (N, 3) forces).

        Raises
        ------
        ValueError
            Too few calibration targets for the coverage (overall, or for one
            element when ``per_species``); missing or mismatched ``numbers``.
        """
        _check_coverage(self.coverage)
        shape = np.shape(y_pred)
        pred, std, true = prepare(y_pred, y_std, y_true)  # refuses z-scores that overflow
        scores = np.abs(true - pred).reshape(-1) / std.reshape(-1)
        quantile = conformal_quantile(scores, self.coverage)
        species = np.zeros(0, dtype=np.int64)
        species_quantile = np.zeros(0, dtype=np.float64)
        species_count = np.zeros(0, dtype=np.int64)
        if self.per_species:
            z_numbers = target_numbers(numbers, shape)
            species, index, species_count = np.unique(
                z_numbers, return_inverse=True, return_counts=True
            )
            species_quantile = np.empty(species.size, dtype=np.float64)
            for k, element in enumerate(species):
                try:
                    species_quantile[k] = conformal_quantile(scores[index == k], self.coverage)
                except ValueError as exc:
                    raise ValueError(f"element Z={int(element)}: {exc}") from None
            species_count = species_count.astype(np.int64)
        self.quantile_ = quantile
        self.n_calibration_ = int(scores.size)
        self.species_ = species.astype(np.int64)
        self.species_quantile_ = species_quantile
        self.species_count_ = species_count
        self.scale_ = quantile / self.z_c
        return self

    # ----------------------------------------------------------- transform
    def _species_quantile(self, z: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Per-target element quantile (0 where unseen) and a mask of seen elements."""
        species = np.asarray(self.species_, dtype=np.int64)
        out = np.zeros(z.shape, dtype=np.float64)
        if species.size == 0:
            return out, np.zeros(z.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(species, z), species.size - 1)
        known = species[pos] == z
        out[known] = np.asarray(self.species_quantile_, dtype=np.float64)[pos[known]]
        return out, known

    def transform(self, y_std, *, numbers=None) -> np.ndarray:
        """Std whose Gaussian interval at ``coverage`` is the conformal one.

        Returns :math:`\\hat q\\,\\sigma / z_c` (same shape and unit as
        ``y_std``); ``numbers`` (as in :meth:`fit`) selects each target's
        element quantile when ``per_species``. A Gaussian interval at another
        level built from this std is an extrapolation without guarantee.

        Raises
        ------
        ValueError
            Negative or non-finite std; when ``per_species``, missing
            ``numbers`` or an element (with σ > 0) that had no calibration data.
        """
        self._check_fitted()
        std = check_std(y_std)
        return self._half_width(std, numbers) / self.z_c

    def _half_width(self, std: np.ndarray, numbers) -> np.ndarray:
        if not self.per_species:
            return self.quantile_ * std
        z = target_numbers(numbers, std.shape)
        mult, known = self._species_quantile(z)
        flat = std.reshape(-1)
        missing = ~known & (flat > 0)
        if missing.any():
            unseen = sorted({int(v) for v in z[missing]})
            raise ValueError(
                f"element(s) Z={unseen} had no calibration data for the per-species "
                "conformal quantile; calibrate on data that contains them or use "
                "per_species=False"
            )
        return (mult * flat).reshape(std.shape)

    def interval(
        self, level: Optional[float], y_pred, y_std, *, numbers=None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """The conformal interval :math:`\\hat y \\pm \\hat q\\sigma` (unit of y).

        Parameters
        ----------
        level
            Must be the fitted ``coverage`` (or None for it): the conformal
            guarantee exists only there. For other levels use a Gaussian
            extrapolation from :meth:`transform`, or fit another
            recalibrator at that coverage.
        y_pred, y_std
            Predictions and their (uncalibrated) std, any common shape.
        numbers
            Atomic numbers as in :meth:`fit` (when ``per_species``).

        Returns
        -------
        tuple of ndarray
            Lower and upper bounds, shape of ``y_pred``.

        Raises
        ------
        ValueError
            ``level`` differs from ``coverage``.
        """
        self._check_fitted()
        if level is not None and not math.isclose(
            float(level), float(self.coverage), rel_tol=0.0, abs_tol=1e-12
        ):
            raise ValueError(
                f"the conformal interval is exact only at the fitted coverage "
                f"{float(self.coverage)}, not at level {level}; use transform() for a "
                "Gaussian extrapolation, or fit ConformalRecalibrator(coverage=level)"
            )
        pred = np.asarray(y_pred, dtype=np.float64)
        std = check_std(y_std)
        if pred.shape != std.shape:
            raise ValueError(f"y_pred has shape {pred.shape}, y_std {std.shape}")
        half = self._half_width(std, numbers)
        return pred - half, pred + half
