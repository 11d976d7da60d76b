"""``EvidentialHead(distance_combination="max")``: the NIG variance and the latent-distance
term fitted apart on the same held-out data, the larger of the two reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mlipuq
from conftest import ETHANOL_SMALL
from mlipuq.models.mini import MiniMLIP
from mlipuq.uq import LatentDistance
from mlipuq.uq import base as uq_base
from mlipuq.uq.distance_term import combine_force_variances, combine_variances
from mlipuq.uq.evidential import EvidentialHead

RAW = dict(calibrated=False, composition=False)


@pytest.fixture(scope="module")
def data():
    dataset = mlipuq.load(ETHANOL_SMALL)  # 20 frames
    return {"train": dataset[:12], "head": dataset[12:16], "held": dataset[16:18],
            "test": dataset[18:20]}


@pytest.fixture(scope="module")
def heads(data):
    model = MiniMLIP(data["train"].species, cutoff=4.0, width=16, n_interactions=2, n_rbf=8,
                     seed=0)
    mlipuq.train(model, data["train"], epochs=4, lr=5e-3, batch_size=10, progress=False)
    fit = dict(reference=data["train"], epochs=3, lr=2e-2, batch_size=20, seed=0,
               progress=False)
    return model, {name: EvidentialHead(model, distance_combination=name).fit(
        data["head"], data["held"], **fit) for name in ("sum", "max")}


def test_combine_variances_by_hand():
    own, term = np.array([1.0, 4.0]), np.array([3.0, 1.0])
    np.testing.assert_array_equal(combine_variances("sum", 2.0, own, term), [5.0, 9.0])
    np.testing.assert_array_equal(combine_variances("max", 2.0, own, term), [3.0, 8.0])
    tensor = combine_variances("max", 0.5, torch.tensor(own), torch.tensor(term))
    np.testing.assert_array_equal(tensor.numpy(), [3.0, 2.0])


def test_combine_force_variances_by_hand_and_under_rotation():
    """Forces: ``"max"`` per atom on the mean component variance, the own components
    stretched by one factor (by hand); an atom without own variance gets the term's in
    every component; the atom's total is the same for a rotated covariance's diagonal."""
    own = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    term = torch.tensor([[6.0], [1.0], [2.0]], dtype=torch.float64)
    np.testing.assert_allclose(combine_force_variances("sum", 2.0, own, term).numpy(),
                               [[8, 10, 12], [9, 9, 9], [2, 2, 2]])
    # atom 0: λ·mean = 4 < 6, stretched by 1.5; atom 1: 8 > 1, kept; atom 2: the term's
    np.testing.assert_allclose(combine_force_variances("max", 2.0, own, term).numpy(),
                               [[3, 6, 9], [8, 8, 8], [2, 2, 2]])
    cov = torch.diag(torch.tensor([1.0, 2.0, 9.0], dtype=torch.float64))
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64))
    diagonals = torch.stack([torch.diagonal(cov), torch.diagonal(q @ cov @ q.T)])
    totals = combine_force_variances("max", 1.0, diagonals, torch.full((2, 1), 5.0,
                                                                       dtype=torch.float64))
    assert totals.sum(dim=1)[0].item() == pytest.approx(totals.sum(dim=1)[1].item(), rel=1e-12)
    assert totals.sum(dim=1)[0].item() == pytest.approx(15.0)  # the term's 5 > mean 4


def test_scales_are_the_nig_variances_own_likelihood(heads, data):
    """λ_E, λ_F are the Gaussian maximum-likelihood scales of the head's variance alone on
    the held-out structures, mean(r²/σ²) (d/dλ of Σ log λσ² + r²/(λσ²) vanishes there)."""
    _, fitted = heads
    head = fitted["max"]
    alone = head.copy()
    alone.distance_ = None
    pred = alone.predict(data["held"], **RAW)
    held = data["held"]
    r2_e = (pred.energy - held.energies) ** 2
    r2_f = (pred.forces - held.forces) ** 2
    np.testing.assert_allclose(head.distance_.energy_other_scale_,
                               np.mean(r2_e / pred.energy_var), rtol=1e-10)
    np.testing.assert_allclose(head.distance_.forces_other_scale_,
                               np.mean(r2_f / pred.forces_var), rtol=1e-10)


def test_term_is_latent_distance_alone_and_the_larger_is_reported(heads, data):
    """a, b are LatentDistance's own fit (no joint fit, no share floor); the reported
    variance is max(λσ²_NIG, term) per target, the aleatoric part λσ²_alea."""
    model, fitted = heads
    head = fitted["max"]
    alone = LatentDistance(model, structure_covariance="held-out",
                           features=head.distance_features).fit(data["train"], data["held"])
    term = head.distance_
    for key in ("energy_a_", "energy_b_", "forces_a_", "forces_b_"):
        np.testing.assert_allclose(getattr(term, key), getattr(alone, key), rtol=1e-10)
    assert head.min_distance_share is None and fitted["sum"].min_distance_share == 0.1
    nig = head.copy()
    nig.distance_ = None
    full, own, latent = (w.predict(data["test"], **RAW) for w in (head, nig, alone))
    lam_e, lam_f = term.energy_other_scale_, term.forces_other_scale_
    np.testing.assert_allclose(full.energy_var,
                               np.maximum(lam_e * own.energy_var, latent.energy_var), rtol=1e-9)
    np.testing.assert_allclose(full.forces_var,
                               np.maximum(lam_f * own.forces_var, latent.forces_var), rtol=1e-9)
    np.testing.assert_allclose(full.energy_aleatoric_var, lam_e * own.energy_aleatoric_var,
                               rtol=1e-9)
    assert np.all(full.energy_epistemic_var >= 0)
    # the term's own part, reported for the recalibration's range (``distance_range``)
    np.testing.assert_allclose(full.energy_distance_var, latent.energy_var, rtol=1e-9)
    summed = fitted["sum"].predict(data["test"], **RAW)
    assert np.all(summed.energy_distance_var <= summed.energy_var)
    assert own.energy_distance_var is None and latent.energy_distance_var is None


def test_map_data_fits_a_and_b_there_and_lambda_on_the_terms_half(heads, data):
    """``map_data``: a and b are latent distance's own fit on those structures (the
    covariance chosen there too), λ the NIG variance's scale on the term's half; the
    joint sum, which fits all three together, refuses it."""
    from mlipuq.uq.distance_term import fit_distance_term, own_scale

    model, fitted = heads
    head = fitted["max"]
    both = mlipuq.data.concatenate([data["head"], data["held"]])
    options = dict(reference=data["train"], score="mahalanobis", seed=0, batch_size=20,
                   structure_covariance="held-out", covariance_data=both)
    term = fit_distance_term(head, data["head"], data["held"], combination="max",
                             map_data=both, **options)
    alone = LatentDistance(model, structure_covariance="held-out", ridge_scale="all_atoms",
                           features=head.distance_features).fit(data["train"], both)
    for key in ("energy_a_", "energy_b_", "forces_a_", "forces_b_"):
        np.testing.assert_allclose(getattr(term, key), getattr(alone, key), rtol=1e-10)
    nig = head.copy()
    nig.distance_ = None
    np.testing.assert_allclose((term.energy_other_scale_, term.forces_other_scale_),
                               own_scale(nig, data["held"], 20), rtol=1e-10)
    with pytest.raises(ValueError, match="map_data needs combination='max'"):
        fit_distance_term(head, data["head"], data["held"], combination="sum",
                          map_data=both, **options)


def test_saves_loads_and_leaves_the_default_file_alone(heads, data, tmp_path):
    model, fitted = heads
    path = tmp_path / "max.pt"
    fitted["max"].save(path)
    again = uq_base.load(path)
    assert again.distance_combination == "max" and "distance_combination='max'" in repr(again)
    a, b = again.predict(data["test"]), fitted["max"].predict(data["test"])
    np.testing.assert_array_equal(a.energy_var, b.energy_var)
    np.testing.assert_array_equal(a.forces_var, b.forces_var)
    assert "distance_combination" not in fitted["sum"].config()
    assert EvidentialHead(model, distance=None, distance_combination="max").distance_combination \
        == "sum"
    with pytest.raises(ValueError, match="distance_combination must be one of"):
        EvidentialHead(model, distance_combination="mean")
