"""Calibration plots (matplotlib, imported lazily).

Every plot function takes ``(y_pred, y_std, y_true, *, ax=None, ...)`` in the
metrics' argument order and returns the ``matplotlib.axes.Axes`` it drew on,
so plots compose into any figure. ``quantity`` and ``unit`` label the axes
(e.g. ``quantity="Force component", unit="eV/Å"``).

==========================  ====================================================
:func:`calibration_curve`   observed vs expected coverage, miscalibration area shaded
:func:`rmse_vs_rmv`         error-based calibration: RMSE vs RMV in σ bins, identity line
:func:`parity`              predicted vs reference with ±σ error bars
:func:`error_vs_std`        |error| vs σ (log-log) with the band a calibrated σ implies
:func:`z_histogram`         histogram of z = (ref − pred)/σ with the N(0, 1) density
:func:`summary_figure`      all of them for energies and forces of a report
==========================  ====================================================

Scatter-type plots draw at most ``max_points`` randomly chosen points (fixed
seed); the statistics they print always use all points.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy.special import ndtri

from mlipuq.calibration.metrics_calibration import (
    area_between,
    binned_errors,
    ence_from_bins,
    proportions_from_sorted,
)
from mlipuq.calibration.metrics_common import prepare

_PLOT_TITLES = {
    "energy": ("Energy", "eV"),
    "energy_per_atom": ("Energy per atom", "eV/atom"),
    "forces": ("Force component", "eV/Å"),
    "forces_norm": ("Force norm", "eV/Å"),
}


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5.0, 4.5))
    return ax


def _subsample(n: int, max_points: Optional[int], seed: int = 0) -> np.ndarray:
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_points), replace=False))


def _label(quantity: str, unit: str, what: str = "") -> str:
    text = " ".join(s for s in (what, quantity) if s).strip()
    return f"{text} ({unit})" if unit else text


def _tidy_log_axes(ax) -> None:
    """Readable log axes: ticks at 1, 2, 5 × 10^k as plain numbers over a few decades;
    no minor tick labels (they overlap)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log":
            continue
        if hi / lo < 1e3:
            span = hi / lo
            subs = (1, 2, 5) if span > 6 else (1, 2, 3, 5) if span > 2 else tuple(range(1, 10))
            axis.set_major_locator(LogLocator(base=10.0, subs=subs))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def _title(ax, quantity: str, what: str) -> None:
    ax.set_title(f"{quantity}: {what}" if quantity else what)


def _textbox(ax, text: str, loc: str = "upper left") -> None:
    x, ha = (0.03, "left") if "left" in loc else (0.97, "right")
    y, va = (0.97, "top") if "upper" in loc else (0.03, "bottom")
    ax.text(
        x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=9,
        bbox=dict(boxstyle="round", facecolor="white", alpha=0.85, edgecolor="0.7"),
    )


# ------------------------------------------------------------------ plots
def calibration_curve(
    y_pred,
    y_std,
    y_true,
    *,
    ax=None,
    reduce: str = "none",
    num_bins: int = 100,
    quantity: str = "",
    label: Optional[str] = None,
):
    """Observed vs expected coverage of central intervals.

    The area between the curve and the diagonal (the miscalibration area) is
    shaded. Below the diagonal the intervals are too narrow (over-confident
    σ); above it they are too wide (under-confident).

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, std (> 0) and reference (unit of the quantity).
    ax
        Axes to draw on; a new figure if None.
    reduce
        ``"none"`` or ``"norm"`` (see :mod:`mlipuq.calibration.metrics`).
    num_bins
        Number of expected coverages in [0, 1].
    quantity
        Name for the title, e.g. ``"Energy"``.
    label
        Legend label of the curve (default ``"model"``).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce)
    expected, observed = proportions_from_sorted(
        np.sort(np.abs((true - pred) / std)), int(num_bins), "interval"
    )
    area = area_between(expected, observed)
    ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="ideal")
    ax.fill_between(expected, expected, observed, color="C0", alpha=0.25,
                    label=f"miscal. area = {area:.3f}")
    ax.plot(expected, observed, color="C0", lw=2, label=label or "model")
    ax.text(0.72, 0.28, "over-confident", transform=ax.transAxes, color="0.45",
            fontsize=8, ha="center", va="center", rotation=45)
    ax.text(0.3, 0.7, "under-confident", transform=ax.transAxes, color="0.45",
            fontsize=8, ha="center", va="center", rotation=45)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("Expected coverage of central interval")
    ax.set_ylabel("Observed coverage")
    _title(ax, quantity, "calibration curve")
    ax.legend(loc="upper left", fontsize=8)
    return ax


def rmse_vs_rmv(
    y_pred,
    y_std,
    y_true,
    *,
    ax=None,
    reduce: str = "none",
    num_bins: int = 10,
    quantity: str = "",
    unit: str = "",
):
    """Error-based calibration: RMSE vs RMV in equal-count σ bins.

    Each point is one bin of predictions with similar σ; calibrated σ puts
    every point on the identity line. Log-log axes.

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, std (> 0) and reference (unit of the quantity).
    ax, reduce, quantity
        As in :func:`calibration_curve`.
    num_bins
        Number of equal-count σ bins (at most the number of predictions).
    unit
        Unit of the quantity for the axis labels (e.g. ``"eV/Å"``).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce)
    bins = binned_errors(true - pred, std, min(int(num_bins), std.size))
    rmse = np.maximum(bins.rmse, np.finfo(float).tiny)
    lo = min(bins.rmv.min(), rmse.min()) / 1.5
    hi = max(bins.rmv.max(), rmse.max()) * 1.5
    ax.plot([lo, hi], [lo, hi], ls="--", color="0.4", lw=1, label="ideal (RMSE = RMV)")
    ax.plot(bins.rmv, rmse, "o-", color="C1", ms=6,
            label=f"{bins.rmv.size} equal-count σ bins\n(ENCE = {ence_from_bins(bins):.3g})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    _tidy_log_axes(ax)
    ax.set_xlabel(_label("", unit, "RMV = √⟨σ²⟩"))
    ax.set_ylabel(_label("", unit, "RMSE"))
    _title(ax, quantity, "RMSE vs RMV")
    ax.legend(loc="best", fontsize=8)
    return ax


def parity(
    y_pred,
    y_std,
    y_true,
    *,
    ax=None,
    reduce: str = "none",
    quantity: str = "",
    unit: str = "",
    center: bool = False,
    max_points: Optional[int] = 2000,
):
    """Predicted vs reference values with ±1σ error bars.

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, std (>= 0) and reference (unit of the quantity).
    ax, reduce, quantity, unit
        As in :func:`rmse_vs_rmv`.
    center
        Subtract the mean reference value from both axes (useful for total
        energies, which are large and nearly constant).
    max_points
        Most points drawn (random subset; None draws all).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce, positive_std=False)
    shift = float(true.mean()) if center else 0.0
    idx = _subsample(pred.size, max_points)
    x, y = true[idx] - shift, pred[idx] - shift
    ax.errorbar(x, y, yerr=std[idx], fmt="o", ms=2.5, color="C0", ecolor="C0",
                elinewidth=0.6, alpha=0.5, label="prediction ± 1σ", rasterized=True)
    lo = min(x.min(), (y - std[idx]).min())
    hi = max(x.max(), (y + std[idx]).max())
    pad = 0.05 * (hi - lo if hi > lo else 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", color="0.3", lw=1, label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    suffix = " − mean ref." if center else ""
    ax.set_xlabel(_label(quantity + suffix, unit, "Reference"))
    ax.set_ylabel(_label(quantity + suffix, unit, "Predicted"))
    _title(ax, quantity, "parity")
    ax.legend(loc="upper left", fontsize=8)
    err = pred - true
    text = f"MAE = {np.mean(np.abs(err)):.3g} {unit}\nRMSE = {np.sqrt(np.mean(err**2)):.3g} {unit}"
    if idx.size < pred.size:
        text += f"\n({idx.size} of {pred.size} shown)"
    _textbox(ax, text, loc="lower right")
    return ax


def error_vs_std(
    y_pred,
    y_std,
    y_true,
    *,
    ax=None,
    reduce: str = "none",
    quantity: str = "",
    unit: str = "",
    max_points: Optional[int] = 20000,
):
    """|error| vs σ on log-log axes with the band a calibrated σ implies.

    For a Gaussian error with std σ, |error| has median 0.674σ and its 5 %
    and 95 % quantiles are 0.063σ and 1.96σ; the band shows this 90 % range,
    so about 90 % of the points of a calibrated model fall inside it.

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, std (> 0) and reference (unit of the quantity).
    ax, reduce, quantity, unit
        As in :func:`rmse_vs_rmv`.
    max_points
        Most points drawn (random subset; None draws all).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce)
    abs_err = np.abs(true - pred)
    q05, q50, q95 = ndtri(0.5 + np.array([0.05, 0.5, 0.95]) / 2.0)
    inside = float(np.mean((abs_err >= q05 * std) & (abs_err <= q95 * std)))
    idx = _subsample(std.size, max_points)
    positive = abs_err[abs_err > 0]
    floor = positive.min() / 2.0 if positive.size else std.min() * 1e-3
    y = np.maximum(abs_err[idx], floor)
    ax.scatter(std[idx], y, s=4, alpha=0.35, color="C0", lw=0, rasterized=True, label="predictions")
    s = np.geomspace(std.min() / 1.5, std.max() * 1.5, 100)
    ax.fill_between(s, q05 * s, q95 * s, color="C2", alpha=0.2, label="calibrated 90 % band")
    ax.plot(s, q50 * s, color="C2", lw=1.5, label="calibrated median (0.67σ)")
    ax.plot(s, s, color="0.4", ls="--", lw=1, label="|error| = σ")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(s[0], s[-1])
    ax.set_ylim(min(y.min(), q05 * s[0]) / 1.5, max(y.max(), q95 * s[-1]) * 1.5)
    _tidy_log_axes(ax)
    ax.set_xlabel(_label("", unit, "Predicted σ"))
    ax.set_ylabel(_label("", unit, "|error|"))
    _title(ax, quantity, "|error| vs σ")
    title = f"inside band: {100 * inside:.1f} % (ideal 90 %)"
    if idx.size < std.size:
        title += f"\n{idx.size} of {std.size} points shown"
    ax.legend(loc="best", fontsize=8, title=title, title_fontsize=8)
    return ax


def z_histogram(
    y_pred,
    y_std,
    y_true,
    *,
    ax=None,
    reduce: str = "none",
    quantity: str = "",
    bins: int = 60,
    z_max: float = 5.0,
):
    """Histogram of z = (reference − predicted)/σ with the N(0, 1) density.

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, std (> 0) and reference (unit of the quantity).
    ax, reduce, quantity
        As in :func:`calibration_curve`.
    bins
        Number of histogram bins on [-z_max, z_max].
    z_max
        Half-width of the plotted range; the fraction of |z| beyond it is
        printed.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce)
    z = (true - pred) / std
    ax.hist(np.clip(z, -z_max, z_max), bins=int(bins), range=(-z_max, z_max), density=True,
            color="C0", alpha=0.6, label="z (clipped to range)")
    grid = np.linspace(-z_max, z_max, 400)
    ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), color="k", lw=1.5,
            label="N(0, 1)")
    ax.set_xlim(-z_max, z_max)
    ax.set_xlabel("z = (reference − predicted) / σ")
    ax.set_ylabel("Probability density")
    _title(ax, quantity, "z-scores")
    ax.legend(loc="upper left", fontsize=8)
    outside = float(np.mean(np.abs(z) > z_max))
    _textbox(
        ax,
        f"mean = {z.mean():.2f}\nstd = {z.std():.2f} (ideal 1)\n"
        f"|z| > {z_max:g}: {100 * outside:.1f} %",
        loc="upper right",
    )
    return ax


def summary_figure(
    report,
    *,
    targets: Sequence[str] = ("energy", "forces"),
    max_points: Optional[int] = 20000,
):
    """All plots for energies and forces of a :class:`CalibrationReport`.

    One row per target, columns: calibration curve, RMSE vs RMV, parity,
    |error| vs σ, z histogram.

    Parameters
    ----------
    report : CalibrationReport
        From :func:`mlipuq.calibration.evaluate` (with its arrays kept).
    targets
        Rows to draw, from ``energy``, ``energy_per_atom``, ``forces``,
        ``forces_norm``.
    max_points
        Most points drawn in the scatter plots.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    if report.data is None:
        raise ValueError(
            "the report holds no prediction arrays (read from JSON, or evaluate(..., "
            "keep_data=False)); re-run evaluate to plot"
        )
    for t in targets:
        if t not in report.data:
            raise ValueError(f"unknown target {t!r}; the report has {sorted(report.data)}")
    num_bins_ence = int(report.settings.get("num_bins_ence", 10))
    fig, axes = plt.subplots(len(targets), 5, figsize=(26, 5.4 * len(targets)), squeeze=False)
    for row, target in zip(axes, targets):
        pred, std, true = report.data[target]
        quantity, unit = _PLOT_TITLES.get(target, (target, report.units.get(target, "")))
        calibration_curve(pred, std, true, ax=row[0], quantity=quantity)
        rmse_vs_rmv(pred, std, true, ax=row[1], quantity=quantity, unit=unit,
                    num_bins=num_bins_ence)
        parity(pred, std, true, ax=row[2], quantity=quantity, unit=unit,
               center=target.startswith("energy"), max_points=min(max_points or 2000, 2000))
        error_vs_std(pred, std, true, ax=row[3], quantity=quantity, unit=unit,
                     max_points=max_points)
        z_histogram(pred, std, true, ax=row[4], quantity=quantity)
    fig.suptitle(
        f"Calibration summary: {report.n_structures} structures, {report.n_atoms} atoms",
        fontsize=14,
    )
    # fixed margins: as readable as tight_layout here, and several times faster
    rows = len(targets)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.1 / rows, top=1 - 0.16 / rows,
                        wspace=0.32, hspace=0.3)
    return fig
