"""feature_vjps: batched (vmap) and looped vector-Jacobian products agree with each other
and with finite differences; wrappers give the same predictions either way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlipuq.uq import LastLayerLaplace, ShallowEnsemble
from mlipuq.uq.jacobians import feature_vjps

from conftest import make_model


@pytest.fixture
def molecule(ethanol):
    return ethanol[3]


def test_batched_and_loop_agree_with_finite_differences(molecule):
    model = make_model(torch.float64)
    cot = torch.randn(4, model.n_features, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(0))
    out = model(model.collate([molecule]), forces=True, features=True)
    looped = feature_vjps(out["features"], out["positions"], cot, vectorize=False)
    batched = feature_vjps(out["features"], out["positions"], cot, vectorize=True)
    torch.testing.assert_close(looped, batched, rtol=1e-10, atol=1e-12)

    def summed(positions):
        atoms = molecule.copy()
        atoms.positions = positions
        phi = model(model.collate([atoms]), forces=False, features=True)["features"]
        return (phi.sum(0) @ cot.T).detach().numpy()  # (K,)

    h, p = 1e-5, molecule.positions.copy()
    for atom, axis in ((0, 0), (4, 2), (8, 1)):
        plus, minus = p.copy(), p.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        fd = (summed(plus) - summed(minus)) / (2 * h)
        np.testing.assert_allclose(looped[:, atom, axis].numpy(), fd, rtol=1e-6, atol=1e-8)


def test_bad_vectorize_value(molecule):
    model = make_model(torch.float64)
    out = model(model.collate([molecule]), forces=True, features=True)
    with pytest.raises(ValueError, match="vectorize"):
        feature_vjps(out["features"], out["positions"], torch.eye(model.n_features),
                     vectorize="sometimes")


def test_wrappers_predict_the_same_with_either_strategy(ethanol):
    model = make_model(torch.float64)
    data = ethanol[:8]
    for make in (
        lambda v: LastLayerLaplace(model, vectorize=v).fit(data),
        lambda v: LastLayerLaplace(model, force_variance="samples", n_samples=5,
                                   vectorize=v).fit(data),
        lambda v: ShallowEnsemble(model, n_heads=3, vectorize=v).fit(data, epochs=1,
                                                                     progress=False),
    ):
        a, b = make(True).predict(data[:3]), make(False).predict(data[:3])
        np.testing.assert_allclose(a.forces_var, b.forces_var, rtol=1e-8, atol=1e-14)
        np.testing.assert_allclose(a.energy_var, b.energy_var, rtol=1e-8, atol=1e-14)
