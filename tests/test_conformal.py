"""Split-conformal recalibration: the quantile formula, its finite-sample coverage
on real ethanol DFT data, per-species force quantiles, persistence and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import ndtri

import mlipuq
from mlipuq.calibration.conformal import (
    ConformalRecalibrator,
    conformal_quantile,
    min_calibration_size,
)
from mlipuq.calibration.recalibrate import PredictionRecalibrator, get_recalibrator
from mlipuq.models import MiniMLIP
from mlipuq.uq import LastLayerLaplace, load


@pytest.fixture(scope="module")
def ethanol_llpr():
    """LLPR on a MiniMLIP trained briefly on 60 ethanol structures, its raw
    predictions for 600 other structures of the same file (predicted once), and
    those structures."""
    data = mlipuq.datasets.ethanol("train")
    train, pool = data[:60], data[300:900]
    model = MiniMLIP(["H", "C", "O"], cutoff=4.0, width=16, n_interactions=2, n_rbf=8, seed=0)
    mlipuq.train(model, train, epochs=6, lr=5e-3, batch_size=10, seed=0, progress=False)
    llpr = LastLayerLaplace(model, distance=None).fit(train)  # raw LLPR: over-confident
    return llpr, llpr.predict(pool, calibrated=False), pool


def _covered(y, lo, hi):
    return (y >= lo) & (y <= hi)


# ------------------------------------------------------------- the formula
def test_quantile_is_the_ceil_n_plus_one_c_th_smallest_score():
    scores = np.array([0.5, 0.1, 0.9, 0.3, 0.7])  # sorted: 0.1 0.3 0.5 0.7 0.9
    # n = 5: coverage 0.5 -> ceil(6 * 0.5) = 3rd smallest; 0.8 -> ceil(4.8) = 5th
    assert conformal_quantile(scores, 0.5) == 0.5
    assert conformal_quantile(scores, 0.8) == 0.9
    # 0.6 -> ceil(3.6) = 4th; 0.66 -> ceil(3.96) = 4th; 0.67 -> ceil(4.02) = 5th
    assert conformal_quantile(scores, 0.6) == 0.7
    assert conformal_quantile(scores, 0.66) == 0.7
    assert conformal_quantile(scores, 0.67) == 0.9
    # (n + 1) c is exact for decimal coverages: n = 99, c = 0.55 -> the 55th smallest,
    # although 100 * 0.55 is 55.00000000000001 in floats
    ranks = np.arange(1.0, 100.0)[::-1]
    assert 100 * 0.55 > 55 and conformal_quantile(ranks, 0.55) == 55.0
    # shape is irrelevant; the recalibrator uses |y - y_pred| / y_std as score
    assert conformal_quantile(scores.reshape(5, 1), 0.5) == 0.5
    rec = ConformalRecalibrator(coverage=0.5).fit(np.zeros(5), 2.0 * np.ones(5), 2.0 * scores)
    assert rec.quantile_ == 0.5
    assert rec.scale_ == pytest.approx(0.5 / ndtri(0.75))
    # minimal sizes: smallest n with ceil((n + 1) c) <= n
    for c in (0.5, 0.8, 0.9, 0.95, 0.99, 0.7, 0.123):
        n = min_calibration_size(c)
        assert math.ceil((n + 1) * c - 1e-9) <= n and math.ceil(n * c - 1e-9) > n - 1
    assert [min_calibration_size(c) for c in (0.5, 0.9, 0.95)] == [1, 9, 19]


def test_transform_gives_the_conformal_interval_at_the_coverage():
    rng = np.random.default_rng(0)
    pred, std = rng.normal(size=500), np.exp(rng.normal(-1, 0.5, size=500))
    true = pred + 3 * std * rng.standard_t(3, size=500)
    rec = ConformalRecalibrator(coverage=0.8).fit(pred, std, true)
    lo, hi = rec.interval(0.8, pred, std)
    z = ndtri(0.9)
    np.testing.assert_allclose(pred - z * rec.transform(std), lo, rtol=1e-12)
    np.testing.assert_allclose(pred + z * rec.transform(std), hi, rtol=1e-12)
    np.testing.assert_allclose(hi - lo, 2 * rec.quantile_ * std, rtol=1e-12)
    assert rec.interval(None, pred, std)[0] == pytest.approx(lo)
    # on its own calibration set it covers ceil((n + 1) c) of n points (no ties)
    k = math.ceil(501 * 0.8)
    assert np.count_nonzero(_covered(true, lo, hi)) == k
    with pytest.raises(ValueError, match="exact only at the fitted coverage"):
        rec.interval(0.9, pred, std)


# ------------------------------------------------------ coverage guarantee
@pytest.mark.parametrize("coverage, n_cal", [(0.9, 19), (0.9, 100), (0.8, 50)])
def test_energy_coverage_within_finite_sample_bounds(ethanol_llpr, coverage, n_cal):
    """Over random calibration/test splits of exchangeable structures, mean test
    coverage lies in [c, c + 1/(n+1)] up to Monte-Carlo error."""
    _, pred, pool = ethanol_llpr
    e, s, y = pred.energy, pred.energy_std, pool.energies
    raw_z = ndtri(0.5 + coverage / 2)
    assert np.mean(np.abs(y - e) <= raw_z * s) < coverage - 0.2  # raw LLPR is over-confident
    rng = np.random.default_rng(42)
    cover = []
    for _ in range(300):
        order = rng.permutation(e.size)
        cal, test = order[:n_cal], order[n_cal:]
        rec = ConformalRecalibrator(coverage=coverage).fit(e[cal], s[cal], y[cal])
        cover.append(np.mean(_covered(y[test], *rec.interval(coverage, e[test], s[test]))))
        # the Gaussian consumer's view of transform() gives the same interval
        half = raw_z * rec.transform(s[test])
        np.testing.assert_allclose(half, rec.quantile_ * s[test], rtol=1e-12)
    cover = np.array(cover)
    mean, se = cover.mean(), cover.std(ddof=1) / np.sqrt(cover.size)
    assert coverage - 3 * se <= mean <= coverage + 1 / (n_cal + 1) + 3 * se, (mean, se)


def test_per_species_force_coverage(ethanol_llpr):
    """One quantile per element: every element reaches the target coverage on
    held-out structures, while a pooled quantile under-covers one of them."""
    _, pred, pool = ethanol_llpr
    f, s, y, numbers, batch = pred.forces, pred.forces_std, pool.forces, pred.numbers, pred.batch
    coverage, elements = 0.9, (1, 6, 8)
    rng = np.random.default_rng(7)
    per_species, pooled = [], []
    for _ in range(20):
        cal = np.isin(batch, rng.permutation(pred.n_structures)[:300])  # split by structure
        test = ~cal
        for out, flag in ((per_species, True), (pooled, False)):
            rec = ConformalRecalibrator(coverage, per_species=flag)
            rec.fit(f[cal], s[cal], y[cal], numbers=numbers[cal])
            inside = _covered(y[test], *rec.interval(coverage, f[test], s[test],
                                                     numbers=numbers[test]))
            out.append([inside[numbers[test] == z].mean() for z in elements])
        assert rec.n_calibration_ == 3 * cal.sum()
    per_species, pooled = np.array(per_species), np.array(pooled)
    assert np.all(per_species.mean(axis=0) >= coverage - 0.02), per_species.mean(axis=0)
    assert np.all(per_species >= coverage - 0.05), per_species.min(axis=0)
    def worst(cover):
        return np.abs(cover.mean(axis=0) - coverage).max()

    assert worst(per_species) < worst(pooled)


def test_per_species_through_prediction_recalibrator(ethanol_llpr):
    _, pred, pool = ethanol_llpr
    val = pool[:200]
    val_pred = pred.concatenate([pred.structure(k) for k in range(200)])
    rec = PredictionRecalibrator("conformal", coverage=0.9, per_species=True,
                                 extrapolation=0).fit(val_pred, val)  # the conformal map alone
    # energies get one quantile (structures have no element), forces one per element
    assert not rec.energy_.per_species and rec.forces_.per_species
    assert list(rec.forces_.species_) == [1, 6, 8]
    e_scores = np.abs(val.energies - val_pred.energy) / val_pred.energy_std
    assert rec.energy_.quantile_ == conformal_quantile(e_scores, 0.9)
    f_scores = np.abs(val.forces - val_pred.forces) / val_pred.forces_std
    for z, q in zip(rec.forces_.species_, rec.forces_.species_quantile_):
        assert q == conformal_quantile(f_scores[val_pred.numbers == z], 0.9)
    out = rec.transform(pred)
    zc = ndtri(0.95)
    q_atom = dict(zip(rec.forces_.species_, rec.forces_.species_quantile_))
    q_of = np.array([q_atom[z] for z in pred.numbers])[:, None]
    np.testing.assert_allclose(zc * out.forces_std, q_of * pred.forces_std, rtol=1e-12)
    np.testing.assert_allclose(zc * out.energy_std, rec.energy_.quantile_ * pred.energy_std,
                               rtol=1e-12)
    # a prediction without atomic numbers cannot be recalibrated per species
    bare = type(pred)(energy=pred.energy, energy_var=pred.energy_var, forces=pred.forces,
                      forces_var=pred.forces_var, n_atoms=pred.n_atoms, batch=pred.batch)
    with pytest.raises(ValueError, match="numbers"):
        rec.transform(bare)
    PredictionRecalibrator("conformal").fit(val_pred, val).transform(bare)  # pooled: fine


# ------------------------------------------------------------- persistence
def test_calibrated_wrapper_survives_save_load(ethanol_llpr, tmp_path):
    llpr, _, pool = ethanol_llpr
    val, test = pool[:100], pool[500:520]
    wrapper = llpr.copy().calibrate(val, method="conformal", coverage=0.9, per_species=True)
    wrapper.save(tmp_path / "llpr.pt")
    loaded = load(tmp_path / "llpr.pt")
    assert loaded.calibrated_
    for key in ("energy_", "forces_"):
        a, b = getattr(wrapper.recalibrator_, key), getattr(loaded.recalibrator_, key)
        assert type(b) is ConformalRecalibrator
        for name, value in vars(a).items():
            np.testing.assert_array_equal(np.asarray(getattr(b, name)), np.asarray(value))
    a, b = wrapper.predict(test), loaded.predict(test)
    np.testing.assert_array_equal(b.energy_var, a.energy_var)
    np.testing.assert_array_equal(b.forces_var, a.forces_var)
    assert loaded.fingerprint() == wrapper.fingerprint()
    # the loaded recalibrator still gives the exact conformal interval
    raw = llpr.predict(test, calibrated=False)
    lo, hi = loaded.recalibrator_.forces_.interval(0.9, raw.forces, raw.forces_std,
                                                   numbers=raw.numbers)
    # the saved calibration range: the same structures are beyond it, by the same ratio
    np.testing.assert_array_equal(b.calibration_excess, a.calibration_excess)
    inside = (b.calibration_excess == 1.0)[b.batch]  # beyond it the std is widened
    assert inside.any()
    np.testing.assert_allclose((hi - raw.forces)[inside], ndtri(0.95) * b.forces_std[inside],
                               rtol=1e-12)
    np.testing.assert_allclose(raw.forces - lo, hi - raw.forces, rtol=1e-12)


# ------------------------------------------------------------------ errors
def test_too_few_calibration_points_raise():
    rng = np.random.default_rng(3)
    pred, std, true = rng.normal(size=8), np.ones(8), rng.normal(size=8)
    with pytest.raises(ValueError, match="coverage 0.9 needs at least 9 calibration points"):
        ConformalRecalibrator(coverage=0.9).fit(pred, std, true)
    ConformalRecalibrator(coverage=0.8).fit(pred, std, true)  # needs 4
    with pytest.raises(ValueError, match="needs at least 19 .* got 8"):
        conformal_quantile(np.abs(true - pred), 0.95)
    # per species: an element with too few targets is named
    numbers = np.array([1] * 60 + [8] * 4)
    p, s, t = rng.normal(size=64), np.ones(64), rng.normal(size=64)
    with pytest.raises(ValueError, match=r"element Z=8: coverage 0.9 needs at least 9"):
        ConformalRecalibrator(0.9, per_species=True).fit(p, s, t, numbers=numbers)


def test_wrapper_calibrate_with_too_few_structures_raises(ethanol_llpr):
    llpr, _, pool = ethanol_llpr
    with pytest.raises(ValueError, match="needs at least 9 calibration points"):
        llpr.copy().calibrate(pool[:5], method="conformal", coverage=0.9)


def test_input_errors():
    rng = np.random.default_rng(4)
    pred, std, true = rng.normal(size=(30, 3)), np.ones((30, 3)), rng.normal(size=(30, 3))
    for bad in (0.0, 1.0, -0.1, 1.5, "high"):
        with pytest.raises(ValueError, match="coverage"):
            get_recalibrator("conformal", coverage=bad).fit(pred, std, true)
    rec = ConformalRecalibrator(per_species=True)
    assert rec.needs_numbers and not ConformalRecalibrator().needs_numbers
    with pytest.raises(ValueError, match="numbers"):
        rec.fit(pred, std, true)
    with pytest.raises(ValueError, match="shape"):
        rec.fit(pred, std, true, numbers=np.ones(29, dtype=int))
    numbers = np.repeat([1, 6], 15)  # one per row (atom), broadcast over components
    rec.fit(pred, std, true, numbers=numbers)
    assert list(rec.species_) == [1, 6] and list(rec.species_count_) == [45, 45]
    with pytest.raises(ValueError, match=r"Z=\[8\]"):
        rec.transform(std, numbers=np.full(30, 8))
    # an unseen element with zero std (an isolated atom) needs no quantile
    np.testing.assert_array_equal(rec.transform(np.zeros((2, 3)), numbers=[8, 8]), 0.0)
