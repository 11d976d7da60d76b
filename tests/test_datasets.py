"""Tests of mlipuq.datasets: EMT-generated data and the packaged DFT data."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from importlib import resources

import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT

from mlipuq import datasets
from mlipuq.data import AtomsDataset

ALL_KINDS = ("bulk", "vacancy", "vacancy_cluster", "surface", "strained")
A_CU = datasets._emt_lattice_constant("Cu")


def arrays(ds: AtomsDataset):
    """Everything that must be bitwise reproducible."""
    return (
        [a.positions for a in ds],
        [np.asarray(a.cell) for a in ds],
        ds.energies,
        ds.forces,
        [a.numbers for a in ds],
    )


def assert_identical(d1: AtomsDataset, d2: AtomsDataset) -> None:
    assert len(d1) == len(d2)
    for x, y in zip(arrays(d1), arrays(d2)):
        if isinstance(x, list):
            assert all(np.array_equal(u, v) for u, v in zip(x, y))
        else:
            assert np.array_equal(x, y)
    assert [a.info["config_type"] for a in d1] == [a.info["config_type"] for a in d2]


@pytest.fixture(scope="module")
def all_kinds() -> AtomsDataset:
    # 11 structures over 5 kinds: 3 + 2 + 2 + 2 + 2
    return datasets.emt(n_structures=11, kinds=ALL_KINDS, seed=1, cache=False)


# ------------------------------------------------------------------------ EMT
def test_counts_kinds_and_info(all_kinds):
    assert isinstance(all_kinds, AtomsDataset)
    assert len(all_kinds) == 11
    kinds = [a.info["kind"] for a in all_kinds]
    expected = {"bulk": 3, "vacancy": 2, "vacancy_cluster": 2, "surface": 2, "strained": 2}
    assert Counter(kinds) == expected
    assert kinds == sorted(kinds, key=ALL_KINDS.index)  # grouped by kind
    for a in all_kinds:
        assert a.info["temperature"] == 300.0
        assert a.info["config_type"] == f"{a.info['kind']}_300K"
        assert np.all(np.isfinite(a.positions))


def test_atom_counts_and_pbc(all_kinds):
    n_atoms = {"bulk": 32, "vacancy": 31, "vacancy_cluster": 28, "surface": 16, "strained": 32}
    for a in all_kinds:
        kind = a.info["kind"]
        assert len(a) == n_atoms[kind], kind
        assert set(a.get_chemical_symbols()) == {"Cu"}
        if kind == "surface":
            assert a.pbc.tolist() == [True, True, False]
            z = a.positions[:, 2]
            assert a.cell[2, 2] - (z.max() - z.min()) > 9.0  # ~10 Å of vacuum
        else:
            assert a.pbc.all()
        if kind in ("bulk", "vacancy", "vacancy_cluster"):
            np.testing.assert_allclose(np.asarray(a.cell), 2 * A_CU * np.eye(3), atol=1e-12)


def test_size_three_has_108_atoms():
    ds = datasets.emt(n_structures=1, kinds="bulk", size=3, cache=False)
    assert len(ds) == 1 and len(ds[0]) == 108
    np.testing.assert_allclose(np.asarray(ds[0].cell), 3 * A_CU * np.eye(3), atol=1e-12)


def test_strained_cells_follow_recorded_strain(all_kinds):
    strained = [a for a in all_kinds if a.info["kind"] == "strained"]
    for a in strained:
        xx, yy, zz, yz, xz, xy = a.info["strain"]
        eps = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        assert 0.001 < np.abs(eps).max() < 0.06
        np.testing.assert_allclose(np.asarray(a.cell), 2 * A_CU * (np.eye(3) + eps), atol=1e-10)
    assert not np.allclose(strained[0].info["strain"], strained[1].info["strain"])


def test_labels_match_fresh_emt(all_kinds):
    for a in all_kinds[[0, 3, 7, 10]]:  # bulk, vacancy, surface, strained
        fresh = a.copy()
        fresh.calc = EMT()
        assert a.get_potential_energy() == pytest.approx(fresh.get_potential_energy(), abs=1e-9)
        assert a.get_forces().shape == (len(a), 3)
        np.testing.assert_allclose(a.get_forces(), fresh.get_forces(), atol=1e-7)
    forces = all_kinds.forces
    assert forces.shape == (int(all_kinds.n_atoms.sum()), 3)
    # thermal structures: forces are neither zero nor huge (eV/Å)
    assert 0.05 < np.abs(forces).mean() < 2.0


def test_frames_are_distinct(all_kinds):
    bulk = [a for a in all_kinds if a.info["kind"] == "bulk"]
    assert len({float(a.get_potential_energy()) for a in bulk}) == len(bulk)


def test_deterministic_for_seed():
    kwargs = dict(n_structures=4, kinds=("vacancy", "strained"), seed=3, cache=False)
    first = datasets.emt(**kwargs)
    second = datasets.emt(**kwargs)
    assert_identical(first, second)
    other = datasets.emt(**{**kwargs, "seed": 4})
    assert not np.array_equal(first.energies, other.energies)


def test_cache_written_reused_and_identical(tmp_path, monkeypatch):
    kwargs = dict(n_structures=3, kinds=("bulk", "surface"), temperatures=(200, 400), seed=5)
    fresh = datasets.emt(**kwargs, cache=False)
    # 3 structures over 4 (kind, T) combinations: one combination is left empty
    assert [a.info["config_type"] for a in fresh] == ["bulk_200K", "bulk_400K", "surface_200K"]

    cached = datasets.emt(**kwargs, cache_dir=tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 1 and files[0].endswith(".extxyz")  # no temporary files left
    assert_identical(fresh, cached)

    def no_generation(*args, **kw):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(datasets, "_generate", no_generation)
    again = datasets.emt(**kwargs, cache_dir=tmp_path)
    assert_identical(fresh, again)
    # the default cache folder comes from $MLIPUQ_CACHE
    monkeypatch.setenv("MLIPUQ_CACHE", str(tmp_path))
    assert_identical(fresh, datasets.emt(**kwargs))
    # other arguments are another cache entry
    with pytest.raises(AssertionError, match="cache should have been used"):
        datasets.emt(**{**kwargs, "seed": 6}, cache_dir=tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "binary", "empty"])
def test_damaged_cache_is_regenerated_with_a_warning_naming_it(tmp_path, damage):
    kwargs = dict(n_structures=2, kinds=("bulk",), temperatures=(300,), seed=2)
    fresh = datasets.emt(**kwargs, cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    text = path.read_bytes()
    damaged = {"truncate": text[: len(text) * 3 // 4], "binary": b"\xff\xfe" + text,
               "empty": b""}[damage]
    path.write_bytes(damaged)
    with pytest.warns(UserWarning, match="ignoring unreadable cache file") as record:
        again = datasets.emt(**kwargs, cache_dir=tmp_path)
    assert str(path) in str(record[0].message)
    assert_identical(fresh, again)
    assert path.read_bytes() == text  # rewritten


def test_alloys():
    ds = datasets.emt(("Cu", "Au"), n_structures=2, kinds="bulk", cache=False)
    a_mix = 0.5 * (A_CU + datasets._emt_lattice_constant("Au"))  # Vegard
    for a in ds:
        assert Counter(a.get_chemical_symbols()) == {"Cu": 16, "Au": 16}
        np.testing.assert_allclose(np.asarray(a.cell), 2 * a_mix * np.eye(3), atol=1e-12)
    ds = datasets.emt({"Cu": 0.75, "Au": 0.25}, n_structures=1, kinds="vacancy", cache=False)
    counts = Counter(ds[0].get_chemical_symbols())
    assert set(counts) == {"Cu", "Au"} and sum(counts.values()) == 31
    assert counts["Cu"] in (23, 24) and counts["Au"] in (7, 8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(elements=("Fe",)), "not supported by ASE's EMT"),
        (dict(elements=("Cu", "Xx")), "not supported"),
        (dict(elements=()), "empty"),
        (dict(elements=("H", "O")), "no metal"),
        (dict(elements=("Cu", "Cu")), "duplicates"),
        (dict(elements={"Cu": 1.0, "Au": -0.5}), "positive"),
        (dict(n_structures=0), "n_structures"),
        (dict(n_structures=-3), "n_structures"),
        (dict(n_structures=2.5), "n_structures"),
        (dict(kinds=("bulk", "interstitial")), "unknown kind"),
        (dict(kinds=()), "empty"),
        (dict(temperatures=(300, 0)), "positive"),
        (dict(temperatures=(-10,)), "positive"),
        (dict(temperatures=(math.nan,)), "positive"),
        (dict(temperatures=("hot",)), "not a number"),
        (dict(size=1), "size"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        datasets.emt(**kwargs, cache=False)


# ------------------------------------------------------------ packaged DFT data
MOLECULES = {
    # name: (train file, n_train + n_val, n_val, n_test, n_atoms, species)
    "ethanol": ("train.xyz.gz", 1000, 100, 1000, 9, {1, 6, 8}),
    "acac": ("train_300K.xyz.gz", 500, 50, 650, 15, {1, 6, 8}),
}


def _keys(ds):
    return [a.positions.tobytes() for a in ds]


@pytest.mark.parametrize("name", sorted(MOLECULES))
def test_molecule_splits(name):
    train_file, n_full, n_val, n_test, n_atoms, species = MOLECULES[name]
    load = getattr(datasets, name)
    train, val, test = load("train"), load("val"), load("test")
    assert (len(train), len(val), len(test)) == (n_full - n_val, n_val, n_test)
    assert _keys(load()) == _keys(train)  # default split is "train", and stable

    full = datasets._read_packaged(name, train_file)
    assert len(full) == n_full
    spec = json.loads((resources.files("mlipuq") / "data_files" / name / "split.json").read_text())
    assert len(spec["val"]) == n_val
    # val is exactly the listed structures; train the rest, in file order
    assert _keys(val) == _keys(full[spec["val"]])
    rest = sorted(set(range(n_full)) - set(spec["val"]))
    assert _keys(train) == _keys(full[rest])
    assert not set(_keys(train)) & set(_keys(val))
    assert not set(_keys(test)) & set(_keys(full))  # test disjoint from the training file
    np.testing.assert_array_equal(val.energies, full.energies[spec["val"]])

    for ds in (train, val, test):
        assert set(ds.n_atoms.tolist()) == {n_atoms}
        assert ds.species == sorted(species)
        assert ds.has_reference.all() and ds.has_forces.all()
        assert np.all(np.isfinite(ds.energies))
        assert ds.forces.shape == (len(ds) * n_atoms, 3)
        assert ds[0].get_forces().shape == (n_atoms, 3)
        assert not ds[0].pbc.any()


@pytest.mark.parametrize("name", sorted(MOLECULES))
def test_invalid_split(name):
    with pytest.raises(ValueError, match="split"):
        getattr(datasets, name)("validation")


def test_isolated_atom_energies():
    eth = datasets.isolated_atom_energies("ethanol")
    acac = datasets.isolated_atom_energies("acac")
    assert set(eth) == {1, 6, 7, 8}
    assert set(acac) == {1, 6, 8}
    assert eth[1] == pytest.approx(-13.568422383046626)
    assert all(isinstance(z, int) and e < 0 for z, e in {**eth, **acac}.items())
    # energies differ between levels of theory
    assert eth[6] != acac[6]
    with pytest.raises(ValueError, match="unknown data set"):
        datasets.isolated_atom_energies("benzene")


def test_returned_structures_are_copies():
    first = datasets.acac("test")
    original = first[0].positions.copy()
    first[0].positions += 1.0
    np.testing.assert_array_equal(datasets.acac("test")[0].positions, original)


def test_packaged_files_present():
    root = resources.files("mlipuq") / "data_files"
    with resources.as_file(root / "acac" / "isolated_atoms.xyz.gz") as path:
        atoms = ase.io.read(path, index=":")  # ASE reads the .xyz.gz directly
    energies = datasets.isolated_atom_energies("acac")
    assert {int(a.numbers[0]): a.get_potential_energy() for a in atoms} == energies
    assert (root / "LICENSE-BOTNet-datasets").read_text().startswith("MIT License")
    assert "BOTNet" in (root / "README.md").read_text()
    for name in MOLECULES:
        for f in ("isolated_atoms.xyz.gz", "split.json", MOLECULES[name][0]):
            assert (root / name / f).is_file()
