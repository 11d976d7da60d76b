"""Calibration plots (matplotlib, imported lazily).

Every plot function takes ``(y_pred, y_std, y_true, *, ax=None, ...)`` in the
metrics' argument order and returns the ``matplotlib.axes.Axes`` it drew on,
so plots compose into any figure. ``quantity`` and ``unit`` label the axes
(e.g. ``quantity="Force component", unit="eV/Å"``).

===============================  ================================================
:func:`calibration_curve`        observed vs expected coverage, miscalibration area shaded
:func:`rmse_vs_rmv`              error-based calibration: RMSE vs RMV in σ bins, identity line
:func:`parity`                   predicted vs reference (±σ bars, markers or a density)
:func:`error_vs_std`             |error| vs σ (log-log) with the band a calibrated σ implies
:func:`z_histogram`              histogram of z = (ref − pred)/σ with the N(0, 1) density
:func:`compare_calibration`      calibration curves of several predictions, overlaid
:func:`compare_rmse_vs_rmv`      RMSE vs RMV of several predictions, overlaid
:func:`summary_figure`           all five single plots for energies and forces of a report
===============================  ================================================

**How many points are drawn (one rule for every panel).** A point panel
(:func:`parity`, :func:`error_vs_std`) with at most ``max_points`` points draws
every point; with more it draws a hexagonal-bin density of *all* of them
(``density=None``, the default; log colour scale of counts). Only with
``density=False`` is a larger set cut down, to the subset
:func:`subsample` picks: the same ``max_points`` indices (seed 0) for every
panel of a target, whatever the panel. ``parity`` draws ±1σ bars only up to
``error_bars`` points (default 200; more bars make a solid band). Statistics
printed in the panels always use all points.

Log axes get ticks at 1, 2, 5 × 10^k (or denser, or every few decades) so
that at least three are labelled, as plain numbers (``0.05``) unless a label
would need an exponent (then all of that axis are powers of ten).
:func:`style` is the rc context of the figures ``mlipuq evaluate`` writes:
single-column width (:data:`COLUMN_WIDTH` inches) with no text smaller than
:data:`MIN_FONT_SIZE` points; :func:`panel_figure` makes such a figure.

Module layout: the single plots, :func:`draw` and :func:`summary_figure` are
here; the comparison plots in :mod:`mlipuq.calibration.plots_compare`; style,
point selection, log ticks and the other shared helpers in
:mod:`mlipuq.calibration.plots_common`. Every name is importable from here.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy.special import ndtri

from mlipuq.calibration.metrics_calibration import area_between
from mlipuq.calibration.metrics_common import prepare
from mlipuq.calibration.plots_common import (  # noqa: F401  (re-exported: their old home)
    _LOG_SUBS,
    COLUMN_WIDTH,
    MAX_POINTS,
    MIN_FONT_SIZE,
    STYLE,
    _axes,
    _coverage_axes,
    _curve,
    _density,
    _label,
    _text_size,
    _textbox,
    _tick_label,
    _tidy_log_axes,
    _title,
    draws_density,
    log_ticks,
    panel_figure,
    style,
    subsample,
)
from mlipuq.calibration.plots_compare import (  # noqa: F401  (re-exported)
    compare_calibration,
    compare_rmse_vs_rmv,
)

_PLOT_TITLES = {
    "energy": ("Energy", "eV"),
    "energy_per_atom": ("Energy per atom", "eV/atom"),
    "forces": ("Force component", "eV/Å"),
    "forces_norm": ("Force norm", "eV/Å"),
}


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
    dof: Optional[float] = None,
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
    dof
        Student-t degrees of freedom of the predictive (None: Gaussian).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    expected, observed = _curve(y_pred, y_std, y_true, reduce, num_bins, dof)
    area = area_between(expected, observed)
    ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="ideal")
    ax.fill_between(expected, expected, observed, color="C0", alpha=0.25,
                    label=f"miscal. area = {area:.3f}")
    ax.plot(expected, observed, color="C0", lw=2, label=label or "model")
    _coverage_axes(ax, quantity, "calibration curve")
    ax.legend(loc="upper left")
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
    dof: Optional[float] = None,
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
    dof
        Student-t degrees of freedom of the predictive: the RMV is the t's
        variance (ν > 2; otherwise σ is read as a Gaussian σ, said in the legend).

    Returns
    -------
    matplotlib.axes.Axes
    """
    return compare_rmse_vs_rmv({"": (y_pred, y_std, y_true, dof)}, ax=ax, reduce=reduce,
                               num_bins=num_bins, quantity=quantity, unit=unit)


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
    max_points: Optional[int] = MAX_POINTS,
    density: Optional[bool] = None,
    error_bars: int = 200,
):
    """Predicted vs reference values: markers (with ±1σ bars up to
    ``error_bars`` points) or, for more than ``max_points`` points, a density.

    Parameters
    ----------
    y_pred, y_std, y_true
        Predicted mean, std (>= 0) and reference (unit of the quantity).
    ax, reduce, quantity, unit
        As in :func:`rmse_vs_rmv`.
    center
        Subtract the mean reference value from both axes (useful for total
        energies, which are large and nearly constant).
    max_points, density
        See the module docs: a density of all points above ``max_points``
        unless ``density=False`` (then the :func:`subsample` subset).
    error_bars
        Most points drawn with ±1σ bars (0: none).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce, positive_std=False)
    shift = float(true.mean()) if center else 0.0
    dense = draws_density(pred.size, max_points, density)
    idx = np.arange(pred.size) if dense else subsample(pred.size, max_points)
    x, y = true[idx] - shift, pred[idx] - shift
    bars = not dense and idx.size <= error_bars
    lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
    if bars:
        lo, hi = min(lo, (y - std[idx]).min()), max(hi, (y + std[idx]).max())
    pad = 0.05 * (hi - lo if hi > lo else 1.0)
    if dense:
        _density(ax, x, y)
    elif bars:
        ax.errorbar(x, y, yerr=std[idx], fmt="o", ms=2.5, color="C0", ecolor="C0",
                    elinewidth=0.6, alpha=0.6, label="prediction ± 1σ", rasterized=True)
    else:
        ax.scatter(x, y, s=4, alpha=0.5, color="C0", lw=0, rasterized=True,
                   label="prediction")
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", color="0.3", lw=1, label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    suffix = " − mean ref." if center else ""
    ax.set_xlabel(_label(quantity + suffix, unit, "Reference"))
    ax.set_ylabel(_label(quantity + suffix, unit, "Predicted"))
    _title(ax, quantity, "parity")
    ax.legend(loc="upper left")
    err = pred - true
    text = f"MAE = {np.mean(np.abs(err)):.3g} {unit}\nRMSE = {np.sqrt(np.mean(err**2)):.3g} {unit}"
    if dense:
        text += f"\ndensity of all {pred.size}"
    elif idx.size < pred.size:
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
    max_points: Optional[int] = MAX_POINTS,
    density: Optional[bool] = None,
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
    max_points, density
        As in :func:`parity`.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    pred, std, true = prepare(y_pred, y_std, y_true, reduce=reduce)
    abs_err = np.abs(true - pred)
    q05, q50, q95 = ndtri(0.5 + np.array([0.05, 0.5, 0.95]) / 2.0)
    inside = float(np.mean((abs_err >= q05 * std) & (abs_err <= q95 * std)))
    dense = draws_density(std.size, max_points, density)
    idx = np.arange(std.size) if dense else subsample(std.size, max_points)
    positive = abs_err[abs_err > 0]
    floor = positive.min() / 2.0 if positive.size else std.min() * 1e-3
    y = np.maximum(abs_err[idx], floor)
    if dense:
        _density(ax, std[idx], y, log_xy=True)
    else:
        ax.scatter(std[idx], y, s=4, alpha=0.4, color="C0", lw=0, rasterized=True,
                   label="predictions")
    s = np.geomspace(std.min() / 1.5, std.max() * 1.5, 100)
    ax.fill_between(s, q05 * s, q95 * s, color="C2", alpha=0.2, label="calibrated 90 % band")
    ax.plot(s, q50 * s, color="C2", lw=1.5, label="calibrated median")
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
    if dense:
        title += f"\ndensity of all {std.size}"
    elif idx.size < std.size:
        title += f"\n{idx.size} of {std.size} points shown"
    ax.legend(loc="lower right", title=title)
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
    ax.legend(loc="upper left")
    outside = float(np.mean(np.abs(z) > z_max))
    _textbox(
        ax,
        f"mean = {z.mean():.2f}\nstd = {z.std():.2f} (ideal 1)\n"
        f"|z| > {z_max:g}: {100 * outside:.1f} %",
        loc="upper right",
    )
    return ax


def draw(name: str, pred, std, true, *, ax, target: str = "forces", unit: str = "",
         num_bins_ence: int = 10, max_points: Optional[int] = MAX_POINTS,
         dof: Optional[float] = None):
    """Draw plot ``name`` (a function of this module) for ``target`` with the
    arguments :func:`summary_figure` and ``mlipuq evaluate`` use (``dof``: the
    Student-t predictive's, for the calibration curve and the RMV)."""
    quantity, default_unit = _PLOT_TITLES.get(target, (target, unit))
    unit = unit or default_unit
    kwargs = {"ax": ax, "quantity": quantity}
    if name in ("rmse_vs_rmv", "parity", "error_vs_std"):
        kwargs["unit"] = unit
    if name == "rmse_vs_rmv":
        kwargs["num_bins"] = num_bins_ence
    if name == "parity":
        kwargs["center"] = target.startswith("energy")
    if name in ("parity", "error_vs_std"):
        kwargs["max_points"] = max_points
    if name in ("calibration_curve", "rmse_vs_rmv"):
        kwargs["dof"] = dof
    return globals()[name](pred, std, true, **kwargs)


def report_dof(report, target: str) -> Optional[float]:
    """The Student-t degrees of freedom a report recorded for ``target`` (None: Gaussian)."""
    return (report.settings.get("dof") or {}).get(target)


#: The single plots :func:`summary_figure` draws per target, left to right.
PLOTS = ("calibration_curve", "rmse_vs_rmv", "parity", "error_vs_std", "z_histogram")


def summary_figure(
    report,
    *,
    targets: Sequence[str] = ("energy", "forces"),
    max_points: Optional[int] = MAX_POINTS,
    title: Optional[str] = None,
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
        Most points drawn one by one in the point panels (parity, |error| vs σ);
        above it those panels draw a density of all points (module docs).
    title
        Figure title (default: the size of the set; ``mlipuq evaluate`` adds the
        wrapper and data names).

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
    with style():
        fig, axes = plt.subplots(len(targets), len(PLOTS), squeeze=False, layout="constrained",
                                 figsize=(COLUMN_WIDTH * len(PLOTS), 3.6 * len(targets)))
        for row, target in zip(axes, targets):
            pred, std, true = report.data[target]
            for ax, name in zip(row, PLOTS):
                draw(name, pred, std, true, ax=ax, target=target,
                     unit=report.units.get(target, ""), num_bins_ence=num_bins_ence,
                     max_points=max_points, dof=report_dof(report, target))
        size = f"{report.n_structures} structures, {report.n_atoms} atoms"
        fig.suptitle(f"{title}: {size}" if title else f"Calibration summary: {size}")
    return fig
