"""Calibration and sharpness metrics for Gaussian predictions.

Two notions of calibration are covered:

* **Distribution (quantile / interval) calibration.** For each nominal
  coverage level p, the fraction of references inside the central p-interval
  :math:`\\mu \\pm \\sigma\\Phi^{-1}(\\tfrac12 + \\tfrac p2)` should be p.
  :func:`calibration_curve`, :func:`miscalibration_area`,
  :func:`rms_calibration_error`, :func:`mean_absolute_calibration_error` and
  :func:`coverage` measure the gap.
* **Error-based (variance) calibration** (Levi et al. 2019): among
  predictions with similar σ, the RMSE should equal the root mean variance
  (RMV). :func:`rmse_rmv_bins` bins by σ into equal-count bins and
  :func:`ence` averages the relative gap; with Student-t ``dof`` the RMV is
  the t's variance (undefined for ν ≤ 2, where it is infinite). :func:`z_score_stats` checks that
  :math:`z = (y - \\mu)/\\sigma` has mean 0 and standard deviation 1.

Every function takes ``(y_pred, y_std, y_true, *, reduce="none", ...)``
(see :mod:`mlipuq.calibration.metrics_common`). Observed proportions come
from one sort of the standardised errors, so a 100-level curve over 10^6
predictions costs one O(n log n) sort.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from scipy.special import ndtri

from mlipuq.calibration.metrics_common import UndefinedMetricError, check_int, prepare

PROP_TYPES = ("interval", "quantile")

#: Default nominal coverage levels reported by :func:`coverage`.
DEFAULT_LEVELS = (0.5, 0.68, 0.9, 0.95, 0.99)


class BinnedErrors(NamedTuple):
    """Equal-count bins of predictions sorted by σ (unit of the quantity).

    Attributes
    ----------
    rmv : ndarray (k,)
        Root mean variance :math:`\\sqrt{\\langle\\sigma^2\\rangle}` per bin.
    rmse : ndarray (k,)
        Root mean squared error per bin.
    count : ndarray (k,)
        Predictions per bin (they differ by at most one).
    std_min, std_max : ndarray (k,)
        Smallest and largest σ in each bin.
    """

    rmv: np.ndarray
    rmse: np.ndarray
    count: np.ndarray
    std_min: np.ndarray
    std_max: np.ndarray


class ZScoreStats(NamedTuple):
    """Statistics of :math:`z = (y_{true} - y_{pred}) / \\sigma` (dimensionless).

    For calibrated Gaussian predictions ``mean`` ≈ 0, ``std`` ≈ 1 and
    ``rms`` ≈ 1; ``rms`` > 1 means over-confident (σ too small).
    """

    mean: float
    std: float
    rms: float
    n: int


# ------------------------------------------------------------------ kernels
def _check_prop_type(prop_type: str) -> None:
    if prop_type not in PROP_TYPES:
        raise ValueError(f"prop_type must be one of {PROP_TYPES}, got {prop_type!r}")


def proportions_from_sorted(
    sorted_stat: np.ndarray, num_bins: int, prop_type: str
) -> Tuple[np.ndarray, np.ndarray]:
    """Expected and observed proportions from sorted standardised errors.

    ``sorted_stat`` is ``sort(|z|)`` for ``prop_type="interval"`` and
    ``sort(z)`` for ``"quantile"``.
    """
    expected = np.linspace(0.0, 1.0, num_bins)
    with np.errstate(over="ignore"):
        if prop_type == "interval":
            thresholds = ndtri(0.5 + expected / 2.0)
        else:
            thresholds = ndtri(expected)
    observed = np.searchsorted(sorted_stat, thresholds, side="right") / sorted_stat.size
    return expected, observed


def area_between(expected: np.ndarray, observed: np.ndarray) -> float:
    """Area between the piecewise-linear curve (expected, observed) and y = x.

    Segments where the curve crosses the diagonal are split at the crossing,
    so the area is exact for the piecewise-linear curve.
    """
    d = observed - expected
    d0, d1 = d[:-1], d[1:]
    h = np.diff(expected)
    same = d0 * d1 >= 0
    trapezoid = 0.5 * np.abs(d0 + d1) * h
    with np.errstate(invalid="ignore", divide="ignore"):
        hourglass = 0.5 * (d0 * d0 + d1 * d1) / (np.abs(d0) + np.abs(d1)) * h
    return float(np.sum(np.where(same, trapezoid, hourglass)))


def binned_errors(
    err: np.ndarray, std: np.ndarray, num_bins: int, order: Optional[np.ndarray] = None,
    dof: Optional[float] = None,
) -> BinnedErrors:
    """Kernel of :func:`rmse_rmv_bins` on flat arrays (``order``: a stable argsort of std;
    ``dof``: the RMV is the Student-t's, :class:`UndefinedMetricError` for ν ≤ 2)."""
    from mlipuq.predictive import variance_factor

    if std.size < num_bins:
        raise ValueError(f"num_bins={num_bins} exceeds the number of predictions ({std.size})")
    factor = variance_factor(dof)
    if not np.isfinite(factor):
        raise UndefinedMetricError(f"a Student-t with dof={dof} <= 2 has no finite variance "
                                   "(no RMV, no ENCE)")
    if order is None:
        order = np.argsort(std, kind="stable")
    s = std[order]
    e2 = (err * err)[order]
    v = s * s * factor
    edges = np.linspace(0, s.size, num_bins + 1).round().astype(np.int64)
    count = np.diff(edges)
    cv = np.concatenate([[0.0], np.cumsum(v)])
    ce = np.concatenate([[0.0], np.cumsum(e2)])
    rmv = np.sqrt((cv[edges[1:]] - cv[edges[:-1]]) / count)
    rmse = np.sqrt(np.maximum(ce[edges[1:]] - ce[edges[:-1]], 0.0) / count)
    return BinnedErrors(
        rmv=rmv, rmse=rmse, count=count, std_min=s[edges[:-1]], std_max=s[edges[1:] - 1]
    )


def ence_from_bins(bins: BinnedErrors) -> float:
    return float(np.mean(np.abs(bins.rmv - bins.rmse) / bins.rmv))


def z_stats_from_z(z: np.ndarray) -> ZScoreStats:
    mean = float(z.mean())
    return ZScoreStats(
        mean=mean,
        std=float(np.sqrt(np.mean((z - mean) ** 2))),
        rms=float(np.sqrt(np.mean(z * z))),
        n=int(z.size),
    )


def _standardised(y_pred, y_std, y_true, reduce: str, dof=None) -> np.ndarray:
    """z = (y − μ)/σ; with Student-t ``dof`` the Gaussian z of the same CDF level
    (:func:`mlipuq.calibration.student_t.gaussian_z`), so that interval
    metrics measure the t predictive."""
    from mlipuq.predictive import check_dof, gaussian_z

    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce)
    return gaussian_z((true - pred) / std, check_dof(dof))


# ------------------------------------------------------------------ public
def calibration_curve(
    y_pred,
    y_std,
    y_true,
    *,
    reduce: str = "none",
    num_bins: int = 100,
    prop_type: str = "interval",
    dof: Optional[float] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Expected vs observed proportions (the calibration curve).

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, std (> 0) and reference, one common shape, unit of the
        quantity (eV, eV/Å).
    reduce
        ``"none"`` or ``"norm"``.
    num_bins
        Number of expected proportions, ``linspace(0, 1, num_bins)``.
    prop_type
        ``"interval"``: observed fraction of references inside the central
        interval of each nominal coverage. ``"quantile"``: observed fraction
        of references below the predicted quantile of each level.
    dof
        Student-t degrees of freedom of the predictive (``Prediction.forces_dof``
        etc.; ``y_std`` is then the Gaussian-equivalent std); None: Gaussian.

    Returns
    -------
    expected, observed : ndarray (num_bins,)
        Proportions in [0, 1] (dimensionless).

    Notes
    -----
    For ``"quantile"`` this uses :math:`z = (y_{true} - y_{pred})/\\sigma`;
    uncertainty-toolbox uses the opposite sign, which only matters for
    skewed errors.
    """
    _check_prop_type(prop_type)
    num_bins = check_int("num_bins", num_bins, 2)
    z = _standardised(y_pred, y_std, y_true, reduce, dof)
    stat = np.abs(z) if prop_type == "interval" else z
    return proportions_from_sorted(np.sort(stat), num_bins, prop_type)


def miscalibration_area(
    y_pred,
    y_std,
    y_true,
    *,
    reduce: str = "none",
    num_bins: int = 100,
    prop_type: str = "interval",
    dof: Optional[float] = None,
) -> float:
    """Area between the calibration curve and the diagonal.

    Parameters are those of :func:`calibration_curve`.

    Returns
    -------
    float
        Dimensionless, in [0, 0.5]; 0 for perfect calibration.
    """
    return area_between(
        *calibration_curve(
            y_pred, y_std, y_true, reduce=reduce, num_bins=num_bins, prop_type=prop_type,
            dof=dof,
        )
    )


def rms_calibration_error(
    y_pred,
    y_std,
    y_true,
    *,
    reduce: str = "none",
    num_bins: int = 100,
    prop_type: str = "interval",
    dof: Optional[float] = None,
) -> float:
    """Root mean squared gap between expected and observed proportions.

    Parameters are those of :func:`calibration_curve`.

    Returns
    -------
    float
        Dimensionless, in [0, 1]; 0 for perfect calibration.
    """
    expected, observed = calibration_curve(
        y_pred, y_std, y_true, reduce=reduce, num_bins=num_bins, prop_type=prop_type, dof=dof
    )
    return float(np.sqrt(np.mean((expected - observed) ** 2)))


def mean_absolute_calibration_error(
    y_pred,
    y_std,
    y_true,
    *,
    reduce: str = "none",
    num_bins: int = 100,
    prop_type: str = "interval",
    dof: Optional[float] = None,
) -> float:
    """Mean absolute gap between expected and observed proportions (ECE).

    Parameters are those of :func:`calibration_curve`.

    Returns
    -------
    float
        Dimensionless, in [0, 1]; 0 for perfect calibration.
    """
    expected, observed = calibration_curve(
        y_pred, y_std, y_true, reduce=reduce, num_bins=num_bins, prop_type=prop_type, dof=dof
    )
    return float(np.mean(np.abs(expected - observed)))


def coverage(
    y_pred,
    y_std,
    y_true,
    *,
    reduce: str = "none",
    levels: Union[float, Sequence[float]] = DEFAULT_LEVELS,
    dof: Optional[float] = None,
) -> np.ndarray:
    """Observed coverage of central prediction intervals.

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, std (> 0) and reference, unit of the quantity.
    reduce
        ``"none"`` or ``"norm"``.
    levels
        Nominal coverages in (0, 1); the interval for level p is
        :math:`\\mu \\pm \\sigma\\Phi^{-1}(\\tfrac12 + \\tfrac p2)`
        (0.68 ≈ ±1σ, 0.95 ≈ ±1.96σ); the Student-t interval with ``dof``.
    dof
        Student-t degrees of freedom of the predictive (None: Gaussian).

    Returns
    -------
    ndarray
        Observed fraction of references inside each interval, shape of
        ``np.asarray(levels)`` (dimensionless).
    """
    lv = np.asarray(levels, dtype=np.float64)
    if lv.size == 0 or not np.all((lv > 0) & (lv < 1)):
        raise ValueError(f"levels must lie in (0, 1), got {levels!r}")
    z = _standardised(y_pred, y_std, y_true, reduce, dof)
    return coverage_from_sorted(np.sort(np.abs(z)), lv)


def coverage_from_sorted(sorted_abs_z: np.ndarray, levels: np.ndarray) -> np.ndarray:
    half_widths = ndtri(0.5 + levels / 2.0)
    return np.searchsorted(sorted_abs_z, half_widths, side="right") / sorted_abs_z.size


def sharpness(y_pred, y_std, y_true=None, *, reduce: str = "none") -> float:
    """Root mean predicted variance :math:`\\sqrt{\\langle\\sigma^2\\rangle}`.

    Parameters
    ----------
    y_pred, y_std
        Predicted mean and std (>= 0), unit of the quantity. ``y_pred`` only
        fixes the shape and, for ``reduce="norm"``, the direction used to
        propagate σ to the norm.
    y_true
        Unused (accepted for the common argument order).
    reduce
        ``"none"`` or ``"norm"``.

    Returns
    -------
    float
        Sharpness in the unit of the quantity; smaller is sharper.
    """
    _, std, _ = prepare(y_pred, y_std, y_true, reduce=reduce, positive_std=False, need_true=False)
    return float(np.sqrt(np.mean(std * std)))


def rmse_rmv_bins(
    y_pred, y_std, y_true, *, reduce: str = "none", num_bins: int = 10,
    dof: Optional[float] = None,
) -> BinnedErrors:
    """RMSE and RMV in equal-count bins of σ (error-based calibration).

    Predictions are sorted by σ and cut into ``num_bins`` bins of (nearly)
    equal count. Calibrated predictions have RMSE ≈ RMV in every bin.

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, std (> 0) and reference, unit of the quantity.
    reduce
        ``"none"`` or ``"norm"``.
    num_bins
        Number of bins, at most the number of predictions.
    dof
        Student-t degrees of freedom of the predictive (``y_std`` its
        Gaussian-equivalent std): the RMV is the t's variance,
        σ² ν / ((ν − 2) m(ν)²); :class:`UndefinedMetricError` for ν ≤ 2.

    Returns
    -------
    BinnedErrors
        Per-bin RMV, RMSE (unit of the quantity), counts and σ ranges,
        ordered by increasing σ.
    """
    from mlipuq.predictive import check_dof

    num_bins = check_int("num_bins", num_bins)
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce)
    return binned_errors(true - pred, std, num_bins, dof=check_dof(dof))


def ence(y_pred, y_std, y_true, *, reduce: str = "none", num_bins: int = 10,
         dof: Optional[float] = None) -> float:
    """Expected normalised calibration error (Levi et al. 2019).

    .. math:: \\mathrm{ENCE} = \\frac1k\\sum_{j=1}^k
              \\frac{|\\mathrm{RMV}_j - \\mathrm{RMSE}_j|}{\\mathrm{RMV}_j}

    over the equal-count σ bins of :func:`rmse_rmv_bins` (``dof``: a Student-t
    predictive's variance; undefined for ν ≤ 2).

    Returns
    -------
    float
        Dimensionless; 0 for perfect error-based calibration.
    """
    return ence_from_bins(rmse_rmv_bins(y_pred, y_std, y_true, reduce=reduce, num_bins=num_bins,
                                        dof=dof))


def z_score_stats(y_pred, y_std, y_true, *, reduce: str = "none") -> ZScoreStats:
    """Mean, standard deviation and RMS of :math:`z = (y_{true} - y_{pred})/\\sigma`.

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, std (> 0) and reference, unit of the quantity.
    reduce
        ``"none"`` or ``"norm"``.

    Returns
    -------
    ZScoreStats
        Dimensionless statistics; calibrated predictions give (0, 1, 1).
    """
    return z_stats_from_z(_standardised(y_pred, y_std, y_true, reduce))
