"""Committee reweighting (mlipuq.propagation.reweight) on problems with analytic answers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase import units

from mlipuq.propagation import ObservableEstimate, block_standard_error, reweight

T = 300.0
KT = units.kB * T
K_MEAN = 2.0  # eV/Å², spring constant of the sampled (mean) potential
EPS = np.array([-0.05, -0.02, 0.0, 0.03, 0.05])  # member k has spring k_mean (1 + eps_k)
N = 200_000


def harmonic_committee(seed=0, n=N, eps=EPS):
    """Exact Boltzmann samples of V = k x²/2 and the members' energies on them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, np.sqrt(KT / K_MEAN), size=n)
    mean_energy = 0.5 * K_MEAN * x**2
    member_energies = 0.5 * K_MEAN * (1 + eps)[None, :] * x[:, None] ** 2
    return x, member_energies, mean_energy


def test_direct_harmonic_matches_kT_over_k():
    """<x²>_k = kT / k_k for each member, within 4 standard errors of the
    self-normalised importance-sampling estimate (delta method:
    se² = Σ_i w̃_i² (A_i - Â)², w̃ the normalised weights)."""
    x, v, v0 = harmonic_committee()
    est = reweight(x**2, v, v0, T, method="direct")
    exact = KT / (K_MEAN * (1 + EPS))
    w = np.exp(-(v - v0[:, None]) / KT)
    w /= w.sum(axis=0)
    se = np.sqrt(((x[:, None] ** 2 - est.members[None, :]) ** 2 * w**2).sum(axis=0))
    assert np.all(np.abs(est.members - exact) < 4 * se)
    # the members really differ (the test could fail): spread >> standard error
    assert est.std > 10 * se.max()
    assert est.members.shape == (len(EPS),)
    np.testing.assert_allclose(est.mean, est.members.mean())
    np.testing.assert_allclose(est.sampled, np.mean(x**2))


def test_cumulant_harmonic_within_derived_tolerance():
    """Cumulant: <x²>_k ≈ <x²> - β cov(x², ΔV_k) = s²(1 - ε_k) exactly in
    expectation (s² = kT/k̄, since cov(x², x²) = 2 s⁴), while the truth is
    s²/(1 + ε_k): the first-order expansion is off by s² ε²/(1 + ε), 0.26 %
    for |ε| = 0.05. So (i) the estimate equals s²(1 - ε_k) within 4 standard
    errors, and (ii) it equals kT/k_k within 4 standard errors plus that bound."""
    x, v, v0 = harmonic_committee(seed=1)
    est = reweight(x**2, v, v0, T, method="cumulant")
    s2 = KT / K_MEAN
    b = 1 / KT
    a = x**2
    dv = v - v0[:, None]
    per_frame = a[:, None] - b * (a - a.mean())[:, None] * (dv - dv.mean(axis=0))
    se = per_frame.std(axis=0) / np.sqrt(len(x))
    first_order = s2 * (1 - EPS)
    assert np.all(np.abs(est.members - first_order) < 4 * se)
    exact = KT / (K_MEAN * (1 + EPS))
    bias_bound = s2 * EPS**2 / (1 + EPS)
    assert np.all(np.abs(est.members - exact) < 4 * se + bias_bound)
    assert est.method == "cumulant"


def test_identical_members_are_the_plain_average():
    rng = np.random.default_rng(2)
    v0 = rng.normal(size=100)
    a = rng.normal(size=(100, 4, 2))  # array observable per frame
    v = v0[:, None] + np.array([0.3, 0.3, 0.3])  # constant offsets change nothing
    for method in ("direct", "cumulant"):
        est = reweight(a, v, v0, T, method=method)
        assert est.members.shape == (3, 4, 2)
        np.testing.assert_allclose(est.members, np.broadcast_to(a.mean(axis=0), (3, 4, 2)))
        np.testing.assert_allclose(est.std, 0.0, atol=1e-12)
        np.testing.assert_allclose(est.ess, 1.0)


def test_array_observable_matches_scalar_columns():
    x, v, v0 = harmonic_committee(n=5000)
    stacked = np.stack([x**2, x**4, np.abs(x)], axis=1)
    for method in ("direct", "cumulant"):
        est = reweight(stacked, v, v0, T, method=method)
        for c in range(3):
            single = reweight(stacked[:, c], v, v0, T, method=method)
            np.testing.assert_allclose(est.members[:, c], single.members, rtol=1e-12)


def test_ess_is_kish_and_low_overlap_warns():
    x, v, v0 = harmonic_committee(n=20000, eps=np.array([0.0, -0.95]))
    with pytest.warns(RuntimeWarning, match="effective sample size"):
        est = reweight(x**2, v, v0, T)
    w = np.exp(-(v[:, 1] - v0) / KT)
    np.testing.assert_allclose(est.ess[1], w.sum() ** 2 / (len(w) * (w**2).sum()))
    assert est.ess[0] == pytest.approx(1.0)
    assert est.ess[1] < 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reweight(x**2, v, v0, T, ess_warning=0.0)


def test_estimate_type_and_str():
    x, v, v0 = harmonic_committee(n=1000)
    est = reweight(x**2, v, v0, T)
    assert isinstance(est, ObservableEstimate)
    assert "±" in str(est)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(observable=np.zeros(9)), "first axis"),
        (dict(member_energies=np.zeros(10)), "n_frames, K"),
        (dict(mean_energy=np.zeros(9)), "mean_energy"),
        (dict(temperature_K=0.0), "positive"),
        (dict(temperature_K=-5.0), "positive"),
        (dict(method="exact"), "unknown method"),
        (dict(observable=np.full(10, np.nan)), "NaN"),
    ],
)
def test_bad_input(kwargs, match):
    args = dict(observable=np.zeros(10), member_energies=np.zeros((10, 3)),
                mean_energy=np.zeros(10), temperature_K=300.0)
    args.update(kwargs)
    method = args.pop("method", "direct")
    with pytest.raises(ValueError, match=match):
        reweight(args["observable"], args["member_energies"], args["mean_energy"],
                 args["temperature_K"], method=method)


def test_block_standard_error_of_correlated_series():
    """AR(1) with correlation 0.9: the block estimate is close to the exact
    standard error sqrt(var (1+φ)/(1-φ) / n), far above the naive one."""
    rng = np.random.default_rng(3)
    phi, n = 0.9, 100_000
    noise = rng.normal(size=n)
    x = np.empty(n)
    x[0] = noise[0]
    for i in range(1, n):
        x[i] = phi * x[i - 1] + noise[i]
    exact = np.sqrt(1 / (1 - phi**2) * (1 + phi) / (1 - phi) / n)
    se = block_standard_error(x, n_blocks=20)
    assert 0.5 * exact < se < 1.6 * exact
    assert se > 3 * x.std() / np.sqrt(n)
    with pytest.raises(ValueError):
        block_standard_error(x[:5], n_blocks=20)
