"""``mlipuq.training.errors`` reports stress errors when every structure carries a stress
label: a pressure error at the training cell is what strained cells' energies inherit."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress

import mlipuq
from conftest import tiny_model
from mlipuq.cli import _format_errors
from mlipuq.errors import InvalidStructureError
from mlipuq.training import errors
from mlipuq.training_errors import stress_labels

#: A stress offset with shear (Voigt xx, yy, zz, yz, xz, xy; eV/Å³).
OFFSET = np.array([0.010, 0.020, 0.030, 0.004, -0.002, 0.001])


def _cells(n=4):
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
        atoms.rattle(0.05, seed=k)
        atoms.set_cell(atoms.cell * (1 + 0.01 * k), scale_atoms=True)
        frames.append(atoms)
    return frames


def _labelled(frames, stresses=None):
    """EMT energies and forces; ``stresses`` (B, 3, 3) as the stress labels (Voigt 6)."""
    out = []
    for k, atoms in enumerate(frames):
        atoms = atoms.copy()
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        if stresses is not None:
            results["stress"] = full_3x3_to_voigt_6_stress(stresses[k])
        atoms.calc = SinglePointCalculator(atoms, **results)
        out.append(atoms)
    return mlipuq.AtomsDataset(out)


def test_a_known_stress_offset_comes_back():
    """Labels = the model's own stress minus a constant offset: the stress MAE is the
    offset's mean |component| over the 3×3 tensor and the pressure error −tr/3."""
    model = tiny_model(["Cu"])
    frames = _cells()
    own = model.compute(_labelled(frames), stress=True)["stress"]
    offset = np.array([[OFFSET[0], OFFSET[5], OFFSET[4]],
                       [OFFSET[5], OFFSET[1], OFFSET[3]],
                       [OFFSET[4], OFFSET[3], OFFSET[2]]])
    found = errors(model, _labelled(frames, own - offset))
    assert found["stress_mae"] == pytest.approx(np.abs(offset).mean(), rel=1e-9)
    assert found["stress_rmse"] == pytest.approx(np.sqrt((offset**2).mean()), rel=1e-9)
    assert found["pressure_error"] == pytest.approx(-0.02, rel=1e-9)  # −(0.01+0.02+0.03)/3


def test_voigt_labels_become_the_tensor_by_hand():
    """ASE's Voigt order xx, yy, zz, yz, xz, xy, and a 3×3 label kept as it is."""
    by_hand = np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]])
    frames = _cells(2)
    data = _labelled(frames, [by_hand, by_hand])
    np.testing.assert_array_equal(stress_labels(data), [by_hand, by_hand])
    frames[0].calc = SinglePointCalculator(frames[0], energy=0.0, stress=by_hand)
    np.testing.assert_array_equal(stress_labels([frames[0]])[0], by_hand)


def test_a_stress_label_that_is_not_finite_names_the_structure():
    labels = np.zeros((3, 3, 3))
    labels[1, 0, 0] = np.nan
    data = _labelled(_cells(3), labels)
    with pytest.raises(InvalidStructureError, match="structure 1: reference stress is not "
                                                    "finite"):
        errors(tiny_model(["Cu"]), data)


def test_no_stress_keys_without_labels_on_every_structure():
    model = tiny_model(["Cu"])
    assert "stress_mae" not in errors(model, _labelled(_cells()))
    frames = _cells(3)
    partly = list(_labelled(frames[:2], np.zeros((2, 3, 3)))) + list(_labelled(frames[2:]))
    assert "stress_mae" not in errors(model, mlipuq.AtomsDataset(partly))
    water = _labelled([molecule("H2O")])  # not periodic: no stress to compare
    assert errors(tiny_model(["H", "O"]), water).keys() == {"energy_mae", "energy_rmse",
                                                             "forces_mae", "forces_rmse"}


def test_the_command_line_prints_stress_errors_in_gpa():
    text = _format_errors({"energy_mae": 0.001, "energy_rmse": 0.002, "stress_mae": 0.01,
                           "stress_rmse": 0.02, "pressure_error": -0.0624})
    assert "stress MAE      1.602 GPa" in text  # 0.01 eV/Å³ = 1.602 GPa
    assert "stress RMSE     3.204 GPa" in text
    assert "pressure error  -9.998 GPa" in text
