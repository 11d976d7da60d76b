"""``benchmarks/strain_pressure.py``: the strain of a cell from the training cell, the
first-order energy change a stress gives it (against EMT's own energies), and the line
fitted through the errors."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from conftest import benchmark_modules


@pytest.fixture(scope="module")
def script():
    return benchmark_modules("strain_pressure")[0]


def test_strain_recovered_from_a_skewed_cell(script):
    cell0 = np.array([[3.0, 0.2, 0.0], [0.1, 3.5, 0.3], [0.0, 0.4, 4.0]])
    eps = np.array([[0.010, 0.002, -0.003], [0.002, -0.004, 0.001], [-0.003, 0.001, 0.006]])
    np.testing.assert_allclose(script.strain_from(cell0, cell0 @ (np.eye(3) + eps)), eps,
                               atol=1e-14)


def test_first_order_energy_of_a_stress_matches_emt(script):
    """E(ε) − E(0) = V₀ σ : ε to first order (ASE's sign of the stress): a compressed Cu
    cell, whose stress is far from zero, sheared and stretched by 1e-5."""
    atoms = bulk("Cu", "fcc", a=3.45, cubic=True).repeat(2)
    atoms.calc = EMT()
    stress, e0 = atoms.get_stress(voigt=False), atoms.get_potential_energy()
    eps = 1e-5 * np.array([[1.0, 0.5, 0.0], [0.5, -2.0, 0.3], [0.0, 0.3, 1.5]])
    strained = atoms.copy()
    strained.set_cell(np.asarray(atoms.cell) @ (np.eye(3) + eps), scale_atoms=True)
    strained.calc = EMT()
    change = (strained.get_potential_energy() - e0) / len(atoms)
    predicted = script.predicted_errors(stress, np.asarray(atoms.cell), [strained])[0]
    assert abs(predicted) > 1e-6
    assert predicted == pytest.approx(change, rel=2e-3)


def test_line_slope_and_r2_by_hand(script):
    x = np.array([0.0, 1.0, 2.0, 3.0])
    slope, r2 = script.line(x, 2.0 * x + 1.0)
    assert (slope, r2) == (pytest.approx(2.0), pytest.approx(1.0))
    slope, r2 = script.line(x, np.array([0.0, 1.0, 1.0, 2.0]))  # slope 0.6, R² 0.9 by hand
    assert (slope, r2) == (pytest.approx(0.6), pytest.approx(0.9))
