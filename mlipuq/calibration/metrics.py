"""Calibration metrics for Gaussian uncertainty estimates.

Every metric is a pure function with one argument order,
``metric(y_pred, y_std, y_true, *, reduce="none", ...)``, accepts arrays of
any (common) shape and computes in float64:

* energies (B,) in eV, forces (N, 3) in eV/Å scored per Cartesian
  component (``reduce="none"``) or as per-atom force magnitudes
  (``reduce="norm"``, σ propagated to the norm to first order).
* Non-finite values, negative std, empty input or mismatched shapes raise
  ``ValueError``; metrics that divide by σ also reject σ = 0.

The functions live in topic modules and are re-exported here:

* scoring rules (``metrics_scoring``): :func:`nll_gaussian`,
  :func:`crps_gaussian`, :func:`check_score`, :func:`interval_score`;
* calibration and sharpness (``metrics_calibration``):
  :func:`calibration_curve`, :func:`miscalibration_area`,
  :func:`rms_calibration_error`, :func:`mean_absolute_calibration_error`,
  :func:`coverage`, :func:`sharpness`, :func:`rmse_rmv_bins`, :func:`ence`,
  :func:`z_score_stats`;
* errors and their ranking (``metrics_error``): :func:`mae`, :func:`rmse`,
  :func:`spearman_error_std`, :func:`error_detection_auc`.

With default arguments, the functions that uncertainty-toolbox also defines
(NLL, CRPS, check and interval scores, miscalibration area, RMS and mean
absolute calibration error, sharpness) return its default values.
:func:`all_metrics` computes everything at once, sharing the sort and the
ranks between metrics.
"""

from __future__ import annotations

import math

from typing import Dict, Optional, Sequence

import numpy as np

from mlipuq.calibration.metrics_calibration import (
    DEFAULT_LEVELS,
    BinnedErrors,
    ZScoreStats,
    area_between,
    binned_errors,
    calibration_curve,
    coverage,
    coverage_from_sorted,
    ence,
    ence_from_bins,
    mean_absolute_calibration_error,
    miscalibration_area,
    proportions_from_sorted,
    rms_calibration_error,
    rmse_rmv_bins,
    sharpness,
    z_score_stats,
    z_stats_from_z,
)
from mlipuq.calibration.metrics_common import (
    UndefinedMetricError,
    average_ranks,
    check_int,
    prepare,
    reduce_norm,
)
from mlipuq.calibration.metrics_error import (
    DetectionAUC,
    detection_from,
    error_detection_auc,
    mae,
    rmse,
    spearman_error_std,
    spearman_from_ranks,
)
from mlipuq.calibration.metrics_scoring import (
    check_score,
    check_values,
    crps_gaussian,
    crps_values,  # noqa: F401  (re-exported)
    interval_score,
    interval_values,
    nll_gaussian,
    nll_values,  # noqa: F401  (re-exported)
)
from mlipuq.predictive import check_dof, crps_values_t, gaussian_z, nll_values_t

__all__ = [
    "DEFAULT_LEVELS",
    "BinnedErrors",
    "DetectionAUC",
    "UndefinedMetricError",
    "ZScoreStats",
    "all_metrics",
    "nll",
    "calibration_curve",
    "check_score",
    "coverage",
    "coverage_key",
    "crps",
    "crps_gaussian",
    "ence",
    "error_detection_auc",
    "interval_score",
    "mae",
    "mean_absolute_calibration_error",
    "miscalibration_area",
    "nll_gaussian",
    "reduce_norm",
    "rms_calibration_error",
    "rmse",
    "rmse_rmv_bins",
    "sharpness",
    "spearman_error_std",
    "z_score_stats",
]


def nll(y_pred, y_std, y_true, *, reduce: str = "none", dof: Optional[float] = None) -> float:
    """Mean negative log-likelihood (nats) of the references under the predictive:
    Gaussian N(y_pred, y_std²), or with ``dof`` the Student-t whose
    Gaussian-equivalent std is ``y_std`` (:mod:`mlipuq.calibration.student_t`)."""
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce)
    return float(nll_values_t(true - pred, std, check_dof(dof)).mean())


def crps(y_pred, y_std, y_true, *, reduce: str = "none", dof: Optional[float] = None) -> float:
    """Mean continuous ranked probability score (unit of y) of the predictive: Gaussian
    (:func:`crps_gaussian`), or with ``dof`` the Student-t whose Gaussian-equivalent
    std is ``y_std`` (closed form, :func:`mlipuq.predictive.crps_values_t`; infinite
    for ν ≤ 1)."""
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce)
    return float(crps_values_t(true - pred, std, check_dof(dof)).mean())


def coverage_key(level: float) -> str:
    """Name of the coverage entry for a nominal level, e.g. 0.95 -> ``"coverage_95"``."""
    return f"coverage_{100.0 * float(level):g}"


def all_metrics(
    y_pred,
    y_std,
    y_true,
    *,
    reduce: str = "none",
    num_bins: int = 100,
    levels: Sequence[float] = DEFAULT_LEVELS,
    num_bins_ence: int = 10,
    resolution: int = 99,
    detection_threshold: Optional[float] = None,
    detection_quantile: float = 0.9,
    dof: Optional[float] = None,
) -> Dict[str, Optional[float]]:
    """Every metric of this module for one set of predictions.

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, std (> 0) and reference, one common shape, unit of
        the quantity (eV, eV/Å).
    reduce
        ``"none"`` (every element) or ``"norm"`` (norms over the last axis).
    num_bins
        Expected proportions of the calibration curve (miscalibration area,
        RMS and mean absolute calibration error).
    levels
        Nominal coverages reported as ``coverage_<percent>``.
    num_bins_ence
        Equal-count σ bins of the ENCE.
    resolution
        Levels of the check and interval scores.
    detection_threshold, detection_quantile
        Error threshold for :func:`error_detection_auc`.
    dof
        Student-t degrees of freedom of the predictive (``Prediction.energy_dof``
        / ``forces_dof``; ``y_std`` is then the Gaussian-equivalent std). The
        NLL, CRPS (None for ν ≤ 1, where it is infinite), coverages and
        calibration curve (miscalibration area, RMS and mean absolute
        calibration error) are then the t predictive's, and
        ``z_mean``, ``z_std``, ``z_rms`` are those of the Gaussian z at the t's
        CDF level (:func:`~mlipuq.predictive.gaussian_z`: 0, 1, 1 when
        calibrated, as for a Gaussian); the check and interval scores use the
        t's quantiles and the ENCE its variance (None for ν ≤ 2, where it is
        infinite); sharpness stays the RMS of ``y_std`` (a width, comparable
        between Gaussian and t predictions).
        None (default): Gaussian throughout.

    Returns
    -------
    dict
        ``n``; ``mae``, ``rmse``, ``sharpness``, ``crps``, ``check_score``,
        ``interval_score``, ``detection_threshold`` (unit of the quantity);
        ``nll`` (nats); ``miscalibration_area``, ``rms_calibration_error``,
        ``mean_absolute_calibration_error``, ``coverage_<p>``, ``ence``,
        ``z_mean``, ``z_std``, ``z_rms``, ``spearman``, ``auroc``, ``auprc``,
        ``detection_positive_fraction`` (dimensionless). A metric that is
        undefined for the data (constant σ for ``spearman``, fewer
        predictions than ENCE bins or a t with ν ≤ 2 for ``ence``, no error above
        the threshold) is None.
    """
    num_bins = check_int("num_bins", num_bins, 2)
    num_bins_ence = check_int("num_bins_ence", num_bins_ence)
    resolution = check_int("resolution", resolution)
    lv = np.asarray(levels, dtype=np.float64).reshape(-1)
    if lv.size == 0 or not np.all((lv > 0) & (lv < 1)):
        raise ValueError(f"levels must lie in (0, 1), got {levels!r}")
    if detection_threshold is None and not 0.0 < detection_quantile < 1.0:
        raise ValueError(f"detection_quantile must lie in (0, 1), got {detection_quantile}")

    dof = check_dof(dof)
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce)
    err = true - pred
    abs_err = np.abs(err)
    z = gaussian_z(err / std, dof)  # with dof: the Gaussian z at the t's CDF level
    sorted_abs_z = np.sort(np.abs(z))

    out: Dict[str, Optional[float]] = {"n": int(err.size)}
    out["mae"] = float(abs_err.mean())
    out["rmse"] = float(np.sqrt(np.mean(err * err)))
    out["sharpness"] = float(np.sqrt(np.mean(std * std)))
    out["nll"] = float(nll_values_t(err, std, dof).mean())
    crps_mean = float(crps_values_t(err, std, dof).mean())
    out["crps"] = crps_mean if math.isfinite(crps_mean) else None
    out["check_score"] = float(check_values(err, std, 0.01, 0.99, resolution, dof).mean())
    out["interval_score"] = float(interval_values(err, std, 0.01, 0.99, resolution, dof).mean())

    expected, observed = proportions_from_sorted(sorted_abs_z, num_bins, "interval")
    out["miscalibration_area"] = area_between(expected, observed)
    out["rms_calibration_error"] = float(np.sqrt(np.mean((expected - observed) ** 2)))
    out["mean_absolute_calibration_error"] = float(np.mean(np.abs(expected - observed)))
    for level, value in zip(lv, coverage_from_sorted(sorted_abs_z, lv)):
        out[coverage_key(level)] = float(value)

    std_order = np.argsort(std, kind="stable")
    try:  # None with fewer predictions than bins, or a t with no finite variance
        out["ence"] = (ence_from_bins(binned_errors(err, std, num_bins_ence, std_order, dof))
                       if err.size >= num_bins_ence else None)
    except UndefinedMetricError:
        out["ence"] = None
    stats = z_stats_from_z(z)
    out["z_mean"], out["z_std"], out["z_rms"] = stats.mean, stats.std, stats.rms

    std_rank = average_ranks(std, std_order)
    try:
        out["spearman"] = spearman_from_ranks(
            average_ranks(abs_err, np.argsort(abs_err)), std_rank
        )
    except UndefinedMetricError:
        out["spearman"] = None
    try:
        det = detection_from(
            abs_err, std, std_rank, detection_threshold, detection_quantile, std_order
        )
        out["auroc"], out["auprc"] = det.auroc, det.auprc
        out["detection_threshold"] = det.threshold
        out["detection_positive_fraction"] = det.positive_fraction
    except UndefinedMetricError:
        out["auroc"] = out["auprc"] = None
        out["detection_threshold"] = out["detection_positive_fraction"] = None
    return out
