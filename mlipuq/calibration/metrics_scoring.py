"""Proper scoring rules for Gaussian (and, with ``dof``, Student-t) predictions.

All functions take ``(y_pred, y_std, y_true, *, reduce="none", ...)`` (see
:mod:`mlipuq.calibration.metrics_common`) and return a Python float,
averaged over all predictions (``reduction="mean"``, the default) or summed
(``reduction="sum"``). Lower is better for all of them.

The check and interval scores are evaluated in closed form per prediction
(a sorted scan over the quantile levels), not by looping over levels, so
they cost O(n log m) for n predictions and m levels.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from mlipuq.calibration.metrics_common import aggregate, check_int, check_reduction, prepare
from mlipuq.predictive import check_dof, crps_values_t, std_quantiles

_LOG_2PI = float(np.log(2.0 * np.pi))


# ------------------------------------------------------------------ kernels
def nll_values(err: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per-prediction Gaussian NLL for ``err = y_true - y_pred``."""
    z = err / std
    return 0.5 * _LOG_2PI + np.log(std) + 0.5 * z * z


def crps_values(err: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per-prediction Gaussian CRPS for ``err = y_true - y_pred`` (unit of y)."""
    return crps_values_t(err, std, None)


def check_values(
    err: np.ndarray, std: np.ndarray, start_q: float, end_q: float, resolution: int,
    dof: Optional[float] = None,
) -> np.ndarray:
    """Per-prediction check (pinball) loss averaged over quantile levels (the
    predictive's quantiles: Gaussian, or Student-t with ``dof``)."""
    q = np.linspace(start_q, end_q, resolution)
    t = std_quantiles(q, dof)  # standardised quantiles, ascending
    z = err / std
    # sum_q (1[t_q >= z] - q) (t_q - z)
    #   = sum_{t_q >= z} t_q - z #{t_q >= z} - sum_q q t_q + z sum_q q
    suffix = np.concatenate([np.cumsum(t[::-1])[::-1], [0.0]])
    k = np.searchsorted(t, z, side="left")
    total = suffix[k] - z * (resolution - k) - float(np.dot(q, t)) + z * float(q.sum())
    return std * total / resolution


def interval_values(
    err: np.ndarray, std: np.ndarray, start_p: float, end_p: float, resolution: int,
    dof: Optional[float] = None,
) -> np.ndarray:
    """Per-prediction interval score averaged over central-interval levels (Gaussian,
    or Student-t intervals with ``dof``)."""
    p = np.linspace(start_p, end_p, resolution)
    upper = std_quantiles(0.5 + p / 2.0, dof)  # ascending in p
    lower = std_quantiles(0.5 - p / 2.0, dof)  # descending in p
    w = 2.0 / (1.0 - p)
    z = err / std

    def excess(x: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        # sum_p w_p (x - bounds_p)_+ for ascending bounds
        cw = np.concatenate([[0.0], np.cumsum(w)])
        cwb = np.concatenate([[0.0], np.cumsum(w * bounds)])
        k = np.searchsorted(bounds, x, side="left")
        return x * cw[k] - cwb[k]

    width = float(np.sum(upper - lower))
    total = width + excess(z, upper) + excess(-z, -lower)
    return std * total / resolution


# ------------------------------------------------------------------ public
def nll_gaussian(
    y_pred, y_std, y_true, *, reduce: str = "none", reduction: str = "mean"
) -> float:
    """Negative log-likelihood of the references under N(y_pred, y_std²).

    .. math:: \\mathrm{NLL} = \\tfrac12\\log 2\\pi + \\log\\sigma
              + \\frac{(y - \\mu)^2}{2\\sigma^2}

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, predicted std (> 0) and reference, one common shape,
        unit of the quantity (eV, eV/Å).
    reduce
        ``"none"`` or ``"norm"`` (per-vector norms, see ``metrics_common``).
    reduction
        ``"mean"`` (default) or ``"sum"`` over predictions.

    Returns
    -------
    float
        NLL in nats. It depends on the unit of y through log σ: values in eV
        and meV differ by log(1000) per prediction.
    """
    check_reduction(reduction)
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce)
    return aggregate(nll_values(true - pred, std), reduction)


def crps_gaussian(
    y_pred, y_std, y_true, *, reduce: str = "none", reduction: str = "mean"
) -> float:
    """Continuous ranked probability score of a Gaussian prediction.

    .. math:: \\mathrm{CRPS} = \\sigma\\left[z(2\\Phi(z) - 1) + 2\\varphi(z)
              - 1/\\sqrt\\pi\\right], \\quad z = (y - \\mu)/\\sigma

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, std (> 0) and reference, unit of the quantity.
    reduce, reduction
        As in :func:`nll_gaussian`.

    Returns
    -------
    float
        CRPS in the unit of the quantity (eV, eV/Å); it reduces to the
        absolute error as σ → 0.
    """
    check_reduction(reduction)
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce)
    return aggregate(crps_values(true - pred, std), reduction)


def check_score(
    y_pred,
    y_std,
    y_true,
    *,
    reduce: str = "none",
    reduction: str = "mean",
    start_q: float = 0.01,
    end_q: float = 0.99,
    resolution: int = 99,
    dof: Optional[float] = None,
) -> float:
    """Check (pinball) score averaged over quantile levels.

    For each level q in ``linspace(start_q, end_q, resolution)`` the
    predicted quantile is :math:`\\mu + \\sigma\\Phi^{-1}(q)` (with ``dof``
    the Student-t's, σ its Gaussian-equivalent std); the score is the
    pinball loss :math:`(\\mathbb 1[y \\le y_q] - q)(y_q - y)` averaged over
    levels.

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, std (> 0) and reference, unit of the quantity.
    reduce, reduction
        As in :func:`nll_gaussian` (``reduction`` acts over predictions; the
        levels are always averaged).
    start_q, end_q, resolution
        Quantile levels scanned, 0 < start_q <= end_q < 1.
    dof
        Student-t degrees of freedom of the predictive (None: Gaussian).

    Returns
    -------
    float
        Check score in the unit of the quantity.
    """
    check_reduction(reduction)
    resolution = check_int("resolution", resolution)
    if not 0.0 < start_q <= end_q < 1.0:
        raise ValueError(f"need 0 < start_q <= end_q < 1, got {start_q}, {end_q}")
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce)
    return aggregate(check_values(true - pred, std, start_q, end_q, resolution,
                                  check_dof(dof)), reduction)


def interval_score(
    y_pred,
    y_std,
    y_true,
    *,
    reduce: str = "none",
    reduction: str = "mean",
    start_p: float = 0.01,
    end_p: float = 0.99,
    resolution: int = 99,
    dof: Optional[float] = None,
) -> float:
    """Interval score of central prediction intervals, averaged over levels.

    For a central interval [l, u] of nominal coverage p the score is
    :math:`(u - l) + \\frac{2}{1-p}(l - y)_+ + \\frac{2}{1-p}(y - u)_+`
    (Gneiting & Raftery 2007), averaged over p in
    ``linspace(start_p, end_p, resolution)``; the intervals are the Student-t's
    with ``dof``.

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, std (> 0) and reference, unit of the quantity.
    reduce, reduction
        As in :func:`nll_gaussian`.
    start_p, end_p, resolution
        Coverage levels scanned, 0 < start_p <= end_p < 1.
    dof
        Student-t degrees of freedom of the predictive (None: Gaussian).

    Returns
    -------
    float
        Interval score in the unit of the quantity.
    """
    check_reduction(reduction)
    resolution = check_int("resolution", resolution)
    if not 0.0 < start_p <= end_p < 1.0:
        raise ValueError(f"need 0 < start_p <= end_p < 1, got {start_p}, {end_p}")
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce)
    return aggregate(interval_values(true - pred, std, start_p, end_p, resolution,
                                     check_dof(dof)), reduction)
