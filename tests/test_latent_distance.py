"""LatentDistance: the common check suite, distance-awareness on hotter Cu, the
Mahalanobis and kNN scores and the variance map checked by hand, and the combination
with another wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ETHANOL_SMALL, tiny_model

import mlipuq
from mlipuq import datasets
from mlipuq.errors import NotFittedError
from mlipuq.testing import check_uq_wrapper
from mlipuq.uq import LastLayerLaplace, LatentDistance, load
from mlipuq.uq.latent_distance import fit_variance_map, knn_scores

FAST = {"batch_size": 8, "progress": False}


@pytest.fixture(scope="module")
def ethanol():
    return mlipuq.load(ETHANOL_SMALL)


@pytest.fixture(scope="module")
def copper():
    """A MiniMLIP trained on 300 K EMT Cu bulk frames, and test frames at 300, 900, 1500 K."""
    train = datasets.emt("Cu", 20, (300,), seed=0, kinds="bulk", cache=False)
    test = datasets.emt("Cu", 12, (300, 900, 1500), seed=1, kinds="bulk", cache=False)
    model = tiny_model(train.species)
    mlipuq.train(model, train[:14], epochs=30, lr=1e-2, seed=0, **FAST)
    return model, train, test


# ------------------------------------------------------------- check suite
@pytest.mark.parametrize("options", [{}, {"score": "knn"}, {"score": "gmm"}],
                         ids=["mahalanobis", "knn", "gmm"])
def test_passes_the_check_suite(options, base, ethanol):
    check_uq_wrapper(LatentDistance(base, **options), ethanol[:14], fit_kwargs={})


def test_combined_with_llpr_passes_the_check_suite(base, ethanol):
    llpr = LastLayerLaplace(base, n_samples=0).fit(ethanol[:14])
    check_uq_wrapper(LatentDistance(base, combine=llpr), ethanol[:14], fit_kwargs={})


# ------------------------------------------------------- distance awareness
@pytest.mark.parametrize("score", ["mahalanobis", "knn", "gmm"])
def test_energy_std_grows_with_temperature_on_copper(score, copper):
    model, train, test = copper
    wrapper = LatentDistance(model, score=score).fit(train[:14], train[14:])
    pred = wrapper.predict(test)
    temperature = np.array([a.info["temperature"] for a in test])
    per_atom = pred.energy_std / pred.n_atoms
    medians = [np.median(per_atom[temperature == t]) for t in (300, 900, 1500)]
    assert medians[0] < medians[1] < medians[2], medians
    forces = [np.median(pred.forces_std[temperature[pred.batch] == t]) for t in (300, 900, 1500)]
    assert forces[0] < forces[1] < forces[2], forces


def test_variances_grow_without_bound_but_stay_finite(base, ethanol):
    wrapper = LatentDistance(base).fit(ethanol[:14])
    stds = []
    for factor in (1.0, 0.8, 0.6):
        atoms = ethanol[15].copy()
        atoms.positions = atoms.positions.mean(0) + factor * (atoms.positions - atoms.positions.mean(0))
        pred = wrapper.predict(atoms)
        assert np.all(np.isfinite(pred.energy_var)) and np.all(np.isfinite(pred.forces_var))
        stds.append(float(pred.energy_std[0]))
    assert stds[0] < stds[1] < stds[2]
    # the floor: u = 0 (a stored training atom itself) still has a positive variance
    assert wrapper.energy_a_ > 0 and wrapper.forces_a_ > 0
    assert wrapper.energy_b_ > 0 and wrapper.forces_b_ > 0


# ---------------------------------------------------------------- by hand
def test_knn_score_by_hand():
    reference = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    query = np.array([[0.0, 0.0], [3.0, 4.0]])
    # k = 2: (0 + 3)/2 and (3 + 4)/2; k = 1: 0 and 3; k = 5 falls back to all 3 points
    np.testing.assert_allclose(knn_scores(reference, query, 2), [1.5, 3.5])
    np.testing.assert_allclose(knn_scores(reference, query, 1), [0.0, 3.0])
    np.testing.assert_allclose(knn_scores(reference, query, 5), [7 / 3, 12 / 3])
    # leave one out: each point's own zero distance is skipped
    np.testing.assert_allclose(knn_scores(reference, None, 1, leave_one_out=True), [3, 3, 4])
    np.testing.assert_allclose(knn_scores(reference, None, 2, leave_one_out=True),
                               [3.5, 4.0, 4.5])


def test_mahalanobis_score_by_hand(base):
    """The Mahalanobis score is the distance to the species' training mean in units of
    its training covariance (+1e-4 on the diagonal, here with the all-atoms ridge: in
    the standardised units it is given; each element's: tests/test_latent_ridge.py):
    correlated features count as such."""
    rng = np.random.default_rng(0)
    # two strongly correlated standardised features: a narrow direction (1, -1)
    t = rng.normal(size=4000)
    points = np.stack([t, t + 0.05 * rng.normal(size=t.size)], axis=1)
    wrapper = LatentDistance(base, ridge_scale="all_atoms")
    assert wrapper.score == "mahalanobis"
    wrapper.gmm_ = {1: wrapper._fit_gmm(points, seed=0)}
    query = np.array([[1.0, 1.0], [0.5, -0.5], [0.0, 0.0]])
    centred = query - points.mean(axis=0)
    cov = np.cov(points, rowvar=False, bias=True) + 1e-4 * np.eye(2)
    expected = np.sqrt(np.einsum("ij,jk,ik->i", centred, np.linalg.inv(cov), centred))
    np.testing.assert_allclose(wrapper._raw_scores(1, query), expected, rtol=1e-6)
    # the same Euclidean step is ~40x farther across the training cloud than along it
    along, across = wrapper._raw_scores(1, np.array([[0.7, 0.7], [0.7, -0.7]]))
    assert across > 15 * along


def test_per_species_scores_by_hand(base):
    """Scores use only the atom's own species and its scale; an element without
    training atoms gets its distance to the nearest training element."""
    wrapper = LatentDistance(base, score="knn", n_neighbors=1)
    wrapper.feature_mean_, wrapper.feature_scale_ = np.zeros(2), np.array([1.0, 2.0])
    wrapper.species_ = [1, 6]
    wrapper.points_ = {1: np.array([[0.0, 0.0], [1.0, 0.0]]), 6: np.array([[10.0, 0.0]])}
    wrapper.score_scale_ = {1: 0.5, 6: 2.0}
    phi = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [13.0, 8.0], [0.0, 0.0]])
    numbers = np.array([1, 1, 6, 6, 8])
    # standardised: feature 2 halved; H: 0, 1 -> /0.5; C: 0, |(3, 4)| = 5 -> /2;
    # O (no training atoms): min over H (0 / 0.5) and C (10 / 2) = 0
    np.testing.assert_allclose(wrapper.scores(phi, numbers), [0.0, 2.0, 0.0, 2.5, 0.0])


def test_variance_map_recovers_known_parameters():
    rng = np.random.default_rng(0)
    u2 = rng.uniform(0, 9, size=20000)
    a, b = 0.02, 0.005
    errors = rng.normal(size=u2.size) * np.sqrt(a + b * u2)
    fitted = fit_variance_map(errors**2, np.ones(u2.size), u2)
    assert fitted["a"] == pytest.approx(a, rel=0.1)
    assert fitted["b"] == pytest.approx(b, rel=0.1)
    # a cap on a/b holds (c_max = 1): the distance term keeps at least half at u = 1
    capped = fit_variance_map(errors**2, np.ones(u2.size), u2, c_max=1.0)
    assert capped["a"] <= capped["b"] * (1 + 1e-9)
    # with another wrapper's variance that already explains the errors, λ ≈ 1
    other = a + b * u2
    combined = fit_variance_map(errors**2, np.ones(u2.size), u2, other)
    assert combined["other_scale"] == pytest.approx(1.0, abs=0.15)
    assert combined["b"] < 0.2 * b


def test_structure_covariance_default_follows_the_energy_distance(base):
    """Since 2026-12-04: chosen on the held-out structures for the structure distance,
    Ledoit-Wolf where there is no structure distance (independent atoms)."""
    assert LatentDistance(base).structure_covariance == "held-out"
    assert LatentDistance(base, energy_distance="atoms").structure_covariance == "ledoit-wolf"
    assert LatentDistance(base, structure_covariance="ledoit-wolf").structure_covariance == (
        "ledoit-wolf")
    assert LatentDistance(base).min_combined_share is None


def test_variance_map_floor_keeps_the_distance_share():
    """``min_share``: where another variance explains the errors and the scores do not,
    the free joint fit all but drops the distance term; the floor keeps its share of
    the mean variance at exactly ``min_share`` (the bound is active); where the term
    explains the errors the floor changes nothing; ``min_share=1`` leaves λ = 0."""
    rng = np.random.default_rng(1)
    other = rng.uniform(0.01, 0.1, 20000)
    u2 = rng.uniform(0, 9, other.size)
    errors = rng.normal(size=other.size) * np.sqrt(other)

    def share(fit):
        own = np.mean(fit["a"] + fit["b"] * u2)
        return own / (own + fit["other_scale"] * np.mean(other))

    free = fit_variance_map(errors**2, np.ones(u2.size), u2, other)
    assert share(free) < 0.05 and free["other_scale"] == pytest.approx(1.0, abs=0.1)
    for floor in (0.1, 0.3):
        kept = fit_variance_map(errors**2, np.ones(u2.size), u2, other, min_share=floor)
        assert share(kept) == pytest.approx(floor, rel=1e-6)
        assert kept["nll"] >= free["nll"] - 1e-9
    alone = fit_variance_map(errors**2, np.ones(u2.size), u2, other, min_share=1.0)
    assert alone["other_scale"] == 0.0
    # the distance term explains the errors, the other variance is small: not binding
    by_distance = rng.normal(size=u2.size) * np.sqrt(0.01 + 0.004 * u2)
    small = rng.uniform(0.001, 0.002, u2.size)
    a = fit_variance_map(by_distance**2, np.ones(u2.size), u2, small)
    b = fit_variance_map(by_distance**2, np.ones(u2.size), u2, small, min_share=0.1)
    assert b["a"] == pytest.approx(a["a"], rel=1e-4) and b["b"] == pytest.approx(a["b"], rel=1e-4)
    with pytest.raises(ValueError, match="min_share"):
        fit_variance_map(errors**2, np.ones(u2.size), u2, other, min_share=0.0)


# ------------------------------------------------------------------ physics
def test_lone_atom_has_zero_force_variance(base, ethanol):
    import ase

    wrapper = LatentDistance(base).fit(ethanol[:14])
    pred = wrapper.predict(ase.Atoms("H", positions=[[0.0, 0.0, 0.0]]))
    assert np.all(pred.forces_var == 0) and pred.energy_var[0] > 0


def test_does_not_modify_the_model_and_is_reproducible(base, ethanol):
    before = [p.detach().clone() for p in base.parameters()]
    a = LatentDistance(base).fit(ethanol[:14], seed=3).predict(ethanol[14:])
    b = LatentDistance(base).fit(ethanol[:14], seed=3).predict(ethanol[14:])
    np.testing.assert_array_equal(a.energy_var, b.energy_var)
    assert all(torch.equal(p, q) for p, q in zip(base.parameters(), before))


def test_max_points_bounds_the_stored_features(base, ethanol):
    wrapper = LatentDistance(base, score="knn", max_points=10).fit(ethanol[:14])
    assert wrapper.points_ and all(len(p) <= 10 for p in wrapper.points_.values())
    assert all(p.dtype == np.float64 for p in wrapper.points_.values())


def test_combined_save_load_keeps_the_other_wrapper(base, ethanol, tmp_path):
    llpr = LastLayerLaplace(base, n_samples=0).fit(ethanol[:14])
    combined = LatentDistance(base, combine=llpr).fit(ethanol[:10], ethanol[10:14])
    pred, other = combined.predict(ethanol[14:]), llpr.predict(ethanol[14:], calibrated=False)
    np.testing.assert_array_equal(pred.energy, other.energy)
    assert np.all(pred.forces_var >= combined.forces_other_scale_ * other.forces_var)
    combined.save(tmp_path / "c.pt")
    loaded = load(tmp_path / "c.pt")
    assert type(loaded.combine).__name__ == "LastLayerLaplace"
    again = loaded.predict(ethanol[14:])
    np.testing.assert_allclose(again.forces_var, pred.forces_var, rtol=1e-12)
    np.testing.assert_allclose(again.energy_var, pred.energy_var, rtol=1e-12)


def test_a_combination_calibrates_as_the_wrapper_it_extends(base, ethanol, fitted_members,
                                                            tmp_path):
    """With a committee the combined energy variance stays mostly a K-member estimate
    (t-like z-scores): the default calibration is the committee's, a Student-t for
    both targets; with LLPR its scalar energy factor; alone, since 2026-12-05, the
    committees' Student-t."""
    from mlipuq.uq import DeepEnsemble

    committee = LatentDistance(base, combine=DeepEnsemble(fitted_members))
    assert committee.default_calibration == DeepEnsemble.default_calibration
    assert committee.default_calibration["energy"] == "student_t"
    llpr = LastLayerLaplace(base, n_samples=0).fit(ethanol[:14])
    assert LatentDistance(base, combine=llpr).default_calibration == {
        "energy": "scalar", "forces": "student_t"}
    assert LatentDistance(base).default_calibration == DeepEnsemble.default_calibration
    fitted = committee.fit(ethanol[:10], ethanol[10:14]).calibrate(ethanol[10:14])
    assert fitted.predict(ethanol[14:]).energy_dof is not None  # the t's ν
    fitted.save(tmp_path / "w.pt")
    assert load(tmp_path / "w.pt").default_calibration == DeepEnsemble.default_calibration


def test_energy_distance_none_keeps_the_other_wrappers_energies(base, ethanol, fitted_members,
                                                                tmp_path):
    """``energy_distance=None``: the energy variance is the combined wrapper's (no
    latent part, λ_E = 1), the forces get the latent term as with the
    default, fitted alike; saved and loaded with their identity; refused alone."""
    from mlipuq.uq import DeepEnsemble

    committee = DeepEnsemble(fitted_members)
    options = dict(combine=committee)
    forces_only = LatentDistance(base, energy_distance=None, **options).fit(
        ethanol[:10], ethanol[10:14])
    both = LatentDistance(base, **options).fit(ethanol[:10], ethanol[10:14])
    assert forces_only.structure_ is None and "energy_distance=None" in repr(forces_only)
    test, raw = ethanol[14:], dict(calibrated=False, composition=False)
    pred, other = forces_only.predict(test, **raw), committee.predict(test, **raw)
    np.testing.assert_array_equal(pred.energy_var, other.energy_var)
    assert (forces_only.forces_a_, forces_only.forces_b_, forces_only.forces_other_scale_) == (
        both.forces_a_, both.forces_b_, both.forces_other_scale_)
    np.testing.assert_allclose(pred.forces_var, both.predict(test, **raw).forces_var,
                               rtol=1e-12)
    forces_only.calibrate(ethanol[10:14]).save(tmp_path / "f.pt")
    loaded = load(tmp_path / "f.pt")
    assert loaded.energy_distance is None and loaded.fingerprint() == forces_only.fingerprint()
    np.testing.assert_array_equal(loaded.predict(test).energy_std,
                                  forces_only.predict(test).energy_std)
    with pytest.raises(ValueError, match="needs combine="):
        LatentDistance(base, energy_distance=None)


def test_combined_committee_members_are_stretched_to_the_combined_variance(
        base, ethanol, fitted_members):
    """With a committee, the combination passes its members on, stretched about the
    mean so that their population variance is the combined one (energies with
    ``energy_distance=None``: the committee's own members); member forces are then no
    energy gradients, so member-wise MD is refused with a pointer to the committee."""
    from mlipuq.uq import DeepEnsemble

    committee = DeepEnsemble(fitted_members)
    test, raw = ethanol[14:], dict(calibrated=False, composition=False)
    for energy_distance in ("structure", None):
        wrapper = LatentDistance(base, combine=committee, energy_distance=energy_distance).fit(
            ethanol[:10], ethanol[10:14])
        pred, other = wrapper.predict(test, **raw), committee.predict(test, **raw)
        assert wrapper.n_members == committee.n_members == pred.n_members
        np.testing.assert_allclose(pred.forces_members.var(axis=0), pred.forces_var, rtol=1e-10)
        np.testing.assert_allclose(pred.energy_members.var(axis=0), pred.energy_var, rtol=1e-10)
        np.testing.assert_allclose(pred.forces_members.mean(axis=0), other.forces, rtol=1e-10,
                                   atol=1e-12)
        grown = pred.forces_var.ravel() > other.forces_var.ravel() * (1 + 1e-6)
        assert grown.any()  # the latent part is there, and the members carry it
    np.testing.assert_array_equal(pred.energy_members, other.energy_members)  # the committee's
    wrapper.calibrate(ethanol[10:14])
    calibrated = wrapper.members(test, forces=False)
    np.testing.assert_allclose(calibrated.forces_members.std(axis=0), calibrated.forces_std,
                               rtol=1e-8)
    assert not wrapper.has_consistent_members
    with pytest.raises(ValueError, match="DeepEnsemble itself"):
        wrapper.members(test, forces=True)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("options", [
    {"score": "euclidean"}, {"n_neighbors": 0}, {"max_points": 2.5},
    {"min_distance_share": 0.0}, {"min_distance_share": 1.5},
])
def test_constructor_refuses_bad_options(options, base):
    with pytest.raises(ValueError):
        LatentDistance(base, **options)


def test_fit_refuses_bad_options(base, ethanol):
    with pytest.raises(TypeError, match="unexpected option"):
        LatentDistance(base).fit(ethanol[:4], epochs=3)
    with pytest.raises(ValueError, match="val_fraction"):
        LatentDistance(base).fit(ethanol[:4], val_fraction=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        LatentDistance(base).fit(ethanol[:1])
    with pytest.raises(TypeError, match="combine"):
        LatentDistance(base, combine=base)
    with pytest.raises(NotFittedError):
        LatentDistance(base, combine=LastLayerLaplace(base)).fit(ethanol[:4])
