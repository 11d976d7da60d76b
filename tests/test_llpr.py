"""LastLayerLaplace / LLPR: closed forms, exact vs sampled force variances, OOD growth."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mlipuq
from mlipuq import data as mdata
from mlipuq.errors import NotFittedError
from mlipuq.models import MiniMLIP, wrap
from mlipuq.uq import LastLayerLaplace
from mlipuq.uq.llpr import cholesky_with_jitter, log_marginal_likelihood

DATA = Path(__file__).parent / "data"


class FixedFeatures(nn.Module):
    """Per-atom Gaussian radial descriptors (no trainable parameters) + linear readout."""

    def __init__(self, n_features: int = 6, cutoff: float = 4.0):
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.8, cutoff, n_features, dtype=torch.float64))
        self.cutoff = cutoff
        self.readout = nn.Linear(n_features, 1, dtype=torch.float64)
        with torch.no_grad():
            self.readout.weight.copy_(torch.linspace(-0.3, 0.4, n_features)[None])
            self.readout.bias.fill_(0.05)

    def descriptors(self, batch):
        i, _ = batch.edge_index
        r = torch.linalg.norm(batch.edge_vectors(), dim=1)
        fc = 0.5 * (torch.cos(torch.pi * r / self.cutoff) + 1)
        g = torch.exp(-4.0 * (r[:, None] - self.centres) ** 2) * fc[:, None]
        return torch.zeros(len(batch.numbers), len(self.centres), dtype=g.dtype).index_add(0, i, g)

    def forward(self, batch):
        return self.readout(self.descriptors(batch))


@pytest.fixture(scope="module")
def ethanol():
    return mdata.load(DATA / "ethanol_small.xyz")


@pytest.fixture(scope="module")
def linear_model():
    return wrap(FixedFeatures(), "readout", species=["H", "C", "O"], cutoff=4.0,
                atomic_energies={"H": -13.6, "C": -1025.3, "O": -2035.6})


def _design(model, structures):
    """Summed descriptors + atom counts (energy rows) and force rows by finite differences."""
    rows, force_rows = [], []
    for atoms in structures:
        b = model.collate([atoms])
        phi = model.module.descriptors(b).detach().numpy()
        rows.append(np.concatenate([phi.sum(0), [len(atoms)]]))
        h = 1e-6
        for a in range(len(atoms)):
            for c in range(3):
                plus, minus = atoms.copy(), atoms.copy()
                plus.positions[a, c] += h
                minus.positions[a, c] -= h
                dp = model.module.descriptors(model.collate([plus])).detach().numpy().sum(0)
                dm = model.module.descriptors(model.collate([minus])).detach().numpy().sum(0)
                force_rows.append(np.concatenate([-(dp - dm) / (2 * h), [0.0]]))
    return np.array(rows), np.array(force_rows)


def test_energy_variance_equals_bayesian_linear_regression(linear_model, ethanol):
    train, test = ethanol[:14], ethanol[14:]
    lam, sigma = 0.7, 0.05
    llpr = LastLayerLaplace(linear_model, prior_precision=lam, energy_noise=sigma,
                            include_forces=False, distance=None).fit(train)
    X, _ = _design(linear_model, train)
    Xt, _ = _design(linear_model, test)
    cov = np.linalg.inv(X.T @ X / sigma**2 + lam * np.eye(X.shape[1]))
    expected = np.einsum("bi,ij,bj->b", Xt, cov, Xt)
    pred = llpr.predict(test)
    np.testing.assert_allclose(pred.energy_var, expected, rtol=1e-8)
    # local variances: per-atom features phi_i augmented with 1 (the bias)
    b = linear_model.collate(list(test))
    phi = linear_model.module.descriptors(b).detach().numpy()
    atom = np.concatenate([phi, np.ones((len(phi), 1))], axis=1)
    np.testing.assert_allclose(pred.atom_energy_var, np.einsum("ni,ij,nj->n", atom, cov, atom),
                               rtol=1e-8)


def test_force_rows_enter_the_posterior_and_exact_force_variance(linear_model, ethanol):
    train, test = ethanol[:6], ethanol[18:]
    lam, s_e, s_f = 2.0, 0.1, 0.2
    llpr = LastLayerLaplace(linear_model, prior_precision=lam, energy_noise=s_e,
                            forces_noise=s_f, distance=None).fit(train)
    X, G = _design(linear_model, train)
    precision = X.T @ X / s_e**2 + G.T @ G / s_f**2 + lam * np.eye(X.shape[1])
    np.testing.assert_allclose(llpr.precision_, precision, rtol=1e-6)
    cov = np.linalg.inv(precision)
    _, Gt = _design(linear_model, test)
    expected = np.einsum("ri,ij,rj->r", Gt, cov, Gt).reshape(-1, 3)
    np.testing.assert_allclose(llpr.predict(test).forces_var, expected, rtol=1e-5)


def test_energy_posterior_from_energy_rows_forces_from_joint(linear_model, ethanol, tmp_path):
    train, test = ethanol[:6], ethanol[18:]
    lam, s_e, s_f = 2.0, 0.1, 0.2
    kw = dict(prior_precision=lam, energy_noise=s_e, forces_noise=s_f, n_samples=5, seed=2,
              distance=None)
    split = LastLayerLaplace(linear_model, **kw).fit(train)  # energy_posterior="energy"
    joint = LastLayerLaplace(linear_model, energy_posterior="joint", **kw).fit(train)
    X, G = _design(linear_model, train)
    Xt, Gt = _design(linear_model, test)
    eye = lam * np.eye(X.shape[1])
    cov_e = np.linalg.inv(X.T @ X / s_e**2 + eye)
    cov = np.linalg.inv(X.T @ X / s_e**2 + G.T @ G / s_f**2 + eye)
    p_split, p_joint = split.predict(test), joint.predict(test)
    np.testing.assert_allclose(p_split.energy_var, np.einsum("bi,ij,bj->b", Xt, cov_e, Xt),
                               rtol=1e-6)
    np.testing.assert_allclose(p_joint.energy_var, np.einsum("bi,ij,bj->b", Xt, cov, Xt),
                               rtol=1e-6)
    assert np.all(p_joint.energy_var < p_split.energy_var)  # force rows only add precision
    np.testing.assert_allclose(p_split.forces_var, p_joint.forces_var, rtol=1e-10)
    np.testing.assert_allclose(p_split.forces_var, np.einsum("ri,ij,rj->r", Gt, cov, Gt).reshape(-1, 3),
                               rtol=1e-5)
    # with auto hyperparameters the energy posterior is the include_forces=False one
    auto = LastLayerLaplace(linear_model, n_samples=5, seed=2, distance=None).fit(train)
    energy_only = LastLayerLaplace(linear_model, include_forces=False, n_samples=5,
                                   seed=2, distance=None).fit(train)
    a, e = auto.predict(test), energy_only.predict(test)
    np.testing.assert_allclose(a.energy_var, e.energy_var, rtol=1e-8)
    np.testing.assert_allclose(a.atom_energy_var, e.atom_energy_var, rtol=1e-8)
    np.testing.assert_allclose(a.energy_members, e.energy_members, rtol=1e-10)
    assert auto.energy_posterior_["prior_precision"] == pytest.approx(
        energy_only.prior_precision_, rel=1e-8)
    # save/load is exact for both; the joint posterior is stored once
    for wrapper, pred in ((split, p_split), (joint, p_joint)):
        path = tmp_path / f"{wrapper.energy_posterior}.pt"
        wrapper.save(path)
        # wrap() saves weights, not code: the module is built in code
        again = mlipuq.uq.load(path, module=FixedFeatures()).predict(test)
        np.testing.assert_array_equal(again.energy_var, pred.energy_var)
        np.testing.assert_array_equal(again.energy_members, pred.energy_members)
        np.testing.assert_array_equal(again.forces_var, pred.forces_var)
    assert "energy_covariance_" not in joint._get_state()
    # a file saved before energy_posterior existed loads as the joint posterior
    state = joint._get_state()
    for name in ("energy_covariance_", "energy_samples_", "energy_posterior_"):
        state.pop(name, None)
    old = LastLayerLaplace(linear_model, **kw)
    old._set_state(state)
    old.fitted_ = True
    assert old.energy_posterior == "joint"
    np.testing.assert_allclose(old.predict(test).energy_var, p_joint.energy_var, rtol=1e-12)
    with pytest.raises(ValueError, match="energy_posterior"):
        LastLayerLaplace(linear_model, energy_posterior="forces")


def test_sampled_force_variance_converges_to_exact(linear_model, ethanol):
    exact = LastLayerLaplace(linear_model, distance=None).fit(ethanol[:10]).predict(
        ethanol[10:13]).forces_var
    errors = []
    for k in (16, 256, 4096):
        sampled = LastLayerLaplace(linear_model, force_variance="samples", n_samples=k, seed=1,
                                   distance=None)
        var = sampled.fit(ethanol[:10]).predict(ethanol[10:13]).forces_var
        errors.append(np.mean(np.abs(var / exact - 1)))
    assert errors[0] > errors[2]
    assert errors[1] > errors[2]
    assert errors[2] < 0.05, errors


def test_energy_members_are_posterior_samples(linear_model, ethanol):
    llpr = LastLayerLaplace(linear_model, n_samples=4000, seed=3).fit(ethanol[:10])
    pred = llpr.predict(ethanol[10:])
    assert pred.energy_members.shape == (4000, 10)
    np.testing.assert_allclose(pred.energy_members.var(axis=0), pred.energy_var, rtol=0.08)
    np.testing.assert_allclose(pred.energy_members.mean(axis=0), pred.energy,
                               atol=4 * np.sqrt(pred.energy_var.max() / 4000))


def test_auto_prior_maximises_marginal_likelihood(linear_model, ethanol):
    llpr = LastLayerLaplace(linear_model).fit(ethanol[:14])
    theta = torch.as_tensor(llpr._theta())
    stats = {
        "G_E": torch.as_tensor(llpr.gn_energy_), "G_F": torch.as_tensor(llpr.gn_forces_),
    }
    # recompute residual sums from the model
    out = linear_model.compute(ethanol[:14])
    stats["R_E"] = torch.tensor(float(((out["energy"] - ethanol[:14].energies) ** 2).sum()))
    stats["R_F"] = torch.tensor(float(((out["forces"] - ethanol[:14].forces) ** 2).sum()))
    stats["N_E"], stats["N_F"] = 14, out["forces"].size
    best = torch.log(torch.tensor([llpr.prior_precision_, llpr.energy_noise_, llpr.forces_noise_],
                                  dtype=torch.float64))
    top = float(log_marginal_likelihood(best, stats, theta))
    assert top == pytest.approx(llpr.log_marginal_likelihood_, rel=1e-7)
    for axis in range(3):
        for step in (-0.2, 0.2):
            moved = best.clone()
            moved[axis] += step
            assert float(log_marginal_likelihood(moved, stats, theta)) < top


def test_cholesky_jitter_is_logged(caplog):
    singular = np.ones((3, 3))
    with caplog.at_level(logging.WARNING):
        factor, jitter = cholesky_with_jitter(singular)
    assert jitter > 0
    assert "jitter" in caplog.text
    np.testing.assert_allclose(factor @ factor.T, singular + jitter * np.eye(3), atol=1e-12)
    factor, jitter = cholesky_with_jitter(np.eye(3) * 2)
    assert jitter == 0


@pytest.fixture(scope="module")
def trained_mini(ethanol):
    model = MiniMLIP(["H", "C", "O"], cutoff=4.0, width=16, n_interactions=2, n_rbf=8, seed=0)
    mlipuq.train(model, ethanol[:16], epochs=15, lr=5e-3, seed=0, progress=False)
    return model


def test_uncertainty_grows_away_from_training_data(trained_mini, ethanol):
    llpr = LastLayerLaplace(trained_mini).fit(ethanol[:16])
    near = llpr.predict(ethanol[16:])
    far_structures = []
    for k, atoms in enumerate(ethanol[16:]):
        far = atoms.copy()  # strongly distorted: 0.3 Å random displacements
        far.rattle(0.3, seed=k)
        far_structures.append(far)
    far = llpr.predict(far_structures)
    assert np.all(far.energy_std > near.energy_std)
    assert np.mean(far.forces_std) > np.mean(near.forces_std)


def test_user_model_untouched_and_validation(trained_mini, ethanol):
    before = {k: v.clone() for k, v in trained_mini.state_dict().items() if isinstance(v, torch.Tensor)}
    LastLayerLaplace(trained_mini).fit(ethanol[:8])
    for k, v in trained_mini.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, before[k])
    with pytest.raises(NotFittedError, match="fit"):
        LastLayerLaplace(trained_mini).predict(ethanol[:1])
    with pytest.raises(ValueError, match="prior_precision"):
        LastLayerLaplace(trained_mini, prior_precision=-1.0)
    with pytest.raises(ValueError, match="force_variance"):
        LastLayerLaplace(trained_mini, force_variance="magic")
    with pytest.raises(TypeError, match="MLIP"):
        LastLayerLaplace(nn.Linear(3, 1))
    no_forces = mdata.load([a.copy() for a in ethanol[:3]])
    for a, ref in zip(no_forces, ethanol[:3]):
        from ase.calculators.singlepoint import SinglePointCalculator

        a.calc = SinglePointCalculator(a, energy=ref.get_potential_energy())
    with pytest.raises(ValueError, match="structure 0: no reference forces"):
        LastLayerLaplace(trained_mini).fit(no_forces)
    LastLayerLaplace(trained_mini, include_forces=False).fit(no_forces)


def test_predict_energy_matches_predict(trained_mini, ethanol):
    llpr = LastLayerLaplace(trained_mini).fit(ethanol[:10])
    energy, var = llpr.predict_energy(ethanol[10:])
    pred = llpr.predict(ethanol[10:])
    np.testing.assert_allclose(energy, pred.energy, rtol=1e-12)
    np.testing.assert_allclose(var, pred.energy_var, rtol=1e-10)


def test_fit_seed_takes_precedence_over_constructor_seed(linear_model, ethanol):
    train = ethanol[:10]
    by_constructor = LastLayerLaplace(linear_model, n_samples=4, seed=5).fit(train)
    by_fit = LastLayerLaplace(linear_model, n_samples=4).fit(train, ethanol[10:], seed=5)
    np.testing.assert_array_equal(by_constructor.samples_, by_fit.samples_)
    assert by_fit.config()["seed"] == 5  # recorded, so saved files say which seed was used
    overridden = LastLayerLaplace(linear_model, n_samples=4, seed=5).fit(train, seed=6)
    assert overridden.seed == 6
    assert not np.array_equal(overridden.samples_, by_fit.samples_)
    default = LastLayerLaplace(linear_model, n_samples=4).fit(train)
    np.testing.assert_array_equal(default.samples_,
                                  LastLayerLaplace(linear_model, n_samples=4).fit(train, seed=0).samples_)
    with pytest.raises(TypeError, match="epochs"):
        LastLayerLaplace(linear_model).fit(train, epochs=3)
