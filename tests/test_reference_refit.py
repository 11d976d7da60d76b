"""The reference energies refitted to the trained network when ``mlipuq.train`` ends
(``refit_references=True``, the default where training fits them): the constant energy offset the loss's small energy
weight leaves is removed along the combinations the training compositions
determine, and nothing else moves; without it, training warns of that offset."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

import mlipuq
from mlipuq import datasets
from mlipuq.data import AtomsDataset, composition_matrix
from mlipuq.models import MiniMLIP
from mlipuq.training import refit_reference_energies

FAST = dict(batch_size=8, progress=False, epochs=6, lr=5e-3, seed=0)


def _model() -> MiniMLIP:
    return MiniMLIP(["H", "C", "O"], cutoff=4.0, width=16, n_interactions=2, n_rbf=8, seed=0)


def _train(data, **options):
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one stoichiometry: the undetermined-offset warning
        history = mlipuq.train(model, data, **FAST, **options)
    return model, history


@pytest.fixture(scope="module")
def ethanol_pair():
    train = datasets.ethanol("train")[:40]
    return train, _train(train, refit_references=False), _train(train)  # refit: the default


def test_refit_moves_only_the_reference_energies(ethanol_pair):
    """Same seed, same weights: the refit changes the energies by one constant per
    composition and no force; the shift is what the history reports."""
    train, (kept, before_history), (refit, history) = ethanol_pair
    assert history.references_refit and not before_history.references_refit
    assert before_history.reference_shift == pytest.approx(history.reference_shift, abs=1e-12)
    for a, b in zip(kept.parameters(), refit.parameters()):
        assert np.array_equal(a.detach().numpy(), b.detach().numpy())
    before, after = kept.compute(train), refit.compute(train)
    np.testing.assert_allclose(after["forces"], before["forces"], rtol=0, atol=1e-12)
    shift = np.array([history.reference_shift[z] for z in refit.species])
    counts = composition_matrix(train, refit.species)
    np.testing.assert_allclose(after["energy"] - before["energy"], counts @ shift, atol=1e-9)
    for z in refit.species:
        assert refit.atomic_energies[z] == pytest.approx(
            kept.atomic_energies[z] + history.reference_shift[z], abs=1e-12)


def test_refit_removes_the_mean_error_of_one_stoichiometry(ethanol_pair):
    """One composition: the refitted model's mean energy error on its training set is
    0, its error is the old one minus its mean (smaller MAE unless that mean was 0),
    and the undetermined combinations (basis, prior, drift) are untouched."""
    train, (kept, _), (refit, _) = ethanol_pair
    old = kept.compute(train)["energy"] - train.energies
    new = refit.compute(train)["energy"] - train.energies
    assert abs(new.mean()) < 1e-6
    np.testing.assert_allclose(new, old - old.mean(), atol=1e-6)
    assert np.abs(new).mean() <= np.abs(old).mean()
    np.testing.assert_allclose(refit.offset_basis, kept.offset_basis, atol=1e-12)
    assert refit.offset_prior_std == kept.offset_prior_std
    np.testing.assert_allclose(refit.offset_drift, kept.offset_drift, atol=1e-9)


def test_refit_solves_the_normal_equations_and_is_idempotent():
    """Ethanol and acetylacetone (same elements, two stoichiometries): the residual
    after the refit is orthogonal to every species-count column, Cᵀ(E − E_ref) = 0,
    and refitting again shifts nothing."""
    mixed = AtomsDataset(list(datasets.ethanol("train")[:20]) + list(datasets.acac("train")[:20]))
    model, history = _train(mixed, refit_references=True)
    assert history.references_refit
    counts = composition_matrix(mixed, model.species)
    residual = model.compute(mixed)["energy"] - mixed.energies
    scale = np.abs(counts).sum(axis=0) * 1e-7
    assert np.all(np.abs(counts.T @ residual) < scale)
    again = refit_reference_energies(copy.deepcopy(model), mixed)
    assert max(abs(v) for v in again.values()) < 1e-7


def test_training_warns_of_the_offset_it_leaves():
    """Without the refit, training says so when the constant offset is most of the
    energy error on the training data; after the refit the same check is silent."""
    train = datasets.ethanol("train")[:40]
    model = _model()
    with pytest.warns(mlipuq.training.EnergyOffsetWarning, match="refit_references=True"):
        mlipuq.train(model, train, refit_references=False, **FAST)
    shift, removed, left = mlipuq.training.reference_energy_shift(model, train)
    assert removed > left
    error = (model.compute(train)["energy"] - train.energies) / train.n_atoms
    assert removed == pytest.approx(abs(error.mean()), rel=1e-6)  # one composition
    assert left == pytest.approx(error.std(), rel=1e-6)
    refit_reference_energies(model, train)
    with warnings.catch_warnings():
        warnings.simplefilter("error", mlipuq.training.EnergyOffsetWarning)
        mlipuq.training.check_energy_offset(model, train)


def test_given_reference_energies_are_refitted_only_when_asked():
    """Isolated-atom (or any given) reference energies stay as given by default (what
    the user wrote is kept) and move with ``refit_references=True`` (a Trainable other than an MLIP's refuses
    the option: test_training)."""
    train = datasets.ethanol("train")[:16]
    given = {"H": -13.6, "C": -1029.0, "O": -2041.0}
    model = _model()
    model.set_atomic_energies(given)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the offset warning: isolated atoms are far off
        history = mlipuq.train(model, train, **FAST)
    assert not history.references_refit
    assert model.atomic_energies == {z: given[s] for z, s in ((1, "H"), (6, "C"), (8, "O"))}
    asked = _model()
    asked.set_atomic_energies(given)
    history = mlipuq.train(asked, train, refit_references=True, **FAST)
    assert history.references_refit and set(history.reference_shift) == {1, 6, 8}
    assert asked.atomic_energies != model.atomic_energies


def _set_references(model, energies: dict) -> MiniMLIP:
    model.set_atomic_energies(energies)
    return model


def test_training_warns_of_references_foreign_to_the_data():
    """A model that brings reference energies of 0 to DFT total energies (ethanol:
    about −468 eV/atom) is warned before training, with the RMS distance named;
    references one atomization energy away (least squares minus 5 eV per atom, as
    isolated-atom E0s would be) are this data's and train silently."""
    from mlipuq.training import ForeignReferenceWarning, check_reference_energies
    from mlipuq.training_setup import FOREIGN_REFERENCE

    train = datasets.ethanol("train")[:16]
    fitted = mlipuq.data.fit_atomic_energies(train, _model().species)
    per_atom = np.abs(train.energies / train.n_atoms)
    with pytest.warns(ForeignReferenceWarning, match="eV/atom") as caught:
        distance = check_reference_energies(_set_references(_model(), dict.fromkeys(fitted, 0.)),
                                            train)
    assert distance == pytest.approx(np.sqrt(np.mean(per_atom**2)), rel=1e-12)
    assert distance > FOREIGN_REFERENCE and f"{distance:.4g}" in str(caught[0].message)
    isolated = _set_references(_model(), {z: e - 5.0 for z, e in fitted.items()})
    with warnings.catch_warnings():
        warnings.simplefilter("error", ForeignReferenceWarning)
        assert 4.0 < check_reference_energies(isolated, train) < 6.0
        mlipuq.train(isolated, train, **{**FAST, "epochs": 1})
    with pytest.warns(ForeignReferenceWarning):
        mlipuq.train(_set_references(_model(), dict.fromkeys(fitted, 0.)), train,
                     **{**FAST, "epochs": 1})
