"""Datasets of atomic structures, neighbour lists and batching.

``load`` turns an extxyz file (anything ``ase.io.read`` reads), a list of
``ase.Atoms`` or one ``Atoms`` into an :class:`AtomsDataset`. Reference
energies (eV) and forces (eV/Å) live on each structure as an ASE
``SinglePointCalculator``, so ``atoms.get_potential_energy()`` and
``atoms.get_forces()`` return them, as ASE users expect.

Files are read frame by frame by :mod:`mlipuq.data_io`: a file that cannot
be used (empty, binary, truncated, malformed, unknown element, a reference
value that is not a finite number of the right shape) raises
:class:`~mlipuq.errors.InputFileError` naming the file, the 0-based frame and
the key.

``collate`` (from :mod:`mlipuq.batching`, re-exported here) turns structures
into a :class:`Batch` of torch tensors with vesin neighbour lists; the input
checks, including the resource guard against cells far smaller than the
cutoff, live in :mod:`mlipuq.checks`.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence, Union

import ase
import ase.io
import numpy as np
from ase.data import chemical_symbols

from mlipuq.batching import (  # noqa: F401  (re-exported: part of mlipuq.data's API)
    Batch,
    Graph,
    collate,
    collate_graphs,
    iter_batches,
    neighbour_list,
    species_index_table,
    to_graph,
)
from mlipuq.checks import (  # noqa: F401  (re-exported)
    MAX_NEIGHBOURS,
    _as_species,
    _check_reference,
    _reference,
    _stale,
    check_resources,
    check_structure,
    describe,
    reference_problem,
    set_origin,
)
from mlipuq.data_io import _selection, file_error, read_frames, read_structures  # noqa: F401  (re-exported)
from mlipuq.errors import InvalidStructureError, MissingReferenceError

from mlipuq.atoms_dataset import (  # noqa: F401  (re-exported: part of mlipuq.data's API)
    PRED_ENERGY,
    PRED_ENERGY_MEMBERS,
    PRED_ENERGY_STD,
    PRED_FORCES,
    PRED_FORCES_STD,
    AtomsDataset,
    Source,
    _attach_reference,
    _raw_references,
    concatenate,
)


def load(
    source: Source,
    *,
    energy_key: str = "energy",
    forces_key: str = "forces",
    index: Union[str, int, slice] = ":",
    lazy: bool = False,
    query: Optional[str] = None,
    exclude_marked: Optional[str] = None,
) -> AtomsDataset:
    """Read structures with their reference energies and forces.

    Parameters
    ----------
    source
        A file path (any format ``ase.io.read`` knows; extxyz is the usual),
        a list of ``ase.Atoms`` or a single ``Atoms``. A path ending in
        ``.db`` or a ``postgresql://user:password@host:port/dbname`` URL is an
        ASE database, streamed (:class:`mlipuq.streaming.DatabaseDataset`).
    energy_key, forces_key
        Where the reference energy (eV, ``atoms.info`` or the calculator) and
        forces (eV/Å, ``atoms.arrays`` or the calculator) are found.
    index
        Which frames of a file (or rows of a database) to read (ASE syntax,
        e.g. ``":100"``).
    lazy
        With an (ext)xyz file: scan it once and read frames on demand, one
        block at a time (:class:`mlipuq.streaming.LazyExtxyz`). Ignored for
        other formats, which are read whole.
    query, exclude_marked
        Databases only: an ``ase.db`` selection (e.g. ``"natoms<50"``), and a
        key whose rows are skipped (e.g. ``"selected"``).

    Returns
    -------
    AtomsDataset
        Copies of the structures; the originals are left untouched. Structures
        without reference data are kept (``has_reference`` is False for them).
        A database or ``lazy=True`` gives a
        :class:`~mlipuq.streaming.StreamedDataset` (an ``AtomsDataset`` read
        in blocks; slices and subsets are lazy views).

    Raises
    ------
    FileNotFoundError
        ``source`` is a path that does not exist.
    InputFileError
        (a ``ValueError``) the file cannot be used: empty, binary or not
        UTF-8, an unknown format, a truncated or malformed frame, an unknown
        element symbol, non-finite positions, or a reference energy, forces or
        stress that is not numeric, is a boolean, has the wrong shape or is
        NaN/inf. The message names the file, the 0-based frame and the key;
        the same are the ``file``, ``frame`` and ``key`` attributes.
    InvalidStructureError
        The same reference-value problems in in-memory ``Atoms``, naming the
        structure index.
    """
    streamed = _open_streamed(source, lazy, query, exclude_marked, energy_key, forces_key)
    if streamed is not None:
        return streamed if index == ":" else streamed[_selection(index)]
    origins = None
    if isinstance(source, AtomsDataset):
        structures = list(source)
    elif isinstance(source, ase.Atoms):
        structures = [source]
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {path}")
        frames = read_frames(path, index)
        structures = [atoms for _, atoms in frames]
        origins = [(path, frame) for frame, _ in frames]
    else:
        try:
            structures = list(source)
        except TypeError:
            raise TypeError(
                f"cannot load structures from {type(source).__name__}: expected a path, "
                "an ase.Atoms or a list of them"
            ) from None
    for k, atoms in enumerate(structures):
        if not isinstance(atoms, ase.Atoms):
            raise TypeError(f"structure {k}: expected ase.Atoms, got {type(atoms).__name__}")
    return AtomsDataset([  # _attach_reference checks every reference value
        _attach_reference(a, energy_key, forces_key, k, None if origins is None else origins[k])
        for k, a in enumerate(structures)
    ])


# ------------------------------------------------------------ species offsets
def fit_atomic_energies(
    dataset: AtomsDataset, species: Optional[Iterable[Union[int, str]]] = None
) -> dict[int, float]:
    """Per-species reference energies (eV) fitted by least squares.

    Solves ``min_e sum_s (E_s - sum_Z n_sZ e_Z)^2`` over structures with a
    reference energy. Species that never appear get 0. Ill-conditioned cases
    (e.g. every structure has the same composition) get the minimum-norm
    solution, which still reproduces the mean energy.
    """
    zs = _as_species(species) if species is not None else dataset.species
    mask = dataset.has_reference
    if not mask.any():
        raise MissingReferenceError("no structure has a reference energy to fit atomic energies")
    counts = composition_matrix(dataset[np.flatnonzero(mask)], zs)
    solution, *_ = np.linalg.lstsq(counts, dataset.energies[mask], rcond=None)
    return {z: float(e) for z, e in zip(zs, solution)}


def composition_matrix(dataset: AtomsDataset, species: Sequence[int]) -> np.ndarray:
    """(B, S) float64 count of each species (in ``species`` order) per structure."""
    numbers = [np.asarray(a.numbers) for a in dataset]
    batch = np.repeat(np.arange(len(numbers)), [len(n) for n in numbers])
    flat = np.concatenate(numbers) if numbers else np.zeros(0, dtype=np.int64)
    return composition_counts(flat, batch, len(numbers), species)


def composition_counts(numbers, batch, n_structures: int, species: Sequence[int]) -> np.ndarray:
    """(B, S) float64 species counts from per-atom atomic ``numbers`` (N,) and the
    structure index of each atom ``batch`` (N,), species in ``species`` order."""
    numbers = np.asarray(numbers, dtype=np.int64)
    column = species_index_table(species).numpy()[numbers]
    if (column < 0).any():
        z = int(numbers[np.flatnonzero(column < 0)[0]])
        raise InvalidStructureError(
            f"element {chemical_symbols[z]} is not among the species {list(species)}"
        )
    out = np.zeros((int(n_structures), len(species)))
    np.add.at(out, (np.asarray(batch, dtype=np.int64), column), 1.0)
    return out


def undetermined_offsets(counts: np.ndarray, *, rtol: float = 1e-10) -> np.ndarray:
    """(S, k) orthonormal basis of the per-species offset combinations that the
    training compositions ``counts`` (B, S) do not determine (their null space).

    Shifting the per-species reference energies along these directions leaves
    every training energy unchanged; k = 0 when the compositions determine all
    offsets (e.g. several stoichiometries, or one species).
    """
    counts = np.asarray(counts, dtype=np.float64)
    _, singular, vt = np.linalg.svd(counts, full_matrices=True)
    rank = int(np.sum(singular > rtol * (singular[0] if singular.size else 0.0)))
    return vt[rank:].T.copy()


def describe_offsets(basis: np.ndarray, species: Sequence[int]) -> str:
    """Readable combinations, e.g. ``"+0.89 C -0.45 O"`` for each basis column."""
    out = []
    for col in np.asarray(basis).T:
        terms = [f"{v:+.2f} {chemical_symbols[int(z)]}" for v, z in zip(col, species)
                 if abs(v) > 1e-3]
        out.append(" ".join(terms))
    return "; ".join(out)


def atomic_energies_from(source: Source) -> dict[int, float]:
    """Per-species energies read from isolated-atom calculations (one atom each)."""
    out = {}
    for k, atoms in enumerate(load(source)):
        if len(atoms) != 1:
            raise InvalidStructureError(
                f"structure {k}: isolated-atom reference must hold one atom, has {len(atoms)}"
            )
        energy = _reference(atoms, "energy")
        if energy is None:
            raise MissingReferenceError(f"structure {k}: no reference energy")
        out[int(atoms.numbers[0])] = float(energy)
    return out


def _open_streamed(source, lazy, query, exclude_marked, energy_key, forces_key):
    """A :mod:`mlipuq.streaming` dataset for a database or a lazy extxyz, else None."""
    from mlipuq import streaming  # imported on use: `import mlipuq` stays light

    path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    is_db = isinstance(path, str) and (
        path.startswith(("postgresql://", "postgres://")) or path.lower().endswith(".db"))
    if not is_db and (query is not None or exclude_marked is not None):
        raise ValueError("query= and exclude_marked= apply to a database source (a .db file "
                         f"or a postgresql:// URL), not to {path or type(source).__name__!r}")
    if not is_db and not (lazy and isinstance(path, str) and _is_xyz(path)):
        return None
    keys = {"energy_key": energy_key, "forces_key": forces_key}
    if is_db:
        return streaming.DatabaseDataset(path, query=query, exclude_marked=exclude_marked, **keys)
    return streaming.LazyExtxyz(path, **keys)


def _is_xyz(path: str) -> bool:
    """True for an existing (ext)xyz file (by extension, else by ASE's guess)."""
    if path.lower().endswith((".xyz", ".extxyz")):
        return True
    if not os.path.isfile(path):
        return False
    try:
        from ase.io.formats import filetype

        return filetype(path, guess=False) in ("extxyz", "xyz")
    except Exception:
        return False


def as_dataset(x: Union[Source, AtomsDataset]) -> AtomsDataset:
    """An ``AtomsDataset`` from a dataset, a list of Atoms, one Atoms or a path."""
    return x if isinstance(x, AtomsDataset) else load(x)
