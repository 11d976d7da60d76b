"""Shared pieces of the calibration plots: figure style, point selection, axes helpers.

Responsibility: what every plot of :mod:`mlipuq.calibration.plots` and
:mod:`mlipuq.calibration.plots_compare` draws with: the figure size and
style of ``mlipuq evaluate`` (:data:`COLUMN_WIDTH`, :data:`MIN_FONT_SIZE`,
:func:`style`, :func:`panel_figure`), which points a point panel draws
(:func:`subsample`, :func:`draws_density`, the hexbin density), log-axis
ticks and labels (:func:`log_ticks`), titles, labels and text boxes, and the
coverage curve with its axes (shared by the single and the overlaid
calibration curves). matplotlib is imported lazily, inside the functions.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from mlipuq.calibration.metrics_calibration import calibration_curve

#: Width (inches) of one journal column; the figures ``mlipuq evaluate`` writes.
COLUMN_WIDTH = 3.3
#: Smallest font size (points) in those figures, at their true size.
MIN_FONT_SIZE = 7.0
#: Default most points drawn one by one in a point panel (more: a density).
MAX_POINTS = 2000
#: rc settings of :func:`style`: sizes in points, legible at :data:`COLUMN_WIDTH`.
STYLE = {
    "font.size": 8.5,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8.0,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "legend.fontsize": 7.0,
    "legend.title_fontsize": 7.0,
    "figure.titlesize": 8.5,
    "axes.linewidth": 0.8,
    "lines.linewidth": 1.3,
}


def style():
    """``matplotlib.rc_context`` with :data:`STYLE` (use as ``with style(): ...``)."""
    import matplotlib

    return matplotlib.rc_context(STYLE)


def panel_figure(height: Optional[float] = None):
    """``(fig, ax)``: one panel :data:`COLUMN_WIDTH` inches wide, constrained layout.
    Draw inside ``with style():`` for fonts sized for that width."""
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(COLUMN_WIDTH, height or COLUMN_WIDTH + 0.2),
                        layout="constrained")


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5.0, 4.5))
    return ax


def _text_size() -> float:
    import matplotlib
    from matplotlib.font_manager import FontProperties

    return FontProperties(size=matplotlib.rcParams["legend.fontsize"]).get_size_in_points()


def subsample(n: int, max_points: Optional[int], seed: int = 0) -> np.ndarray:
    """The points a panel draws one by one: all ``n`` indices if ``n <= max_points``
    (or ``max_points`` is None), else ``max_points`` distinct indices drawn with
    ``numpy.random.default_rng(seed)``, sorted. The same ``(n, max_points)``
    gives the same subset in every panel."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_points), replace=False))


def draws_density(n: int, max_points: Optional[int], density: Optional[bool] = None) -> bool:
    """Whether a point panel of ``n`` points draws a density (see the module docs)."""
    if density is not None:
        return bool(density)
    return max_points is not None and n > max_points


def _label(quantity: str, unit: str, what: str = "") -> str:
    text = " ".join(s for s in (what, quantity) if s).strip()
    return f"{text} ({unit})" if unit else text


def _tick_label(value: float, _pos=None, sci: Optional[bool] = None) -> str:
    """``0.05``, ``2000``; ``$2\\times10^{-5}$`` where a plain number would need
    an exponent (``sci=None``), always (``True``) or never (``False``)."""
    if value <= 0:
        return ""
    plain = f"{value:g}"
    if sci is False or (sci is None and "e" not in plain):
        return plain
    exponent = int(np.floor(np.log10(value) + 1e-9))
    mantissa = round(value / 10.0**exponent, 6)
    if abs(mantissa - 1.0) < 1e-6:
        return f"$10^{{{exponent}}}$"
    return f"${mantissa:g}\\times10^{{{exponent}}}$"


_LOG_SUBS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0), tuple(float(s) for s in range(1, 10)))


def log_ticks(lo: float, hi: float, min_ticks: int = 3, max_ticks: int = 8) -> np.ndarray:
    """Major tick values in ``[lo, hi]`` for a log axis: decades, or 1-2-5 steps,
    or finer, the sparsest of these giving at least ``min_ticks`` (round linear
    steps if none does); for spans of more than ``max_ticks`` decades, every few
    decades."""
    lo, hi = float(min(lo, hi)), float(max(lo, hi))
    first, last = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    step = max(1, int(np.ceil((last - first + 1) / max_ticks)))
    inside = lambda v: v[(v >= lo * (1 - 1e-9)) & (v <= hi * (1 + 1e-9))]  # noqa: E731
    if step > 1:
        return inside(10.0 ** np.arange(first - first % step, last + 1, step))
    ticks = np.array([])
    for subs in _LOG_SUBS:
        ticks = inside(np.array([s * 10.0**k for k in range(first, last + 1) for s in subs]))
        if ticks.size >= min_ticks:
            return ticks
    from matplotlib.ticker import MaxNLocator  # less than a factor ~3: linear steps

    return inside(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi))


def _tidy_log_axes(ax) -> None:
    """Readable log axes: :func:`log_ticks` as labelled major ticks, unlabelled
    minor ticks. Labels are plain numbers (``0.05``) unless one of the axis
    would need an exponent; then all are written as powers of ten."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log":
            continue
        ticks = log_ticks(lo, hi)
        sci = any("e" in f"{v:g}" for v in ticks)
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(FuncFormatter(lambda v, pos, sci=sci: _tick_label(v, pos, sci)))
        axis.set_minor_locator(LogLocator(base=10.0, subs=tuple(range(2, 10)), numticks=100))
        axis.set_minor_formatter(NullFormatter())


def _title(ax, quantity: str, what: str) -> None:
    ax.set_title(f"{quantity}: {what}" if quantity else what)


def _textbox(ax, text: str, loc: str = "upper left") -> None:
    x, ha = (0.03, "left") if "left" in loc else (0.97, "right")
    y, va = (0.97, "top") if "upper" in loc else (0.03, "bottom")
    ax.text(
        x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=_text_size(),
        bbox=dict(boxstyle="round", facecolor="white", alpha=0.85, edgecolor="0.7"),
    )


def _density(ax, x, y, *, log_xy: bool = False, gridsize: int = 45):
    """Hexbin of all points, log colour scale of counts, with a colour bar."""
    kwargs = {"xscale": "log", "yscale": "log"} if log_xy else {}
    hb = ax.hexbin(x, y, gridsize=gridsize, bins="log", mincnt=1, cmap="viridis",
                   linewidths=0.0, rasterized=True, **kwargs)
    bar = ax.figure.colorbar(hb, ax=ax, shrink=0.8, pad=0.02)
    bar.set_label("points per bin")
    bar.ax.tick_params(labelsize=_text_size())
    _tidy_log_axes(bar.ax)
    return hb


def _curve(y_pred, y_std, y_true, reduce, num_bins, dof=None):
    """(expected, observed) coverages of central intervals at ``num_bins`` levels
    (of the Student-t predictive with ``dof``): :func:`metrics_calibration.calibration_curve`."""
    return calibration_curve(y_pred, y_std, y_true, reduce=reduce, num_bins=int(num_bins),
                             prop_type="interval", dof=dof)


def _coverage_axes(ax, quantity: str, what: str) -> None:
    """Unit square axes of a calibration curve, its labels and confidence hints."""
    size = _text_size()
    ax.text(0.72, 0.28, "over-confident", transform=ax.transAxes, color="0.45",
            fontsize=size, ha="center", va="center", rotation=45)
    ax.text(0.3, 0.7, "under-confident", transform=ax.transAxes, color="0.45",
            fontsize=size, ha="center", va="center", rotation=45)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("Expected coverage")
    ax.set_ylabel("Observed coverage")
    _title(ax, quantity, what)
