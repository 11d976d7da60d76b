"""Pools too large for memory: structures streamed from a big extxyz file or an ASE database.

A :class:`StreamedDataset` is an :class:`~mlipuq.data.AtomsDataset` read on
demand, one block (:data:`BLOCK_SIZE` structures) at a time, keeping only the
last block read. ``predict``, ``active.select`` and ``validate`` stream through
it unchanged. An int index gives one ``ase.Atoms`` with its reference energy
(eV) and forces (eV/Å) attached as :func:`mlipuq.data.load` attaches them and
its origin recorded; slices, index arrays, ``subset``, ``shard`` and ``split``
give lazy views (a ``StreamedDataset`` of the same class), never lists.

* :class:`LazyExtxyz` scans an (ext)xyz file once, keeping the byte offset of
  each frame (8 bytes per frame); frame ``k`` is read by seeking there and
  parsing it with ASE's extxyz reader.
* :class:`DatabaseDataset` reads an ASE database: an SQLite ``.db`` file or a
  ``postgresql://user:password@host:port/dbname`` server (needs
  ``pip install ase-db-backends psycopg2-binary``), keeping the ordered ids of
  the rows matching a query; it writes back with :meth:`~DatabaseDataset.mark`
  and :meth:`~DatabaseDataset.write_predictions`.

User errors raise ``ValueError`` subclasses (:class:`~mlipuq.errors.InputFileError`
naming the file or database and the 0-based frame or the row id); a missing
file raises ``FileNotFoundError``. Nothing read is ever executed.
"""

from __future__ import annotations

import array
import contextlib
import io
import os
import re
import sqlite3
import urllib.parse
from typing import Optional, Union

import ase
import ase.io
import numpy as np

from mlipuq import schema
from mlipuq.atoms_dataset import _attach_reference
from mlipuq.data_io import _bad_column, _frame_problem, file_error
from mlipuq.streamed import BLOCK_SIZE, StreamedDataset, _Blocks, _checked  # noqa: F401
from mlipuq.errors import InputFileError

__all__ = ["BLOCK_SIZE", "DatabaseDataset", "LazyExtxyz", "StreamedDataset", "is_database"]

SCAN_PAGE = 10_000  #: row ids fetched per query while scanning a database
ROW_ID = schema.PREFIX + "row_id"  #: ``atoms.info`` key of a row id (``mlipuq select --out``)
SELECTION_SCORE = "selection_score"  #: key-value pair ``mlipuq select`` marks a pick's score with

_URL_PREFIXES = ("postgresql://", "postgres://")
_KEY = re.compile(r"-?[A-Za-z_][A-Za-z0-9_]*")
_COMPRESSED = (".gz", ".bz2", ".xz", ".lzma", ".zip")


def is_database(source) -> bool:
    """True for a path ending in ``.db`` or a ``postgresql://`` URL."""
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    return isinstance(name, str) and (name.startswith(_URL_PREFIXES)
                                      or name.lower().endswith(".db"))


class LazyExtxyz(StreamedDataset):
    """An (ext)xyz file read frame by frame on demand.

    The file is scanned once at construction; only the byte offset of each
    frame is kept ((n_frames + 1,) int64). Energies are in eV, forces in
    eV/Å, as in the file.

    Parameters
    ----------
    path
        An uncompressed extxyz (or plain xyz) file.
    energy_key, forces_key
        Where the reference energy (``atoms.info`` / calculator) and forces
        (``atoms.arrays`` / calculator) are found, as in :func:`mlipuq.load`.
    block_size
        Frames parsed and held at a time.

    Raises
    ------
    FileNotFoundError
        No such file.
    InputFileError
        Empty, compressed, a bad atom-count line or a frame cut short by the
        end of the file (naming the 0-based frame); a problem inside a frame
        raises when that frame is used.
    """

    def __init__(self, path: Union[str, os.PathLike], *, energy_key: str = "energy",
                 forces_key: str = "forces", block_size: int = BLOCK_SIZE):
        reader = _ExtxyzReader(os.fspath(path), energy_key, forces_key)
        super().__init__(reader, np.arange(len(reader.offsets) - 1, dtype=np.int64),
                         block_size=block_size)

    path = property(lambda self: self._reader.path, doc="The extxyz file.")

    @property
    def frames(self) -> np.ndarray:
        """(n,) int64 frame index in the file of each structure."""
        return self._keys.copy()

    @property
    def offsets(self) -> np.ndarray:
        """(n,) int64 byte offset in the file of each structure's frame."""
        return self._reader.offsets[self._keys]


def _scan_frames(path: str) -> np.ndarray:
    """(n_frames + 1,) byte offsets of the frames of an (ext)xyz file (the last
    one is where the last frame ends). Stops at a blank count line, as ASE does."""
    offsets = array.array("q")
    position = 0
    with open(path, "rb") as fh:
        line = fh.readline()
        while line.strip():
            frame = len(offsets)
            n_atoms = int(line) if line.strip().isdigit() else -1
            if n_atoms < 0:
                text = line.strip()[:40].decode("utf-8", "replace")
                raise file_error(path, frame, f"malformed frame header: expected the number "
                                              f"of atoms, got {text!r}")
            offsets.append(position)
            position += len(line)
            for k in range(n_atoms + 1):
                line = fh.readline()
                if not line:
                    raise file_error(path, frame, f"truncated frame: the file ends inside it "
                                                  f"({k - 1 if k else 0} of {n_atoms} atom lines)")
                position += len(line)
            line = fh.readline()
            while line.lstrip().startswith(b"VEC"):  # extxyz lattice vectors of the frame
                position += len(line)
                line = fh.readline()
    offsets.append(position)
    if len(offsets) == 1:
        raise file_error(path, None, "no structures found")
    return np.frombuffer(offsets, dtype=np.int64).copy()


class _ExtxyzReader:
    def __init__(self, path: str, energy_key: str, forces_key: str):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {path}")
        problem = ("is a directory, not a structure file" if os.path.isdir(path) else
                   "a compressed file cannot be streamed: decompress it, or load it with "
                   "lazy=False" if path.lower().endswith(_COMPRESSED) else
                   "empty file (no structures)" if os.path.getsize(path) == 0 else None)
        if problem:
            raise file_error(path, None, problem)
        self.path, self.name = path, path
        self.energy_key, self.forces_key = energy_key, forces_key
        self._stamp = self._stat()
        self.offsets = _scan_frames(path)

    def _stat(self) -> tuple[int, int]:
        return os.stat(self.path).st_size, os.stat(self.path).st_mtime_ns

    def read(self, frames: np.ndarray) -> list:
        if self._stat() != self._stamp:
            raise file_error(self.path, None, "changed since it was scanned: load it again")
        out = []
        with open(self.path, "rb") as fh:
            for frame in (int(f) for f in frames):
                start, stop = int(self.offsets[frame]), int(self.offsets[frame + 1])
                fh.seek(start)
                try:
                    atoms = self._parse(fh.read(stop - start), frame, start)
                    out.append(_attach_reference(atoms, self.energy_key, self.forces_key,
                                                 frame, (self.path, frame)))
                except InputFileError as exc:
                    out.append(exc)
        return out

    def _parse(self, raw: bytes, frame: int, start: int) -> ase.Atoms:
        path = self.path
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise file_error(path, frame, "binary or undecodable file, not UTF-8 text: byte "
                                          f"0x{raw[exc.start]:02x} at offset {start + exc.start}"
                             ) from None
        try:
            atoms = ase.io.read(io.StringIO(text), format="extxyz", index=0)
        except Exception as exc:
            problem, key = _frame_problem(exc)
            if key is None and "non-numeric" in problem:
                bad = _bad_column(path, frame)
                if bad is not None:
                    key, problem = bad[0], f"atom {bad[1]}: non-numeric value {bad[2]!r}"
            raise file_error(path, frame, problem, key=key) from exc
        if not np.all(np.isfinite(atoms.positions)):
            bad_atoms = np.where(~np.all(np.isfinite(atoms.positions), axis=1))[0]
            raise file_error(path, frame, "non-finite (NaN/inf) positions for atoms "
                             f"{bad_atoms.tolist()}", key="positions")
        if np.any(atoms.pbc) and not np.all(np.isfinite(np.asarray(atoms.cell))):
            raise file_error(path, frame, "non-finite cell", key="Lattice")
        return atoms


# ---------------------------------------------------------------- database
class DatabaseDataset(StreamedDataset):
    """The structures of an ASE database, read in blocks of rows.

    Parameters
    ----------
    url_or_path
        An SQLite ASE database (``.db`` file) or a PostgreSQL URL
        ``postgresql://user:password@host:port/dbname`` (password never shown).
    query
        An ``ase.db`` selection, e.g. ``"natoms<50,config=md"``; None: all rows.
    exclude_marked
        Skip rows whose key-value pairs hold this key (e.g. ``"selected"``).
    energy_key, forces_key
        Reference energy (eV) and forces (eV/Å): the row's own ``energy`` /
        ``forces`` by default; another ``energy_key`` is read from the row's
        key-value pairs, another ``forces_key`` from its ``data``.
    block_size
        Rows read and held at a time.

    Notes
    -----
    The matching row ids are read once, in increasing order (:attr:`ids`).
    Each structure gets the row's key-value pairs in ``atoms.info``. Write
    (:meth:`mark`, :meth:`write_predictions`) from one process only (rank 0).

    Raises
    ------
    FileNotFoundError
        A path that does not exist.
    InputFileError
        Not an ASE database, a bad query, a server that cannot be reached.
    """

    def __init__(self, url_or_path, *, query: Optional[str] = None,
                 exclude_marked: Optional[str] = None, energy_key: str = "energy",
                 forces_key: str = "forces", block_size: int = BLOCK_SIZE):
        reader = _DatabaseReader(url_or_path, energy_key, forces_key)
        ids = reader.scan(query, exclude_marked)
        super().__init__(reader, ids, block_size=block_size)

    def __repr__(self) -> str:
        query = f", query={self._reader.query!r}" if self._reader.query else ""
        return f"DatabaseDataset({self._reader.name!r}, {len(self)} rows{query})"

    url = property(lambda self: self._reader.name, doc="The database path or URL (password hidden).")

    @property
    def ids(self) -> np.ndarray:
        """(n,) int64 database row id of each structure, in dataset order."""
        return self._keys.copy()

    def mark(self, positions, **key_value_pairs) -> np.ndarray:
        """Write key-value pairs to the rows at ``positions``, in one transaction.

        A value that is a list or array gives one value per position
        (e.g. ``selection_score=scores``); any other value goes to every row.
        Values must be numbers, booleans or strings (``ase.db`` rules).
        Returns the (k,) row ids written.
        """
        ids = self._keys[self._positions(positions)]
        if not key_value_pairs:
            raise ValueError("mark needs at least one key=value pair")
        columns = {key: np.asarray(value).tolist() if isinstance(value, (list, tuple, np.ndarray))
                   else [_plain(value)] * len(ids) for key, value in key_value_pairs.items()}
        for key, values in columns.items():
            if len(values) != len(ids):
                raise ValueError(f"mark: {key!r} has {len(values)} values for {len(ids)} rows")
        self._reader.write(ids, [({k: v[j] for k, v in columns.items()}, None)
                                 for j in range(len(ids))])
        return ids

    def write_predictions(self, positions, prediction_columns) -> np.ndarray:
        """Store predictions on the rows at ``positions``, in one transaction.

        ``mlipuq_energy`` and ``mlipuq_energy_std`` (eV) become key-value pairs
        (``query="mlipuq_energy_std>0.1"`` finds them); per-atom
        ``mlipuq_forces`` and ``mlipuq_forces_std`` (eV/Å, (n_atoms, 3)) and
        committee energies go to the row's ``data``. ``prediction_columns`` is
        a :class:`~mlipuq.prediction.Prediction` of exactly these ``k``
        structures, in order, or ``k`` pairs ``(info, arrays)`` as
        ``Prediction.columns`` returns them. Returns the (k,) row ids written.
        """
        ids = self._keys[self._positions(positions)]
        if hasattr(prediction_columns, "n_structures"):  # a Prediction
            prediction_columns = map(prediction_columns.columns,
                                     range(prediction_columns.n_structures))
        pairs = list(prediction_columns)
        if len(pairs) != len(ids):
            raise ValueError(f"write_predictions: {len(pairs)} predictions for {len(ids)} "
                             "positions")
        updates = []
        for info, arrays in pairs:
            pairs_kv = {k: _plain(v) for k, v in info.items() if np.ndim(v) == 0}
            data = {k: np.asarray(v, dtype=np.float64) for k, v in info.items() if np.ndim(v)}
            data.update({k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})
            updates.append((pairs_kv, data))
        self._reader.write(ids, updates)
        return ids


def _plain(value):
    """A numpy scalar as the Python number (or bool) ``ase.db`` stores."""
    return value.item() if isinstance(value, np.generic) else value


def _redact(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    return re.sub(r"([a-z]+://[^:/@\s]*):[^@\s]*@", r"\1:***@", url)


def _runs(ids: np.ndarray, gap: int = 16) -> list[tuple[int, int]]:
    """Sorted unique ``ids`` as ``(first, last)`` runs with gaps of at most ``gap``."""
    if len(ids) == 0:
        return []
    cuts = np.flatnonzero(np.diff(ids) > gap) + 1
    return [(int(p[0]), int(p[-1])) for p in np.split(ids, cuts)]


class _DatabaseReader:
    def __init__(self, source, energy_key: str, forces_key: str):
        target = os.fspath(source)
        self.energy_key, self.forces_key = energy_key, forces_key
        self.query = None
        self.include_data = forces_key != "forces"
        if target.startswith(_URL_PREFIXES):
            self.name, kind = _redact(target), "postgresql"
        else:
            self.name, kind = target, "db"
            _check_sqlite(target)
        try:
            import ase.db

            self.db = ase.db.connect(target, type=kind, serial=True)
        except ImportError as exc:
            raise ImportError(f"{self.name}: reading a PostgreSQL database needs "
                              f"`pip install ase-db-backends psycopg2-binary` ({exc})") from None

    def _connection(self):
        """A context holding one connection open (SQLite), else nothing."""
        if getattr(self.db, "connection", "absent") is None:  # ase's SQLite backend
            return self.db
        return contextlib.nullcontext()

    def _error(self, exc: BaseException, what: str) -> InputFileError:
        text = _redact(" ".join(str(exc).split()) or type(exc).__name__)
        return InputFileError(f"{self.name}: {what} ({type(exc).__name__}: {text})",
                              file=self.name)

    def scan(self, query: Optional[str], exclude: Optional[str]) -> np.ndarray:
        """(n,) int64 ids of the rows matching ``query`` and not holding ``exclude``."""
        expressions = _parse_query(self.name, query)
        if exclude is not None and (not isinstance(exclude, str) or not _KEY.fullmatch(exclude)
                                    or exclude.startswith("-")):
            raise InputFileError(f"{self.name}: exclude_marked must be a key name, "
                                 f"got {exclude!r}", file=self.name)
        self.query = query
        ids, last = array.array("q"), 0
        columns = ["id", "key_value_pairs"] if exclude else ["id"]
        try:
            with self._connection():
                while True:
                    rows = list(self.db.select(expressions + [("id", ">", last)], sort="id",
                                               limit=SCAN_PAGE, include_data=False,
                                               columns=columns))
                    ids.extend(row.id for row in rows
                               if exclude is None or exclude not in row.key_value_pairs)
                    if len(rows) < SCAN_PAGE:
                        break
                    last = rows[-1].id
        except Exception as exc:
            raise self._error(exc, f"cannot select rows with query {query!r}" if query
                              else "cannot read the database") from None
        return np.frombuffer(ids, dtype=np.int64).copy() if len(ids) else np.zeros(0, np.int64)

    def read(self, ids: np.ndarray) -> list:
        wanted = np.unique(ids)
        members, rows = set(int(i) for i in wanted), {}
        try:
            # one connection for the block (ASE opens one per row otherwise, and the
            # process's memory then creeps up with the rows read)
            with self._connection():
                for lo, hi in _runs(wanted):
                    for row in self.db.select([("id", ">=", lo), ("id", "<=", hi)],
                                              include_data=self.include_data):
                        if row.id in members:
                            rows[row.id] = row
        except Exception as exc:
            raise self._error(exc, f"cannot read rows {int(wanted[0])} to {int(wanted[-1])}") \
                from None
        return [self._atoms(rows.get(int(i)), int(i)) for i in ids]

    def _atoms(self, row, row_id: int):
        """The structure of ``row``, or the :class:`InputFileError` it raises."""
        if row is None:
            return InputFileError(f"{self.name}, row id {row_id}: the row no longer exists",
                                  file=self.name, frame=row_id)
        atoms = row.toatoms()
        atoms.info.update(row.key_value_pairs)
        if self.include_data and self.forces_key in (row.get("data") or {}):
            atoms.arrays[self.forces_key] = np.asarray(row.data[self.forces_key])
        try:
            return _attach_reference(atoms, self.energy_key, self.forces_key, row_id,
                                     (self.name, row_id))
        except InputFileError as exc:
            message = str(exc).replace(f"{self.name}, frame {row_id}",
                                       f"{self.name}, row id {row_id}", 1)
            return InputFileError(message, file=exc.file, frame=exc.frame, key=exc.key)

    def write(self, ids: np.ndarray, updates: list) -> None:
        """``db.update(id, data=data, **pairs)`` for each ``(pairs, data)``, one transaction;
        per-atom arrays in ``data`` must have the row's number of atoms."""
        try:
            with self.db as db:
                for row_id, (pairs, data) in zip(ids, updates):
                    if data:
                        natoms = db.get(id=int(row_id)).natoms
                        for key, value in data.items():
                            if value.ndim == 2 and len(value) != natoms:
                                raise ValueError(f"row id {int(row_id)}: {key} has "
                                                 f"{len(value)} atoms, the row {natoms}")
                    db.update(int(row_id), data=data or None, **pairs)
        except (ValueError, KeyError) as exc:  # KeyError: a row deleted meanwhile
            raise InputFileError(f"{self.name}: nothing written: {exc}", file=self.name) \
                from None
        except Exception as exc:
            raise self._error(exc, "nothing written") from None


def _parse_query(name: str, query) -> list:
    """The expressions of an ``ase.db`` query, checked (keys must be plain names)."""
    from ase.db.core import parse_selection

    if query is None or (isinstance(query, str) and not query.strip()):
        return []
    if not isinstance(query, str):
        raise TypeError(f"query must be a string like 'natoms<50', got {type(query).__name__}")
    expressions = [w.strip() for w in query.split(",") if w.strip()]
    try:
        keys, comparisons = parse_selection(expressions)
    except Exception as exc:
        raise InputFileError(f"{name}: bad query {query!r} ({exc})", file=name) from None
    for key in list(keys) + [c[0] for c in comparisons]:
        if not isinstance(key, (int, np.integer)) and not _KEY.fullmatch(str(key)):
            raise InputFileError(f"{name}: bad query {query!r}: {key!r} is not a key name",
                                 file=name)
    return expressions


def _check_sqlite(path: str) -> None:
    """``FileNotFoundError`` / :class:`InputFileError` unless ``path`` is an SQLite
    file holding ASE's tables (checked read-only, before ASE opens it)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise InputFileError(f"{path}: is a directory, not a database", file=path)
    with open(path, "rb") as fh:
        header = fh.read(16)
    if header != b"SQLite format 3\x00":
        what = "empty file" if not header else "not an SQLite file"
        raise InputFileError(f"{path}: not an ASE database ({what})", file=path)
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as con:
            found = con.execute("SELECT name FROM sqlite_master WHERE type='table' AND "
                                "name='systems'").fetchone()
    except sqlite3.Error as exc:
        raise InputFileError(f"{path}: not an ASE database ({exc})", file=path) from None
    if found is None:
        raise InputFileError(f"{path}: an SQLite file but not an ASE database (no 'systems' "
                             "table)", file=path)
