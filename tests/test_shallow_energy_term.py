"""The shallow ensemble's latent-distance energy term (``energy_combination="max"``, the
default; :mod:`mlipuq.uq.shallow_distance`): the larger of the heads' energy variance
and :class:`LatentDistance`'s, each fitted alone on the same held-out data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mlipuq
from mlipuq import fileio
from mlipuq.errors import FileFormatError
from mlipuq.models import MiniMLIP
from mlipuq.uq import LatentDistance, ShallowEnsemble
from mlipuq.uq.base import load as load_wrapper

from conftest import scaled_about_centroid

FAST = dict(batch_size=8, progress=False)
RAW = dict(calibrated=False, composition=False)


@pytest.fixture(scope="module")
def data():
    ds = mlipuq.datasets.ethanol("train")[:20]
    return ds[:14], ds[14:20]


@pytest.fixture(scope="module")
def base_model(data):
    train, val = data
    model = MiniMLIP(train.species, cutoff=4.0, width=16, n_interactions=2, n_rbf=8,
                     n_readout_features=16, seed=0)
    mlipuq.train(model, train, val, epochs=8, lr=5e-3, seed=0, **FAST)
    return model


@pytest.fixture(scope="module")
def pair(base_model, data):
    """The heads' energy variance alone (``energy_combination=None``) and the default,
    the same heads with the energy term."""
    train, val = data
    fit = dict(epochs=2, seed=0, **FAST)
    return (ShallowEnsemble(base_model, n_heads=8, energy_combination=None).fit(
                train, val, **fit),
            ShallowEnsemble(base_model, n_heads=8).fit(train, val, **fit))


def test_energy_variance_is_the_larger_of_the_two_fitted_apart(pair, data):
    """σ²_E = max(λ_E σ²_heads, LatentDistance's energy variance), λ_E the mean of
    r²/σ²_heads on val (hand-computed here), LatentDistance fitted alone on the same
    train and val around the ensemble's model (whose readout is the mean head: the
    term fits the ensemble's own errors); forces, force members and heads are the
    ensemble's without it, bit for bit."""
    train, val = data
    heads_energies, energy_term = pair
    np.testing.assert_array_equal(heads_energies.head_weight_.numpy(), energy_term.head_weight_.numpy())
    heads = heads_energies.copy()
    heads.distance, heads.distance_ = None, None
    alone = heads.predict(val, **RAW)
    lam = np.mean((alone.energy - val.energies) ** 2 / alone.energy_var)
    assert energy_term.energy_distance_.energy_other_scale_ == pytest.approx(lam, rel=1e-10)
    latent = LatentDistance(heads_energies.model,  # the terms'
                            features=energy_term.distance_features).fit(train, val, batch_size=8)
    for structures in (val, scaled_about_centroid(val, 0.85)):
        own, ld = energy_term.predict(structures, **RAW), latent.predict(structures, **RAW)
        heads_var = heads.predict(structures, **RAW).energy_var
        np.testing.assert_allclose(own.energy_var, np.maximum(lam * heads_var, ld.energy_var),
                                   rtol=1e-9)
        ref = heads_energies.predict(structures, **RAW)
        for field in ("energy", "forces", "forces_var", "forces_members"):
            np.testing.assert_array_equal(getattr(own, field), getattr(ref, field),
                                          err_msg=field)


def test_energy_members_are_stretched_and_no_longer_consistent(pair, data):
    _, val = data
    heads_energies, energy_term = pair
    own, ref = (w.predict(val, **RAW) for w in pair)
    np.testing.assert_allclose(own.energy_members.var(axis=0), own.energy_var, rtol=1e-10)
    np.testing.assert_allclose(own.energy_members.mean(axis=0), ref.energy, rtol=0, atol=1e-9)
    assert not energy_term.has_consistent_members


def test_energy_term_grows_away_from_the_training_data(pair, data):
    """Compressed by 15 %, the term's share decides: the energy std over the heads' own
    grows (it is >= 1 by construction; it must rise with the compression)."""
    _, val = data
    heads_energies, energy_term = pair
    ratios = []
    for factor in (1.0, 0.85):
        structures = val if factor == 1.0 else scaled_about_centroid(val, factor)
        own, ref = (w.predict(structures, **RAW) for w in (energy_term, heads_energies))
        ratios.append(np.median(own.energy_var / ref.energy_var))
    assert ratios[1] > 2 * ratios[0], ratios


def test_energy_term_survives_save_and_load(pair, data, tmp_path):
    _, val = data
    heads_energies, energy_term = pair
    path = tmp_path / "shallow.pt"
    energy_term.save(path)
    loaded = load_wrapper(path)
    assert loaded.energy_combination == "max" and loaded.energy_distance_ is not None
    assert "energy_combination" in loaded.config() and "energy_combination" not in heads_energies.config()
    assert "energy_combination=None" in repr(heads_energies) and "energy_combination" not in repr(loaded)
    # without the force term there is no energy term either: the heads alone
    alone = ShallowEnsemble(energy_term.model, distance=None)
    assert alone.energy_combination is None and "energy_combination" not in alone.config()
    a, b = energy_term.predict(val, **RAW), loaded.predict(val, **RAW)
    np.testing.assert_allclose(b.energy_var, a.energy_var, rtol=1e-12)


def test_energy_combination_is_checked(base_model):
    with pytest.raises(ValueError, match="energy_combination must be one of"):
        ShallowEnsemble(base_model, energy_combination="sum")


def test_force_combination_max_is_the_larger_of_the_two_fitted_apart(base_model, data,
                                                                     pair, tmp_path,
                                                                     monkeypatch):
    """``force_combination="max"``: the force term is the energy term's fit (one object),
    σ²_F = max(λ_F σ²_heads, LatentDistance's force variance) with λ_F the heads' own
    likelihood scale on val (hand-computed); energies as the default's; members stretched;
    the option survives save and load, the one term saved once (and the option is absent
    from the default's config)."""
    train, val = data
    _, default = pair
    ensemble = ShallowEnsemble(base_model, n_heads=8, force_combination="max").fit(
        train, val, epochs=2, seed=0, **FAST)
    assert ensemble.distance_ is ensemble.energy_distance_
    heads = ensemble.copy()
    heads.distance, heads.distance_, heads.energy_distance_ = None, None, None
    alone = heads.predict(val, **RAW)
    lam = np.mean((alone.forces - val.forces) ** 2 / alone.forces_var)
    assert ensemble.distance_.forces_other_scale_ == pytest.approx(lam, rel=1e-10)
    latent = LatentDistance(ensemble.model, structure_covariance="held-out",
                            features=ensemble.distance_features).fit(train, val, batch_size=8)
    for structures in (val, scaled_about_centroid(val, 0.85)):
        own, ld = ensemble.predict(structures, **RAW), latent.predict(structures, **RAW)
        heads_var = heads.predict(structures, **RAW).forces_var
        mean = (lam * heads_var).mean(axis=1, keepdims=True)  # per atom, by hand
        larger = np.maximum(mean, ld.forces_var[:, :1])
        np.testing.assert_allclose(own.forces_var, lam * heads_var * larger / mean, rtol=1e-9)
        np.testing.assert_allclose(own.forces_members.var(axis=0), own.forces_var, rtol=1e-9)
        np.testing.assert_allclose(own.energy_var, default.predict(structures, **RAW).energy_var,
                                   rtol=1e-9)
    path = tmp_path / "forces_max.pt"
    ensemble.save(path)
    loaded = load_wrapper(path)
    assert loaded.force_combination == "max" and "force_combination" in loaded.config()
    assert loaded.distance_ is loaded.energy_distance_
    assert "energy_distance" not in ensemble._get_state()
    assert "force_combination" not in default.config() and "force_combination" in repr(loaded)
    for target in ("forces_var", "energy_var"):
        np.testing.assert_allclose(getattr(loaded.predict(val, **RAW), target),
                                   getattr(ensemble.predict(val, **RAW), target), rtol=1e-12)
    # saved at format 3: a version-2 reader (as mlipuq's before the shared term) refuses
    # it by name rather than dropping the energy term; the default stays at version 2
    assert torch.load(path, weights_only=True)["format_version"] == 3
    assert default.payload()["format_version"] == 2
    monkeypatch.setitem(fileio.CURRENT, "mlipuq.uq", 2)
    with pytest.raises(FileFormatError, match="format version 3 is not supported"):
        load_wrapper(path)
    with pytest.raises(ValueError, match="force_combination must be one of"):
        ShallowEnsemble(base_model, force_combination="larger")
    alone = ShallowEnsemble(base_model, distance=None, force_combination="max")
    assert alone.force_combination == "sum" and "force_combination" not in alone.config()
