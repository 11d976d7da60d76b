"""Training warns when every periodic training structure has the same cell: energies and
forces at one volume leave the equation of state unmeasured (``SingleCellWarning``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

import mlipuq
from conftest import tiny_model
from mlipuq.training_setup import SingleCellWarning, check_cells


def _labelled(atoms):
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def _rattled_cells(n, strain=0.0, seed=0):
    """``n`` rattled 2×2×2 Cu cells; the last one strained by ``strain`` (isotropic)."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        if k == n - 1 and strain:
            atoms.set_cell(atoms.cell * (1 + strain), scale_atoms=True)
        frames.append(_labelled(atoms))
    return mlipuq.AtomsDataset(frames)


def _warned(train) -> list:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_cells(train)
    return [w for w in caught if issubclass(w.category, SingleCellWarning)]


def test_one_cell_warns_with_its_volume():
    caught = _warned(_rattled_cells(4))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "all 4 periodic training structures share one cell" in message
    assert f"{(2 * 3.6) ** 3:.6g}" in message  # 373.248 Å^3, the 2×2×2 cell


def test_another_volume_is_enough():
    assert _warned(_rattled_cells(4, strain=0.01)) == []


def test_a_strain_that_measures_nothing_still_warns():
    """1e-5 of strain (below ``SAME_CELL_STRAIN``) is one cell still."""
    assert len(_warned(_rattled_cells(4, strain=1e-5))) == 1


def test_slabs_are_ignored():
    """Partially periodic cells (slabs, pbc along two axes) are not compared."""
    slabs = _rattled_cells(3)
    for atoms in slabs:
        atoms.pbc = (True, True, False)
    assert _warned(slabs) == []


def test_molecules_and_a_single_cell_do_not_warn():
    water = [_labelled(molecule("H2O")) for _ in range(3)]
    for a, shift in zip(water, (0.0, 0.01, 0.02)):
        a.positions[0, 0] += shift
    assert _warned(mlipuq.AtomsDataset(water)) == []
    assert _warned(_rattled_cells(1)) == []


def test_training_on_one_cell_warns():
    """``mlipuq.train`` says so before it trains (one epoch of a tiny model)."""
    train = _rattled_cells(6)
    with pytest.warns(SingleCellWarning, match="equation of state") as record:
        mlipuq.train(tiny_model(["Cu"]), train, None, epochs=1, batch_size=4, seed=0,
                     progress=False)
    caught = [w for w in record if issubclass(w.category, SingleCellWarning)]
    assert [w.filename for w in caught] == [__file__]  # the user's line, not mlipuq's
