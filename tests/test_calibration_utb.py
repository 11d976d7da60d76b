"""Agreement with uncertainty-toolbox (a test-only dependency) at default arguments."""

import numpy as np
import pytest

from mlipuq.calibration import metrics as m

uct = pytest.importorskip("uncertainty_toolbox")


def _datasets():
    rng = np.random.default_rng(0)
    n = 1500
    pred = rng.normal(size=n)
    std = np.exp(rng.normal(-1, 0.8, size=n))
    yield "calibrated", pred, std, pred + std * rng.standard_normal(n)
    yield "over-confident", pred, std, pred + 2.5 * std * rng.standard_normal(n)
    yield "under-confident, biased", pred, std, pred + 0.3 + 0.4 * std * rng.standard_normal(n)
    yield "heavy tails", pred, std, pred + std * rng.standard_t(3, size=n)
    forces = rng.normal(size=(300, 3))
    f_std = np.exp(rng.normal(-2, 0.5, size=(300, 3)))
    yield "forces (N, 3)", forces, f_std, forces + 1.5 * f_std * rng.standard_normal((300, 3))


DATASETS = list(_datasets())


def _utb_accuracy(key):
    return lambda p, s, t: uct.metrics_accuracy.prediction_error_metrics(p, t)[key]


# (name, ours, uncertainty-toolbox's), both called as f(y_pred, y_std, y_true)
PAIRS = [
    ("nll_gaussian", m.nll_gaussian, uct.nll_gaussian),
    ("crps_gaussian", m.crps_gaussian, uct.crps_gaussian),
    ("check_score", m.check_score, uct.check_score),
    ("interval_score", m.interval_score, uct.interval_score),
    ("miscalibration_area", m.miscalibration_area, uct.miscalibration_area),
    ("rms_calibration_error", m.rms_calibration_error, uct.root_mean_squared_calibration_error),
    (
        "mean_absolute_calibration_error",
        m.mean_absolute_calibration_error,
        uct.mean_absolute_calibration_error,
    ),
    ("sharpness", m.sharpness, lambda p, s, t: uct.sharpness(s)),
    ("mae", m.mae, _utb_accuracy("mae")),
    ("rmse", m.rmse, _utb_accuracy("rmse")),
]


@pytest.mark.parametrize("name, ours, theirs", PAIRS, ids=[p[0] for p in PAIRS])
@pytest.mark.parametrize("data", DATASETS, ids=[d[0] for d in DATASETS])
def test_default_values_match_uncertainty_toolbox(name, ours, theirs, data):
    _, pred, std, true = data
    # uncertainty-toolbox takes flat arrays; ours flattens (N, 3) forces itself
    expected = theirs(pred.ravel(), std.ravel(), true.ravel())
    assert ours(pred, std, true) == pytest.approx(float(expected), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("data", DATASETS, ids=[d[0] for d in DATASETS])
def test_all_metrics_bundle_matches_uncertainty_toolbox(data):
    _, pred, std, true = data
    p, s, t = pred.ravel(), std.ravel(), true.ravel()
    ours = m.all_metrics(pred, std, true)
    theirs = {
        **uct.metrics.get_all_accuracy_metrics(p, t, verbose=False),
        **uct.metrics.get_all_average_calibration(p, s, t, num_bins=100, verbose=False),
        **uct.metrics.get_all_sharpness_metrics(s, verbose=False),
        **uct.metrics.get_all_scoring_rule_metrics(
            p, s, t, resolution=99, scaled=True, verbose=False
        ),
    }
    names = {
        "mae": "mae", "rmse": "rmse", "rms_cal": "rms_calibration_error",
        "ma_cal": "mean_absolute_calibration_error", "miscal_area": "miscalibration_area",
        "sharp": "sharpness", "nll": "nll", "crps": "crps", "check": "check_score",
        "interval": "interval_score",
    }
    for key, our_key in names.items():
        assert ours[our_key] == pytest.approx(float(theirs[key]), rel=1e-6, abs=1e-12), key


@pytest.mark.parametrize("data", DATASETS[:2], ids=[d[0] for d in DATASETS[:2]])
def test_interval_calibration_curve_matches_uncertainty_toolbox(data):
    _, pred, std, true = data
    expected, observed = m.calibration_curve(pred, std, true)
    exp_u, obs_u = uct.metrics_calibration.get_proportion_lists_vectorized(pred, std, true)
    np.testing.assert_allclose(expected, exp_u)
    np.testing.assert_allclose(observed, obs_u)


@pytest.mark.parametrize("num_bins", [10, 37])
def test_non_default_bins_and_resolution_match_too(num_bins):
    _, pred, std, true = DATASETS[1]
    assert m.miscalibration_area(pred, std, true, num_bins=num_bins) == pytest.approx(
        uct.miscalibration_area(pred, std, true, num_bins=num_bins), rel=1e-6
    )
    assert m.check_score(pred, std, true, resolution=num_bins) == pytest.approx(
        uct.check_score(pred, std, true, resolution=num_bins), rel=1e-6
    )
    assert m.interval_score(pred, std, true, resolution=num_bins) == pytest.approx(
        uct.interval_score(pred, std, true, resolution=num_bins), rel=1e-6
    )
