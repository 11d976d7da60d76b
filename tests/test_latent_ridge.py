"""``LatentDistance(ridge_scale="per_species")``: the Gaussian scores' covariance ridge
relative to each element's own spread (the score by hand, its invariance to a
feature's units, the one-element case, persistence, refusals and ``fit
--ridge-scale``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import mlipuq
from mlipuq.testing import check_uq_wrapper
from mlipuq.uq import EvidentialHead, LatentDistance, ShallowEnsemble
from mlipuq.uq import load as load_wrapper
from mlipuq.uq.latent_maps import fit_gmm, mahalanobis
from conftest import tiny_model
from test_latent_layers import atom_scores, check_latent_flag


def _points(seed=0, n=400):
    """Correlated 3-feature points, spreads 0.5 to 2."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) @ np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3],
                                            [0.0, 0.0, 1.0]])
    return x * np.array([2.0, 1.0, 0.5]) + np.array([5.0, -1.0, 0.2])


def test_rescaled_score_is_the_mahalanobis_distance_by_hand():
    """d² = zᵀ (C + 1e-4 I)⁻¹ z, z the points' own standardisation, C its biased
    covariance (a one-component mixture's maximum-likelihood fit)."""
    points, query = _points(0), _points(1, 50)
    mean, std = points.mean(axis=0), points.std(axis=0)
    z, zq = (points - mean) / std, (query - mean) / std
    precision = np.linalg.inv(np.cov(z, rowvar=False, bias=True) + 1e-4 * np.eye(3))
    by_hand = np.sqrt(np.einsum("ij,jk,ik->i", zq, precision, zq))
    model = fit_gmm(points, 1, seed=0, rescale=True)
    np.testing.assert_allclose(mahalanobis(model, query), by_hand, rtol=1e-6)


def test_rescaled_score_ignores_a_features_units():
    """Scaling one feature by 1e-3 leaves the rescaled scores unchanged; without the
    rescaling the ridge then swamps that feature's direction (the scores change)."""
    points, query = _points(0), _points(1, 50)
    query[:, 2] += 2.5  # far along the third feature (5 spreads)
    scaled = np.array([1.0, 1.0, 1e-3])
    scores = {rescale: [mahalanobis(fit_gmm(p, 1, seed=0, rescale=rescale), q)
                        for p, q in ((points, query), (points * scaled, query * scaled))]
              for rescale in (True, False)}
    np.testing.assert_allclose(scores[True][1], scores[True][0], rtol=1e-6)
    assert np.median(scores[False][1]) < 0.5 * np.median(scores[False][0])


def test_one_element_scores_agree_and_several_differ(fitted_members, ethanol):
    """One element (EMT Cu cells, an untrained model): both ridges give the same scores
    (the standardisation over all atoms is already the element's own); with ethanol's
    three elements they differ."""
    copper = mlipuq.datasets.emt("Cu", 8, (300,), seed=0, kinds="bulk", cache=False)
    cases = {"Cu": (tiny_model(copper.species), copper),
             "ethanol": (fitted_members[0], ethanol)}
    scores = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few structures for a covariance
        for key, (model, data) in cases.items():
            for ridge in ("all_atoms", "per_species"):
                wrapper = LatentDistance(model, ridge_scale=ridge, energy_distance="atoms")
                wrapper.fit(data[:6], data[6:])
                scores[key, ridge] = atom_scores(wrapper, data[6:])
    np.testing.assert_allclose(scores["Cu", "per_species"], scores["Cu", "all_atoms"],
                               rtol=1e-6)
    assert not np.allclose(scores["ethanol", "per_species"], scores["ethanol", "all_atoms"],
                           rtol=1e-2)


def test_passes_the_check_suite(fitted_members, ethanol):
    check_uq_wrapper(LatentDistance(fitted_members[0], ridge_scale="all_atoms"), ethanol[:14],
                     fit_kwargs={})


def test_saved_loaded_and_refused(fitted_members, ethanol, tmp_path):
    wrapper = LatentDistance(fitted_members[0], ridge_scale="per_species").fit(
        ethanol[:14], ethanol[14:])
    wrapper.save(tmp_path / "w.pt")
    loaded = load_wrapper(tmp_path / "w.pt")
    assert loaded.ridge_scale == "per_species" and "ridge_scale" not in repr(loaded)
    assert "ridge_scale='all_atoms'" in repr(LatentDistance(fitted_members[0],
                                                           ridge_scale="all_atoms"))
    np.testing.assert_array_equal(loaded.predict(ethanol[14:]).forces_std,
                                  wrapper.predict(ethanol[14:]).forces_std)
    # the default since 2026-12-06; files saved before (without the key) load as they were
    default = LatentDistance(fitted_members[0])
    assert default.ridge_scale == "per_species" and default.config()["ridge_scale"] == "per_species"
    older = {k: v for k, v in wrapper.config().items() if k != "ridge_scale"}
    assert LatentDistance._from_config([fitted_members[0]], older).ridge_scale == "all_atoms"
    knn = LatentDistance(fitted_members[0], score="knn")  # no ridge: nothing saved
    assert knn.ridge_scale == "all_atoms" and "ridge_scale" not in knn.config()
    with pytest.raises(ValueError, match="ridge_scale must be one of"):
        LatentDistance(fitted_members[0], ridge_scale="species")
    with pytest.raises(ValueError, match="score='knn' has none"):
        LatentDistance(fitted_members[0], score="knn", ridge_scale="per_species")


@pytest.mark.parametrize("cls", [ShallowEnsemble, EvidentialHead])
def test_wrappers_terms_take_the_option(cls, fitted_members, ethanol, tmp_path):
    """The shallow ensemble's and the evidential head's latent terms fit each atom's
    Gaussian as LatentDistance does, with its ridge by default (each element's own
    spread; ``distance_ridge_scale="all_atoms"`` the ridge before, and how files
    without the key load); saved and loaded; kNN refuses it."""
    model, train, val = fitted_members[0], ethanol[:14], ethanol[14:]
    fast = dict(epochs=2, batch_size=8, seed=0, progress=False)
    wrapper = cls(model).fit(train, val, **fast)
    term = wrapper.distance_
    assert wrapper.distance_ridge_scale == term.ridge_scale == "per_species"
    assert cls(model, distance="knn").distance_ridge_scale == "all_atoms"  # no ridge
    gmms = {ridge: LatentDistance(model, ridge_scale=ridge,  # in the wrapper's features
                                  features=wrapper.distance_features).fit(train, val).gmm_
            for ridge in ("per_species", "all_atoms")}
    for z in gmms["per_species"]:
        for key in ("means", "precisions_cholesky"):
            np.testing.assert_allclose(term.gmm_[z][key], gmms["per_species"][z][key],
                                       rtol=1e-12, err_msg=key)
    before = cls(model, distance_ridge_scale="all_atoms").fit(train, val, **fast).distance_
    for z in gmms["all_atoms"]:
        np.testing.assert_allclose(before.gmm_[z]["precisions_cholesky"],
                                   gmms["all_atoms"][z]["precisions_cholesky"], rtol=1e-12)
    assert not all(np.allclose(term.gmm_[z]["precisions_cholesky"],
                               gmms["all_atoms"][z]["precisions_cholesky"], rtol=1e-3)
                   for z in gmms["all_atoms"])
    wrapper.save(tmp_path / "w.pt")
    loaded = load_wrapper(tmp_path / "w.pt")
    assert loaded.distance_ridge_scale == "per_species" and repr(loaded) == repr(wrapper)
    np.testing.assert_array_equal(loaded.predict(val).forces_std, wrapper.predict(val).forces_std)
    older = {k: v for k, v in wrapper.config().items() if k != "distance_ridge_scale"}
    assert cls._from_config([model], older).distance_ridge_scale == "all_atoms"
    with pytest.raises(ValueError, match="score='knn' has none"):
        cls(model, distance="knn", distance_ridge_scale="per_species")
    with pytest.raises(ValueError, match="distance_ridge_scale must be one of"):
        cls(model, distance_ridge_scale="species")


def test_cli_ridge_scale_flag(fitted_members, ethanol, tmp_path, capsys):
    check_latent_flag(fitted_members[0], ethanol, tmp_path, capsys, "--ridge-scale",
                      "all_atoms", "ridge_scale",  # the default is per_species
                      {"shallow": "all_atoms", "evidential": "all_atoms"})


def _median_growth(wrapper, same, wide) -> float:
    """Median score of ``wide``'s atoms over that of ``same``'s."""
    return float(np.median(atom_scores(wrapper, wide)) / np.median(atom_scores(wrapper, same)))


def test_wider_alloy_cells_score_farther_with_each_elements_ridge():
    """Trained on 32-atom Ni₃Cu cells narrower than twice the cutoff (7.1 Å < 8 Å), the
    atoms of 108-atom cells at the same temperature lie farther from the training atoms
    of their element when the ridge is relative to each element's spread (docs/latent.md,
    "The ridge relative to each element")."""
    composition = {"Ni": 0.75, "Cu": 0.25}
    train = mlipuq.datasets.emt(composition, 24, (300,), seed=0, kinds="bulk", cache=False)
    same = mlipuq.datasets.emt(composition, 4, (300,), seed=1, kinds="bulk", cache=False)
    wide = mlipuq.datasets.emt(composition, 2, (300,), seed=2, kinds="bulk", size=3,
                               cache=False)
    model = tiny_model(train.species)
    growth = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # narrow cells (the point), few structures
        mlipuq.train(model, train[:18], epochs=20, lr=1e-2, seed=0, batch_size=8,
                     progress=False)
        for ridge in ("all_atoms", "per_species"):
            wrapper = LatentDistance(model, features="all_layers", ridge_scale=ridge)
            growth[ridge] = _median_growth(wrapper.fit(train[:18], train[18:]), same, wide)
    assert growth["per_species"] > 1.2 * growth["all_atoms"], growth


def test_rescaled_spread_has_a_floor():
    """A feature constant within the points (spread 0) is standardised by the floor
    (1e-4), not by its rounding: with the ridge (1e-4 of the floor's square) a
    deviation of 1e-6 adds 1 to the squared score."""
    points = _points(0)
    points[:, 2] = 0.7
    model = fit_gmm(points, 1, seed=0, rescale=True)
    query = points[:3].copy()
    query[:, 2] += 1e-6
    shifted = mahalanobis(model, query) ** 2 - mahalanobis(model, points[:3]) ** 2
    np.testing.assert_allclose(shifted, 1.0, rtol=1e-6)
