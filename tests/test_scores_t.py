"""Check and interval scores and the ENCE of a Student-t predictive."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mlipuq.calibration import metrics
from mlipuq.calibration.metrics_common import UndefinedMetricError
from mlipuq.predictive import std_factor


def _t_quantile(std, dof, q):
    """Quantile q of the t with Gaussian-equivalent std ``std`` (centred at 0)."""
    return std / std_factor(dof) * stats.t.ppf(q, dof)


@pytest.mark.parametrize("dof", [1.5, 4.0, 30.0])
def test_check_score_is_the_pinball_loss_at_the_t_quantiles(dof):
    rng = np.random.default_rng(0)
    err, std = rng.normal(0, 1.5, 200), rng.uniform(0.3, 2.0, 200)
    levels = np.linspace(0.05, 0.95, 19)
    loss = [np.mean([((e <= _t_quantile(s, dof, q)) - q) * (_t_quantile(s, dof, q) - e)
                     for q in levels]) for e, s in zip(err, std)]
    value = metrics.check_score(np.zeros(200), std, err, start_q=0.05, end_q=0.95,
                                resolution=19, dof=dof)
    assert value == pytest.approx(np.mean(loss), rel=1e-10)


@pytest.mark.parametrize("dof", [1.5, 4.0, 30.0])
def test_interval_score_uses_the_t_intervals(dof):
    rng = np.random.default_rng(1)
    err, std = rng.normal(0, 1.5, 200), rng.uniform(0.3, 2.0, 200)
    levels = np.linspace(0.1, 0.9, 9)
    score = []
    for e, s in zip(err, std):
        per_level = []
        for p in levels:
            lo, hi = _t_quantile(s, dof, 0.5 - p / 2), _t_quantile(s, dof, 0.5 + p / 2)
            per_level.append(hi - lo + 2 / (1 - p) * (max(lo - e, 0) + max(e - hi, 0)))
        score.append(np.mean(per_level))
    value = metrics.interval_score(np.zeros(200), std, err, start_p=0.1, end_p=0.9,
                                   resolution=9, dof=dof)
    assert value == pytest.approx(np.mean(score), rel=1e-10)


def test_large_dof_scores_as_the_gaussian():
    rng = np.random.default_rng(2)
    err, std = rng.normal(0, 1, 500), rng.uniform(0.5, 1.5, 500)
    for score in (metrics.check_score, metrics.interval_score):
        assert score(np.zeros(500), std, err, dof=1e7) == pytest.approx(
            score(np.zeros(500), std, err), rel=1e-5)
    assert metrics.ence(np.zeros(500), std, err, dof=1e7) == pytest.approx(
        metrics.ence(np.zeros(500), std, err), rel=1e-5)


def _t_sample(dof, n, seed):
    """Errors drawn from t predictives with Gaussian-equivalent stds spread over a decade."""
    rng = np.random.default_rng(seed)
    std = 10 ** rng.uniform(-1, 0, n)
    return std / std_factor(dof) * rng.standard_t(dof, n), std


def test_ence_of_a_calibrated_t_is_small_only_with_its_dof():
    """t errors (ν = 6): their RMSE is the t's std sqrt(ν/(ν-2)) s, 1.12x the
    Gaussian-equivalent std m(ν) s; the ENCE sees a calibrated prediction with
    ``dof`` and that 12 % gap without."""
    err, std = _t_sample(6.0, 200_000, 3)
    with_dof = metrics.ence(np.zeros_like(err), std, err, dof=6.0)
    as_gaussian = metrics.ence(np.zeros_like(err), std, err)
    ratio = np.sqrt(6.0 / 4.0) / std_factor(6.0)
    assert with_dof < 0.03
    assert as_gaussian == pytest.approx(ratio - 1.0, abs=0.03)
    out = metrics.all_metrics(np.zeros_like(err), std, err, dof=6.0)
    assert out["ence"] == pytest.approx(with_dof)


def test_ence_is_undefined_without_a_finite_variance():
    err, std = _t_sample(2.0, 1000, 4)
    with pytest.raises(UndefinedMetricError, match="no finite variance"):
        metrics.ence(np.zeros_like(err), std, err, dof=2.0)
    assert metrics.all_metrics(np.zeros_like(err), std, err, dof=1.5)["ence"] is None


def test_the_t_scores_heavy_tailed_errors_better_than_a_gaussian_reading():
    """Both scores are proper: on t errors (ν = 3) the t's quantiles score better
    than the same std read as a Gaussian σ."""
    err, std = _t_sample(3.0, 100_000, 5)
    for score in (metrics.check_score, metrics.interval_score):
        assert score(np.zeros_like(err), std, err, dof=3.0) < score(np.zeros_like(err), std, err)
