"""The CRPS of a Student-t predictive (closed form) and its use by the metrics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from mlipuq.calibration import metrics
from mlipuq.calibration.student_t import StudentTRecalibrator
from mlipuq.predictive import crps_values_t, std_factor


@pytest.mark.parametrize("dof", [1.3, 2.0, 4.0, 40.0])
@pytest.mark.parametrize("err", [-2.5, 0.1, 1.9])
def test_closed_form_equals_the_defining_integral(dof, err):
    """CRPS = ∫ (F(x) − 1[x ≥ y])² dx, F the t CDF with Gaussian-equivalent std 0.7."""
    std = 0.7
    scale = std / std_factor(dof)
    cdf = lambda x: stats.t.cdf(x / scale, dof)  # noqa: E731
    below = integrate.quad(lambda x: cdf(x) ** 2, -np.inf, err, limit=400)[0]
    above = integrate.quad(lambda x: (1 - cdf(x)) ** 2, err, np.inf, limit=400)[0]
    value = crps_values_t(np.array([err]), np.array([std]), dof)[0]
    assert value == pytest.approx(below + above, rel=1e-7)


def test_large_dof_is_the_gaussian_and_dof_one_is_infinite():
    err, std = np.array([-1.2, 0.0, 0.4]), np.array([0.5, 1.0, 2.0])
    gauss = crps_values_t(err, std, None)
    np.testing.assert_allclose(crps_values_t(err, std, 1e7), gauss, rtol=1e-6)
    np.testing.assert_allclose(metrics.crps_gaussian(np.zeros(3), std, err), gauss.mean())
    assert np.all(np.isinf(crps_values_t(err, std, 1.0)))
    assert metrics.all_metrics(np.zeros(3), std, err, dof=1.0)["crps"] is None


def test_heavy_tailed_errors_score_better_as_the_fitted_t():
    """CRPS is proper: on t-distributed errors (ν = 3) the fitted t predictive scores
    better than a Gaussian with the same std; all_metrics and crps agree."""
    rng = np.random.default_rng(4)
    sigma = rng.uniform(0.5, 2.0, 40000)
    y = sigma * rng.standard_t(3.0, sigma.size)
    rec = StudentTRecalibrator().fit(np.zeros_like(y), sigma, y)
    std, zero = rec.transform(sigma), np.zeros_like(y)
    as_t = metrics.crps(zero, std, y, dof=rec.dof_)
    as_gauss = metrics.crps(zero, std, y)
    assert as_t < as_gauss
    assert metrics.all_metrics(zero, std, y, dof=rec.dof_)["crps"] == pytest.approx(as_t)
    assert metrics.all_metrics(zero, std, y)["crps"] == pytest.approx(as_gauss)
