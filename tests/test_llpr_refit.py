"""LastLayerLaplace(refit_mean=True): the posterior mean of the readout.

Properties: the energies equal the closed-form Bayesian linear regression
(ridge) on the energy rows; predicting with θ* + Δ equals a copy of the model
whose readout was set to θ* + Δ (energies, forces, stresses, both force
variance modes); a second refit at the posterior mean moves nothing (its
gradient vanishes); the default is unchanged; saved files keep the mean.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mlipuq import data as mdata
from mlipuq.models import MiniMLIP
from mlipuq.uq import LastLayerLaplace

from conftest import make_model

@pytest.fixture(scope="module")
def cu_data():
    """12 rattled, strained 8-atom Cu cells labelled with EMT."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(4)
    frames = []
    for k in range(12):
        atoms = bulk("Cu", "fcc", a=3.6 * (1 + 0.02 * rng.standard_normal()), cubic=True)
        atoms = atoms.repeat((2, 1, 1))
        atoms.rattle(stdev=0.08, seed=k)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return mdata.as_dataset(frames)


@pytest.fixture(scope="module")
def cu_model(cu_data):
    return make_model(torch.float64, seed=0)


def _with_readout(model, theta: np.ndarray):
    """A copy of ``model`` whose readout weights (and bias) are ``theta``."""
    other = copy.deepcopy(model)
    layer = other.readout_layer
    with torch.no_grad():
        n = layer.weight.shape[1]
        layer.weight.copy_(torch.as_tensor(theta[:n], dtype=layer.weight.dtype)[None])
        if layer.bias is not None:
            layer.bias.fill_(float(theta[n]))
    return other


def test_energy_mean_is_the_ridge_solution(cu_model, cu_data):
    """Energy rows only, fixed λ and σ_E: θ = (FᵀF/σ² + λI)⁻¹ Fᵀ(y − offset)/σ²."""
    lam, sigma = 0.3, 0.02
    llpr = LastLayerLaplace(cu_model, include_forces=False, prior_precision=lam,
                            energy_noise=sigma, refit_mean=True).fit(cu_data)
    rows = llpr.design_matrix(cu_data)
    theta = llpr._theta()
    trained = cu_model.compute(cu_data)["energy"]
    offset = trained - rows @ theta  # reference energies: not part of the readout
    a = rows.T @ rows / sigma**2 + lam * np.eye(len(theta))
    ridge = np.linalg.solve(a, rows.T @ (cu_data.energies - offset) / sigma**2)
    np.testing.assert_allclose(llpr.mean_shift_, ridge - theta, rtol=1e-7, atol=1e-10)
    pred = llpr.predict(cu_data)
    np.testing.assert_allclose(pred.energy, offset + rows @ ridge, rtol=0, atol=1e-8)
    # the ridge fit is better on its own training data than the trained readout
    assert np.mean((pred.energy - cu_data.energies) ** 2) < np.mean(
        (trained - cu_data.energies) ** 2)


@pytest.mark.parametrize("force_variance", ["exact", "samples"])
def test_shifted_predictions_equal_a_model_with_the_mean_readout(cu_model, cu_data,
                                                                 force_variance):
    llpr = LastLayerLaplace(cu_model, refit_mean=True, n_samples=4,
                            force_variance=force_variance).fit(cu_data[:8])
    assert np.abs(llpr.mean_shift_).max() > 0
    shifted = _with_readout(cu_model, llpr._theta() + llpr.mean_shift_)
    test = cu_data[8:]
    pred = llpr.predict(test, stress=True)
    ref = shifted.compute(test, stress=True)
    np.testing.assert_allclose(pred.energy, ref["energy"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(pred.forces, ref["forces"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(pred.stress, ref["stress"], rtol=0, atol=1e-10)
    # the members are centred on the new mean: their mean tends to it
    assert pred.energy_members.shape[0] == 4
    # the base model itself is untouched
    np.testing.assert_array_equal(cu_model.compute(test)["energy"],
                                  LastLayerLaplace(cu_model).fit(cu_data[:8])
                                  .predict(test).energy)


def test_second_refit_at_the_mean_moves_nothing(cu_model, cu_data):
    """At the posterior mean the log-posterior gradient vanishes: Δ' = 0."""
    fixed = {"prior_precision": 0.5, "energy_noise": 0.05, "forces_noise": 0.1}
    first = LastLayerLaplace(cu_model, refit_mean=True, **fixed).fit(cu_data)
    at_mean = _with_readout(cu_model, first._theta() + first.mean_shift_)
    second = LastLayerLaplace(at_mean, refit_mean=True, **fixed).fit(cu_data)
    scale = np.abs(first.mean_shift_).max()
    assert np.abs(second.mean_shift_).max() < 1e-6 * scale
    np.testing.assert_allclose(second.covariance_, first.covariance_, rtol=1e-8)


def test_evidence_is_maximised_at_the_mean(cu_model, cu_data):
    """The fitted hyperparameters maximise the evidence evaluated at the mean."""
    from mlipuq.uq.llpr_evidence import log_marginal_likelihood

    llpr = LastLayerLaplace(cu_model, refit_mean=True).fit(cu_data)
    stats = {"G_E": torch.as_tensor(llpr.gn_energy_), "G_F": torch.as_tensor(llpr.gn_forces_),
             "b_E": torch.as_tensor(llpr.cross_[0]), "b_F": torch.as_tensor(llpr.cross_[1])}
    out = cu_model.compute(cu_data)
    stats["R_E"] = torch.tensor(float(((out["energy"] - cu_data.energies) ** 2).sum()))
    stats["R_F"] = torch.tensor(float(((out["forces"] - cu_data.forces) ** 2).sum()))
    stats["N_E"], stats["N_F"] = len(cu_data), out["forces"].size
    theta = torch.as_tensor(llpr._theta())
    best = torch.log(torch.tensor([llpr.prior_precision_, llpr.energy_noise_,
                                   llpr.forces_noise_], dtype=torch.float64))
    top = float(log_marginal_likelihood(best, stats, theta, refit=True))
    # residual sums summed in another order: R - 2bΔ + ΔGΔ cancels digits when the
    # last layer can fit much better than the (untrained) model, so not 1e-7 here
    assert top == pytest.approx(llpr.log_marginal_likelihood_, rel=1e-3)
    for axis in range(3):
        for step in (-0.2, 0.2):
            moved = best.clone()
            moved[axis] += step
            assert float(log_marginal_likelihood(moved, stats, theta, refit=True)) < top


def test_default_keeps_the_trained_readout(cu_model, cu_data):
    llpr = LastLayerLaplace(cu_model).fit(cu_data)
    assert llpr.mean_shift_ is None
    np.testing.assert_array_equal(llpr.predict(cu_data).energy,
                                  cu_model.compute(cu_data)["energy"])


def test_refit_mean_survives_save_and_load(cu_model, cu_data, tmp_path):
    llpr = LastLayerLaplace(cu_model, refit_mean=True).fit(cu_data)
    llpr.save(tmp_path / "w.pt")
    back = LastLayerLaplace.load(tmp_path / "w.pt")
    assert back.refit_mean
    a, b = llpr.predict(cu_data[:3]), back.predict(cu_data[:3])
    np.testing.assert_allclose(a.energy, b.energy, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-12)


def test_direct_force_head_is_refused(cu_data):
    model = MiniMLIP(["Cu"], cutoff=4.0, width=8, n_interactions=1, n_rbf=6, seed=0,
                     direct_forces=True, force_mode="direct")
    with pytest.raises(ValueError, match="refit_mean"):
        LastLayerLaplace(model, refit_mean=True).fit(cu_data)


def test_ethanol_energy_query_matches_predict(ethanol):
    model = make_model(torch.float64, seed=1)
    llpr = LastLayerLaplace(model, refit_mean=True).fit(ethanol[:10])
    energy, _ = llpr.predict_energy(ethanol[10:])
    np.testing.assert_allclose(energy, llpr.predict(ethanol[10:]).energy, rtol=0, atol=1e-9)
