"""LatentDistance's energies from the latent distance of whole structures: descriptors and
scores by hand, the energy variance n²(a + b U²) against them, coherence over copies,
and files saved before it (independent-atom energies) loading unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ETHANOL_SMALL
from sklearn.covariance import LedoitWolf

import mlipuq
from mlipuq.errors import FileFormatError
from mlipuq.fileio import save_payload
from mlipuq.uq import LatentDistance, load
from mlipuq.uq import structure_distance as sd


@pytest.fixture(scope="module")
def fitted(fitted_members):
    data = mlipuq.load(ETHANOL_SMALL)
    # batches of 3: structure indices run on across the batches of the reference pass
    return LatentDistance(fitted_members[0]).fit(data[:10], data[10:14], batch_size=3)


def test_descriptors_by_hand():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 10.0]])
    numbers = np.array([1, 1, 6, 1, 6])
    structure = np.array([0, 0, 0, 1, 1])
    got = sd.descriptors(x, numbers, structure, 2, [1, 6, 8])
    # per structure: mean H features, mean C features, mean O features (none: 0)
    expected = np.array([[2.0, 3.0, 5.0, 6.0, 0.0, 0.0],
                         [7.0, 8.0, 9.0, 10.0, 0.0, 0.0]])
    np.testing.assert_array_equal(got, expected)


def test_scores_by_hand():
    """Mahalanobis distance under the Ledoit-Wolf covariance (+1e-4 on the diagonal),
    in units of the training structures' median distance."""
    rng = np.random.default_rng(0)
    t = rng.normal(size=300)
    train = np.stack([t, t + 0.05 * rng.normal(size=t.size), rng.normal(size=t.size)], axis=1)
    reference = sd.fit_reference(train)
    lw = LedoitWolf().fit(train)
    precision = np.linalg.inv(lw.covariance_ + 1e-4 * np.eye(3))

    def raw(q):
        d = q - lw.location_
        return np.sqrt(np.einsum("ij,jk,ik->i", d, precision, d))

    query = np.array([[1.0, 1.0, 0.0], [0.5, -0.5, 0.0], [0.0, 0.0, 3.0]])
    scale = np.median(raw(train))
    np.testing.assert_allclose(sd.scores(reference, query), raw(query) / scale, rtol=1e-9)
    assert np.median(sd.scores(reference, train)) == pytest.approx(1.0)
    # a step across the narrow direction of the training cloud is far, along it near
    along, across = sd.scores(reference, np.array([[0.7, 0.7, 0.0], [0.7, -0.7, 0.0]]))
    assert across > 5 * along


def test_one_training_structure_gives_a_unit_gaussian():
    reference = sd.fit_reference(np.array([[1.0, 2.0]]))
    assert reference["scale"] == 1.0
    scores = sd.scores(reference, np.array([[1.0, 2.0], [1.0, 2.01], [4.0, 6.0]]))
    np.testing.assert_allclose(scores, [0.0, 0.01, 5.0], rtol=1e-12, atol=1e-15)


def _features(wrapper, dataset):
    """Standardised features, atomic numbers, structure index and atom counts."""
    x, numbers, structure, n, offset = [], [], [], [], 0
    for batch, _, phi in wrapper._passes(dataset, 8, False):
        x.append(wrapper.standardise(phi))
        numbers.append(batch.numbers.numpy())
        structure.append(batch.batch.numpy() + offset)
        n.append(batch.n_atoms.numpy())
        offset += batch.n_structures
    return [np.concatenate(v) for v in (x, numbers, structure, n)] + [offset]


def _descriptors(wrapper, dataset):
    x, numbers, structure, _, count = _features(wrapper, dataset)
    return sd.descriptors(x, numbers, structure, count, wrapper.species_)


def test_energy_variance_is_coherent_in_the_structure_distance(fitted, ethanol):
    """energy_var = n² (a_E + b_E U²), U the Mahalanobis distance of the structure's
    per-element mean features to the training structures' (recomputed here, in the
    default covariance, chosen on the held-out structures)."""
    assert fitted.energy_distance == "structure"
    assert fitted.structure_covariance == "held-out"
    reference = sd.fit_reference(_descriptors(fitted, ethanol[:10]),
                                 _descriptors(fitted, ethanol[10:14]))
    x, numbers, structure, n, count = _features(fitted, ethanol[14:])
    u = sd.scores(reference, sd.descriptors(x, numbers, structure, count, fitted.species_))
    pred = fitted.predict(ethanol[14:], calibrated=False, composition=False)
    expected = n.astype(float) ** 2 * (fitted.energy_a_ + fitted.energy_b_ * u**2)
    np.testing.assert_allclose(pred.energy_var, expected, rtol=1e-6)  # float32 features
    assert fitted.energy_b_ > 0


def test_two_far_apart_copies(fitted_members, ethanol, fitted):
    """Two non-interacting copies of a molecule: the structure energy variance is four
    times one copy's (the same error twice), the independent-atom sum twice."""
    atoms = ethanol[15].copy()
    far = atoms.copy()
    far.positions += np.array([40.0, 0.0, 0.0])
    pair = atoms + far
    atoms_mode = LatentDistance(fitted_members[0], energy_distance="atoms").fit(ethanol[:10],
                                                                               ethanol[10:14])
    for wrapper, factor in ((fitted, 4.0), (atoms_mode, 2.0)):
        one = wrapper.predict(atoms, calibrated=False, composition=False)
        two = wrapper.predict(pair, calibrated=False, composition=False)
        np.testing.assert_allclose(two.energy_var, factor * one.energy_var, rtol=1e-4)
        np.testing.assert_allclose(two.forces_var[:9], one.forces_var, rtol=1e-4)  # float32 model


def test_atom_energies_keep_the_format_of_files_saved_before(fitted_members, ethanol, fitted,
                                                              tmp_path):
    """``energy_distance="atoms"`` writes what files saved before the structure distance
    hold (no config key, no state entry), so those load as such with their identity;
    the default round-trips with its structure reference."""
    atoms_mode = LatentDistance(fitted_members[0], energy_distance="atoms").fit(ethanol[:10],
                                                                               ethanol[10:14])
    for wrapper, name in ((atoms_mode, "atoms"), (fitted, "structure")):
        path = tmp_path / f"{name}.pt"
        wrapper.save(path)
        payload = torch.load(path, weights_only=True)
        assert ("energy_distance" in payload["config"]) == (name == "structure")
        assert ("structure_" in payload["state"]) == (name == "structure")
        again = load(path)
        assert again.energy_distance == name and ("'atoms'" in repr(again)) == (name == "atoms")
        assert again.fingerprint() == payload["checksum"] == wrapper.fingerprint()
        a, b = again.predict(ethanol[14:]), wrapper.predict(ethanol[14:])
        np.testing.assert_array_equal(a.energy_var, b.energy_var)
    # a file of the default with its structure entry removed reads as atom energies
    path = tmp_path / "edited.pt"
    fitted.save(path)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["energy_distance"], payload["state"]["structure_"]
    del payload["config"]["structure_covariance"]  # (the default since 2026-12-04)
    save_payload(payload, path, overwrite=True)
    assert load(path).energy_distance == "atoms"
    # config and state that disagree are refused, naming the file
    payload["config"]["energy_distance"] = "structure"
    save_payload(payload, path, overwrite=True)
    with pytest.raises(FileFormatError, match="edited.pt.*structure reference"):
        load(path)


def test_refuses_an_unknown_energy_distance(fitted_members):
    with pytest.raises(ValueError, match="energy_distance"):
        LatentDistance(fitted_members[0], energy_distance="molecule")


def test_held_out_covariance_against_scipy():
    """Every candidate's held-out mean log-density is scipy's (the Gaussian at the
    training mean, empirical covariance + δ I), the chosen δ the best of them and the
    covariance the empirical one plus it."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(1)
    t = rng.normal(size=200)
    train = np.stack([t, t + 0.01 * rng.normal(size=t.size), rng.normal(size=t.size)], axis=1)
    s = rng.normal(size=50)
    held_out = np.stack([s, s + 0.01 * rng.normal(size=s.size), rng.normal(size=s.size)],
                        axis=1) + 0.05 * rng.normal(size=(50, 3))
    empirical = np.cov(train, rowvar=False, bias=True)
    unit = np.trace(empirical) / 3
    expected = {d * unit: multivariate_normal(train.mean(axis=0), empirical + d * unit * np.eye(3))
                .logpdf(held_out).mean() for d in sd.HELD_OUT_DIAGONALS}
    got = sd.held_out_log_densities(train, held_out)
    np.testing.assert_allclose(list(got), list(expected), rtol=1e-12)
    np.testing.assert_allclose(list(got.values()), list(expected.values()), rtol=1e-10)
    covariance, delta = sd.held_out_covariance(train, held_out)
    assert delta == max(got, key=got.get)
    np.testing.assert_allclose(covariance, empirical + delta * np.eye(3), rtol=1e-12)


def test_held_out_covariance_ignores_constant_features(caplog):
    """A descriptor feature constant over the training structures (a dead readout
    feature) does not pull the choice to the smallest δ: the same δ per unit of the
    varying features' mean variance as without it; a wrong width or NaN is refused."""
    rng = np.random.default_rng(3)
    t = rng.normal(size=(300, 1))
    train = np.hstack([t, t + 1e-2 * rng.normal(size=t.shape), rng.normal(size=t.shape)])
    s = rng.normal(size=(80, 1))
    held_out = np.hstack([s, s + 1e-2 * rng.normal(size=s.shape), rng.normal(size=s.shape)])
    _, plain = sd.held_out_covariance(train, held_out)
    dead = np.zeros((300, 1)), np.zeros((80, 1))
    covariance, with_dead = sd.held_out_covariance(np.hstack([train, dead[0]]),
                                                   np.hstack([held_out, dead[1]]))
    assert with_dead == pytest.approx(plain, rel=1e-12) and plain > 1e-8
    assert covariance[3, 3] == pytest.approx(with_dead)  # the dead feature: δ alone
    assert "edge of its grid" not in caplog.text
    with pytest.raises(ValueError, match="held-out descriptors of shape"):
        sd.held_out_covariance(train, held_out[:, :2])
    bad = held_out.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        sd.held_out_covariance(train, bad)


def test_held_out_covariance_follows_the_held_out_spread(caplog):
    """Held-out structures that leave the training cloud's narrow direction by noise of
    variance v get a diagonal term of v's order; ones that keep to it, a small one."""
    rng = np.random.default_rng(2)

    def cloud(n, noise):
        t = rng.normal(size=n)
        x = np.stack([t, t + 1e-3 * rng.normal(size=n), rng.normal(size=n)], axis=1)
        return x + noise * rng.normal(size=x.shape)

    train = cloud(300, 0.0)
    _, tight = sd.held_out_covariance(train, cloud(100, 0.0))
    held_out = cloud(100, 0.1)  # v = 0.01
    _, wide = sd.held_out_covariance(train, held_out)
    assert tight < 1e-5
    assert 1e-3 <= wide <= 1e-1
    assert sd.fit_reference(train, held_out)["diagonal"] == wide
    with pytest.raises(ValueError, match="held-out descriptors"):
        sd.held_out_covariance(train, np.zeros((0, 3)))
    with caplog.at_level("WARNING", logger="mlipuq.uq.latent_distance"):
        sd.held_out_covariance(train, cloud(100, 0.0)[:, :3] * 0 + train.mean(axis=0))
    assert "edge of its grid" in caplog.text  # held-out at the training mean: smallest δ


def test_held_out_structure_covariance_in_the_wrapper(fitted_members, ethanol, fitted,
                                                      tmp_path):
    """``structure_covariance="held-out"``: the reference recomputed from the training and
    held-out descriptors gives the energy variance; the forces are the default's; the
    option round-trips through a file and is refused when unknown."""
    wrapper = LatentDistance(fitted_members[0], structure_covariance="held-out").fit(
        ethanol[:10], ethanol[10:14], batch_size=3)
    reference = sd.fit_reference(_descriptors(wrapper, ethanol[:10]),
                                 _descriptors(wrapper, ethanol[10:14]))
    assert wrapper.structure_["diagonal"] == pytest.approx(reference["diagonal"], rel=1e-6)
    assert reference["diagonal"] > 0  # float32 features: batches of 3 there, 8 here
    x, numbers, structure, n, count = _features(wrapper, ethanol[14:])
    u = sd.scores(reference, sd.descriptors(x, numbers, structure, count, wrapper.species_))
    pred = wrapper.predict(ethanol[14:], calibrated=False, composition=False)
    np.testing.assert_allclose(pred.energy_var, n.astype(float) ** 2 * (
        wrapper.energy_a_ + wrapper.energy_b_ * u**2), rtol=1e-6)
    default = fitted.predict(ethanol[14:], calibrated=False, composition=False)
    np.testing.assert_allclose(pred.forces_var, default.forces_var, rtol=1e-12)
    path = tmp_path / "held_out.pt"
    wrapper.save(path)
    again = load(path)
    assert again.structure_covariance == "held-out" and "held-out" in repr(again)
    np.testing.assert_array_equal(again.predict(ethanol[14:]).energy_var,
                                  wrapper.predict(ethanol[14:]).energy_var)
    with pytest.raises(ValueError, match="structure_covariance"):
        LatentDistance(fitted_members[0], structure_covariance="shrunk")
    with pytest.raises(ValueError, match="needs energy_distance='structure'"):
        LatentDistance(fitted_members[0], structure_covariance="held-out",
                       energy_distance="atoms")


def test_covariance_data_chooses_the_covariance_and_nothing_else(fitted_members, ethanol):
    """``fit(..., covariance_data=C)``: the held-out covariance is chosen on C's
    descriptors (the diagonal term of ``fit_reference(train, C)``), while the variance
    map is still fitted on ``val``; an unknown option is refused by name."""
    model, train, val, other = fitted_members[0], ethanol[:10], ethanol[10:14], ethanol[14:]
    wrapper = LatentDistance(model).fit(train, val, batch_size=3, covariance_data=other)
    chosen = sd.fit_reference(_descriptors(wrapper, train), _descriptors(wrapper, other))
    assert wrapper.structure_["diagonal"] == pytest.approx(chosen["diagonal"], rel=1e-6)
    on_val = LatentDistance(model).fit(train, val, batch_size=3)
    alike = LatentDistance(model).fit(train, val, batch_size=3, covariance_data=val)
    assert alike.structure_["diagonal"] == on_val.structure_["diagonal"]
    assert (alike.energy_a_, alike.energy_b_) == (on_val.energy_a_, on_val.energy_b_)
    with pytest.raises(TypeError, match="covariance_data"):
        LatentDistance(model).fit(train, val, covariance=other)


def test_evidential_term_chooses_its_covariance_on_all_held_out_structures(
        fitted_members, ethanol, monkeypatch):
    """``EvidentialHead.fit(train, val, reference=R)``: the term's held-out covariance
    is chosen on ``train`` and ``val`` together (all held out from R; the descriptors
    the choice read are those 8 structures'), its distances measured to R."""
    from mlipuq.uq import EvidentialHead

    reference, train, val = ethanol[:10], ethanol[10:14], ethanol[14:18]
    seen = []
    original = sd.fit_reference
    monkeypatch.setattr(sd, "fit_reference", lambda d, h=None: seen.append(
        None if h is None else len(h)) or original(d, h))
    head = EvidentialHead(fitted_members[0]).fit(train, val, reference=reference, epochs=1,
                                                 batch_size=3, seed=0, progress=False)
    assert seen == [len(train) + len(val)]
    monkeypatch.setattr(sd, "fit_reference", original)
    term = head.distance_
    held_out = mlipuq.data.concatenate([train, val])
    chosen = sd.fit_reference(_descriptors(term, reference), _descriptors(term, held_out))
    assert term.structure_["diagonal"] == pytest.approx(chosen["diagonal"], rel=1e-6)
    assert term.n_train_ == len(reference)
