"""Calibration plots: each takes ax=None, returns Axes, and labels units."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

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
    pred, std, true = data(30000)
    ax = plots.parity(pred.ravel() - 4209.0, std.ravel(), true.ravel() - 4209.0, center=True,
                      max_points=500, quantity="Energy", unit="eV")
    assert "mean ref." in ax.get_xlabel()
    lo, hi = ax.get_xlim()
    assert lo > -100 and hi < 100  # centred, not around -4209 eV
    assert any("500 of 30000 shown" in t.get_text() for t in ax.texts)


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
    fig = plots.summary_figure(report)
    assert isinstance(fig, Figure) and len(fig.axes) == 10
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
