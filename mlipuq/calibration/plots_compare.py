"""Comparison plots: several predictions overlaid on one axes.

Responsibility: :func:`compare_calibration` (calibration curves) and
:func:`compare_rmse_vs_rmv` (error-based calibration), each drawing a mapping
``{label: (y_pred, y_std, y_true)}`` in order (colours C0, C1, ...). Both are
re-exported by :mod:`mlipuq.calibration.plots`, whose conventions they follow.
"""

from __future__ import annotations

from typing import Mapping, Tuple

import numpy as np

from mlipuq.calibration.metrics_calibration import (
    area_between,
    binned_errors,
    ence_from_bins,
)
from mlipuq.calibration.metrics_common import UndefinedMetricError, prepare
from mlipuq.calibration.plots_common import (
    _axes,
    _coverage_axes,
    _curve,
    _label,
    _tidy_log_axes,
    _title,
)
from mlipuq.predictive import check_dof


def compare_calibration(
    curves: Mapping[str, Tuple],
    *,
    ax=None,
    reduce: str = "none",
    num_bins: int = 100,
    quantity: str = "",
):
    """Calibration curves of several predictions on one axes.

    Parameters
    ----------
    curves
        ``{label: (y_pred, y_std, y_true)}`` or ``(y_pred, y_std, y_true, dof)``
        (a Student-t predictive), drawn in order (colours C0, C1, ...); the
        legend gives each miscalibration area.
    ax, reduce, num_bins, quantity
        As in :func:`calibration_curve`.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="ideal")
    for k, (label, curve) in enumerate(curves.items()):
        pred, std, true, dof = (*curve, None)[:4]
        expected, observed = _curve(pred, std, true, reduce, num_bins, dof)
        area = area_between(expected, observed)
        ax.fill_between(expected, expected, observed, color=f"C{k}", alpha=0.12)
        ax.plot(expected, observed, color=f"C{k}", lw=1.8, label=f"{label} (area {area:.3f})")
    _coverage_axes(ax, quantity, "calibration curves")
    ax.legend(loc="upper left")
    return ax


def compare_rmse_vs_rmv(
    curves: Mapping[str, Tuple],
    *,
    ax=None,
    reduce: str = "none",
    num_bins: int = 10,
    quantity: str = "",
    unit: str = "",
):
    """RMSE vs RMV in equal-count σ bins of several predictions on one axes
    (log-log, identity line). ``curves`` as in :func:`compare_calibration`;
    other arguments as in :func:`rmse_vs_rmv`. A curve's dof (4th entry) makes its
    RMV the Student-t's variance; a t with ν ≤ 2 has none, and its std is then read
    as a Gaussian σ (said in the legend)."""
    ax = _axes(ax)
    drawn = []
    for label, curve in curves.items():
        pred, std, true, dof = (*curve, None)[:4]
        pred, std, true = prepare(pred, std, true, reduce=reduce)
        n_bins, note, dof = min(int(num_bins), std.size), "", check_dof(dof)
        try:  # (norms: the variance of a norm is the sum of its components', same factor)
            bins = binned_errors(true - pred, std, n_bins, dof=dof)
        except UndefinedMetricError:
            bins, note = binned_errors(true - pred, std, n_bins), f", σ as Gaussian: ν = {dof:.2g}"
        drawn.append((label, bins.rmv, np.maximum(bins.rmse, np.finfo(float).tiny),
                      f"{ence_from_bins(bins):.3g}{note}"))
    lo = min(min(rmv.min(), rmse.min()) for _, rmv, rmse, _ in drawn) / 1.5
    hi = max(max(rmv.max(), rmse.max()) for _, rmv, rmse, _ in drawn) * 1.5
    ax.plot([lo, hi], [lo, hi], ls="--", color="0.4", lw=1, label="ideal (RMSE = RMV)")
    for k, (label, rmv, rmse, ence) in enumerate(drawn):
        text = (f"{label} (ENCE = {ence})" if label else
                f"{rmv.size} equal-count σ bins\n(ENCE = {ence})")
        ax.plot(rmv, rmse, "o-", color=f"C{k + 1}" if not label else f"C{k}", ms=4, label=text)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    _tidy_log_axes(ax)
    ax.set_xlabel(_label("", unit, "RMV = √⟨σ²⟩"))
    ax.set_ylabel(_label("", unit, "RMSE"))
    _title(ax, quantity, "RMSE vs RMV")
    ax.legend(loc="upper left")
    return ax
