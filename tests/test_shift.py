"""Uncertainty under distribution shift: properties users rely on.

* every wrapper's energy and force std grow monotonically along an EMT Cu
  temperature series the model was not trained on (300 K training);
* the default latent distance's force std, and the evidential head's with its
  default latent-distance term, grow at least as fast as the force error from
  bulk to vacancies, and their energy stds as fast as the energy error from
  bulk to strained cells (energies from the structure's latent distance);
* the evidential head's std stays bounded on far-away structures (at most
  ``STD_CAP_FACTOR`` times the largest error plausible for its data) while
  keeping the order of the uncertainties;
* beyond the calibration range stds are widened, and no calibrated std of any
  wrapper passes 10 x the largest error plausible for the calibration data
  (the latent distance's grows as u² before calibration); the deep ensemble
  widens its energies only.

(Composition shifts are in tests/test_composition.py, conformal coverage in
tests/test_conformal.py, the measured tables in benchmarks/shift.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

import mlipuq
from mlipuq import datasets
from mlipuq.models import MiniMLIP
from mlipuq.uq import (
    DeepEnsemble,
    EvidentialHead,
    LastLayerLaplace,
    LatentDistance,
    ShallowEnsemble,
)
from mlipuq.uq.evidential import STD_CAP_FACTOR
from mlipuq.uq.evidential_shift import fit_distance_term

FAST = dict(batch_size=8, progress=False)
TEMPERATURES = (300, 900, 1500)


def _cu_model(seed: int) -> MiniMLIP:
    return MiniMLIP(["Cu"], cutoff=4.0, width=16, n_interactions=2, n_rbf=8,
                    n_readout_features=16, seed=seed)


@pytest.fixture(scope="module")
def copper():
    data = datasets.emt("Cu", n_structures=60, temperatures=(300,), kinds="bulk", seed=3)
    train, val = data[:45], data[45:]
    series = {t: datasets.emt("Cu", n_structures=8, temperatures=(t,), kinds="bulk", seed=4)
              for t in TEMPERATURES}
    models = []
    for seed in range(3):
        model = _cu_model(seed)
        mlipuq.train(model, train, val, epochs=40, lr=5e-3, seed=seed, **FAST)
        models.append(model)
    return train, val, series, models


def _wrappers(train, val, models) -> dict:
    base = models[0]
    return {
        "LastLayerLaplace": LastLayerLaplace(base).fit(train),
        "ShallowEnsemble": ShallowEnsemble(base, n_heads=8).fit(train, val, epochs=20, **FAST),
        "EvidentialHead": EvidentialHead(base).fit(*val.split([0.5, 0.5]), epochs=30, **FAST),
        "DeepEnsemble": DeepEnsemble(models).fit_distance(train, val),  # its default
        "LatentDistance": LatentDistance(base).fit(train, val),
    }


def test_std_grows_monotonically_with_temperature(copper):
    train, val, series, models = copper
    for name, wrapper in _wrappers(train, val, models).items():
        wrapper.calibrate(val)
        energy, force = [], []
        for t in TEMPERATURES:
            pred = wrapper.predict(series[t])
            energy.append(np.median(pred.energy_std / pred.n_atoms))
            force.append(np.median(pred.forces_std))
        assert np.all(np.diff(energy) > 0), (name, "energy", energy)
        assert np.all(np.diff(force) > 0), (name, "forces", force)


def _growth(wrappers: dict, model, near, far, target: str):
    """Per calibrated wrapper, the mean std of ``target`` ("forces" or "energy") on
    ``far`` over that on ``near``; and the same ratio of the base model's mean
    absolute errors."""
    growth = {}
    for name, wrapper in wrappers.items():
        a, b = wrapper.predict(near), wrapper.predict(far)
        growth[name] = np.mean(getattr(b, f"{target}_std")) / np.mean(getattr(a, f"{target}_std"))
    reference = {"forces": lambda d: d.forces, "energy": lambda d: d.energies}[target]
    a, b = (model.compute(s)[target] for s in (near, far))
    error = np.mean(np.abs(b - reference(far))) / np.mean(np.abs(a - reference(near)))
    return growth, error


def test_latent_distance_sees_vacancies(copper):
    """The default (Mahalanobis) latent distance widens the force intervals of vacancy
    structures at least as much as their errors grow (the kNN score did not on the
    benchmark, docs/shift.md); measured against 300 K bulk, both calibrated on val."""
    train, val, series, models = copper
    vacancies = datasets.emt("Cu", n_structures=8, temperatures=(300,), kinds="vacancy", seed=4)
    wrappers = {score: LatentDistance(models[0], score=score).fit(train, val).calibrate(val)
                for score in ("mahalanobis", "knn")}
    growth, error = _growth(wrappers, models[0], series[300], vacancies, "forces")
    assert LatentDistance(models[0]).score == "mahalanobis"
    assert growth["mahalanobis"] >= error, (growth, error)
    assert growth["mahalanobis"] > growth["knn"], growth


def test_latent_distance_energies_see_strained_cells(copper):
    """Under a homogeneous strain every atom's energy error has the same sign: the
    default latent distance (energies from the structure's distance, coherent over
    its atoms) widens the energy intervals of strained cells at least as much as
    their energy errors grow; a sum of independent atoms (``energy_distance="atoms"``,
    the default before) did not on the benchmark (docs/shift.md)."""
    train, val, series, models = copper
    strained = datasets.emt("Cu", n_structures=8, temperatures=(300,), kinds="strained", seed=4)
    wrappers = {mode: LatentDistance(models[0], energy_distance=mode).fit(train, val)
                .calibrate(val) for mode in ("structure", "atoms")}
    growth, error = _growth(wrappers, models[0], series[300], strained, "energy")
    assert LatentDistance(models[0]).energy_distance == "structure"
    assert growth["structure"] >= error, (growth, error)
    assert growth["structure"] > growth["atoms"], growth


def test_evidential_head_sees_vacancies(copper):
    """With its default latent-distance term the evidential head widens the force
    intervals of vacancy structures at least as much as their errors grow; the head
    alone (``distance=None``) did not on the benchmark (docs/shift.md)."""
    train, val, series, models = copper
    vacancies = datasets.emt("Cu", n_structures=8, temperatures=(300,), kinds="vacancy", seed=4)
    head = EvidentialHead(models[0]).fit(*val.split([0.5, 0.5]), epochs=30, **FAST)
    alone = head.copy()
    alone.distance_ = None
    wrappers = {"default": head.calibrate(val), "alone": alone.calibrate(val)}
    growth, error = _growth(wrappers, models[0], series[300], vacancies, "forces")
    assert growth["default"] >= error, (growth, error)
    assert growth["default"] > growth["alone"], growth


def test_evidential_head_energies_see_strained_cells(copper):
    """The evidential head's distance term takes the energies from the structure's
    distance too: on strained cells its energy std grows at least as fast as the energy
    error, and faster than with the term's energies summed over independent atoms."""
    train, val, series, models = copper
    strained = datasets.emt("Cu", n_structures=8, temperatures=(300,), kinds="strained", seed=4)
    halves = val.split([0.5, 0.5])
    head = EvidentialHead(models[0]).fit(*halves, epochs=30, **FAST)
    summed = head.copy()
    summed.distance_ = fit_distance_term(summed, *halves, score="mahalanobis", seed=0,
                                         batch_size=8, energy_distance="atoms")
    wrappers = {"default": head.calibrate(val), "atoms": summed.calibrate(val)}
    growth, error = _growth(wrappers, models[0], series[300], strained, "energy")
    assert head.distance_.energy_distance == "structure"
    assert growth["default"] >= error, (growth, error)
    assert growth["default"] > growth["atoms"], growth


def test_evidential_head_energies_cover_vacancies_with_the_training_reference(copper):
    """Distances measured to the base model's training set (``fit(..., reference=train)``,
    as the docs prescribe) rather than to the head's few fitting structures: the
    evidential head's 95 % energy intervals cover vacancy structures as the issue's goal
    asks (≥ 0.85; measured 1.00 here, 0.25 with the head's own 7 structures), its energy
    std growing faster than with its own data."""
    train, val, series, models = copper
    vacancies = datasets.emt("Cu", n_structures=8, temperatures=(300,), kinds="vacancy", seed=4)
    halves = val.split([0.5, 0.5])
    wrappers = {"training set": EvidentialHead(models[0]).fit(*halves, reference=train,
                                                              epochs=30, **FAST),
                "own data": EvidentialHead(models[0]).fit(*halves, epochs=30, **FAST)}
    for wrapper in wrappers.values():
        wrapper.calibrate(val)
    growth, _ = _growth(wrappers, models[0], series[300], vacancies, "energy")
    assert growth["training set"] > growth["own data"], growth
    low, high = wrappers["training set"].predict(vacancies).interval(0.95, "energy")
    covered = (low <= vacancies.energies) & (vacancies.energies <= high)
    assert np.mean(covered) >= 0.85, (low, high, vacancies.energies)


def _pulled_apart(structures, factor: float) -> list:
    out = []
    for atoms in structures:
        a = atoms.copy()
        a.calc = None
        a.set_cell(np.asarray(a.cell) * factor, scale_atoms=True)
        out.append(a)
    return out


def test_evidential_std_is_bounded_far_from_the_data(copper):
    train, val, series, models = copper
    fit_data = val.split([0.5, 0.5])
    head = EvidentialHead(models[0]).fit(*fit_data, epochs=30, **FAST)
    seen = mlipuq.data.concatenate(list(fit_data))
    # the largest error plausible for the data, from the references alone
    per_atom = seen.energies / seen.n_atoms
    plausible_e = max(np.max(np.abs(per_atom - np.median(per_atom))),
                      np.sqrt(float(head.head_.energy_scale)))
    plausible_f = max(np.max(np.abs(seen.forces)), np.sqrt(float(head.head_.forces_scale)))
    near = head.predict(series[300])
    previous = None
    for factor in (0.9, 0.8, 0.7, 0.6):  # ever shorter bonds
        far = head.predict(_pulled_apart(series[300], factor))
        e_std = far.energy_std / far.n_atoms
        bound = 1 + 1e-9  # the saturated std reaches the bound up to rounding
        assert np.all(e_std <= STD_CAP_FACTOR * plausible_e * bound)
        assert np.all(far.forces_std <= STD_CAP_FACTOR * plausible_f * bound)
        assert np.all(np.isfinite(far.energy_std)) and np.all(far.energy_std > 0)
        if previous is not None:  # the bound saturates but never reverses the order
            assert np.median(e_std) >= previous * (1 - 1e-12)  # (at the bound: rounding)
        previous = np.median(e_std)
    assert previous > np.median(near.energy_std / near.n_atoms)


def test_widening_beyond_the_calibration_range(copper):
    """Far from the data, the calibrated std is widened but never past the bound
    (10 x the largest error plausible for the calibration data), and neither is
    the plain recalibration's; the deep ensemble's forces by r ** 0.75 (its default
    since 2026-12-05), one factor per structure."""
    train, val, series, models = copper
    far = _pulled_apart(series[300], 0.7)
    llpr = LastLayerLaplace(models[0]).fit(train)
    widened = llpr.copy().calibrate(val).predict(far)
    plain = llpr.copy().calibrate(val, extrapolation=0).predict(far)
    limits = llpr.copy().calibrate(val).recalibrator_.std_range_
    assert np.all(widened.calibration_excess > 1.0)
    for got, base, bound in ((widened.forces_std, plain.forces_std, limits["forces_bound"]),
                             (widened.energy_std / widened.n_atoms, plain.energy_std
                              / plain.n_atoms, limits["energy_bound"])):
        assert np.all(got >= base * (1 - 1e-12))
        assert np.all(got <= bound) and np.all(base <= bound)
    deep = DeepEnsemble(models, distance=None)  # the members alone
    a = deep.copy().calibrate(val).predict(far)
    b = deep.copy().calibrate(val, extrapolation=0).predict(far)
    # forces widened by at most r ** 0.75 (less only where the bound saturates them)
    assert deep.default_extrapolation["forces"] == 0.75
    factor = (a.calibration_excess ** 0.75)[a.batch][:, None]
    assert np.all(a.forces_std >= b.forces_std * (1 - 1e-12))
    assert np.all(a.forces_std <= b.forces_std * factor * (1 + 1e-9))
    assert np.all(a.forces_std <= limits["forces_bound"])
    assert np.any(a.forces_std > 1.5 * b.forces_std)
    assert np.all(a.energy_std >= b.energy_std * (1 - 1e-12))
    assert np.any(a.energy_std > 1.5 * b.energy_std)  # beyond the range: widened


def test_no_calibrated_std_passes_the_bound_far_from_the_data(copper):
    """Cells compressed to 60 %: the latent distance's raw std grows as u² far past
    the data, the power-law recalibration would carry it along; every calibrated
    std stays below 10 x the largest error plausible for the calibration data."""
    train, val, series, models = copper
    wrappers = {"LatentDistance": LatentDistance(models[0]).fit(train, val),
                "LastLayerLaplace": LastLayerLaplace(models[0]).fit(train)}
    for name, wrapper in wrappers.items():
        for method, extrapolation in (("power", 0), (None, 0.5)):
            calibrated = wrapper.copy().calibrate(val, method=method,
                                                  extrapolation=extrapolation)
            limits = calibrated.recalibrator_.std_range_
            for factor in (0.8, 0.7, 0.6):
                far = calibrated.predict(_pulled_apart(series[300], factor))
                raw = calibrated.predict(_pulled_apart(series[300], factor), calibrated=False)
                assert np.all(far.forces_std <= limits["forces_bound"]), (name, method, factor)
                assert np.all(far.energy_std / far.n_atoms <= limits["energy_bound"])
                assert np.all(np.isfinite(far.forces_var)) and np.all(far.forces_std > 0)
            if name == "LatentDistance":  # the raw std itself is far beyond the bound
                assert np.max(raw.forces_std) > limits["forces_bound"], np.max(raw.forces_std)
