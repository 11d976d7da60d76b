"""wrapper.calibrate(val, method=...) on real ethanol data, persistence, ASE calculator keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.md.verlet import VelocityVerlet
from ase import units

import mlipuq
from mlipuq import data as mdata
from mlipuq.calibration import metrics
from mlipuq.models import MiniMLIP
from mlipuq.uq import DeepEnsemble, LastLayerLaplace, ShallowEnsemble, load

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def splits():
    ds = mdata.load(DATA / "ethanol_300.xyz.gz")
    return ds[:100], ds[100:200], ds[200:300]


@pytest.fixture(scope="module")
def model(splits):
    train, val, _ = splits
    m = MiniMLIP(["H", "C", "O"], cutoff=4.0, width=16, n_interactions=2, n_rbf=8, seed=0)
    mlipuq.train(m, train, val, epochs=12, lr=5e-3, batch_size=10, seed=0, progress=False)
    return m


@pytest.fixture(scope="module")
def llpr(model, splits):
    return LastLayerLaplace(model, distance=None).fit(splits[0])  # raw: to be recalibrated


def _nll(pred, ref):
    return (
        metrics.nll_gaussian(pred.energy, pred.energy_std, ref.energies),
        metrics.nll_gaussian(pred.forces, pred.forces_std, ref.forces),
    )


@pytest.mark.parametrize("method", ["scalar", "power", "isotonic"])
def test_calibration_improves_held_out_nll(llpr, splits, method):
    _, val, test = splits
    raw = llpr.predict(test, calibrated=False)
    calibrated = llpr.copy().calibrate(val, method=method).predict(test)
    raw_e, raw_f = _nll(raw, test)
    cal_e, cal_f = _nll(calibrated, test)
    assert cal_e < raw_e
    assert cal_f < raw_f
    # the mean prediction is untouched by recalibration
    np.testing.assert_array_equal(calibrated.energy, raw.energy)
    np.testing.assert_array_equal(calibrated.forces, raw.forces)


def test_scalar_calibration_is_nll_optimal_on_validation(llpr, splits):
    _, val, _ = splits
    wrapper = llpr.copy().calibrate(val, method="scalar")
    raw, cal = llpr.predict(val, calibrated=False), wrapper.predict(val)
    # closed form: s^2 = mean(z^2) per target
    z2 = (raw.forces - val.forces) ** 2 / raw.forces_var
    np.testing.assert_allclose(cal.forces_var, raw.forces_var * z2.mean(), rtol=1e-10)
    z2 = (raw.energy - val.energies) ** 2 / raw.energy_var
    np.testing.assert_allclose(cal.energy_var, raw.energy_var * z2.mean(), rtol=1e-10)
    # members are stretched by the same factor about the mean
    spread_raw = raw.energy_members - raw.energy
    spread_cal = cal.energy_members - cal.energy
    np.testing.assert_allclose(spread_cal, spread_raw * np.sqrt(z2.mean()), rtol=1e-7, atol=1e-9)


def test_calibration_survives_save_load(llpr, splits, tmp_path):
    _, val, test = splits
    wrapper = llpr.copy().calibrate(val, method="isotonic")
    wrapper.save(tmp_path / "llpr.pt")
    loaded = load(tmp_path / "llpr.pt")
    a, b = wrapper.predict(test[:20]), loaded.predict(test[:20])
    np.testing.assert_allclose(b.energy_var, a.energy_var, rtol=1e-12)
    np.testing.assert_allclose(b.forces_var, a.forces_var, rtol=1e-12)
    assert loaded.calibrated_


def test_calibrate_needs_reference_forces(llpr, splits):
    val = mdata.load([a.copy() for a in splits[1][:5]])  # copies drop the calculator
    with pytest.raises(ValueError, match="reference energies and forces"):
        llpr.copy().calibrate(val)


def test_calculator_publishes_uncertainties(model, splits):
    train, val, test = splits
    wrappers = {
        "llpr": LastLayerLaplace(model, force_variance="samples", n_samples=4).fit(train[:30]),
        "shallow": ShallowEnsemble(model, n_heads=3).fit(train[:30], epochs=1, progress=False),
        "deep": DeepEnsemble([model, MiniMLIP(["H", "C", "O"], cutoff=4.0, width=16,
                                              n_interactions=2, n_rbf=8, seed=1)]),
    }
    atoms = test[0].copy()
    for name, wrapper in wrappers.items():
        calc = mlipuq.Calculator(wrapper)
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        pred = wrapper.predict(test[0])
        assert energy == pytest.approx(pred.energy[0], rel=1e-6, abs=1e-6), name
        np.testing.assert_allclose(calc.results["energy_std"], pred.energy_std[0], rtol=1e-4)
        assert calc.results["forces_std"].shape == (len(atoms), 3)
        assert calc.results["max_force_std"] == pytest.approx(
            np.linalg.norm(calc.results["forces_std"], axis=1).max(), rel=1e-12)
        assert calc.results["energies"].shape == (pred.n_members,)
        assert calc.results["forces_committee"].shape == (pred.n_members, len(atoms), 3)
        # the calculator copies the wrapper: the user's wrapper keeps its dtype
        assert wrapper.dtype == model.dtype
    # and it drives ASE dynamics
    atoms.calc = mlipuq.Calculator(wrappers["llpr"])
    VelocityVerlet(atoms, timestep=0.25 * units.fs).run(3)
    assert np.isfinite(atoms.calc.results["energy_std"])
