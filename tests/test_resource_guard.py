"""The resource guard: a periodic cell far smaller than the cutoff is refused
before any neighbour-list work, fast; real structures pass."""

from __future__ import annotations

import time

import ase
import ase.io
import numpy as np
import pytest
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

import mlipuq
from mlipuq import checks, datasets
from mlipuq import data as mdata
from mlipuq.errors import InvalidStructureError, ResourceError


def tiny_cu(a=0.1):
    """The reported case: one Cu atom in a 0.1 Å cubic cell."""
    return ase.Atoms("Cu", positions=[[0.0, 0.0, 0.0]], cell=np.eye(3) * a, pbc=True)


def test_tiny_cell_refused_fast_with_estimate_and_cell():
    start = time.perf_counter()
    with pytest.raises(ResourceError) as info:
        mdata.collate([molecule("H2O"), tiny_cu()], 6.0)
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, InvalidStructureError)
    assert message.startswith("structure 1: ")
    assert "9.05e+05 neighbours per atom" in message  # 1 atom / 0.001 Å^3 * 4/3 pi 6^3
    assert "cutoff 6 Å" in message and "limit 2000" in message
    assert "1.77e+06 periodic image cells" in message  # (2 * ceil(6 / 0.1) + 1) ** 3
    assert "[[0.1, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.1]]" in message


def test_tiny_cell_refused_by_the_model_before_any_work(model64):
    start = time.perf_counter()
    with pytest.raises(ResourceError, match="structure 0: about"):
        model64.compute([tiny_cu()])
    assert time.perf_counter() - start < 1.0


def test_tiny_cell_from_a_file_names_file_and_frame(tmp_path):
    path = tmp_path / "tiny.extxyz"
    ase.io.write(path, [bulk("Cu"), bulk("Cu"), tiny_cu()], format="extxyz")
    data = mlipuq.load(path, index="1:")
    with pytest.raises(ResourceError) as info:
        mdata.collate(data, 5.0)
    assert str(info.value).startswith(f"structure 1 (frame 2 of {path}): ")


def test_neighbour_list_itself_is_guarded():
    with pytest.raises(ResourceError, match=r"^structure: about"):
        mdata.neighbour_list(tiny_cu(), 6.0)


@pytest.mark.parametrize(
    "atoms, pbc",
    [
        # thin along two axes only: the density passes (~1500), its own images do not (~2800)
        (ase.Atoms("Cu", cell=[0.2, 0.2, 15.0], pbc=True), (True, True, True)),
        (ase.Atoms("Cu", cell=[0.2, 0.2, 20.0], pbc=(True, True, False)), (True, True, False)),
        (ase.Atoms("Cu", cell=[0.001, 20.0, 20.0], pbc=(True, False, False)), (True, False, False)),
    ],
)
def test_thin_and_partially_periodic_cells_refused(atoms, pbc):
    assert tuple(atoms.pbc) == pbc
    if atoms.pbc.all():
        density = len(atoms) / atoms.get_volume() * 4 / 3 * np.pi * 6.0**3
        assert density < checks.MAX_NEIGHBOURS
    start = time.perf_counter()
    with pytest.raises(ResourceError, match="neighbours per atom"):
        mdata.collate([atoms], 6.0)
    assert time.perf_counter() - start < 1.0


def test_non_periodic_structures_are_unaffected():
    atoms = molecule("CH3CH2OH")
    atoms.cell = np.eye(3) * 0.1  # a tiny cell, but not periodic: ignored
    atoms.pbc = False
    assert checks.estimate_neighbours(atoms, 6.0) == (0.0, 1.0)
    batch = mdata.collate([atoms], 6.0)
    assert batch.edge_index.shape[1] == 9 * 8


@pytest.mark.parametrize(
    "atoms, cutoff",
    [(bulk("Cu"), 6.0), (bulk("Cu"), 12.0), (bulk("Li"), 12.0), (bulk("C"), 6.0),
     (bulk("Cu", cubic=True) * (3, 3, 3), 6.0), (fcc111("Cu", (1, 1, 20), vacuum=6.0), 8.0)],
)
def test_estimate_is_close_to_the_true_count_and_real_cells_pass(atoms, cutoff):
    estimate, _ = checks.estimate_neighbours(atoms, cutoff)
    true = len(ase_neighbor_list("i", atoms, cutoff)) / len(atoms)
    if atoms.pbc.all():
        assert estimate == pytest.approx(true, rel=0.1)
    else:  # partially periodic: only the atom's own images are counted, a lower bound
        assert 0 < estimate <= true
    checks.check_resources(atoms, cutoff)
    assert estimate < checks.MAX_NEIGHBOURS / 1.5


def test_one_atom_cell_estimate_is_exact():
    atoms = bulk("Cu", a=3.6)
    estimate, image_cells = checks.estimate_neighbours(atoms, 6.0)
    assert estimate == len(ase_neighbor_list("i", atoms, 6.0)) == 78
    assert image_cells == 7**3


def test_emt_data_passes(tmp_path):
    data = datasets.emt(("Cu",), n_structures=6, kinds=("bulk", "vacancy", "surface", "strained"),
                        seed=0, cache=False)
    for k, atoms in enumerate(data):
        checks.check_resources(atoms, 6.0, k)
    assert mdata.collate(data, 6.0).n_structures == 6


def test_packaged_ethanol_passes():
    data = datasets.ethanol("test")
    assert mdata.collate(data[:50], 6.0).n_structures == 50


def test_limit_is_a_keyword_and_a_module_constant(monkeypatch):
    atoms = bulk("Cu")  # 78 neighbours at 6 Å
    checks.check_resources(atoms, 6.0)
    with pytest.raises(ResourceError, match="limit 50"):
        checks.check_resources(atoms, 6.0, 3, max_neighbours=50)
    monkeypatch.setattr(checks, "MAX_NEIGHBOURS", 50)
    with pytest.raises(ResourceError, match="structure 0: .*limit 50"):
        mdata.collate([atoms], 6.0)
    monkeypatch.setattr(checks, "MAX_NEIGHBOURS", 10**7)
    monkeypatch.setattr(checks, "MAX_IMAGE_CELLS", 10**7)
    checks.check_resources(tiny_cu(0.5), 3.0)  # 0.5 Å, 3 Å: ~900 neighbours, now allowed


def test_file_and_frame_survive_reloading_a_loaded_dataset(tmp_path):
    path = tmp_path / "tiny.extxyz"
    ase.io.write(path, [bulk("Cu"), tiny_cu()], format="extxyz")
    again = mlipuq.load(mlipuq.load(path))
    with pytest.raises(ResourceError, match=r"^structure 0 \(frame 1 of .*tiny.extxyz\)"):
        mdata.collate(again[1:], 5.0)
