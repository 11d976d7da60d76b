"""Isolated atoms in calibration and evaluation, non-finite parameters, metric ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

import mlipuq
from mlipuq.calibration import evaluate
from mlipuq.errors import ZeroUncertaintyError
from mlipuq.uq import LastLayerLaplace
from mlipuq.prediction import Prediction

from conftest import make_model


def _lone_atoms(with_forces: bool) -> list:
    """Isolated H, C, O atoms with reference energies (as in DFT reference sets)."""
    atoms = []
    for symbol, energy in (("H", -13.57), ("C", -1025.28), ("O", -2035.57)):
        a = Atoms(symbol, positions=[[0.0, 0.0, 0.0]])
        results = {"energy": energy}
        if with_forces:
            results["forces"] = np.zeros((1, 3))
        a.calc = SinglePointCalculator(a, **results)
        atoms.append(a)
    return atoms


@pytest.fixture(scope="module")
def llpr():
    data = list(mlipuq.load(__import__("conftest").ETHANOL_SMALL))
    return LastLayerLaplace(make_model()).fit(data[:10]), data[10:]


@pytest.mark.parametrize("with_forces", [False, True])
def test_lone_atoms_are_excluded_from_calibration(llpr, with_forces):
    """A lone atom's forces (zero std, zero error) leave the force calibration
    unchanged; they are counted as excluded instead of breaking the fit."""
    wrapper, val = llpr
    plain = wrapper.copy().calibrate(val)
    mixed = wrapper.copy().calibrate(val + _lone_atoms(with_forces))
    assert mixed.recalibrator_.excluded_ == {"energy": 0, "forces": 9}
    assert mixed.recalibrator_.forces_.scale_ == pytest.approx(plain.recalibrator_.forces_.scale_,
                                                                rel=1e-12)


def test_lone_atoms_are_counted_in_evaluate(llpr):
    wrapper, val = llpr
    structures = val + _lone_atoms(with_forces=False)
    report = evaluate(wrapper.predict(structures), structures)
    assert report.settings["excluded"]["forces"] == 9
    assert report.settings["excluded"]["forces_norm"] == 3
    assert report.metrics["forces"]["n"] == 3 * sum(len(a) for a in val)
    assert report.metrics["energy"]["n"] == len(structures)
    assert "Excluded as exact" in report.to_markdown()


def _prediction(energy_std) -> Prediction:
    b = len(energy_std)
    return Prediction(
        energy=np.zeros(b), energy_var=np.asarray(energy_std, float) ** 2,
        forces=np.zeros((b, 3)), forces_var=np.ones((b, 3)),
        n_atoms=np.ones(b, dtype=int), batch=np.arange(b),
    )


def test_zero_std_with_an_error_names_the_structure():
    structures = _lone_atoms(with_forces=True)  # energies far from the predicted 0
    with pytest.raises(ZeroUncertaintyError, match="energy of structure 1"):
        evaluate(_prediction([1.0, 0.0, 1.0]), structures)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prior_precision": math.inf},
        {"prior_precision": math.nan},
        {"energy_noise": math.inf},
        {"forces_noise": math.nan},
        {"energy_noise": -1.0},
    ],
)
def test_llpr_refuses_non_finite_parameters(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        LastLayerLaplace(make_model(), **kwargs)


@pytest.mark.parametrize("lr", [math.inf, math.nan, 0.0])
def test_training_refuses_bad_learning_rates(ethanol, lr):
    with pytest.raises(ValueError, match="lr"):
        mlipuq.train(make_model(), ethanol, epochs=1, lr=lr)


def test_jitter_reports_the_energy_posterior_jitter(llpr):
    """A precision that is only positive definite with the force rows: the
    energy-row posterior needs jitter, and ``jitter_`` says how much."""
    wrapper = llpr[0].copy()
    d = wrapper.gn_energy_.shape[0]
    wrapper.gn_energy_ = np.eye(d)
    wrapper.gn_energy_[0, 0] = -0.55  # energy rows alone: not positive definite
    wrapper.energy_posterior_ = {**wrapper.energy_posterior_, "prior_precision": 0.5,
                                 "energy_noise": 1.0}
    wrapper.prior_precision_, wrapper.energy_noise_ = 2.0, 1.0
    wrapper.gn_forces_ = np.eye(d)
    wrapper.forces_noise_ = 1.0
    wrapper._factorise()
    assert wrapper._separate_energy_posterior
    assert wrapper.jitter_ > 0.05  # -0.55 + 0.5 needs more than 0.05 on the diagonal


@pytest.mark.parametrize("scale", [1e-300, 1e-170, 1e170, 1e300])
def test_metrics_raise_instead_of_overflowing(scale):
    rng = np.random.default_rng(0)
    pred = rng.normal(size=50)
    true = pred + rng.normal(size=50)
    with pytest.raises(ValueError, match="out of float64 range"):
        mlipuq.calibration.metrics.all_metrics(pred, np.full(50, scale), true)


def test_metrics_are_finite_for_any_accepted_input():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        e_pred, e_std, e_err = rng.uniform(-150, 150, size=3)
        pred = rng.normal(size=n) * 10**e_pred
        std = np.abs(rng.normal(size=n)) * 10**e_std + 1e-300
        true = pred + rng.normal(size=n) * 10**e_err
        try:
            metrics = mlipuq.calibration.metrics.all_metrics(pred, std, true)
        except ValueError:
            continue
        bad = [k for k, v in metrics.items() if v is not None and not np.isfinite(v)]
        assert not bad, (e_pred, e_std, e_err, bad)
