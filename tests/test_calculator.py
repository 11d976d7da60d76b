"""mlipuq.Calculator: the ASE interface (forces, stress, MD, optimisation)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase import units
from ase.build import fcc111
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from ase.stress import full_3x3_to_voigt_6_stress

import mlipuq


def calc_energy(calculator):
    def energy(atoms):
        atoms.calc = calculator
        return atoms.get_potential_energy()

    return energy


def test_calculator_matches_model(model64, ethanol, cu_cell):
    calc = mlipuq.Calculator(model64)
    for atoms in (ethanol[0].copy(), cu_cell):
        out = model64.compute(atoms, stress=bool(atoms.pbc.all()))
        atoms.calc = calc  # one calculator reused for structures of different sizes
        assert atoms.get_potential_energy() == pytest.approx(out["energy"][0], abs=1e-10)
        assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
        np.testing.assert_allclose(atoms.get_forces(), out["forces"], atol=1e-10)
        if atoms.pbc.all():
            np.testing.assert_allclose(
                atoms.get_stress(), full_3x3_to_voigt_6_stress(out["stress"][0]), atol=1e-12
            )
            np.testing.assert_allclose(atoms.get_stress(voigt=False), out["stress"][0], atol=1e-12)


@pytest.mark.parametrize("which", ["molecule", "cu_cell"])
def test_calculator_forces_match_finite_differences(model32, ethanol, cu_cell, fd_forces, which):
    """A float32 model evaluated by the Calculator (float64 by default) gives
    forces equal to -dE/dr to well within 1e-4 eV/Å."""
    atoms = (ethanol[4] if which == "molecule" else cu_cell).copy()
    calc = mlipuq.Calculator(model32)
    atoms.calc = calc
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-2
    reference = fd_forces(calc_energy(calc), atoms)
    np.testing.assert_allclose(forces, reference, rtol=0, atol=1e-5)


def test_calculator_stress_matches_finite_differences(model32, cu_cell, fd_stress):
    calc = mlipuq.Calculator(model32)
    atoms = cu_cell.copy()
    atoms.calc = calc
    stress = atoms.get_stress(voigt=False)
    assert np.abs(stress).max() > 1e-3
    reference = fd_stress(calc_energy(calc), atoms)
    np.testing.assert_allclose(stress, reference, rtol=0, atol=1e-7)


def test_calculator_does_not_modify_model(model32, ethanol):
    before = copy.deepcopy(model32)
    atoms = ethanol[0].copy()
    atoms.calc = mlipuq.Calculator(model32)
    atoms.get_forces()
    assert model32.dtype == torch.float32
    state, after = before.state_dict(), model32.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state if isinstance(state[k], torch.Tensor))
    # the calculator holds its own copy: changing the model later does not leak in
    with torch.no_grad():
        model32.readout.bias.add_(1.0)
    atoms.positions[0] += [0.02, -0.01, 0.03]
    expected = before.double().compute(atoms)["energy"][0]
    assert atoms.get_potential_energy() == pytest.approx(expected, abs=1e-10)
    assert model32.double().compute(atoms)["energy"][0] == pytest.approx(expected + 9.0, abs=1e-6)


def test_calculator_recomputes_after_moves(model64, ethanol):
    atoms = ethanol[0].copy()
    atoms.calc = mlipuq.Calculator(model64)
    e0 = atoms.get_potential_energy()
    atoms.positions[2] += [0.05, 0.0, -0.03]
    e1 = atoms.get_potential_energy()
    assert e1 != e0
    assert e1 == pytest.approx(model64.compute(atoms)["energy"][0], abs=1e-10)


@pytest.mark.parametrize("kind", ["molecule", "slab"])
def test_no_stress_without_full_periodicity(model64, ethanol, kind):
    if kind == "molecule":
        atoms = ethanol[0].copy()
    else:
        atoms = fcc111("Cu", size=(2, 2, 2), vacuum=4.0)
    atoms.calc = mlipuq.Calculator(model64)
    atoms.get_forces()
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_calculator_rejects_other_objects():
    with pytest.raises(TypeError, match="Calculator needs an mlipuq MLIP"):
        mlipuq.Calculator(torch.nn.Linear(3, 1))


def test_calculator_reports_bad_structures(model64, ethanol):
    atoms = ethanol[0].copy()
    atoms.calc = mlipuq.Calculator(model64)
    atoms.positions[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"non-finite .*atoms \[3\]"):
        atoms.get_potential_energy()
    gold = ethanol[1].copy()
    gold.symbols[0] = "Au"
    gold.calc = mlipuq.Calculator(model64)
    with pytest.raises(ValueError, match=r"\['Au'\] unknown"):
        gold.get_forces()


def test_velocity_verlet_conserves_energy(model32, cu_cell):
    atoms = cu_cell.copy()
    atoms.calc = mlipuq.Calculator(model32)
    # Maxwell-Boltzmann momenta at 1000 K, without net momentum
    masses = atoms.get_masses()[:, None]
    normal = np.random.default_rng(0).normal(size=(len(atoms), 3))
    momenta = normal * np.sqrt(masses * units.kB * 1000)
    atoms.set_momenta(momenta - masses * momenta.sum(axis=0) / masses.sum())
    start = atoms.positions.copy()
    total, potential = [], []

    def record():
        total.append(atoms.get_total_energy())
        potential.append(atoms.get_potential_energy())

    dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dynamics.attach(record, interval=1)
    dynamics.run(40)
    total, potential = np.array(total), np.array(potential)
    assert np.abs(atoms.positions - start).max() > 0.05  # atoms moved
    assert np.ptp(potential) > 2e-3  # energy flowed between kinetic and potential
    assert np.abs(total - total[0]).max() < 1e-4
    assert np.abs(total - total[0]).max() < 0.02 * np.ptp(potential)


def test_bfgs_relaxes_rattled_molecule(model32, ethanol):
    atoms = ethanol[0].copy()
    atoms.rattle(stdev=0.05, seed=2)
    atoms.calc = mlipuq.Calculator(model32)
    fmax0 = np.linalg.norm(atoms.get_forces(), axis=1).max()
    e0 = atoms.get_potential_energy()
    optimizer = BFGS(atoms, logfile=None)
    converged = optimizer.run(fmax=0.05, steps=100)
    assert converged
    fmax = np.linalg.norm(atoms.get_forces(), axis=1).max()
    assert fmax < 0.05 < fmax0
    assert atoms.get_potential_energy() < e0
