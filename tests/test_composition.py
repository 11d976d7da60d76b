"""Composition as a source of uncertainty: reference energies a one-stoichiometry
training set leaves undetermined give other stoichiometries a large energy std."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

import mlipuq
from mlipuq import datasets
from mlipuq.data import composition_matrix, undetermined_offsets
from mlipuq.models import MiniMLIP
from mlipuq.training import UndeterminedReferenceWarning, fit_offset_drift
from mlipuq.uq import (
    DeepEnsemble,
    EvidentialHead,
    LastLayerLaplace,
    LatentDistance,
    ShallowEnsemble,
)

FAST = dict(batch_size=8, progress=False)


def _model(seed: int = 0) -> MiniMLIP:
    return MiniMLIP(["H", "C", "O"], cutoff=4.0, width=16, n_interactions=2, n_rbf=8, seed=seed)


def test_null_space_of_one_stoichiometry():
    ethanol = np.array([[6.0, 2.0, 1.0], [6.0, 2.0, 1.0]])  # H, C, O counts
    basis = undetermined_offsets(ethanol)
    assert basis.shape == (3, 2)
    np.testing.assert_allclose(ethanol @ basis, 0.0, atol=1e-12)
    np.testing.assert_allclose(basis.T @ basis, np.eye(2), atol=1e-12)
    several = np.array([[6.0, 2.0, 1.0], [4.0, 1.0, 1.0], [8.0, 5.0, 2.0]])
    assert undetermined_offsets(several).shape == (3, 0)


@pytest.fixture(scope="module")
def ethanol_model():
    train = datasets.ethanol("train")[:60]
    model = _model()
    with pytest.warns(UndeterminedReferenceWarning, match="determine only 1 of the 3"):
        mlipuq.train(model, train, epochs=15, lr=5e-3, seed=0, **FAST)
    return model, train


def test_prior_scale_and_variance_by_hand(ethanol_model):
    model, train = ethanol_model
    counts = composition_matrix(train, model.species)
    tau2 = np.mean(train.energies**2 / (counts**2).sum(axis=1))
    assert model.offset_prior_std == pytest.approx(np.sqrt(tau2), rel=1e-12)
    methanol = np.array([[4.0, 1.0, 1.0]])
    c = methanol[0]
    u = counts[0] / np.linalg.norm(counts[0])
    expected = tau2 * (c @ c - (c @ u) ** 2)  # |c|² minus its part along ethanol's composition
    expected += (c @ model.offset_basis @ model.offset_drift) ** 2  # the network's own share
    assert model.composition_variance(methanol)[0] == pytest.approx(expected, rel=1e-9)
    assert model.composition_variance(counts[:3]) == pytest.approx(0.0, abs=1e-12 * tau2)


def test_drift_term_by_hand():
    """Var = τ²|Nᵀc|² + (cᵀNδ)²: N = (1, -1)/√2, τ = 0.1 eV, δ = 2 eV and c = (3, 1)
    give Nᵀc = √2 and 0.02 + 8 eV²; the training composition (1, 1) gives 0."""
    model = MiniMLIP(["Cu", "Au"], cutoff=4.0, width=8, n_interactions=1, n_rbf=4)
    basis = np.array([[1.0], [-1.0]]) / np.sqrt(2.0)
    model.set_atomic_energies({"Cu": -3.0, "Au": -3.0}, undetermined=basis, prior_std=0.1)
    counts = np.array([[3.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(model.composition_variance(counts), [0.02, 0.0], atol=1e-15)
    model.set_offset_drift([2.0])
    np.testing.assert_allclose(model.composition_variance(counts), [8.02, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match=r"one finite value .* \(1\)"):
        model.set_offset_drift([1.0, np.nan])
    with pytest.raises(ValueError, match="finite"):
        model.set_offset_drift([np.nan])
    model.set_atomic_energies({"Cu": -3.0, "Au": -3.0}, undetermined=basis, prior_std=0.1)
    assert model.offset_drift is None  # new reference energies: the drift is measured anew
    with pytest.raises(ValueError, match="orthonormal"):
        model.set_atomic_energies({"Cu": -3.0, "Au": -3.0}, undetermined=2 * basis,
                                  prior_std=0.1)


def test_drift_follows_the_offsets_training_left_free(ethanol_model):
    """Moving the reference energies by α along the undetermined directions leaves
    every ethanol energy unchanged and moves the measured drift by exactly α."""
    model, train = ethanol_model
    assert model.offset_drift is not None and model.offset_drift.shape == (2,)
    moved = copy.deepcopy(model)
    basis, alpha = model.offset_basis, np.array([0.7, -1.3])
    shifted = np.array([model.atomic_energies[z] for z in model.species]) + basis @ alpha
    moved.set_atomic_energies(dict(zip(model.species, shifted)), undetermined=basis,
                              prior_std=model.offset_prior_std)
    fit_offset_drift(moved, train)
    np.testing.assert_allclose(moved.offset_drift, model.offset_drift + alpha, atol=1e-9)
    np.testing.assert_allclose(moved.compute(train[:5])["energy"],
                               model.compute(train[:5])["energy"], atol=1e-6)


def test_drift_accounts_for_a_new_stoichiometry_error():
    """EMT Cu₃Au (24 Cu, 8 Au in every cell) leaves e_Cu - e_Au free: on the
    equiatomic alloy CuAu the energy error has the sign of the drift the network
    holds there, and the composition std alone gives 95 % intervals that cover
    it, which the prior τ alone does not."""
    train = datasets.emt({"Cu": 0.75, "Au": 0.25}, n_structures=40, kinds=("bulk",), seed=3)
    model = MiniMLIP(["Cu", "Au"], cutoff=4.0, width=16, n_interactions=2, n_rbf=8, seed=0)
    with pytest.warns(UndeterminedReferenceWarning):
        mlipuq.train(model, train, epochs=20, lr=5e-3, seed=0, **FAST)
    cuau = datasets.emt({"Cu": 0.5, "Au": 0.5}, n_structures=6, kinds=("bulk",), seed=4)
    counts = composition_matrix(cuau, model.species)
    error = model.compute(cuau)["energy"] - cuau.energies
    drift = counts @ model.offset_basis @ model.offset_drift
    prior = model.offset_prior_std * np.linalg.norm(counts @ model.offset_basis, axis=1)
    assert np.all(np.sign(drift) == np.sign(error)), (error, drift)
    assert np.all(1.96 * np.sqrt(model.composition_variance(counts)) >= np.abs(error))
    assert np.all(1.96 * prior < np.abs(error) / 2)  # the prior alone: far from it


def test_isolated_atom_energies_determine_the_offsets():
    train = datasets.ethanol("train")[:20]
    model = _model()
    model.set_atomic_energies(datasets.isolated_atom_energies("ethanol"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndeterminedReferenceWarning)
        mlipuq.train(model, train, epochs=1, seed=0, **FAST)
    assert not np.any(model.composition_variance(np.array([[4.0, 1.0, 1.0]])))


def test_composition_variance_survives_save_and_load(ethanol_model, tmp_path):
    model, _ = ethanol_model
    model.save(tmp_path / "m.pt")
    loaded = mlipuq.models.load(tmp_path / "m.pt")
    counts = np.array([[8.0, 5.0, 2.0], [4.0, 1.0, 1.0]])
    np.testing.assert_array_equal(loaded.composition_variance(counts),
                                  model.composition_variance(counts))


def _wrappers(model, train, val):
    other = _model(seed=1)
    with pytest.warns(UndeterminedReferenceWarning):
        mlipuq.train(other, train, epochs=15, lr=5e-3, seed=1, **FAST)
    return {
        "llpr": LastLayerLaplace(model).fit(train),
        "shallow": ShallowEnsemble(model, n_heads=4).fit(train, val, epochs=3, **FAST),
        "evidential": EvidentialHead(model).fit(*val.split([0.5, 0.5]), epochs=5, **FAST),
        "deep": DeepEnsemble([model, other]).fit_distance(train, val),
        "latent": LatentDistance(model).fit(train, val),
    }


def test_a_new_stoichiometry_gets_an_honest_energy_std(ethanol_model):
    """Ethanol-trained, asked about acetylacetone (same elements, C5H8O2): every
    wrapper's energy std is at least a third of its error, after calibration on
    ethanol; in distribution the composition adds nothing."""
    model, train = ethanol_model
    val = datasets.ethanol("val")[:20]
    acac = datasets.acac("test")[:10]
    for name, wrapper in _wrappers(model, train, val).items():
        wrapper.calibrate(val)
        pred = wrapper.predict(acac)
        error = np.abs(pred.energy - acac.energies)
        assert np.all(pred.energy_std >= error / 3), (name, np.min(pred.energy_std / error))
        inside = wrapper.predict(val)
        np.testing.assert_array_equal(inside.energy_var,
                                      wrapper.predict(val, composition=False).energy_var)


def test_llpr_energy_only_path_includes_the_composition_variance(ethanol_model):
    model, train = ethanol_model
    llpr = LastLayerLaplace(model).fit(train)
    acac = datasets.acac("test")[:3]
    energy, var = llpr.predict_energy(acac)
    pred = llpr.predict(acac)
    np.testing.assert_allclose(energy, pred.energy, rtol=1e-10)
    np.testing.assert_allclose(var, pred.energy_var, rtol=1e-8)


def test_combined_latent_distance_adds_the_composition_variance_once(ethanol_model):
    model, train = ethanol_model
    val = datasets.ethanol("val")[:20]
    llpr = LastLayerLaplace(model).fit(train)
    combined = LatentDistance(model, combine=llpr).fit(train, val)
    acac = datasets.acac("test")[:3]
    counts = composition_matrix(acac, model.species)
    with_it = combined.predict(acac).energy_var
    without = combined.predict(acac, composition=False).energy_var
    np.testing.assert_allclose(with_it - without, model.composition_variance(counts), rtol=1e-9)


def _moved_along_the_undetermined_directions(model, train, coefficients):
    """A copy of ``model`` whose reference energies moved by ``basis @ coefficients``
    (eV), its drift measured again: another share of the undetermined offsets."""
    other = copy.deepcopy(model)
    basis = model.offset_basis
    shifted = np.array([model.atomic_energies[z] for z in model.species]) + basis @ coefficients
    other.set_atomic_energies(dict(zip(model.species, shifted)), undetermined=basis,
                              prior_std=model.offset_prior_std)
    fit_offset_drift(other, train)
    return other


def test_deep_ensemble_uses_its_mean_drift(ethanol_model):
    """The ensemble's mean energy holds the members' mean drift: its composition
    variance is τ²|Nᵀc|² + (cᵀN mean(δ))², not member 0's."""
    model, train = ethanol_model
    basis = model.offset_basis
    other = _moved_along_the_undetermined_directions(model, train, [2.0, -1.0])
    deep = DeepEnsemble([model, other])
    acac = datasets.acac("test")[:3]
    counts = composition_matrix(acac, model.species)
    added = deep.predict(acac).energy_var - deep.predict(acac, composition=False).energy_var
    mean = model.offset_drift + np.array([1.0, -0.5])
    expected = (model.offset_prior_std**2 * np.sum((counts @ basis) ** 2, axis=1)
                + (counts @ basis @ mean) ** 2)
    np.testing.assert_allclose(added, expected, rtol=1e-9)


def test_deep_ensemble_members_agree_along_the_undetermined_directions(ethanol_model):
    """Two members that differ only in where they hold the undetermined reference
    energies (basis @ [2, -1] eV) give the same energy on another stoichiometry:
    no spread for the composition variance to count again; the mean is theirs."""
    model, train = ethanol_model
    basis = model.offset_basis
    other = _moved_along_the_undetermined_directions(model, train, [2.0, -1.0])
    acac = datasets.acac("test")[:3]
    counts = composition_matrix(acac, model.species)
    alone = DeepEnsemble([model, copy.deepcopy(model)]).predict(acac, composition=False)
    pred = DeepEnsemble([model, other]).predict(acac, composition=False)
    np.testing.assert_allclose(pred.energy_members[0], pred.energy_members[1], rtol=1e-12)
    np.testing.assert_allclose(pred.energy_var, 0.0, atol=1e-9)
    np.testing.assert_allclose(pred.energy, alone.energy + counts @ basis @ [1.0, -0.5],
                               rtol=1e-12)
    ethanol = DeepEnsemble([model, other]).predict(train[:3], composition=False)
    np.testing.assert_allclose(ethanol.energy_members[1] - ethanol.energy_members[0], 0.0,
                               atol=1e-6)  # the training composition: nothing moved


def test_files_without_a_drift_load_with_the_prior_alone(ethanol_model, tmp_path):
    """A model saved before the drift existed (no ``offset_drift`` in its state) loads
    with the prior alone, as it was computed then."""
    model, _ = ethanol_model
    state = model.get_extra_state()
    del state["offset_drift"]
    old = copy.deepcopy(model)
    old.set_extra_state(state)
    assert old.offset_drift is None
    acac = composition_matrix(datasets.acac("test")[:2], model.species)
    projected = acac @ model.offset_basis
    np.testing.assert_allclose(old.composition_variance(acac),
                               model.offset_prior_std**2 * np.sum(projected**2, axis=1),
                               rtol=1e-12)


def test_a_deep_ensemble_without_every_drift_keeps_the_prior(ethanol_model):
    model, _ = ethanol_model
    other = copy.deepcopy(model)
    other.set_offset_drift(None)
    deep = DeepEnsemble([model, other])
    acac = datasets.acac("test")[:2]
    counts = composition_matrix(acac, model.species)
    added = deep.predict(acac).energy_var - deep.predict(acac, composition=False).energy_var
    prior = model.offset_prior_std**2 * np.sum((counts @ model.offset_basis) ** 2, axis=1)
    np.testing.assert_allclose(added, prior, rtol=1e-9)


def test_latent_distance_combined_with_an_ensemble_uses_the_ensembles_drift(ethanol_model):
    model, train = ethanol_model
    other = _moved_along_the_undetermined_directions(model, train, [3.0, 1.0])
    deep = DeepEnsemble([model, other])
    combined = LatentDistance(model, combine=deep).fit(train, datasets.ethanol("val")[:20])
    acac = datasets.acac("test")[:2]
    added = combined.predict(acac).energy_var - combined.predict(acac, composition=False).energy_var
    np.testing.assert_allclose(
        added, deep.predict(acac).energy_var - deep.predict(acac, composition=False).energy_var,
        rtol=1e-9)


class _ColumnEnergies(MiniMLIP):
    """A model whose per-atom energies come as an (N, 1) column, as forward allows."""

    def per_atom_energy(self, batch):
        return super().per_atom_energy(batch).unsqueeze(-1)


def test_per_atom_energies_as_a_column_measure_the_same_drift(ethanol_model):
    model, train = ethanol_model
    column = _ColumnEnergies(["H", "C", "O"], cutoff=4.0, width=16, n_interactions=2,
                             n_rbf=8, seed=0)
    column.load_state_dict(model.state_dict())
    column.avg_num_neighbors = model.avg_num_neighbors
    column.set_offset_drift(None)
    fit_offset_drift(column, train)
    np.testing.assert_allclose(column.offset_drift, model.offset_drift, rtol=1e-9)


def test_fine_tuning_on_part_of_the_species_keeps_the_drift(ethanol_model):
    """Data without one of the undetermined directions' species cannot tell where the
    network holds its energy: the drift measured on the full training data stays."""
    model, train = ethanol_model
    tuned = copy.deepcopy(model)
    hydrogen_only = mlipuq.data.AtomsDataset([a[[i for i, z in enumerate(a.numbers) if z == 1]]
                                              for a in train[:3]])
    fit_offset_drift(tuned, hydrogen_only)
    np.testing.assert_array_equal(tuned.offset_drift, model.offset_drift)


def test_the_checkpoint_carries_the_drift(tmp_path):
    """train(checkpoint=...) writes the best weights during training and, once the
    drift is measured at the end, again with it: loading gives the same variance."""
    model = _model()
    with pytest.warns(UndeterminedReferenceWarning):
        mlipuq.train(model, datasets.ethanol("train")[:10], epochs=2, seed=0,
                     checkpoint=tmp_path / "best.pt", **FAST)
    loaded = mlipuq.models.load(tmp_path / "best.pt")
    assert loaded.offset_drift is not None
    np.testing.assert_array_equal(loaded.offset_drift, model.offset_drift)


def test_mlipuq_fit_measures_the_drift_an_older_model_file_lacks(ethanol_model, tmp_path):
    """``mlipuq fit`` on a model saved before the drift existed measures it on the
    training structures it is given, as ``mlipuq.train`` would have."""
    from mlipuq import cli

    model, train = ethanol_model
    old = copy.deepcopy(model)
    old.set_offset_drift(None)
    old.save(tmp_path / "old.pt")
    train.write(tmp_path / "train.extxyz")
    assert cli.main(["fit", "llpr", "--model", str(tmp_path / "old.pt"), "--train",
                     str(tmp_path / "train.extxyz"), "--out", str(tmp_path / "llpr.pt")]) == 0
    fitted = mlipuq.uq.load(tmp_path / "llpr.pt")
    np.testing.assert_allclose(fitted.base_model.offset_drift, model.offset_drift, rtol=1e-6)


def test_deep_ensemble_calibrates_on_what_its_recentred_members_predict(ethanol_model):
    """``calibrate`` predicts ``val`` once and moves that prediction by the fitted
    recentring offsets and the alignment they change: the same energies, and the
    same recalibration, as a second prediction with the offsets. Members that differ
    in their network and in their share of the undetermined reference energies, ``val``
    of two stoichiometries (so the offsets reach the undetermined directions)."""
    from mlipuq.uq.base import UQWrapper

    model, train = ethanol_model
    other, noise = copy.deepcopy(model), torch.Generator().manual_seed(0)
    with torch.no_grad():  # another network: every weight moved by noise of std 0.01
        for p in other.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=noise, dtype=p.dtype))
    other = _moved_along_the_undetermined_directions(other, train, [1.5, -0.5])
    deep = DeepEnsemble([model, other])
    val = datasets.ethanol("val")[:6] + datasets.acac("val")[:6]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a briefly trained model: offset warnings
        deep.calibrate(val)
        again = copy.deepcopy(deep)
        UQWrapper.calibrate(again, val)  # predicts val again, with the offsets
    assert np.abs(deep.member_offsets_ @ model.offset_basis).max() > 1e-3
    np.testing.assert_array_equal(again.member_offsets_, deep.member_offsets_)
    test = datasets.acac("test")[:4] + datasets.ethanol("test")[:4]
    ours, theirs = deep.predict(test), again.predict(test)
    for name in ("energy", "energy_var", "forces", "forces_var"):
        np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name),
                                   rtol=1e-9, atol=1e-12)
