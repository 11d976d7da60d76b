"""mlipuq.data: loading, reference data, splitting, writing, neighbour lists, input checks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import ase
import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.neighborlist import neighbor_list as ase_neighbor_list

import mlipuq
from mlipuq import data as mdata
from mlipuq.errors import InvalidStructureError, MissingReferenceError


# ------------------------------------------------------------ neighbour lists
def _triclinic():
    rng = np.random.default_rng(3)
    cell = np.array([[3.1, 0.0, 0.0], [1.3, 2.9, 0.0], [0.7, -0.9, 3.2]])
    frac = rng.uniform(0, 1, size=(3, 3))
    return ase.Atoms("Cu2Au", scaled_positions=frac, cell=cell, pbc=True)


def _slab():
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    slab.rattle(stdev=0.05, seed=4)
    assert tuple(slab.pbc) == (True, True, False)
    return slab


def _slab_zero_c():
    """A 2D-periodic layer whose third cell vector is zero (allowed: it is not periodic)."""
    slab = _slab()
    slab.cell[2] = 0.0
    return slab


def _molecule_small_cell():
    """A non-periodic molecule carrying a cell smaller than itself: the cell must be ignored."""
    atoms = molecule("CH3CH2OH")
    atoms.cell = [1.0, 1.0, 1.0]
    atoms.pbc = False
    return atoms


def _small_cell():
    atoms = bulk("Cu", "fcc", a=3.6)  # one-atom primitive cell, vectors 2.55 Å long
    atoms.rattle(stdev=0.05, seed=2)
    return atoms


NL_CASES = {
    "molecule": (lambda: molecule("CH3CH2OH"), 3.0),
    "small_periodic_cutoff_exceeds_cell": (_small_cell, 5.5),
    "cubic_cutoff_exceeds_cell": (lambda: bulk("Cu", "fcc", a=3.6, cubic=True), 4.0),
    "triclinic": (_triclinic, 4.5),
    "slab_pbc_TTF": (_slab, 4.0),
    "slab_pbc_TTF_zero_c": (_slab_zero_c, 4.0),
    "molecule_in_small_non_periodic_cell": (_molecule_small_cell, 3.0),
    "translated_outside_cell": (
        lambda: ase.Atoms(
            "Cu4",
            positions=bulk("Cu", "fcc", a=3.6, cubic=True).positions + [7.3, -11.1, 5.5],
            cell=[3.6, 3.6, 3.6],
            pbc=True,
        ),
        4.0,
    ),
}


def _ase_pairs(atoms, cutoff):
    i, j, shifts = ase_neighbor_list("ijS", atoms, cutoff)
    return set(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist())))


@pytest.mark.parametrize("case", list(NL_CASES))
def test_neighbour_list_matches_ase(case):
    make, cutoff = NL_CASES[case]
    atoms = make()
    i, j, shifts = mdata.neighbour_list(atoms, cutoff)
    ours = list(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist())))
    assert len(ours) == len(set(ours)), "duplicate pairs"
    expected = _ase_pairs(atoms, cutoff)
    assert len(expected) > 0
    assert set(ours) == expected


@pytest.mark.parametrize("case", list(NL_CASES))
def test_collate_edges_and_vectors_match_ase(case):
    """In a batch (after another structure), edges and edge vectors match ASE's."""
    make, cutoff = NL_CASES[case]
    atoms = make()
    first = molecule("H2O")
    batch = mdata.collate([first, atoms], cutoff)
    offset = len(first)
    in_second = batch.batch[batch.edge_index[0]] == 1
    i = batch.edge_index[0][in_second].numpy() - offset
    j = batch.edge_index[1][in_second].numpy() - offset
    shifts = batch.shifts[in_second].numpy()
    assert np.all(shifts == np.round(shifts))
    ours = set(zip(i.tolist(), j.tolist(), map(tuple, shifts.astype(int).tolist())))
    assert ours == _ase_pairs(atoms, cutoff)
    # edges never cross structures
    assert torch.equal(batch.batch[batch.edge_index[0]], batch.batch[batch.edge_index[1]])
    # distance vectors r_j - r_i + S @ cell, compared pair by pair
    vectors = batch.edge_vectors()[in_second].numpy()
    ai, aj, ashift, avec = ase_neighbor_list("ijSD", atoms, cutoff)
    ase_vec = {(a, b, tuple(s)): v for a, b, s, v in zip(ai, aj, ashift.tolist(), avec)}
    for a, b, s, v in zip(i.tolist(), j.tolist(), shifts.astype(int).tolist(), vectors):
        np.testing.assert_allclose(v, ase_vec[(a, b, tuple(s))], atol=1e-10)
    assert np.all(np.linalg.norm(vectors, axis=1) < cutoff)


def test_collate_layout(ethanol, cu_cell):
    structures = [ethanol[0], cu_cell, ethanol[1]]
    batch = mdata.collate(structures, 4.0)
    assert batch.n_structures == 3
    assert batch.n_atoms.tolist() == [9, 4, 9]
    assert batch.batch.tolist() == [0] * 9 + [1] * 4 + [2] * 9
    assert batch.positions.dtype == torch.float64
    assert batch.pbc.tolist() == [[False] * 3, [True] * 3, [False] * 3]
    expected = [ethanol[0].get_potential_energy(), np.nan, ethanol[1].get_potential_energy()]
    np.testing.assert_array_equal(batch.energy.numpy(), expected)
    assert torch.isnan(batch.forces[9:13]).all()
    np.testing.assert_array_equal(batch.forces[:9].numpy(), ethanol[0].get_forces())
    assert mdata.collate(structures, 4.0, dtype=torch.float32).positions.dtype == torch.float32


# ------------------------------------------------------------------- loading
def test_load_from_path_list_and_atoms(ethanol_path):
    frames = ase.io.read(ethanol_path, ":")
    from_path = mlipuq.load(ethanol_path)
    from_str = mlipuq.load(str(ethanol_path))
    from_list = mlipuq.load(frames)
    from_atoms = mlipuq.load(frames[3])
    from_dataset = mlipuq.load(from_path)
    assert len(from_path) == len(from_str) == len(from_list) == len(from_dataset) == 20
    assert len(from_atoms) == 1
    expected_e = np.array([a.get_potential_energy() for a in frames])
    expected_f = np.concatenate([a.get_forces() for a in frames])
    for d in (from_path, from_str, from_list, from_dataset):
        np.testing.assert_array_equal(d.energies, expected_e)
        np.testing.assert_array_equal(d.forces, expected_f)
        assert d.has_reference.all() and d.has_forces.all()
        assert d.n_atoms.tolist() == [9] * 20
        assert d.species == [1, 6, 8]
    assert from_atoms.energies[0] == expected_e[3]
    np.testing.assert_array_equal(from_atoms[0].get_forces(), frames[3].get_forces())
    # reference data through the ASE interface
    assert from_path[5].get_potential_energy() == expected_e[5]
    np.testing.assert_array_equal(from_path[5].get_forces(), frames[5].get_forces())


def test_load_index_selects_frames(ethanol_path):
    d = mlipuq.load(ethanol_path, index=":5")
    assert len(d) == 5
    single = mlipuq.load(ethanol_path, index=7)
    assert len(single) == 1
    assert single.energies[0] == mlipuq.load(ethanol_path).energies[7]


def test_load_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        mlipuq.load(tmp_path / "nope.xyz")


def test_load_rejects_non_atoms():
    with pytest.raises(TypeError, match="structure 1"):
        mlipuq.load([molecule("H2O"), "not atoms"])


def test_custom_energy_and_forces_keys(tmp_path):
    rng = np.random.default_rng(0)
    frames = []
    for k in range(3):
        a = molecule("H2O")
        a.info["REF_energy"] = -10.0 - k
        a.arrays["REF_forces"] = rng.normal(size=(3, 3))
        frames.append(a)
    d = mlipuq.load(frames, energy_key="REF_energy", forces_key="REF_forces")
    np.testing.assert_array_equal(d.energies, [-10.0, -11.0, -12.0])
    expected_forces = np.concatenate([a.arrays["REF_forces"] for a in frames])
    np.testing.assert_array_equal(d.forces, expected_forces)
    assert d[1].get_potential_energy() == -11.0
    # also from a file
    path = tmp_path / "custom.xyz"
    ase.io.write(path, frames, format="extxyz")
    from_file = mlipuq.load(path, energy_key="REF_energy", forces_key="REF_forces")
    np.testing.assert_array_equal(from_file.energies, d.energies)
    np.testing.assert_allclose(from_file.forces, d.forces, atol=1e-8)
    # with the default keys the same file has no reference
    plain = mlipuq.load(path)
    assert not plain.has_reference.any()
    assert not plain.has_forces.any()


def test_load_leaves_user_atoms_untouched():
    a = molecule("CH3CH2OH")
    a.info["REF_energy"] = -5.0
    a.arrays["REF_forces"] = np.ones((9, 3))
    positions = a.positions.copy()
    d = mlipuq.load([a], energy_key="REF_energy", forces_key="REF_forces")
    assert a.calc is None
    assert a.info == {"REF_energy": -5.0}
    assert "REF_forces" in a.arrays
    np.testing.assert_array_equal(a.arrays["REF_forces"], np.ones((9, 3)))
    assert d[0] is not a
    d[0].positions += 1.0
    np.testing.assert_array_equal(a.positions, positions)

    b = molecule("H2O")
    b.calc = SinglePointCalculator(b, energy=-1.0, forces=np.zeros((3, 3)))
    calc = b.calc
    d = mlipuq.load(b)
    d[0].calc.results["energy"] = 99.0
    assert b.calc is calc and b.calc.results["energy"] == -1.0


def test_has_reference_false_without_reference(ethanol):
    bare = molecule("CH3CH2OH")
    energy_only = molecule("H2O")
    energy_only.info["energy"] = -3.0
    d = mlipuq.load([ethanol[0], bare, energy_only])
    assert d.has_reference.tolist() == [True, False, True]
    assert d.has_forces.tolist() == [True, False, False]
    assert np.isnan(d.energies[1]) and d.energies[2] == -3.0
    assert np.isnan(d.forces[9:]).all() and np.isfinite(d.forces[:9]).all()


# ---------------------------------------------------------- views and splits
def test_indexing_subset_and_concatenation(ethanol):
    assert isinstance(ethanol[0], ase.Atoms)
    assert ethanol[-1] is ethanol[19]
    part = ethanol[2:5]
    assert isinstance(part, mlipuq.AtomsDataset) and len(part) == 3
    assert part[0] is ethanol[2]
    picked = ethanol[[7, 1, 7]]
    assert [a is b for a, b in zip(picked, [ethanol[7], ethanol[1], ethanol[7]])] == [True] * 3
    subset = ethanol.subset(np.array([4, 0]))
    np.testing.assert_array_equal(subset.energies, ethanol.energies[[4, 0]])
    mask = np.zeros(20, dtype=bool)
    mask[[3, 11]] = True
    np.testing.assert_array_equal(ethanol[mask].energies, ethanol.energies[[3, 11]])
    with pytest.raises(ValueError, match="mask"):
        ethanol.subset(np.ones(5, dtype=bool))
    joined = ethanol[:3] + ethanol[10:12]
    assert len(joined) == 5
    np.testing.assert_array_equal(joined.energies, ethanol.energies[[0, 1, 2, 10, 11]])
    joined2 = mdata.concatenate([ethanol[:1], ethanol[1:4], ethanol[4:]])
    np.testing.assert_array_equal(joined2.energies, ethanol.energies)
    np.testing.assert_array_equal(joined2.forces, ethanol.forces)


@pytest.mark.parametrize("fractions", [[0.8, 0.2], [0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
def test_split_deterministic_disjoint_covering(ethanol, fractions):
    ids = {id(a): k for k, a in enumerate(ethanol)}
    parts = ethanol.split(fractions, seed=7)
    again = ethanol.split(fractions, seed=7)
    other = ethanol.split(fractions, seed=8)
    index_sets = [[ids[id(a)] for a in p] for p in parts]
    assert [[ids[id(a)] for a in p] for p in again] == index_sets
    assert [[ids[id(a)] for a in p] for p in other] != index_sets
    flat = [k for s in index_sets for k in s]
    assert sorted(flat) == list(range(20))  # disjoint and covering
    for f, s in zip(fractions, index_sets):
        assert abs(len(s) - f * 20) < 1 + 1e-9


def test_split_partial_and_invalid(ethanol):
    (half,) = ethanol.split([0.5], seed=0)
    assert len(half) == 10
    with pytest.raises(ValueError, match="sum"):
        ethanol.split([0.8, 0.3])
    with pytest.raises(ValueError, match="positive"):
        ethanol.split([0.5, 0.0])


# -------------------------------------------------------------------- writing
def _prediction(dataset, seed=0):
    rng = np.random.default_rng(seed)
    n = int(dataset.n_atoms.sum())
    b = len(dataset)
    return mlipuq.Prediction(
        energy=rng.normal(-4000.0, 10.0, size=b),
        energy_var=rng.uniform(0.01, 1.0, size=b),
        forces=rng.normal(size=(n, 3)),
        forces_var=rng.uniform(0.01, 1.0, size=(n, 3)),
        n_atoms=dataset.n_atoms,
        batch=np.repeat(np.arange(b), dataset.n_atoms),
    )


def test_write_prediction_round_trip(tmp_path, ethanol):
    d = ethanol[:5]
    pred = _prediction(d)
    path = tmp_path / "out.xyz"
    d.write(path, pred)
    back = mlipuq.load(path)
    assert len(back) == 5
    # reference data survive unchanged
    np.testing.assert_array_equal(back.energies, d.energies)
    np.testing.assert_allclose(back.forces, d.forces, rtol=0, atol=5e-9)
    # prediction columns
    np.testing.assert_array_equal([a.info[mdata.PRED_ENERGY] for a in back], pred.energy)
    np.testing.assert_array_equal([a.info[mdata.PRED_ENERGY_STD] for a in back], pred.energy_std)
    forces = np.concatenate([a.arrays[mdata.PRED_FORCES] for a in back])
    forces_std = np.concatenate([a.arrays[mdata.PRED_FORCES_STD] for a in back])
    # extxyz stores per-atom columns with 8 decimals
    np.testing.assert_allclose(forces, pred.forces, rtol=0, atol=5e-9)
    np.testing.assert_allclose(forces_std, pred.forces_std, rtol=0, atol=5e-9)
    assert mdata.PRED_ENERGY == "mlipuq_energy" and mdata.PRED_ENERGY_STD == "mlipuq_energy_std"
    assert mdata.PRED_FORCES == "mlipuq_forces" and mdata.PRED_FORCES_STD == "mlipuq_forces_std"
    # writing did not add columns to the dataset's own structures
    assert mdata.PRED_ENERGY not in d[0].info and mdata.PRED_FORCES not in d[0].arrays


def test_write_refuses_to_clobber(tmp_path, ethanol):
    d = ethanol[:2]
    path = tmp_path / "out.xyz"
    d.write(path)
    with pytest.raises(FileExistsError):
        d.write(path, _prediction(d))
    assert mdata.PRED_ENERGY not in mlipuq.load(path)[0].info
    d.write(path, _prediction(d), overwrite=True)
    assert mdata.PRED_ENERGY in mlipuq.load(path)[0].info


def test_write_rejects_mismatched_prediction(tmp_path, ethanol):
    with pytest.raises(ValueError, match="prediction covers"):
        ethanol[:3].write(tmp_path / "x.xyz", _prediction(ethanol[:2]))


def test_write_without_prediction_round_trips_reference(tmp_path, ethanol):
    path = tmp_path / "plain.xyz"
    ethanol.write(path)
    back = mlipuq.load(path)
    np.testing.assert_array_equal(back.energies, ethanol.energies)
    np.testing.assert_allclose(back.forces, ethanol.forces, rtol=0, atol=5e-9)
    np.testing.assert_allclose(
        np.concatenate([a.positions for a in back]),
        np.concatenate([a.positions for a in ethanol]),
        rtol=0,
        atol=5e-9,
    )


# ------------------------------------------------------------ atomic energies
def test_fit_atomic_energies_recovers_known_values():
    rng = np.random.default_rng(5)
    true = {1: -13.6, 6: -1025.3, 8: -2035.6}
    structures = []
    for _ in range(12):
        counts = rng.integers(0, 5, size=3)
        counts[rng.integers(3)] += 1  # never empty
        symbols = "H" * counts[0] + "C" * counts[1] + "O" * counts[2]
        a = ase.Atoms(symbols, positions=rng.uniform(0, 5, size=(len(symbols), 3)))
        a.info["energy"] = sum(true[z] for z in a.numbers)
        structures.append(a)
    d = mlipuq.load(structures)
    fitted = mdata.fit_atomic_energies(d)
    assert set(fitted) == set(true)
    for z, e in true.items():
        assert fitted[z] == pytest.approx(e, abs=1e-8)
    # an extra species that never appears gets 0; structures without reference are ignored
    d2 = d + mlipuq.load(molecule("CH4"))
    fitted2 = mdata.fit_atomic_energies(d2, species=["H", "C", "O", "N"])
    assert fitted2[7] == 0.0
    for z, e in true.items():
        assert fitted2[z] == pytest.approx(e, abs=1e-8)


def test_fit_atomic_energies_needs_reference():
    with pytest.raises(MissingReferenceError):
        mdata.fit_atomic_energies(mlipuq.load(molecule("H2O")))


def test_atomic_energies_from_isolated_atoms_file(tmp_path):
    energies = {"H": -13.568422383046626, "C": -1025.2770951782686, "O": -2035.5709809589698}
    atoms = []
    for symbol, e in energies.items():
        a = ase.Atoms(symbol, positions=[[0.0, 0.0, 0.0]])
        a.info["energy"] = e
        a.info["config_type"] = "isolated_atom"
        atoms.append(a)
    path = tmp_path / "isolated_atoms.xyz"
    ase.io.write(path, atoms, format="extxyz")
    result = mdata.atomic_energies_from(path)
    assert result == {1: energies["H"], 6: energies["C"], 8: energies["O"]}

    two = ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    two.info["energy"] = -31.0
    with pytest.raises(ValueError, match="structure 1: isolated-atom reference must hold one atom"):
        mdata.atomic_energies_from([atoms[0], two])
    with pytest.raises(ValueError, match="structure 0: no reference energy"):
        mdata.atomic_energies_from([ase.Atoms("H")])


# ------------------------------------------------------------------ bad input
def _with_nan(position=(2, 1), value=np.nan):
    a = molecule("CH3CH2OH")
    a.positions[position] = value
    return a


def _unknown_element():
    a = molecule("CH3CH2OH")
    a.symbols[0] = "Au"
    return a


def _zero_volume():
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    a.set_cell([[3.6, 0.0, 0.0], [1.8, 0.0, 0.0], [0.0, 0.0, 3.6]])
    return a


BAD_STRUCTURES = {
    "unknown_element": (_unknown_element, r"structure 1: .*\['Au'\] unknown"),
    "nan_position": (lambda: _with_nan((2, 1), np.nan), r"structure 1: non-finite .*atoms \[2\]"),
    "inf_position": (lambda: _with_nan((4, 0), np.inf), r"structure 1: non-finite .*atoms \[4\]"),
    "empty": (lambda: ase.Atoms(), r"structure 1: empty structure"),
    "zero_volume_cell": (_zero_volume, r"structure 1: periodic cell has zero volume"),
    "periodic_without_cell": (
        lambda: ase.Atoms("Cu2", positions=[[0, 0, 0], [1.5, 1.5, 0]], pbc=True),
        r"structure 1: periodic along axis 0 but the cell vector is zero",
    ),
}


@pytest.mark.parametrize("case", list(BAD_STRUCTURES))
def test_collate_rejects_bad_structures(case):
    make, match = BAD_STRUCTURES[case]
    good = molecule("CH3CH2OH")
    with pytest.raises(InvalidStructureError, match=match) as info:
        mdata.collate([good, make(), good], 4.0, species=["H", "C", "O", "Cu"])
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("case", list(BAD_STRUCTURES))
def test_collate_start_index_in_messages(case):
    make, match = BAD_STRUCTURES[case]
    match = match.replace("structure 1", "structure 11")
    with pytest.raises(ValueError, match=match):
        mdata.collate([molecule("H2O"), make()], 4.0, species=["H", "C", "O", "Cu"], start_index=10)


def test_unknown_element_accepts_symbols_and_numbers():
    with pytest.raises(ValueError, match=r"structure 0: .*\['O'\] unknown"):
        mdata.collate([molecule("H2O")], 3.0, species=[1, 6])
    with pytest.raises(ValueError, match="unknown element symbol"):
        mdata.collate([molecule("H2O")], 3.0, species=["H", "Xx"])


def test_validate_requires_reference(ethanol):
    d = ethanol[:2] + mlipuq.load(molecule("CH3CH2OH"))
    d.validate(["H", "C", "O"])  # fine without requirements
    with pytest.raises(MissingReferenceError, match="structure 2: no reference energy"):
        d.validate(require_energy=True)
    with pytest.raises(ValueError, match="no structures"):
        mlipuq.AtomsDataset([]).validate()


def test_load_rejects_wrong_force_shape(ethanol):
    bad = molecule("CH3CH2OH")
    bad.calc = SinglePointCalculator(bad, energy=-1.0, forces=np.zeros((9, 2)))
    match = r"structure 2: reference forces have shape \(9, 2\), expected \(9, 3\)"
    with pytest.raises(ValueError, match=match):
        mlipuq.load([ethanol[0], ethanol[1], bad])


def test_load_rejects_wrong_force_count(ethanol):
    bad = molecule("CH3CH2OH")
    bad.calc = SinglePointCalculator(bad, energy=-1.0, forces=np.zeros((8, 3)))
    with pytest.raises(ValueError, match=r"structure 1: reference forces have shape \(8, 3\)"):
        mlipuq.load([ethanol[0], bad])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_load_rejects_non_finite_reference_energy(value):
    good = molecule("H2O")
    good.info["energy"] = -3.0
    bad = molecule("H2O")
    bad.info["energy"] = value
    with pytest.raises(InvalidStructureError, match="structure 1: reference energy is not finite"):
        mlipuq.load([good, bad])
    bad_custom = molecule("H2O")
    bad_custom.info["REF_energy"] = value
    with pytest.raises(ValueError, match="structure 0: reference energy is not finite"):
        mlipuq.load([bad_custom], energy_key="REF_energy")


def test_load_rejects_non_finite_reference_forces():
    bad = molecule("H2O")
    bad.arrays["REF_forces"] = np.zeros((3, 3))
    bad.arrays["REF_forces"][1, 2] = np.nan
    with pytest.raises(ValueError, match="structure 0: reference forces are not finite"):
        mlipuq.load([bad], forces_key="REF_forces")


_DEGENERATE_SLAB = textwrap.dedent(
    """
    import ase
    from mlipuq import data
    atoms = ase.Atoms("Cu2", positions=[[0, 0, 0], [1.2, 1.1, 0.3]],
                      cell=[[2.5, 0, 0], [5.0, 0, 0], [0, 0, 10.0]], pbc=(True, True, False))
    try:
        data.collate([atoms], 4.0)
    except ValueError as exc:
        print("VALUEERROR:", exc)
    else:
        print("NO ERROR")
    """
)


def test_degenerate_partially_periodic_cell_raises_instead_of_crashing():
    # run in a subprocess: the bug crashes the whole interpreter
    result = subprocess.run(
        [sys.executable, "-c", _DEGENERATE_SLAB], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"interpreter died with return code {result.returncode}"
    assert "VALUEERROR: structure 0" in result.stdout
