"""Calibration plots: each takes ax=None, returns Axes, and labels units."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from conftest import synthetic_prediction  # noqa: E402
from mlipuq.calibration import CalibrationReport, evaluate, plots  # noqa: E402
from mlipuq.calibration.metrics import miscalibration_area  # noqa: E402

PLOTS = [plots.calibration_curve, plots.rmse_vs_rmv, plots.parity, plots.error_vs_std,
         plots.z_histogram]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def make_case(n_structures=40, seed=0):
    """Reference dataset and a mis-scaled Gaussian prediction for it."""
    return synthetic_prediction(n_structures, seed, miscal=1.5)


def data(n=600, seed=0, miscal=1.5):
    rng = np.random.default_rng(seed)
    pred = rng.normal(size=(n // 3, 3))
    std = np.exp(rng.normal(-2, 0.6, size=pred.shape))
    return pred, std, pred + miscal * std * rng.standard_normal(pred.shape)


@pytest.mark.parametrize("plot", PLOTS, ids=lambda f: f.__name__)
def test_plot_returns_axes_and_draws_on_given_axes(plot):
    pred, std, true = data()
    ax = plot(pred, std, true)
    assert isinstance(ax, Axes)
    fig, given = plt.subplots()
    assert plot(pred, std, true, ax=given) is given
    assert given.get_xlabel() and given.get_ylabel() and given.get_title()
    assert plot(pred, std, true, ax=given, reduce="norm") is given


@pytest.mark.parametrize("plot", [plots.rmse_vs_rmv, plots.parity, plots.error_vs_std],
                         ids=lambda f: f.__name__)
def test_axis_labels_carry_units(plot):
    pred, std, true = data()
    ax = plot(pred, std, true, quantity="Force component", unit="eV/Å")
    assert "(eV/Å)" in ax.get_xlabel() and "(eV/Å)" in ax.get_ylabel()
    assert ax.get_title().startswith("Force component")


def test_calibration_curve_shades_the_miscalibration_area():
    pred, std, true = data(3000, miscal=2.0)
    ax = plots.calibration_curve(pred, std, true)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    area = miscalibration_area(pred, std, true)
    assert f"miscal. area = {area:.3f}" in labels
    assert len(ax.collections) == 1  # the shaded region
    assert ax.get_xlim() == (0, 1) and ax.get_ylim() == (0, 1)


def test_rmse_vs_rmv_has_identity_line_and_log_axes():
    pred, std, true = data()
    ax = plots.rmse_vs_rmv(pred, std, true, num_bins=8)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    identity, points = ax.get_lines()[:2]
    x, y = identity.get_data()
    np.testing.assert_allclose(x, y)
    assert len(points.get_xdata()) == 8


def test_parity_subsamples_and_centers():
    # density=False: the subsample (before: the default above max_points)
    pred, std, true = data(30000)
    ax = plots.parity(pred.ravel() - 4209.0, std.ravel(), true.ravel() - 4209.0, center=True,
                      max_points=500, quantity="Energy", unit="eV", density=False)
    assert "mean ref." in ax.get_xlabel()
    lo, hi = ax.get_xlim()
    assert lo > -100 and hi < 100  # centred, not around -4209 eV
    assert any("500 of 30000 shown" in t.get_text() for t in ax.texts)
    assert not ax.containers  # 500 points: no error bars (they would make a solid band)


def test_large_sets_draw_a_density_of_all_points():
    pred, std, true = data(30000)
    for plot in (plots.parity, plots.error_vs_std):
        fig, ax = plt.subplots()
        plot(pred, std, true, ax=ax, max_points=500)
        hexbins = [c for c in ax.collections if isinstance(c, PolyCollection)
                   and c.get_array() is not None]
        assert len(hexbins) == 1
        assert hexbins[0].get_array().sum() == 30000  # every point, none dropped
        assert len(fig.axes) == 2  # with a colour bar of counts
        text = " ".join([t.get_text() for t in ax.texts] + [ax.get_legend().get_title().get_text()])
        assert "density of all 30000" in text
    assert plots.draws_density(2001, 2000) and not plots.draws_density(2000, 2000)
    assert not plots.draws_density(10**6, None) and plots.draws_density(5, 2000, density=True)


def test_one_subsampling_rule_for_every_panel():
    idx = plots.subsample(30000, 500)
    assert idx.size == 500 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, plots.subsample(30000, 500))
    np.testing.assert_array_equal(plots.subsample(300, 500), np.arange(300))
    pred, std, true = data(30000)
    ax_p = plots.parity(pred, std, true, max_points=500, density=False)
    ax_e = plots.error_vs_std(pred, std, true, max_points=500, density=False)
    flat = np.abs(true - pred).ravel()[idx]
    drawn = ax_e.collections[0].get_offsets()[:, 1]
    np.testing.assert_allclose(drawn, np.maximum(flat, drawn.min()))  # the same points
    np.testing.assert_allclose(ax_p.collections[0].get_offsets()[:, 0], true.ravel()[idx])
    with pytest.raises(ValueError, match="max_points"):
        plots.subsample(10, 0)


def test_parity_error_bars_only_for_few_points():
    pred, std, true = data(150)
    assert len(plots.parity(pred, std, true).containers) == 1  # 150 points with ±σ bars
    pred, std, true = data(900)
    assert not plots.parity(pred, std, true).containers  # 300: markers only


@pytest.mark.parametrize("lo,hi", [(0.02, 0.6), (0.05, 0.09), (3e-4, 2e-3), (1e-7, 10.0),
                                   (1e-30, 1e10), (5.0, 5.5), (2e-6, 7e-5)])
def test_log_axes_have_at_least_three_readable_ticks(lo, hi):
    ticks = plots.log_ticks(lo, hi)
    assert ticks.size >= 3
    assert ticks.size <= 12
    assert np.all((ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9)))
    labels = [plots._tick_label(t) for t in ticks]
    assert all(labels) and len(set(labels)) == len(labels)
    assert plots._tick_label(0.05) == "0.05" and plots._tick_label(2e-5) == "$2\\times10^{-5}$"
    assert plots._tick_label(1e-6) == "$10^{-6}$"
    assert plots._tick_label(0.01, sci=True) == "$10^{-2}$"


def test_rendered_log_axes_label_at_least_three_ticks():
    pred, std, true = data(600)
    fig, ax = plt.subplots()
    plots.rmse_vs_rmv(pred, std * 0.5, true, ax=ax)  # spans about one decade
    fig.canvas.draw()
    for axis in (ax.xaxis, ax.yaxis):
        lo, hi = sorted(axis.get_view_interval())
        shown = [t for t, v in zip(axis.get_ticklabels(), axis.get_ticklocs())
                 if lo <= v <= hi and t.get_text()]
        assert len(shown) >= 3


@pytest.mark.parametrize("name", plots.PLOTS)
def test_panels_are_legible_at_single_column_width(name, tmp_path):
    pred, std, true = data(6000)
    with plots.style():
        fig, ax = plots.panel_figure()
        plots.draw(name, pred, std, true, ax=ax, target="forces", max_points=2000)
        fig.suptitle("LLPR on test.extxyz")
        fig.savefig(tmp_path / "panel.png", dpi=60)
    assert fig.get_figwidth() == pytest.approx(plots.COLUMN_WIDTH)
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert texts
    small = [(t.get_text(), t.get_fontsize()) for t in texts
             if t.get_fontsize() < plots.MIN_FONT_SIZE]
    assert not small


def test_comparisons_overlay_every_prediction():
    a, b = data(600, miscal=2.0), data(600, seed=1, miscal=1.0)
    ax = plots.compare_calibration({"LLPR": a, "Shallow": b}, quantity="Energy")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    area = miscalibration_area(*a)
    assert labels[0] == "ideal" and labels[1] == f"LLPR (area {area:.3f})"
    assert labels[2].startswith("Shallow (area ")
    ax = plots.compare_rmse_vs_rmv({"LLPR": a, "Shallow": b}, num_bins=5, unit="eV")
    assert [len(line.get_xdata()) for line in ax.get_lines()] == [2, 5, 5]
    assert ax.get_xscale() == "log" and "(eV)" in ax.get_xlabel()


def test_z_histogram_overlays_standard_normal_density():
    pred, std, true = data(30000, miscal=1.0)
    ax = plots.z_histogram(pred, std, true)
    x, y = ax.get_lines()[0].get_data()
    np.testing.assert_allclose(y, np.exp(-0.5 * x**2) / np.sqrt(2 * np.pi))
    heights = np.array([p.get_height() for p in ax.patches])
    assert abs(heights.max() - 0.4) < 0.05  # calibrated data follow N(0, 1)


def test_summary_figure(tmp_path):
    pred, ref = make_case(40)
    report = evaluate(pred, ref)
    fig = plots.summary_figure(report, title="LLPR on test.extxyz")
    assert isinstance(fig, Figure) and len(fig.axes) == 10
    assert fig._suptitle.get_text().startswith("LLPR on test.extxyz: 40 structures")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("Energy") and titles[5].startswith("Force component")
    fig.savefig(tmp_path / "summary.png", dpi=50)
    assert (tmp_path / "summary.png").stat().st_size > 1000
    assert len(plots.summary_figure(report, targets=["forces_norm"]).axes) == 5
    with pytest.raises(ValueError, match="unknown target"):
        plots.summary_figure(report, targets=["stress"])
    with pytest.raises(ValueError, match="no prediction arrays"):
        plots.summary_figure(CalibrationReport.from_json(report.to_json()))


def test_plots_validate_inputs():
    pred, std, true = data()
    std[0, 0] = -1.0
    for plot in PLOTS:
        with pytest.raises(ValueError):
            plot(pred, std, true)
