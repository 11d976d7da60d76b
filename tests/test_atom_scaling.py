"""Scaling of force stds between the atoms of one element
(mlipuq.calibration.structure_scaling.fit_atom_scaling).

It recovers the exponent the errors were drawn with, ignores the levels
between elements (those are the per-element Student-t scale's), is applied
before the scaling between structures with their product capped, leaves the
calibrated stds without a trend, and gives factor 1 to elements it never saw.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

import mlipuq
from mlipuq.calibration.extrapolation import prediction_scales
from mlipuq.calibration.recalibrate import PredictionRecalibrator
from mlipuq.calibration.structure_scaling import (
    MAX_EXPONENT,
    atom_scaling_factor,
    fit_atom_scaling,
)
from mlipuq.prediction import Prediction


def _atoms_data(exponent, n_structures=200, n_atoms=6, level=(1.0, 1.0), seed=0):
    """Structures of 3 H and 3 O atoms; each atom's raw std s is log-uniform over a
    factor e² around its element's level (H: level[0], O: level[1]), independent of
    its structure; errors have std 2 s (s / s_ref) ** exponent, s_ref the element's
    geometric mean, the same z level for both elements."""
    rng = np.random.default_rng(seed)
    n = n_structures * n_atoms
    numbers = np.tile([1, 1, 1, 8, 8, 8], n_structures)
    base = np.where(numbers == 1, level[0], level[1])
    s = base * np.exp(rng.uniform(-1.0, 1.0, n))
    true_std = 2.0 * s * (s / base / np.exp(np.mean(np.log(s / base)))) ** exponent
    errors = rng.normal(0.0, true_std[:, None], (n, 3))
    batch = np.repeat(np.arange(n_structures), n_atoms)
    pred = Prediction(energy=np.zeros(n_structures), energy_var=np.ones(n_structures),
                      forces=np.zeros((n, 3)), forces_var=np.repeat(s[:, None] ** 2, 3, 1),
                      n_atoms=np.full(n_structures, n_atoms), batch=batch, numbers=numbers)
    structures = []
    for k in range(n_structures):
        atoms = Atoms("HHHOOO", positions=[[0, 0, 1.5 * i] for i in range(n_atoms)])
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()),
                                           forces=errors[batch == k])
        structures.append(atoms)
    return pred, mlipuq.data.AtomsDataset(structures)


@pytest.mark.parametrize("exponent, expected", [(0.0, 0.0), (0.4, 0.4), (-0.5, 0.0),
                                                (2.0, MAX_EXPONENT)])
def test_fitted_exponent_recovers_the_drawn_one(exponent, expected):
    pred, ref = _atoms_data(exponent)
    fitted = fit_atom_scaling(pred.forces_std, ref.forces - pred.forces, pred.batch,
                              pred.numbers)
    assert fitted["exponent"] == pytest.approx(expected, abs=0.06)
    assert fitted["numbers"] == [1, 8]


def test_levels_between_elements_are_not_a_trend():
    """O stds 20x the H stds at the same z level: no trend within either element,
    so c = 0; read as one group, the element levels would look like one."""
    pred, ref = _atoms_data(0.0, level=(0.05, 1.0), seed=1)
    err = ref.forces - pred.forces
    assert fit_atom_scaling(pred.forces_std, err, pred.batch, pred.numbers)["exponent"] == 0.0
    # errors proportional to s squared between the elements only (z_O = 20 z_H)
    biased = err * np.where(pred.numbers == 8, 20.0, 1.0)[:, None]
    assert fit_atom_scaling(pred.forces_std, biased, pred.batch, pred.numbers)["exponent"] == 0.0
    assert fit_atom_scaling(pred.forces_std, biased, pred.batch, None)["exponent"] > 0.5


def test_factor_by_hand():
    fitted = {"exponent": 0.5, "numbers": [1, 8], "reference": [0.1, 1.0],
              "smallest": [0.05, 0.5], "largest": [0.4, 2.0]}
    std = np.repeat(np.array([[0.2], [0.01], [1.0], [8.0], [3.0], [0.0]]), 3, axis=1)
    numbers = np.array([1, 1, 8, 8, 6, 8])
    factor = atom_scaling_factor(fitted, std, numbers)
    # H at 2 s_ref; H below its smallest (clipped to 0.05); O at s_ref; O beyond its
    # largest (clipped to 2); C never seen; a zero std
    np.testing.assert_allclose(factor, [2 ** 0.5, 0.5 ** 0.5, 1.0, 2 ** 0.5, 1.0, 1.0])
    assert np.all(atom_scaling_factor(None, std, numbers) == 1.0)


def test_calibrated_stds_keep_no_trend_and_the_stages_are_capped():
    pred, ref = _atoms_data(0.4, seed=2)
    rec = PredictionRecalibrator({"energy": "scalar", "forces": "student_t"},
                                 per_species=True).fit(pred, ref)
    fitted = rec.structure_scaling_
    assert fitted["atoms"]["exponent"] == pytest.approx(0.4, abs=0.06)
    # structures share no trend here: the stage between structures adds nothing
    assert fitted["forces"]["exponent"] == 0.0
    # the range beyond which stds are widened stays that of the raw stds
    assert rec.std_range_["forces"] == pytest.approx(prediction_scales(pred)["forces"].max())
    out = rec.transform(pred)
    again = fit_atom_scaling(out.forces_std, ref.forces - out.forces, out.batch, out.numbers)
    assert again["exponent"] == 0.0
    # the calibration data stay calibrated (95 % of components inside)
    cover = mlipuq.calibration.metrics.coverage(out.forces, out.forces_std, ref.forces,
                                                levels=[0.95], dof=out.forces_dof)[0]
    assert cover == pytest.approx(0.95, abs=0.01)
    # turned off with the scaling between structures; a conformal target never has it
    off = PredictionRecalibrator("student_t", structure_scaling=False).fit(pred, ref)
    assert "atoms" not in off.structure_scaling_
    conformal = PredictionRecalibrator({"energy": "scalar", "forces": "conformal"},
                                       coverage=0.9).fit(pred, ref)
    assert "atoms" not in conformal.structure_scaling_


def test_numbers_needed_when_fitted_per_element():
    """Fitted per element, a prediction without atomic numbers is refused (never a
    silent factor 1); fitted without numbers, all atoms are one group (-1)."""
    pred, ref = _atoms_data(0.4, seed=4)
    rec = PredictionRecalibrator("student_t").fit(pred, ref)
    bare = dataclasses.replace(pred, numbers=None)
    with pytest.raises(ValueError, match="numbers"):
        rec.transform(bare)
    pooled = PredictionRecalibrator("student_t").fit(bare, ref)
    assert pooled.structure_scaling_["atoms"]["numbers"] == [-1]
    assert pooled.structure_scaling_["atoms"]["exponent"] > 0.2
    # its factor applies to any atom, with or without numbers
    np.testing.assert_array_equal(pooled.transform(bare).forces_std,
                                  pooled.transform(pred).forces_std)


def test_absent_when_zero():
    """c_atoms = 0: no "atoms" entry (files stay readable by earlier versions, which
    predict the same)."""
    pred, ref = _atoms_data(0.0, seed=5)
    rec = PredictionRecalibrator("student_t").fit(pred, ref)
    assert "atoms" not in rec.structure_scaling_


def test_two_stages_stretch_by_at_most_the_cap():
    """Every atom of a structure shares its S and errors grow as S³: the atoms'
    stage takes c_atoms = 1, the structures' stage only what the cap leaves,
    (1 + c_atoms)(1 + c) - 1 <= MAX_EXPONENT."""
    rng = np.random.default_rng(3)
    n_structures, n_atoms = 300, 4
    scale = np.exp(rng.uniform(-1.0, 1.0, n_structures))
    batch = np.repeat(np.arange(n_structures), n_atoms)
    err = rng.normal(0.0, 1.0, (batch.size, 3)) * (scale ** 3)[batch, None]
    pred = Prediction(energy=np.zeros(n_structures), energy_var=np.ones(n_structures),
                      forces=np.zeros((batch.size, 3)),
                      forces_var=np.repeat(scale[batch, None] ** 2, 3, axis=1),
                      n_atoms=np.full(n_structures, n_atoms), batch=batch)
    structures = []
    for k in range(n_structures):
        atoms = Atoms("H" * n_atoms, positions=[[0, 0, 1.5 * i] for i in range(n_atoms)])
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()),
                                           forces=err[batch == k])
        structures.append(atoms)
    rec = PredictionRecalibrator("scalar").fit(pred, mlipuq.data.AtomsDataset(structures))
    c_atoms = rec.structure_scaling_["atoms"]["exponent"]
    c = rec.structure_scaling_["forces"]["exponent"]
    assert c_atoms == MAX_EXPONENT
    assert (1 + c_atoms) * (1 + c) - 1 <= MAX_EXPONENT + 1e-12
