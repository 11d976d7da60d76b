"""Pools streamed from a large extxyz file or an ASE database (SQLite, PostgreSQL)."""

from __future__ import annotations

import ase
import ase.db
import ase.io
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import ETHANOL_SMALL, make_model, synthetic_prediction

import mlipuq
from mlipuq import active, schema
from mlipuq import cli as main_cli
from mlipuq.checks import origin
from mlipuq.errors import InputFileError
from mlipuq.streaming import DatabaseDataset, LazyExtxyz, StreamedDataset
from mlipuq.uq import LastLayerLaplace


def assert_same_structures(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(a.cell), np.asarray(b.cell), atol=1e-12)
        np.testing.assert_array_equal(a.pbc, b.pbc)
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=0, atol=1e-12)


# ------------------------------------------------------------------ extxyz
def test_lazy_extxyz_frames_equal_the_eager_load():
    eager = mlipuq.load(ETHANOL_SMALL)
    lazy = LazyExtxyz(ETHANOL_SMALL, block_size=3)
    assert isinstance(lazy, StreamedDataset) and len(lazy) == len(eager) == 20
    assert_same_structures(lazy, eager)  # iteration, block by block
    assert_same_structures([lazy[k] for k in range(len(lazy))], eager)  # single reads
    for a, b in zip(lazy, eager):
        assert a.info == b.info
        assert origin(a) == origin(b) == (str(ETHANOL_SMALL), origin(b)[1])
    np.testing.assert_array_equal(lazy.energies, eager.energies)
    np.testing.assert_array_equal(lazy.forces, eager.forces)
    assert lazy[-1].get_potential_energy() == eager[-1].get_potential_energy()
    loaded = mlipuq.load(ETHANOL_SMALL, lazy=True)
    assert isinstance(loaded, LazyExtxyz) and repr(loaded).startswith("LazyExtxyz(")
    assert_same_structures(mlipuq.load(ETHANOL_SMALL, lazy=True, index=":5"), eager[:5])
    assert lazy.offsets[0] == 0 and lazy.offsets.dtype == np.int64


def test_views_are_lazy_and_shards_concatenate_to_the_whole():
    eager = mlipuq.load(ETHANOL_SMALL)
    lazy = LazyExtxyz(ETHANOL_SMALL, block_size=4)
    for view, expected in [(lazy[3:11:2], eager[3:11:2]), (lazy[[5, 0, 19]], eager[[5, 0, 19]]),
                           (lazy[np.arange(20) % 3 == 0], eager[np.arange(20) % 3 == 0]),
                           (lazy.subset(range(18, 20)), eager.subset(range(18, 20)))]:
        assert isinstance(view, LazyExtxyz) and view.cached == 0
        assert_same_structures(view, expected)
    np.testing.assert_array_equal(lazy[[5, 0, 19]].frames, [5, 0, 19])
    assert all(isinstance(part, LazyExtxyz) for part in lazy.split([0.5, 0.5]))
    with pytest.raises(IndexError):
        lazy[20]
    with pytest.raises(IndexError):
        lazy[[0, 25]]
    for world in (1, 2, 3, 7, 25):
        shards = [lazy.shard(rank, world) for rank in range(world)]
        assert all(isinstance(s, LazyExtxyz) for s in shards)
        assert np.concatenate([s.frames for s in shards]).tolist() == list(range(20))
        in_memory = [eager.shard(rank, world) for rank in range(world)]
        assert [len(s) for s in in_memory] == [len(s) for s in shards]
        assert [a for s in in_memory for a in s] == list(eager)
    assert_same_structures(lazy.shard(1, 3), eager.shard(1, 3))
    assert len(lazy.shard()) == 20  # one process: everything


def test_reading_holds_at_most_one_block(monkeypatch):
    lazy = LazyExtxyz(ETHANOL_SMALL, block_size=4)
    reads = []
    original = lazy._reader.read
    monkeypatch.setattr(lazy._reader, "read", lambda keys: reads.append(len(keys)) or
                        original(keys))
    assert lazy.cached == 0  # nothing is read on construction
    for k in range(len(lazy)):  # sequential single reads, as iter_batches does
        lazy[k]
        assert lazy.cached <= 4
    assert reads == [4] * 5  # each block read once
    reads.clear()
    for _ in lazy:
        assert lazy.cached <= 4
    assert reads == [4] * 5
    lazy[0], lazy[19], lazy[0]
    assert lazy.cached == 4 and reads[-3:] == [4, 4, 4]
    batches = list(mlipuq.data.iter_batches(lazy, 4.0, 8))
    assert [start for start, _ in batches] == [0, 8, 16] and lazy.cached <= 4


def _write(path, text):
    path.write_text(text)
    return path


def test_lazy_extxyz_errors_name_the_file_and_frame(tmp_path):
    lines = ETHANOL_SMALL.read_text().splitlines(keepends=True)  # 11 lines per frame
    truncated = _write(tmp_path / "truncated.xyz", "".join(lines[:3 * 11 + 5]))
    with pytest.raises(InputFileError, match=r"truncated\.xyz, frame 3: truncated") as info:
        LazyExtxyz(truncated)
    assert info.value.frame == 3 and info.value.file == str(truncated)
    bad_count = _write(tmp_path / "count.xyz", "".join(lines[:22] + ["nine\n"] + lines[23:]))
    with pytest.raises(InputFileError, match="frame 2: malformed frame header"):
        mlipuq.load(bad_count, lazy=True)
    bad_value = lines[:2 * 11 + 2] + ["C 0.1 x 0.3 0.0 0.0 0.0\n"] + lines[2 * 11 + 3:]
    lazy = LazyExtxyz(_write(tmp_path / "value.xyz", "".join(bad_value)))  # scans fine
    lazy[0]
    with pytest.raises(InputFileError, match="value.xyz, frame 2.*non-numeric") as info:
        lazy[2]
    assert info.value.frame == 2
    with pytest.raises(FileNotFoundError):
        LazyExtxyz(tmp_path / "missing.xyz")
    with pytest.raises(InputFileError, match="empty"):
        LazyExtxyz(_write(tmp_path / "empty.xyz", ""))
    changed = _write(tmp_path / "changed.xyz", "".join(lines[:22]))
    lazy = LazyExtxyz(changed)
    _write(changed, "".join(lines[:33]))
    with pytest.raises(InputFileError, match="changed since it was scanned"):
        lazy[0]


# ---------------------------------------------------------------- database
def _clear(url):
    db = ase.db.connect(url)
    ids = [row.id for row in db.select(include_data=False, columns=["id"])]
    if ids:
        db.delete(ids)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "pool.db")
    pytest.importorskip("psycopg2")
    pytest.importorskip("ase_db_backends")
    url = request.getfixturevalue("postgres_url")
    _clear(url)
    return url


def _molecules():
    """Seven small structures with reference energies (eV) and forces (eV/Å)."""
    from ase.build import molecule

    rng = np.random.default_rng(0)
    out = []
    for k, name in enumerate(["H2O", "CH4", "C2H6", "CH3OH", "H2O", "NH3", "C2H4"]):
        atoms = molecule(name)
        atoms.rattle(0.05, seed=k)
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal(-50, 5)),
                                           forces=rng.normal(size=(len(atoms), 3)))
        out.append(atoms)
    return out


def test_database_round_trip_mark_and_predictions(db_url):
    originals = _molecules()
    db = ase.db.connect(db_url)
    for k, atoms in enumerate(originals):
        db.write(atoms, config="md" if k % 2 else "relax", n=k)
    pool = mlipuq.load(db_url, index=":")
    assert isinstance(pool, DatabaseDataset) and len(pool) == 7
    assert_same_structures(pool, originals)
    assert np.all(np.diff(pool.ids) > 0) and pool.ids.dtype == np.int64
    assert pool[2].info["config"] == "relax" and origin(pool[2]) == (pool.url, int(pool.ids[2]))
    assert "mlipuq@" not in repr(pool) or ":***@" in repr(pool)  # no password shown
    assert_same_structures(DatabaseDataset(db_url, block_size=2)[[6, 1, 3]],
                           [originals[6], originals[1], originals[3]])
    md = mlipuq.load(db_url, query="config=md")
    assert len(md) == 3 and md[0].info["n"] == 1

    # mark: one value per row or one for all; exclude_marked skips them
    written = pool.mark([1, 4], selected=2, selection_score=[0.5, 0.25])
    np.testing.assert_array_equal(written, pool.ids[[1, 4]])
    rest = mlipuq.load(db_url, exclude_marked="selected")
    assert len(rest) == 5 and not set(rest.ids) & set(written)
    assert_same_structures(rest, [originals[k] for k in (0, 2, 3, 5, 6)])
    row = ase.db.connect(db_url).get(id=int(written[1]))
    assert row.selected == 2 and row.selection_score == 0.25
    assert sorted(mlipuq.load(db_url, query="selected").ids) == sorted(written)
    rest[1:3].mark([0, 1], selected=3)  # a view marks its own rows
    assert len(mlipuq.load(db_url, exclude_marked="selected")) == 3

    # predictions: energies as key-value pairs, per-atom forces in the row's data
    pairs = []
    for k in (0, 2):
        n = len(originals[k])
        pairs.append(({schema.ENERGY: -1.0 - k, schema.ENERGY_STD: 0.1 * (k + 1)},
                      {schema.FORCES: np.full((n, 3), k + 0.5),
                       schema.FORCES_STD: np.full((n, 3), 0.01)}))
    pool.write_predictions([0, 2], pairs)
    row = ase.db.connect(db_url).get(id=int(pool.ids[2]))
    assert row.key_value_pairs[schema.ENERGY] == -3.0
    assert row.key_value_pairs[schema.ENERGY_STD] == pytest.approx(0.3)
    np.testing.assert_array_equal(row.data[schema.FORCES], np.full((len(originals[2]), 3), 2.5))
    assert len(mlipuq.load(db_url, query=f"{schema.ENERGY_STD}>0.2")) == 1
    # one transaction: a bad row writes nothing
    wrong = ({schema.ENERGY: 7.0, schema.ENERGY_STD: 1.0}, {schema.FORCES: np.zeros((1, 3))})
    with pytest.raises(InputFileError, match="nothing written"):
        pool.write_predictions([5, 6], [pairs[0], wrong])
    assert schema.ENERGY not in ase.db.connect(db_url).get(id=int(pool.ids[5])).key_value_pairs


def test_database_predictions_from_a_prediction(tmp_path):
    prediction, reference = synthetic_prediction(5, seed=2, members=True)
    path = tmp_path / "pred.db"
    db = ase.db.connect(path)
    for atoms in reference:
        db.write(atoms)
    pool = mlipuq.load(path)
    assert_same_structures(pool, reference)
    pool.write_predictions(range(5), prediction)
    for k, row_id in enumerate(pool.ids):
        info, arrays = prediction.columns(k)
        row = db.get(id=int(row_id))
        assert row[schema.ENERGY] == info[schema.ENERGY]
        np.testing.assert_array_equal(row.data[schema.FORCES_STD], arrays[schema.FORCES_STD])
        np.testing.assert_array_equal(row.data[schema.ENERGY_MEMBERS], info[schema.ENERGY_MEMBERS])
    with pytest.raises(ValueError, match="5 predictions for 2 positions"):
        pool.write_predictions([0, 1], prediction)


def test_database_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        mlipuq.load(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()  # not created
    text = _write(tmp_path / "notes.db", "just some text\n")
    with pytest.raises(InputFileError, match="notes.db: not an ASE database"):
        mlipuq.load(text)
    import sqlite3

    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    before = other.read_bytes()
    with pytest.raises(ValueError, match="not an ASE database"):
        mlipuq.load(other)
    assert other.read_bytes() == before  # ASE's tables were not added
    path = tmp_path / "pool.db"
    db = ase.db.connect(path)
    for atoms in _molecules()[:3]:
        db.write(atoms)
    db.update(2, dft_energy="high")
    with pytest.raises(InputFileError, match="bad query"):
        mlipuq.load(path, query="natoms<")
    with pytest.raises(InputFileError, match="not a key name"):
        mlipuq.load(path, query="x'--=1")
    with pytest.raises(InputFileError, match=r"pool.db, row id 2, key 'dft_energy'") as info:
        list(mlipuq.load(path, energy_key="dft_energy"))
    assert info.value.frame == 2
    with pytest.raises(ValueError, match="database source"):
        mlipuq.load(ETHANOL_SMALL, query="natoms<5")
    with pytest.raises(InputFileError, match="nothing written.*energy"):
        mlipuq.load(path).mark([0], energy=1.0)  # a reserved ase.db key
    with pytest.raises(InputFileError, match=r"postgresql://u:\*\*\*@127.0.0.1:1/x"):
        pytest.importorskip("ase_db_backends")
        mlipuq.load("postgresql://u:secret@127.0.0.1:1/x")


# --------------------------------------------------------------- selection
@pytest.fixture(scope="module")
def llpr():
    data = mlipuq.load(ETHANOL_SMALL)
    return LastLayerLaplace(make_model(), prior_precision=1.0, energy_noise=0.01,
                            forces_noise=0.1, n_samples=4).fit(data[:8])


def test_selecting_from_a_lazy_pool_equals_the_eager_pool(llpr):
    eager = mlipuq.load(ETHANOL_SMALL)[8:]
    lazy = LazyExtxyz(ETHANOL_SMALL, block_size=5)[8:]
    np.testing.assert_allclose(llpr.predict(lazy).energy_std, llpr.predict(eager).energy_std)
    expected = active.select(llpr, eager, 4, strategy="batch_llpr")
    got = active.select(llpr, lazy, 4, strategy="batch_llpr")
    np.testing.assert_array_equal(got.indices, expected.indices)


def test_select_cli_marks_database_rows_and_resumes(llpr, db_url, tmp_path, capsys):
    model = tmp_path / "llpr.pt"
    llpr.save(model)
    db = ase.db.connect(db_url)
    for atoms in mlipuq.load(ETHANOL_SMALL)[8:]:
        db.write(ase.Atoms(atoms.numbers, atoms.positions), source="md")
    argv = ["select", "--model", str(model), "--pool", db_url, "-k", "4",
            "--strategy", "batch_llpr", "--device", "cpu", "--query", "source=md"]
    assert main_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "row_id" in out and "marked 4 rows" in out
    first = mlipuq.load(db_url, query="selected=1")
    assert len(first) == 4
    expected = active.select(llpr, mlipuq.load(db_url), 4, strategy="batch_llpr")
    assert sorted(first.ids) == sorted(mlipuq.load(db_url).ids[expected.indices])
    picked = tmp_path / "round2.extxyz"
    assert main_cli.main([*argv, "--round", "2", "--out", str(picked)]) == 0
    second = mlipuq.load(db_url, query="selected=2")
    assert len(second) == 4 and not set(first.ids) & set(second.ids)
    assert len(mlipuq.load(db_url, query="selected")) == 8
    written = ase.io.read(picked, ":")
    assert sorted(a.info["mlipuq_row_id"] for a in written) == sorted(second.ids)
    scores = [row.selection_score for row in ase.db.connect(db_url).select("selected=2")]
    assert len(scores) == 4 and all(s > 0 for s in scores)
    capsys.readouterr()
    assert main_cli.main([*argv[:-2], "--query", "source=none"]) == 2
    assert "no rows left" in capsys.readouterr().err
    assert main_cli.main(["select", "--strategy", "random", "--pool", str(ETHANOL_SMALL),
                          "-k", "2", "--query", "natoms<5", "--out",
                          str(tmp_path / "x.extxyz")]) == 2
    assert "--query applies to a database" in capsys.readouterr().err
    assert main_cli.main(["select", "--strategy", "random", "--pool", str(ETHANOL_SMALL),
                          "-k", "2"]) == 2
    assert "--out is required" in capsys.readouterr().err
    lazy_out = tmp_path / "lazy.extxyz"
    assert main_cli.main(["select", "--model", str(model), "--pool", str(ETHANOL_SMALL), "-k",
                          "2", "--lazy", "--out", str(lazy_out)]) == 0
    eager = active.select(llpr, mlipuq.load(ETHANOL_SMALL), 2, strategy="batch_llpr")
    assert [a.info[schema.POOL_INDEX] for a in ase.io.read(lazy_out, ":")] == list(eager.indices)
