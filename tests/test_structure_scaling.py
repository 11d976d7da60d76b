"""How stds scale between structures, fitted on the calibration data
(mlipuq.calibration.structure_scaling).

The fitted exponent recovers the one the errors were drawn with, is confined
to [0, 1], is exact for log-linear z-scores, is not fooled by the heavy tails
of few-member committees, keeps the
calibration data calibrated, is not fitted for conformal targets, survives
save/load (files without it predict as before), and on the packaged EMT Cu
model it is significant for LLPR's forces and raises their coverage at 1500 K
(widening off).
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

import mlipuq
from mlipuq import datasets
from mlipuq.calibration import metrics
from mlipuq.calibration.recalibrate import PredictionRecalibrator
from mlipuq.calibration.structure_scaling import (
    MAX_EXPONENT,
    check_scaling,
    fit_scaling,
    scaling_factor,
)
from mlipuq.errors import FileFormatError
from mlipuq.prediction import Prediction
from mlipuq.uq import LastLayerLaplace, load


def _data(exponent, n_structures=400, n_atoms=3, seed=0):
    """Raw stds S per structure (log-uniform over a factor e^2), the same S for
    every force component and S x n_atoms for the energy; errors drawn with std
    2 S (S / S_ref) ** exponent, S_ref the geometric mean of S."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.uniform(-1.0, 1.0, n_structures))
    true_std = 2.0 * scale * (scale / np.exp(np.mean(np.log(scale)))) ** exponent
    n = np.full(n_structures, n_atoms)
    batch = np.repeat(np.arange(n_structures), n_atoms)
    pred = Prediction(energy=np.zeros(n_structures), energy_var=(scale * n_atoms) ** 2,
                      forces=np.zeros((batch.size, 3)),
                      forces_var=np.repeat(scale[batch, None] ** 2, 3, axis=1),
                      n_atoms=n, batch=batch)
    structures = []
    for k in range(n_structures):
        atoms = Atoms("H" * n_atoms, positions=[[0, 0, 1.5 * i] for i in range(n_atoms)])
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(rng.normal(0, true_std[k] * n_atoms)),
            forces=rng.normal(0, true_std[k], (n_atoms, 3)))
        structures.append(atoms)
    return pred, mlipuq.data.AtomsDataset(structures)


@pytest.mark.parametrize("exponent, expected", [(0.0, 0.0), (0.5, 0.5), (-0.5, 0.0),
                                                (2.0, MAX_EXPONENT)])
def test_fitted_exponent_recovers_the_drawn_one(exponent, expected):
    pred, ref = _data(exponent)
    rec = PredictionRecalibrator("scalar").fit(pred, ref)
    # forces: 3600 errors; energies: 400 (looser). Every atom has its structure's S, so
    # the scaling between atoms and the one between structures see the same trend:
    # together they scale the force stds by S ** ((1 + c_atoms)(1 + c) - 1)
    fitted = rec.structure_scaling_
    c_atoms = fitted.get("atoms", {}).get("exponent", 0.0)  # absent when 0
    total = (1 + c_atoms) * (1 + fitted["forces"]["exponent"]) - 1
    assert total == pytest.approx(expected, abs=0.06)
    assert rec.structure_scaling_["energy"]["exponent"] == pytest.approx(expected, abs=0.15)
    # the calibrated stds leave no trend of the errors with S: refitting on them gives c = 0
    out = rec.transform(pred)
    scales = np.sqrt(pred.forces_var[::3, 0])
    owner = np.repeat(pred.batch, 3)
    again = fit_scaling(scales, out.forces_std.ravel(), ref.forces.ravel(), owner)
    assert again["exponent"] == 0.0 or exponent > MAX_EXPONENT
    # the energy-only path (LLPR's predict_energy) scales the same way
    np.testing.assert_allclose(rec.transform_energy_std(pred.energy_std, pred.n_atoms),
                               out.energy_std, rtol=1e-12)


def test_exponent_by_hand():
    # |z| = 3 (S / S_ref) ** 0.3 exactly: log z² is linear in log S with slope 0.6
    scale = np.exp(np.linspace(-1.0, 1.0, 12))
    owner = np.repeat(np.arange(12), 2)
    std = np.tile([0.5, 2.0], 12)
    reference = np.exp(np.mean(np.log(scale)))
    error = std * 3.0 * (scale[owner] / reference) ** 0.3 * np.tile([1.0, -1.0], 12)
    fitted = fit_scaling(scale, std, error, owner)
    assert fitted["exponent"] == pytest.approx(0.3, abs=1e-12)
    assert fitted["reference"] == pytest.approx(reference)
    assert (fitted["smallest"], fitted["largest"]) == pytest.approx((scale.min(), scale.max()))


@pytest.mark.parametrize("dof", [1, 2])
def test_heavy_tails_give_no_spurious_exponent(dof):
    # a committee of 2-3 members: Student-t z-scores that do not depend on S
    fitted = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        scale = np.exp(rng.uniform(-1.0, 1.0, 40))
        owner = np.repeat(np.arange(40), 30)
        std = scale[owner] * np.exp(rng.normal(0.0, 0.3, owner.size))
        error = std * rng.standard_t(dof, owner.size)
        fitted.append(fit_scaling(scale, std, error, owner)["exponent"])
    assert max(fitted) < 0.15, fitted


def test_few_structures_give_no_spurious_exponent():
    # energies: one error per structure, 15 calibration structures whose stds differ by
    # ±20 %, errors independent of S; without the significance test c > 0.3 in ~45 %
    rng = np.random.default_rng(0)
    fitted = []
    for _ in range(400):
        scale = np.exp(rng.uniform(-0.2, 0.2, 15))
        fitted.append(fit_scaling(scale, scale, scale * rng.normal(size=15),
                                  np.arange(15))["exponent"])
    assert np.mean(np.array(fitted) > 0.0) < 0.10


def test_factor_by_hand():
    fitted = {"exponent": 0.5, "reference": 4.0, "smallest": 1.0, "largest": 16.0}
    # (1/4)^0.5, (4/4)^0.5, (16/4)^0.5; beyond the largest and below the smallest: held
    # at the edge; a zero scale: 1
    np.testing.assert_allclose(scaling_factor(fitted, [1.0, 4.0, 16.0, 64.0, 0.25, 0.0]),
                               [0.5, 1.0, 2.0, 2.0, 0.5, 1.0])
    np.testing.assert_array_equal(scaling_factor(None, [1.0, 2.0]), [1.0, 1.0])
    # too few structures to fit: no scaling
    few = fit_scaling(np.arange(1.0, 6.0), np.ones(5), np.arange(1.0, 6.0) ** 3, np.arange(5))
    assert few["exponent"] == 0.0


def test_conformal_targets_and_the_option():
    pred, ref = _data(0.5)
    conformal = PredictionRecalibrator({"energy": "scalar", "forces": "conformal"},
                                       coverage=0.9).fit(pred, ref)
    assert conformal.structure_scaling_["forces"]["exponent"] == 0.0
    assert conformal.structure_scaling_["energy"]["exponent"] > 0.3
    off = PredictionRecalibrator("scalar", structure_scaling=False).fit(pred, ref)
    assert off.structure_scaling_["forces"]["exponent"] == 0.0
    np.testing.assert_allclose(off.transform(pred).forces_std,
                               off.forces_.scale_ * pred.forces_std, rtol=1e-12)
    with pytest.raises(ValueError, match="structure_scaling"):
        PredictionRecalibrator("scalar", structure_scaling="yes")


def _saved(**values):
    good = {"exponent": 0.5, "reference": 1.0, "smallest": 0.5, "largest": 2.0}
    return {key: {**good, **values} for key in ("energy", "forces")}


@pytest.mark.parametrize("bad", [{"energy": {}}, {"energy": {"exponent": 0.5}, "forces": {}},
                                 _saved(exponent=3.0), _saved(reference=0.0),
                                 _saved(smallest=3.0), _saved(largest=float("nan"))])
def test_damaged_scaling_is_refused(bad):
    with pytest.raises(ValueError, match="structure_scaling"):
        check_scaling(bad)
    assert check_scaling(_saved()) == _saved()


# ------------------------------------------------------------------ on data
@pytest.fixture(scope="module")
def pretrained_llpr():
    """LLPR on the packaged pretrained EMT Cu model (its 140 training and 20
    validation structures) and 6 bulk structures at 1500 K."""
    from mlipuq.demo import load_pretrained, system_data

    train, val, _ = system_data()
    hot = datasets.emt("Cu", n_structures=6, temperatures=(1500,), kinds="bulk", seed=4)
    return LastLayerLaplace(load_pretrained("cu_emt_0"), distance=None).fit(train), val, hot


def test_llpr_on_hot_copper(pretrained_llpr, tmp_path):
    llpr, val, hot = pretrained_llpr
    scaled = llpr.copy().calibrate(val)
    fitted = scaled.recalibrator_.structure_scaling_
    assert fitted["forces"]["exponent"] > 0.0 or fitted.get("atoms", {}).get("exponent", 0) > 0
    # without the widening beyond the range (which covers every 1500 K component here),
    # the scaling alone raises the coverage at 1500 K
    alone = llpr.copy().calibrate(val, extrapolation=0)
    plain = llpr.copy().calibrate(val, structure_scaling=False, extrapolation=0)
    cover = [float(metrics.coverage(p.forces, p.forces_std, hot.forces, levels=[0.95])[0])
             for p in (alone.predict(hot), plain.predict(hot))]
    assert cover[0] > cover[1], cover
    # saved and loaded: the same scaling; an older file without it predicts as unscaled
    scaled.save(tmp_path / "llpr.pt")
    loaded = load(tmp_path / "llpr.pt")
    assert loaded.recalibrator_.structure_scaling_ == scaled.recalibrator_.structure_scaling_
    np.testing.assert_array_equal(loaded.predict(hot).forces_var, scaled.predict(hot).forces_var)
    payload = scaled.payload()
    payload["recalibrator"]["structure_scaling"]["forces"]["exponent"] = -1.0
    assert scaled.recalibrator_.structure_scaling_["forces"]["exponent"] >= 0  # a copy
    with pytest.raises(FileFormatError, match="structure_scaling"):
        mlipuq.uq.base._decode_recalibrator(payload["recalibrator"])
    payload["recalibrator"]["structure_scaling"]["forces"]["exponent"] = 0.0
    saved_atoms = payload["recalibrator"]["structure_scaling"]["atoms"]
    for bad in ({"numbers": [29.5]}, {"numbers": "2"}, {"exponent": 1.5}):
        payload["recalibrator"]["structure_scaling"]["atoms"] = {**saved_atoms, **bad}
        with pytest.raises(FileFormatError, match="atoms"):
            mlipuq.uq.base._decode_recalibrator(payload["recalibrator"])
    # the two force stages together beyond the cap
    payload["recalibrator"]["structure_scaling"]["atoms"] = {**saved_atoms, "exponent": 0.5}
    payload["recalibrator"]["structure_scaling"]["forces"]["exponent"] = 0.5
    with pytest.raises(FileFormatError, match="stretch"):
        mlipuq.uq.base._decode_recalibrator(payload["recalibrator"])
    payload["recalibrator"]["structure_scaling"]["forces"]["exponent"] = 0.0
    # a file written before the scaling between atoms (or with c_atoms = 0): no such
    # stage, the same predictions as with the exponent set to 0
    del payload["recalibrator"]["structure_scaling"]["atoms"]
    before_atoms = mlipuq.uq.base._decode_recalibrator(payload["recalibrator"])
    assert "atoms" not in before_atoms.structure_scaling_
    zero = mlipuq.uq.base._decode_recalibrator(payload["recalibrator"])
    zero.structure_scaling_["atoms"] = {**saved_atoms, "exponent": 0.0}
    raw_hot = llpr.predict(hot, calibrated=False)
    np.testing.assert_array_equal(before_atoms.transform(raw_hot).forces_std,
                                  zero.transform(raw_hot).forces_std)
    del payload["recalibrator"]["structure_scaling"]
    older = mlipuq.uq.base._decode_recalibrator(payload["recalibrator"])
    assert not hasattr(older, "structure_scaling_")
    # inside the range (the calibration structures), an unscaled file is a pure factor
    raw = llpr.predict(val, calibrated=False)
    np.testing.assert_allclose(older.transform(raw).forces_std,
                               older.forces_.scale_ * raw.forces_std, rtol=1e-12)
