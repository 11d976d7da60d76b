"""Tests of mlipuq.uq.evidential: the EvidentialHead wrapper and its invariances (its NIG
maths: test_nig.py)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

import mlipuq
from mlipuq.errors import NotFittedError
from mlipuq.fileio import save_payload
from mlipuq.models.mini import MiniMLIP
from mlipuq.uq import base as uq_base
from mlipuq.uq import LatentDistance
from mlipuq.uq.distance_term import fit_distance_term
from mlipuq.uq.evidential import (
    EvidentialHead,
    aggregate_energy_nig,
)

HERE = os.path.dirname(__file__)
SMALL = os.path.join(HERE, "data", "ethanol_small.xyz")
ETHANOL = "/work/shared/data/ethanol/train.xyz"


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models on a shared 2-core machine: threads only fight each other
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    path = SMALL if os.path.exists(SMALL) else ETHANOL
    if not os.path.exists(path):
        pytest.skip(f"no ethanol data at {path}")
    dataset = mlipuq.data.load(path, index=":20")
    if len(dataset) < 20:
        pytest.skip("not enough structures for the evidential tests")
    return {"train": dataset[:12], "val": dataset[12:16], "test": dataset[16:20]}


@pytest.fixture(scope="module")
def base_model(data):
    model = MiniMLIP(
        data["train"].species, cutoff=4.0, width=16, n_interactions=2, n_rbf=8, seed=0
    )
    mlipuq.train(model, data["train"], epochs=4, lr=5e-3, batch_size=10, progress=False)
    return model


@pytest.fixture(scope="module")
def snapshot(base_model):
    return {k: v.clone() for k, v in base_model.state_dict().items() if torch.is_tensor(v)}


@pytest.fixture(scope="module", params=["shared", "separate"])
def fitted(request, base_model, snapshot, data):
    return EvidentialHead(base_model, reg_weight=0.01, energy_evidence=request.param).fit(
        data["train"], data["val"], epochs=8, lr=2e-2, batch_size=20, seed=0, progress=False
    )


# ------------------------------------------------------------- the wrapper
def test_bad_options_and_unfitted(base_model, data):
    with pytest.raises(ValueError, match="reg_weight"):
        EvidentialHead(base_model, reg_weight=-0.1)
    with pytest.raises(ValueError, match="hidden"):
        EvidentialHead(base_model, hidden=0)
    with pytest.raises(ValueError, match="energy_evidence"):
        EvidentialHead(base_model, energy_evidence="joint")
    with pytest.raises(ValueError, match="distance must be None or one of"):
        EvidentialHead(base_model, distance="euclidean")
    with pytest.raises(TypeError):
        EvidentialHead(torch.nn.Linear(3, 1))
    unfitted = EvidentialHead(base_model)
    with pytest.raises(ValueError, match="both be 0"):
        unfitted.fit(data["train"], energy_weight=0.0, forces_weight=0.0, progress=False)
    with pytest.raises(ValueError, match="loss_fn"):
        unfitted.fit(data["train"], loss_fn=None, progress=False)
    with pytest.raises(NotFittedError):
        unfitted.predict(data["test"][:2])


def _assert_same_variances(a, b) -> None:
    np.testing.assert_array_equal(a.energy_var, b.energy_var)
    np.testing.assert_array_equal(a.forces_var, b.forces_var)


def _nig_only(wrapper: EvidentialHead) -> EvidentialHead:
    """The fitted head without its latent-distance term (``distance=None``'s variance)."""
    nig = wrapper.copy()
    nig.distance_ = None
    return nig


def _summed(wrapper: EvidentialHead, data) -> EvidentialHead:
    """The fitted head with its term fitted again as ``distance_combination="sum"`` (the
    joint fit with a share floor of 0.1) on the same data."""
    summed = wrapper.copy()
    summed.distance_combination = "sum"
    summed.distance_ = fit_distance_term(summed, data["train"], data["val"], score="mahalanobis",
                                         seed=0, batch_size=20, min_share=0.1,
                                         structure_covariance="held-out")
    return summed


def test_variance_decomposition(fitted, data):
    pred = fitted.predict(data["test"])
    for name in ("energy_var", "energy_aleatoric_var", "energy_epistemic_var", "forces_var"):
        value = getattr(pred, name)
        assert value.dtype == np.float64 and np.all(np.isfinite(value)) and np.all(value >= 0)
    assert np.all(pred.energy_var > 0) and np.all(pred.forces_var > 0)
    np.testing.assert_allclose(
        pred.energy_var, pred.energy_aleatoric_var + pred.energy_epistemic_var, rtol=1e-12
    )
    pred = _nig_only(fitted).predict(data["test"], calibrated=False)
    assert np.all(pred.energy_aleatoric_var > 0) and np.all(pred.energy_epistemic_var > 0)
    params = fitted.evidential_parameters(data["test"])
    nu, alpha, beta = params["energy_nu"], params["energy_alpha"], params["energy_beta"]
    assert np.all(alpha > 1) and np.all(nu > 0) and np.all(beta > 0)
    np.testing.assert_allclose(pred.energy_aleatoric_var, beta / (alpha - 1), rtol=1e-12)
    np.testing.assert_allclose(pred.energy_epistemic_var, beta / (nu * (alpha - 1)), rtol=1e-12)
    nu_f, alpha_f, beta_f = params["forces_nu"], params["forces_alpha"], params["forces_beta"]
    expected = beta_f * (1 + nu_f) / (nu_f * (alpha_f - 1))
    np.testing.assert_allclose(pred.forces_var, np.repeat(expected[:, None], 3, axis=1), rtol=1e-12)


def test_distance_term_adds_the_latent_variance(fitted, data):
    """``distance_combination="sum"``: the NIG variance scaled by λ plus LatentDistance's
    a + b u² (for energies the structure's n² (a + b U²)), λ, a, b >= 0 fitted jointly on
    the held-out data; the latent part counts as epistemic."""
    fitted = _summed(fitted, data)
    term = fitted.distance_
    assert fitted.distance == "mahalanobis" and term.score == "mahalanobis"
    scales = (term.energy_other_scale_, term.forces_other_scale_)
    assert min(*scales, term.energy_a_, term.energy_b_, term.forces_a_, term.forces_b_) >= 0
    latent = LatentDistance(fitted.model, features=fitted.distance_features)
    latent._set_state(term._get_state())
    latent.fitted_ = True
    options = dict(calibrated=False, composition=False)
    full, nig, alone = (w.predict(data["test"], **options)
                        for w in (fitted, _nig_only(fitted), latent))
    np.testing.assert_allclose(full.energy_var, scales[0] * nig.energy_var + alone.energy_var,
                               rtol=1e-9)
    np.testing.assert_allclose(full.energy_aleatoric_var, scales[0] * nig.energy_aleatoric_var,
                               rtol=1e-9)
    np.testing.assert_allclose(full.forces_var, scales[1] * nig.forces_var + alone.forces_var,
                               rtol=1e-9)
    assert np.all(alone.forces_var > 0)


def test_distance_none_is_the_head_alone(fitted, base_model, data, tmp_path):
    plain = EvidentialHead(base_model, reg_weight=0.01, energy_evidence=fitted.energy_evidence,
                           distance=None).fit(
        data["train"], data["val"], epochs=8, lr=2e-2, batch_size=20, seed=0, progress=False
    )
    assert plain.distance_ is None and "distance=None" in repr(plain)
    a = plain.predict(data["test"], calibrated=False)
    b = _nig_only(fitted).predict(data["test"], calibrated=False)
    _assert_same_variances(a, b)
    path = tmp_path / "alone.pt"
    plain.save(path)
    assert uq_base.load(path).fingerprint() == plain.fingerprint()


def test_files_without_the_distance_term_load_as_the_head_alone(fitted, data, tmp_path):
    path = tmp_path / "old.pt"
    fitted.save(path)
    again = uq_base.load(path)
    assert again.distance == "mahalanobis"
    np.testing.assert_array_equal(again.predict(data["test"]).forces_var,
                                  fitted.predict(data["test"]).forces_var)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["distance"], payload["state"]["distance"]
    save_payload(payload, path, overwrite=True)  # a valid checksum over the edited payload
    old = uq_base.load(path)
    assert old.distance is None and old.distance_ is None
    # its identity is the file's (an MD trajectory recorded with it resumes)
    assert old.fingerprint() == torch.load(path, weights_only=True)["checksum"]
    a = old.predict(data["test"], calibrated=False)
    b = _nig_only(fitted).predict(data["test"], calibrated=False)
    _assert_same_variances(a, b)


def test_terms_saved_before_the_structure_distance_sum_atoms(fitted, data, tmp_path):
    """A saved term without the structure reference (heads fitted before it existed)
    loads with its energies summed over independent atoms, its identity kept."""
    assert fitted.distance_.energy_distance == "structure"
    path = tmp_path / "term.pt"
    fitted.save(path)
    payload = torch.load(path, weights_only=True)
    del payload["state"]["distance"]["structure_"]
    del payload["config"]["distance_combination"]  # the sum, as before 2026-12-04
    save_payload(payload, path, overwrite=True)
    old = uq_base.load(path)
    assert old.distance_.energy_distance == "atoms"
    assert old.fingerprint() == torch.load(path, weights_only=True)["checksum"]
    latent = LatentDistance(old.model, energy_distance="atoms",
                            features=old.distance_features)
    latent._set_state(old.distance_._get_state())
    latent.fitted_ = True
    options = dict(calibrated=False, composition=False)
    full, nig, alone = (w.predict(data["test"], **options)
                        for w in (old, _nig_only(old), latent))
    # independent atoms: the structure's latent variance is the sum of its atoms'
    np.testing.assert_allclose(alone.energy_var,
                               np.bincount(alone.batch, weights=alone.atom_energy_var),
                               rtol=1e-12)
    np.testing.assert_allclose(
        full.energy_var, old.distance_.energy_other_scale_ * nig.energy_var + alone.energy_var,
        rtol=1e-9)


def test_reference_is_what_the_distance_term_measures_to(base_model, data):
    """``fit(..., reference=R)``: the term's distances are those of a LatentDistance
    fitted on R (the base model's training set), its λ, a, b fitted on ``val`` (without
    ``val``: on the head's ``train``, all of it)."""
    head_data, held_out, reference = data["val"], data["test"][:2], data["train"]
    options = dict(epochs=2, batch_size=20, seed=0, progress=False)
    head = EvidentialHead(base_model).fit(head_data, held_out, reference=reference, **options)
    term = head.distance_
    assert term.n_train_ == len(reference)
    alone = LatentDistance(base_model, features=head.distance_features).fit(reference,
                                                                          held_out)
    for key in ("location", "precision", "scale"):  # the same reference structures
        np.testing.assert_array_equal(term.structure_[key], alone.structure_[key])
    for z in alone.gmm_:  # and the same atom distances
        np.testing.assert_array_equal(term.gmm_[z]["means"], alone.gmm_[z]["means"])
        np.testing.assert_array_equal(term.score_scale_[z], alone.score_scale_[z])
    # the map is fitted on the held-out structures: the same as fitting the term by hand
    defaults = dict(score="mahalanobis", seed=0, batch_size=20, structure_covariance="held-out",
                    combination="max", ridge_scale="per_species")  # the head's
    by_hand = fit_distance_term(head, reference, held_out, **defaults)
    fitted_map = ("energy_a_", "energy_b_", "forces_a_", "forces_b_", "energy_other_scale_",
                  "forces_other_scale_")
    assert [getattr(term, k) for k in fitted_map] == [getattr(by_hand, k) for k in fitted_map]
    no_val = EvidentialHead(base_model).fit(head_data, reference=reference, **options)
    on_train = fit_distance_term(no_val, reference, head_data, **defaults)
    assert no_val.distance_.n_train_ == len(reference)
    assert [getattr(no_val.distance_, k) for k in fitted_map] == [
        getattr(on_train, k) for k in fitted_map]
    unlabelled = [atoms.copy() for atoms in reference[:3]]
    for atoms in unlabelled:
        atoms.calc = None
    with pytest.raises(ValueError, match="structure 0: no reference energy"):
        EvidentialHead(base_model).fit(head_data, held_out, reference=unlabelled, **options)
    with pytest.raises(ValueError, match="without the term"):  # nothing to measure to
        EvidentialHead(base_model, distance=None).fit(head_data, held_out, reference=reference,
                                                      **options)


@pytest.mark.parametrize("score", ["knn", "gmm"])
def test_other_distance_scores_save_and_load(score, base_model, data, tmp_path):
    head = EvidentialHead(base_model, distance=score).fit(
        data["train"], data["val"], epochs=2, batch_size=20, seed=0, progress=False)
    assert head.distance_.score == score
    path = tmp_path / f"{score}.pt"
    head.save(path)
    again = uq_base.load(path)
    assert again.distance == score and again.fingerprint() == head.fingerprint()
    _assert_same_variances(again.predict(data["test"]), head.predict(data["test"]))


def test_held_out_structure_covariance_reaches_the_term(base_model, data, tmp_path):
    """``structure_covariance="held-out"``: the term is the LatentDistance fitted with it on
    the same data (its chosen diagonal term included); it saves, loads and predicts alike,
    and needs a distance term."""
    head = EvidentialHead(base_model, structure_covariance="held-out").fit(
        data["val"], data["test"][:2], reference=data["train"], epochs=2, batch_size=20,
        seed=0, progress=False)
    alone = LatentDistance(base_model, structure_covariance="held-out",
                           features=head.distance_features).fit(data["train"],
                                                                data["test"][:2])
    assert head.distance_.structure_covariance == "held-out"
    for key in ("location", "precision", "scale", "diagonal"):
        np.testing.assert_array_equal(head.distance_.structure_[key], alone.structure_[key])
    path = tmp_path / "held_out.pt"
    head.save(path)
    again = uq_base.load(path)
    assert again.structure_covariance == "held-out" and "held-out" in repr(again)
    assert again.distance_.structure_covariance == "held-out"
    _assert_same_variances(again.predict(data["test"]), head.predict(data["test"]))
    with pytest.raises(ValueError, match="needs distance"):
        EvidentialHead(base_model, distance=None, structure_covariance="held-out")
    with pytest.raises(ValueError, match="structure_covariance must be one of"):
        EvidentialHead(base_model, structure_covariance="oas")


def test_defaults_since_the_refit_and_files_saved_before(fitted, base_model, data, tmp_path):
    """Defaults since 2026-12-04: the held-out structure covariance and the larger of the
    NIG and the term's variances (a distance share of 0.1 with the sum; none without a
    term); a file saved before them (none in its config) loads with the Ledoit-Wolf
    covariance, the sum and no floor, its fitted term and identity unchanged."""
    head = EvidentialHead(base_model)
    assert (head.structure_covariance, head.min_distance_share, head.distance_combination) \
        == ("held-out", None, "max")
    summed = EvidentialHead(base_model, distance_combination="sum")
    assert (summed.structure_covariance, summed.min_distance_share) == ("held-out", 0.1)
    alone = EvidentialHead(base_model, distance=None)
    assert (alone.structure_covariance, alone.min_distance_share) == ("ledoit-wolf", None)
    assert fitted.distance_combination == "max" and fitted.distance_.min_combined_share is None
    with pytest.raises(ValueError, match="min_distance_share"):
        EvidentialHead(base_model, min_distance_share=1.5)
    path = tmp_path / "before.pt"
    fitted.save(path)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["structure_covariance"], payload["config"]["distance_combination"]
    save_payload(payload, path, overwrite=True)
    old = uq_base.load(path)
    assert (old.structure_covariance, old.min_distance_share, old.distance_combination) == (
        "ledoit-wolf", None, "sum")
    assert old.fingerprint() == torch.load(path, weights_only=True)["checksum"]
    for key in ("energy_a_", "energy_b_", "energy_other_scale_"):
        assert getattr(old.distance_, key) == getattr(fitted.distance_, key)


def test_distance_term_needs_held_out_data(base_model, data):
    with pytest.raises(ValueError, match="latent-distance term needs val, reference or at "):
        EvidentialHead(base_model).fit(data["train"][:1], epochs=1, progress=False)
    alone = EvidentialHead(base_model, distance=None).fit(data["train"][:1], epochs=1,
                                                          progress=False)
    assert alone.fitted_ and alone.distance_ is None
    # with a reference nothing is held out: the map is fitted on the one structure
    referenced = EvidentialHead(base_model).fit(data["train"][:1], reference=data["train"],
                                                epochs=1, progress=False)
    assert referenced.distance_.n_train_ == len(data["train"])


def test_mean_is_the_base_model(fitted, base_model, data):
    pred = fitted.predict(data["test"])
    ref = base_model.compute(data["test"])
    np.testing.assert_array_equal(pred.forces, ref["forces"])
    np.testing.assert_array_equal(pred.energy, ref["energy"])


def test_training_reduces_loss_and_user_model_unchanged(fitted, base_model, snapshot):
    losses = fitted.history_["train_loss"]
    assert losses[-1] < losses[0]
    assert fitted.history_.best_val_loss < fitted.history_["val_loss"][0]
    assert fitted.model is not base_model
    for key, value in base_model.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, snapshot[key]), key
    assert all(p.requires_grad for p in base_model.parameters())


def test_same_seed_same_predictions(fitted, base_model, data):
    again = EvidentialHead(
        base_model, reg_weight=0.01, energy_evidence=fitted.energy_evidence
    ).fit(
        data["train"], data["val"], epochs=8, lr=2e-2, batch_size=20, seed=0, progress=False
    )
    a, b = fitted.predict(data["test"]), again.predict(data["test"])
    _assert_same_variances(a, b)


def test_save_load_roundtrip(fitted, data, tmp_path):
    path = tmp_path / "evidential.pt"
    fitted.save(path)
    loaded = uq_base.load(path)
    assert isinstance(loaded, EvidentialHead)
    assert loaded.config() == fitted.config()
    a, b = fitted.predict(data["test"]), loaded.predict(data["test"])
    for name in ("energy", "energy_var", "energy_aleatoric_var", "energy_epistemic_var",
                 "forces", "forces_var"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    with pytest.raises(FileExistsError):
        fitted.save(path)


def _rotation(seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_permutation_rotation_translation_invariance(fitted, data):
    atoms = data["test"][0]
    perm = np.random.default_rng(1).permutation(len(atoms))
    moved = atoms.copy()
    moved.positions = atoms.positions @ _rotation().T + np.array([1.5, -2.0, 0.7])
    shuffled = atoms[perm]
    ref = fitted.predict(atoms)
    rot = fitted.predict(moved)
    per = fitted.predict(shuffled)
    # float32 network: rotated inputs round differently (1.1e-5 relative seen on one
    # machine); a broken invariance moves the variances by O(1)
    for other, order in ((rot, np.arange(len(atoms))), (per, perm)):
        np.testing.assert_allclose(other.energy_var, ref.energy_var, rtol=1e-4)
        np.testing.assert_allclose(other.energy_epistemic_var, ref.energy_epistemic_var, rtol=1e-4)
        np.testing.assert_allclose(
            np.linalg.norm(other.forces_var, axis=1),
            np.linalg.norm(ref.forces_var[order], axis=1),
            rtol=1e-4,
        )
    # the force mean rotates with the structure
    np.testing.assert_allclose(rot.forces, ref.forces @ _rotation().T, atol=1e-4)


def test_non_interacting_copies_have_larger_energy_variance(fitted, data):
    """Two far-apart copies of a structure: the head's NIG variance (independent atoms)
    doubles; the latent-distance energy variance, coherent over a structure, is four
    times one copy's (the same error twice); the aleatoric part doubles (the joint sum,
    where the two parts add)."""
    fitted = _summed(fitted, data)
    atoms = data["test"][1].copy()
    atoms.pbc = False
    far = atoms.copy()
    far.positions += np.array([30.0, 0.0, 0.0])  # well beyond the 4 Å cutoff
    pair = atoms + far
    options = dict(calibrated=False, composition=False)
    nig = _nig_only(fitted)
    one_nig, two_nig = nig.predict(atoms, **options), nig.predict(pair, **options)
    np.testing.assert_allclose(two_nig.energy_var, 2 * one_nig.energy_var, rtol=1e-5)
    one, two = fitted.predict(atoms, **options), fitted.predict(pair, **options)
    lam = fitted.distance_.energy_other_scale_
    latent_one = one.energy_var - lam * one_nig.energy_var
    assert latent_one > 0
    np.testing.assert_allclose(two.energy_var - lam * two_nig.energy_var, 4 * latent_one,
                               rtol=1e-5)
    np.testing.assert_allclose(two.energy_aleatoric_var, 2 * one.energy_aleatoric_var, rtol=1e-5)


def test_batch_equals_one_by_one(fitted, data):
    together = fitted.predict(data["test"][:4], batch_size=4)
    for k in range(4):
        alone = fitted.predict(data["test"][k])
        np.testing.assert_allclose(together.structure(k).energy_var, alone.energy_var, rtol=1e-6)
        np.testing.assert_allclose(together.structure(k).forces_var, alone.forces_var, rtol=1e-6)


def test_train_backbone_changes_only_the_copy(base_model, snapshot, data):
    wrapper = EvidentialHead(base_model, train_backbone=True, hidden=4).fit(
        data["train"][:10], epochs=1, lr=1e-3, batch_size=10, progress=False
    )
    pred = wrapper.predict(data["test"][:2])
    assert np.all(np.isfinite(pred.energy_var))
    changed = any(
        not torch.equal(p, q) for p, q in zip(wrapper.model.parameters(), base_model.parameters())
    )
    assert changed
    for key, value in base_model.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, snapshot[key]), key


def test_energy_only_training_needs_no_forces(base_model, data):
    from ase.calculators.singlepoint import SinglePointCalculator

    structures = []
    for atoms in data["train"][:10]:
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, energy=atoms.get_potential_energy())
        structures.append(copy)
    with pytest.raises(ValueError, match="energy_evidence='separate'"):
        EvidentialHead(base_model).fit(structures, forces_weight=0.0, progress=False)
    with pytest.warns(UserWarning, match="latent-distance term is fitted on reference forces"):
        wrapper = EvidentialHead(base_model, energy_evidence="separate").fit(
            structures, epochs=2, batch_size=5, forces_weight=0.0, progress=False
        )
    assert wrapper.distance_ is None and wrapper.distance is None
    assert all(p.requires_grad for p in wrapper.model.parameters())
    pred = wrapper.predict(data["test"][:2])
    assert np.all(pred.energy_var > 0) and np.all(pred.forces_var > 0)
    with pytest.raises(ValueError, match="forces"):
        EvidentialHead(base_model).fit(structures, epochs=1, progress=False)


def test_shared_energy_evidence_is_the_force_evidence_rescaled(fitted, data):
    """energy_evidence='shared': each atom's energy NIG has its force NIG's nu and
    alpha and beta times one ratio; the structure NIG aggregates those."""
    if fitted.energy_evidence != "shared":
        pytest.skip("separate energy outputs")
    test = data["test"]
    params = fitted.evidential_parameters(test)
    head = fitted.head_
    with torch.no_grad():
        ratio = float(head.energy_scale * torch.exp(head.log_energy_ratio) / head.forces_scale)
    counts = [len(atoms) for atoms in test]
    batch = torch.as_tensor(np.repeat(np.arange(len(test)), counts))
    per_atom = [torch.as_tensor(params[k]) for k in ("forces_nu", "forces_alpha", "forces_beta")]
    nu, alpha, beta = aggregate_energy_nig(
        per_atom[0], per_atom[1], ratio * per_atom[2], batch, len(test)
    )
    np.testing.assert_allclose(params["energy_nu"], nu.numpy(), rtol=1e-10)
    np.testing.assert_allclose(params["energy_alpha"], alpha.numpy(), rtol=1e-10)
    np.testing.assert_allclose(params["energy_beta"], beta.numpy(), rtol=1e-10)
    # training moved the ratio away from its start (energy_scale / forces_scale)
    assert float(head.log_energy_ratio.detach()) != 0.0


def test_shared_energy_loss_trains_only_the_ratio():
    from mlipuq.uq.evidential import _NIGHead

    torch.manual_seed(0)
    head = _NIGHead(5, hidden=4, shared=True)
    for param in head.net.parameters():  # away from the zero start
        torch.nn.init.normal_(param)
    out = head(torch.randn(7, 5, dtype=torch.float64))
    energy = (out["energy_nu"] + out["energy_alpha"] + out["energy_beta"]).sum()
    grads = torch.autograd.grad(energy, [head.log_energy_ratio, *head.net.parameters()],
                                allow_unused=True)
    assert grads[0] is not None and float(grads[0].abs()) > 0
    assert all(g is None or float(g.abs().max()) == 0 for g in grads[1:])
    forces = (out["forces_nu"] + out["forces_alpha"] + out["forces_beta"]).sum()
    grads = torch.autograd.grad(forces, list(head.net.parameters()))
    assert all(float(g.abs().max()) > 0 for g in grads)


def test_warns_when_fitted_on_in_sample_residuals(base_model, data):
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(0)
    noisy = []  # the same structures, reference forces off by 3 eV/Å noise
    for atoms in data["train"][:4]:
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(
            copy, energy=atoms.get_potential_energy(),
            forces=atoms.get_forces() + rng.normal(0, 3.0, size=(len(atoms), 3)),
        )
        noisy.append(copy)
    options = dict(epochs=1, batch_size=10, progress=False)
    with pytest.warns(UserWarning, match="larger on val than on the training data"):
        EvidentialHead(base_model).fit(data["train"][:8], noisy, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        EvidentialHead(base_model).fit(data["train"][:8], data["train"][8:], **options)


def test_files_without_energy_evidence_load_as_separate(base_model, data, tmp_path):
    separate = EvidentialHead(base_model, energy_evidence="separate").fit(
        data["train"], epochs=2, batch_size=20, progress=False
    )
    path = tmp_path / "old.pt"
    separate.save(path)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["energy_evidence"], payload["state"]["energy_evidence"]
    save_payload(payload, path, overwrite=True)  # a valid checksum over the edited payload
    old = uq_base.load(path)
    assert old.energy_evidence == "separate"
    a, b = separate.predict(data["test"]), old.predict(data["test"])
    _assert_same_variances(a, b)
