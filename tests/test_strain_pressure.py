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


class _EMTWithStressError:
    """EMT whose stress is off by a constant ``offset`` (3×3) and whose energies carry
    the first-order consequence, V₀ offset : ε, for the strain each structure was made
    with (``atoms.info["strain"]``)."""

    def __init__(self, offset, volume0):
        self.offset, self.volume0 = offset, volume0

    def compute(self, structures, stress=False):
        out = {"energy": np.array([
            _emt(a).get_potential_energy()
            + self.volume0 * float(np.sum(self.offset * a.info.get("strain", 0.0)))
            for a in structures])}
        if stress:
            out["stress"] = np.array([_emt(a).get_stress(voigt=False) + self.offset
                                      for a in structures])
        return out


def _emt(atoms):
    copy = atoms.copy()
    copy.calc = EMT()
    return copy


def _labelled_cells(strains, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for eps in strains:
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
        atoms.rattle(0.03, seed=int(rng.integers(1 << 30)))
        atoms.set_cell(np.asarray(atoms.cell) @ (np.eye(3) + eps), scale_atoms=True)
        atoms.info["strain"] = eps
        atoms.calc = EMT()
        atoms.get_potential_energy()
        frames.append(atoms)
    return frames


def test_measure_finds_a_stress_error_it_was_given(script):
    """A model whose only error is a constant stress (and its energy under strain): the
    pressure error comes back, the strained energies' errors lie on slope 1 with R² 1,
    and nothing is left once the first-order prediction is subtracted."""
    offset = np.diag([0.02, 0.03, 0.04]) + 0.005 * (np.ones((3, 3)) - np.eye(3))
    val = _labelled_cells([np.zeros((3, 3))] * 3)
    rng = np.random.default_rng(1)
    strains = [0.5 * (e + e.T) for e in 0.01 * rng.normal(size=(5, 3, 3))]
    model = _EMTWithStressError(offset, abs(np.linalg.det(val[0].cell)))
    m = script.measure(model, val, _labelled_cells(strains, seed=2))
    assert m["pressure_error"] == pytest.approx(-0.03)
    assert m["slope"] == pytest.approx(1.0) and m["r2"] == pytest.approx(1.0)
    assert m["mae"] > 1e-3 and m["mae_left"] < 1e-9
    with pytest.raises(ValueError, match="more than one cell"):
        script.measure(model, val + _labelled_cells(strains[:1]), val)
