"""Calibration metrics: hand-derived values, invariances, limits and input checks."""

import time

import numpy as np
import pytest
from scipy import stats
from scipy.special import ndtri

from mlipuq.calibration import metrics as m
from mlipuq.calibration.metrics_calibration import area_between

LOG_2PI = np.log(2 * np.pi)


def gaussian_data(n=20000, seed=0, shape=None, miscal=1.0, bias=0.0):
    """Heteroscedastic predictions whose errors are miscal * σ * N(0, 1) + bias."""
    rng = np.random.default_rng(seed)
    size = n if shape is None else shape
    pred = rng.normal(size=size)
    std = np.exp(rng.normal(-1.0, 0.7, size=size))
    true = pred + bias + miscal * std * rng.standard_normal(size=size)
    return pred, std, true


# ------------------------------------------------------------ scoring rules
def test_nll_hand_values():
    assert m.nll_gaussian([0.0], [1.0], [0.0]) == pytest.approx(0.5 * LOG_2PI)
    # z = 1, σ = 2: 0.5 log 2π + log 2 + 0.5
    assert m.nll_gaussian([0.0], [2.0], [2.0]) == pytest.approx(0.5 * LOG_2PI + np.log(2) + 0.5)
    both = m.nll_gaussian([0.0, 0.0], [1.0, 2.0], [0.0, 2.0], reduction="sum")
    assert both == pytest.approx(LOG_2PI + np.log(2) + 0.5)


def test_nll_matches_scipy_logpdf():
    pred, std, true = gaussian_data(500, miscal=1.7)
    expected = -np.mean(stats.norm.logpdf(true, loc=pred, scale=std))
    assert m.nll_gaussian(pred, std, true) == pytest.approx(expected, rel=1e-12)


def test_crps_hand_values_and_limits():
    # z = 0: σ (2 φ(0) - 1/√π) = σ (√2 - 1)/√π
    expected = 3.0 * (np.sqrt(2) - 1) / np.sqrt(np.pi)
    assert m.crps_gaussian([1.0], [3.0], [1.0]) == pytest.approx(expected)
    # σ -> 0: CRPS -> |error|
    assert m.crps_gaussian([0.0], [1e-9], [0.7]) == pytest.approx(0.7, rel=1e-6)


def test_crps_matches_numerical_integral():
    # CRPS = ∫ (F(x) - 1[x >= y])^2 dx
    mu, s, y = 0.3, 0.8, 1.9
    x = np.linspace(mu - 12 * s, y + 12 * s, 400001)
    integrand = (stats.norm.cdf(x, mu, s) - (x >= y)) ** 2
    assert m.crps_gaussian([mu], [s], [y]) == pytest.approx(np.trapezoid(integrand, x), rel=1e-5)


def _check_score_loop(pred, std, true, qs):
    total = 0.0
    for q in qs:
        yq = pred + std * ndtri(q)
        total += np.mean(((true <= yq).astype(float) - q) * (yq - true))
    return total / len(qs)


def _interval_score_loop(pred, std, true, ps):
    total = 0.0
    for p in ps:
        lo = pred + std * ndtri(0.5 - p / 2)
        hi = pred + std * ndtri(0.5 + p / 2)
        penalty = np.maximum(lo - true, 0) + np.maximum(true - hi, 0)
        score = (hi - lo) + 2 / (1 - p) * penalty
        total += score.mean()
    return total / len(ps)


@pytest.mark.parametrize("resolution", [1, 7, 99])
def test_check_and_interval_scores_match_direct_loops(resolution):
    pred, std, true = gaussian_data(3000, seed=3, miscal=2.0, bias=0.1)
    qs = np.linspace(0.01, 0.99, resolution)
    assert m.check_score(pred, std, true, resolution=resolution) == pytest.approx(
        _check_score_loop(pred, std, true, qs), rel=1e-10
    )
    assert m.interval_score(pred, std, true, resolution=resolution) == pytest.approx(
        _interval_score_loop(pred, std, true, qs), rel=1e-10
    )


def test_scoring_rules_prefer_the_true_std():
    pred, std, true = gaussian_data(50000, seed=1)
    for score in (m.nll_gaussian, m.crps_gaussian, m.check_score, m.interval_score):
        at_truth = score(pred, std, true)
        assert at_truth < score(pred, 0.7 * std, true)
        assert at_truth < score(pred, 1.4 * std, true)


# ------------------------------------------------------------- calibration
def test_area_between_hand_values():
    # one triangle above the diagonal on each side: 2 * (1/2 * 1/2 * 1/2)
    assert area_between(np.array([0, 0.5, 1]), np.array([0, 1, 1.0])) == pytest.approx(0.25)
    # a segment crossing the diagonal: two triangles of 1/8 each
    assert area_between(np.array([0, 1.0]), np.array([0.5, 0.5])) == pytest.approx(0.25)
    assert area_between(np.array([0, 0.5, 1]), np.array([0, 0.5, 1])) == 0.0


def test_calibration_curve_hand_example():
    # |z| = 0.5, 1.5: observed coverage steps at the levels of ±0.5σ and ±1.5σ
    expected, observed = m.calibration_curve([0.0, 0.0], [1.0, 1.0], [0.5, -1.5], num_bins=5)
    np.testing.assert_allclose(expected, [0, 0.25, 0.5, 0.75, 1.0])
    half = ndtri(0.5 + expected / 2)  # 0, 0.319, 0.674, 1.150, inf
    np.testing.assert_allclose(observed, [(np.array([0.5, 1.5]) <= h).mean() for h in half])


def test_perfectly_calibrated_gaussian_data():
    pred, std, true = gaussian_data(200000, seed=2)
    assert m.miscalibration_area(pred, std, true) < 0.005
    assert m.rms_calibration_error(pred, std, true) < 0.006
    assert m.mean_absolute_calibration_error(pred, std, true) < 0.005
    levels = np.array([0.5, 0.68, 0.9, 0.95, 0.99])
    np.testing.assert_allclose(m.coverage(pred, std, true, levels=levels), levels, atol=0.005)
    assert m.ence(pred, std, true) < 0.03
    zs = m.z_score_stats(pred, std, true)
    assert abs(zs.mean) < 0.01 and abs(zs.std - 1) < 0.01 and abs(zs.rms - 1) < 0.01
    bins = m.rmse_rmv_bins(pred, std, true)
    np.testing.assert_allclose(bins.rmse / bins.rmv, 1.0, atol=0.03)
    assert m.sharpness(pred, std) == pytest.approx(np.sqrt(np.mean(std**2)))


def test_miscalibration_grows_with_mis_scaling():
    pred, std, true = gaussian_data(50000, seed=4)
    for scales in ([1.0, 1.3, 2.0, 4.0], [1.0, 0.8, 0.5, 0.25]):
        areas = [m.miscalibration_area(pred, k * std, true) for k in scales]
        ences = [m.ence(pred, k * std, true) for k in scales]
        assert np.all(np.diff(areas) > 0) and np.all(np.diff(ences) > 0)


def test_over_confidence_lowers_coverage_and_raises_z_rms():
    pred, std, true = gaussian_data(50000, seed=5, miscal=2.0)
    cov = m.coverage(pred, std, true, levels=[0.68, 0.95])
    assert np.all(cov < [0.68, 0.95])
    assert m.z_score_stats(pred, std, true).rms == pytest.approx(2.0, rel=0.02)
    assert m.coverage(pred, std, true, levels=0.9).shape == ()


def test_rmse_rmv_bins_are_equal_count_and_sorted():
    pred, std, true = gaussian_data(1003, seed=6)
    bins = m.rmse_rmv_bins(pred, std, true, num_bins=10)
    assert bins.count.sum() == 1003 and bins.count.max() - bins.count.min() <= 1
    assert np.all(np.diff(bins.rmv) > 0) and np.all(bins.std_min <= bins.std_max)
    assert np.all(bins.std_max[:-1] <= bins.std_min[1:])
    # first bin by hand
    order = np.argsort(std)[: bins.count[0]]
    assert bins.rmv[0] == pytest.approx(np.sqrt(np.mean(std[order] ** 2)))
    assert bins.rmse[0] == pytest.approx(np.sqrt(np.mean((true - pred)[order] ** 2)))
    expected = np.mean(np.abs(bins.rmv - bins.rmse) / bins.rmv)
    assert m.ence(pred, std, true, num_bins=10) == pytest.approx(expected)
    with pytest.raises(ValueError):
        m.rmse_rmv_bins(pred[:5], std[:5], true[:5], num_bins=10)


# ------------------------------------------------------------ invariances
def test_unit_scaling_and_shift_invariances():
    pred, std, true = gaussian_data(4000, seed=7, miscal=1.5, bias=0.05)
    c, shift = 1000.0, -4209.0  # eV -> meV, and a large energy offset
    a = m.all_metrics(pred, std, true)
    b = m.all_metrics(c * pred + shift, c * std, c * true + shift)
    for key in ("miscalibration_area", "rms_calibration_error", "mean_absolute_calibration_error",
                "coverage_68", "ence", "z_mean", "z_std", "z_rms", "spearman", "auroc", "auprc"):
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key
    for key in ("mae", "rmse", "sharpness", "crps", "check_score", "interval_score"):
        assert b[key] == pytest.approx(c * a[key], rel=1e-6), key
    assert b["nll"] == pytest.approx(a["nll"] + np.log(c), rel=1e-9)


def test_ranking_metrics_invariant_to_monotone_std_maps():
    pred, std, true = gaussian_data(3000, seed=8)
    base = m.error_detection_auc(pred, std, true)
    mapped = m.error_detection_auc(pred, 0.2 * std**3, true)
    assert mapped.auroc == pytest.approx(base.auroc) and mapped.auprc == pytest.approx(base.auprc)
    assert m.spearman_error_std(pred, np.sqrt(std), true) == pytest.approx(
        m.spearman_error_std(pred, std, true)
    )


def test_forces_shape_is_flattened_per_component():
    pred, std, true = gaussian_data(shape=(400, 3), seed=9, miscal=1.3)
    a = m.all_metrics(pred, std, true)
    b = m.all_metrics(pred.ravel(), std.ravel(), true.ravel())
    assert a == pytest.approx(b)
    assert a["n"] == 1200


def test_reduce_norm_hand_example():
    pred = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    std = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 4.0]])
    true = np.array([[0.0, 6.0, 0.0], [1.0, 2.0, 2.0]])
    norm_pred, norm_std, norm_true = m.reduce_norm(pred, std, true)
    np.testing.assert_allclose(norm_pred, [5.0, 0.0])
    np.testing.assert_allclose(norm_true, [6.0, 3.0])
    # delta method along the predicted direction; isotropic mean variance at zero force
    np.testing.assert_allclose(norm_std, [np.sqrt((9 * 1 + 16 * 4) / 25), np.sqrt(18 / 3)])
    assert m.nll_gaussian(pred, std, true, reduce="norm") == pytest.approx(
        m.nll_gaussian(norm_pred, norm_std, norm_true)
    )
    assert m.sharpness(pred, std, reduce="norm") == pytest.approx(np.sqrt(np.mean(norm_std**2)))


def test_reduce_norm_is_rotation_invariant():
    rng = np.random.default_rng(10)
    pred = rng.normal(size=(50, 3))
    true = pred + 0.1 * rng.normal(size=(50, 3))
    std = np.repeat(rng.uniform(0.05, 0.2, size=(50, 1)), 3, axis=1)  # isotropic per atom
    rot = stats.special_ortho_group.rvs(3, random_state=1)
    a = m.all_metrics(pred, std, true, reduce="norm", num_bins_ence=5)
    b = m.all_metrics(pred @ rot.T, std, true @ rot.T, reduce="norm", num_bins_ence=5)
    assert a == pytest.approx(b)


def test_float32_inputs_are_computed_in_float64():
    pred, std, true = (x.astype(np.float32) for x in gaussian_data(2000, seed=11))
    a = m.all_metrics(pred, std, true)
    b = m.all_metrics(pred.astype(np.float64), std.astype(np.float64), true.astype(np.float64))
    assert a == b


# ------------------------------------------------------- error detection
def test_auc_and_spearman_match_reference_implementations():
    from sklearn.metrics import average_precision_score, roc_auc_score

    pred, std, true = gaussian_data(5000, seed=12, miscal=1.2)
    std = np.round(std, 2)  # ties
    res = m.error_detection_auc(pred, std, true, quantile=0.8)
    positive = np.abs(true - pred) > res.threshold
    assert res.positive_fraction == pytest.approx(positive.mean())
    assert res.auroc == pytest.approx(roc_auc_score(positive, std), rel=1e-12)
    assert res.auprc == pytest.approx(average_precision_score(positive, std), rel=1e-12)
    rho = stats.spearmanr(np.abs(true - pred), std).statistic
    assert m.spearman_error_std(pred, std, true) == pytest.approx(rho, rel=1e-12)


def test_error_detection_limits():
    rng = np.random.default_rng(13)
    err = rng.normal(size=1000)
    perfect = m.error_detection_auc(np.zeros(1000), np.abs(err), err, threshold=1.0)
    assert perfect.auroc == 1.0 and perfect.auprc == 1.0 and perfect.threshold == 1.0
    flat = m.error_detection_auc(np.zeros(1000), np.ones(1000), err, threshold=1.0)
    assert flat.auroc == 0.5 and flat.auprc == pytest.approx(flat.positive_fraction)
    with pytest.raises(m.UndefinedMetricError):
        m.error_detection_auc(np.zeros(1000), np.ones(1000), err, threshold=100.0)
    with pytest.raises(m.UndefinedMetricError):
        m.spearman_error_std(np.zeros(1000), np.ones(1000), err)


# ----------------------------------------------------------- consistency
def test_all_metrics_agrees_with_individual_functions():
    pred, std, true = gaussian_data(shape=(700, 3), seed=14, miscal=1.4, bias=0.02)
    for reduce in ("none", "norm"):
        a = m.all_metrics(pred, std, true, reduce=reduce)
        kw = {"reduce": reduce}
        assert a["nll"] == pytest.approx(m.nll_gaussian(pred, std, true, **kw))
        assert a["crps"] == pytest.approx(m.crps_gaussian(pred, std, true, **kw))
        assert a["check_score"] == pytest.approx(m.check_score(pred, std, true, **kw))
        assert a["interval_score"] == pytest.approx(m.interval_score(pred, std, true, **kw))
        area = m.miscalibration_area(pred, std, true, **kw)
        assert a["miscalibration_area"] == pytest.approx(area)
        rms_cal = m.rms_calibration_error(pred, std, true, **kw)
        assert a["rms_calibration_error"] == pytest.approx(rms_cal)
        assert a["mean_absolute_calibration_error"] == pytest.approx(
            m.mean_absolute_calibration_error(pred, std, true, **kw)
        )
        cov = m.coverage(pred, std, true, **kw)
        assert [a[m.coverage_key(v)] for v in m.DEFAULT_LEVELS] == pytest.approx(list(cov))
        assert a["sharpness"] == pytest.approx(m.sharpness(pred, std, **kw))
        assert a["ence"] == pytest.approx(m.ence(pred, std, true, **kw))
        zs = m.z_score_stats(pred, std, true, **kw)
        assert (a["z_mean"], a["z_std"], a["z_rms"]) == pytest.approx((zs.mean, zs.std, zs.rms))
        assert a["spearman"] == pytest.approx(m.spearman_error_std(pred, std, true, **kw))
        det = m.error_detection_auc(pred, std, true, **kw)
        assert (a["auroc"], a["auprc"]) == pytest.approx((det.auroc, det.auprc))
        assert a["mae"] == pytest.approx(m.mae(pred, std, true, **kw))
        assert a["rmse"] == pytest.approx(m.rmse(pred, std, true, **kw))


def test_all_metrics_reports_undefined_as_none():
    a = m.all_metrics([0.0, 1.0, 2.0], [1.0, 1.0, 1.0], [0.5, 1.0, 3.5])
    assert a["spearman"] is None and a["ence"] is None
    assert a["auroc"] is not None


# ----------------------------------------------------------- input checks
METRICS = [
    m.nll_gaussian, m.crps_gaussian, m.check_score, m.interval_score, m.miscalibration_area,
    m.rms_calibration_error, m.mean_absolute_calibration_error, m.coverage, m.ence,
    m.rmse_rmv_bins, m.z_score_stats, m.spearman_error_std, m.error_detection_auc, m.mae,
    m.rmse, m.all_metrics,
]


@pytest.mark.parametrize("metric", METRICS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "bad",
    ["nan_pred", "inf_true", "nan_std", "negative_std", "shape", "empty", "reduce"],
)
def test_bad_input_raises_value_error(metric, bad):
    pred, std, true = gaussian_data(40, seed=15)
    kwargs = {}
    if bad == "nan_pred":
        pred[3] = np.nan
    elif bad == "inf_true":
        true[0] = np.inf
    elif bad == "nan_std":
        std[1] = np.nan
    elif bad == "negative_std":
        std[2] = -0.1
    elif bad == "shape":
        true = true[:-1]
    elif bad == "empty":
        pred, std, true = np.array([]), np.array([]), np.array([])
    elif bad == "reduce":
        kwargs["reduce"] = "sum"
    with pytest.raises(ValueError):
        metric(pred, std, true, **kwargs)


@pytest.mark.parametrize(
    "metric",
    [m.nll_gaussian, m.crps_gaussian, m.miscalibration_area, m.z_score_stats, m.ence],
    ids=lambda f: f.__name__,
)
def test_zero_std_rejected_where_metric_divides(metric):
    pred, std, true = gaussian_data(40, seed=16)
    std[5] = 0.0
    with pytest.raises(ValueError, match="zero"):
        metric(pred, std, true)


def test_zero_std_allowed_for_sharpness_and_ranking():
    pred, std, true = gaussian_data(40, seed=17)
    std[5] = 0.0
    assert m.sharpness(pred, std) > 0
    assert -1 <= m.spearman_error_std(pred, std, true) <= 1


def test_bad_options_raise():
    pred, std, true = gaussian_data(40, seed=18)
    with pytest.raises(ValueError):
        m.coverage(pred, std, true, levels=[0.5, 1.0])
    with pytest.raises(ValueError):
        m.miscalibration_area(pred, std, true, prop_type="both")
    with pytest.raises(ValueError):
        m.nll_gaussian(pred, std, true, reduction="median")
    with pytest.raises(ValueError):
        m.check_score(pred, std, true, start_q=0.0)
    with pytest.raises(ValueError):
        m.miscalibration_area(pred, std, true, num_bins=1)
    with pytest.raises(ValueError):
        m.reduce_norm(np.array(1.0), None, None)


def test_quantile_calibration_uses_reference_minus_prediction():
    # references always above the prediction: all below-quantile fractions are low
    expected, observed = m.calibration_curve(
        np.zeros(100), np.ones(100), np.full(100, 0.5), num_bins=3, prop_type="quantile"
    )
    np.testing.assert_allclose(expected, [0, 0.5, 1])
    np.testing.assert_allclose(observed, [0, 0, 1])


@pytest.mark.slow
def test_all_metrics_on_a_million_force_components_within_two_seconds():
    pred, std, true = gaussian_data(shape=(333334, 3), seed=19, miscal=1.3)
    m.all_metrics(pred[:1000], std[:1000], true[:1000])  # warm up
    start = time.perf_counter()
    m.all_metrics(pred, std, true)
    assert time.perf_counter() - start <= 2.0
