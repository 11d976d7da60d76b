"""The in-memory data set of mlipuq: :class:`AtomsDataset`, and how references attach.

Reference energies (eV) and forces (eV/Å) live on each structure as an ASE
``SinglePointCalculator`` (:func:`_attach_reference` checks and attaches
them). :mod:`mlipuq.data` re-exports everything here and adds ``load``;
:mod:`mlipuq.streaming` subclasses :class:`AtomsDataset` for pools read on
demand.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator, Optional, Sequence, Union

import ase
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from mlipuq import schema
from mlipuq.checks import (_as_species, _check_reference, _current_results, _reference,
                           check_structure, describe, reference_problem, set_origin)
from mlipuq.checks import origin as origin_of
from mlipuq.data_io import file_error
from mlipuq.errors import InvalidStructureError, MissingReferenceError

#: extxyz column names used by :meth:`AtomsDataset.write` for predictions.
PRED_ENERGY = schema.ENERGY
PRED_ENERGY_STD = schema.ENERGY_STD
PRED_FORCES = schema.FORCES
PRED_FORCES_STD = schema.FORCES_STD
PRED_ENERGY_MEMBERS = schema.ENERGY_MEMBERS

Source = Union[str, os.PathLike, ase.Atoms, Iterable[ase.Atoms]]


# -------------------------------------------------------------------- dataset
class AtomsDataset(Sequence):
    """An indexable collection of ``ase.Atoms`` with optional reference data.

    Indexing with an integer returns the stored ``Atoms`` (reference energy and
    forces through ``get_potential_energy()`` / ``get_forces()``); indexing
    with a slice or an index array returns a new ``AtomsDataset`` sharing the
    same structures.
    """

    def __init__(self, structures: Sequence[ase.Atoms]):
        self._structures = list(structures)

    # sequence protocol
    def __len__(self) -> int:
        return len(self._structures)

    def __iter__(self) -> Iterator[ase.Atoms]:
        return iter(self._structures)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self._structures[index]
        if isinstance(index, slice):
            return AtomsDataset(self._structures[index])
        return self.subset(index)

    def __add__(self, other: "AtomsDataset") -> "AtomsDataset":
        return concatenate([self, other])

    def __repr__(self) -> str:
        n_atoms = sum(len(a) for a in self._structures)
        return f"AtomsDataset({len(self)} structures, {n_atoms} atoms)"

    # views
    def shard(self, rank: Optional[int] = None, world_size: Optional[int] = None) -> "AtomsDataset":
        """This rank's contiguous share: the structures
        ``[start, stop) = mlipuq.distributed.shard_bounds(len(self), rank, world_size)``
        (defaults: this process's rank and world size)."""
        from mlipuq.distributed import shard_bounds

        start, stop = shard_bounds(len(self), rank, world_size)
        return self[start:stop]

    def subset(self, indices: Iterable[int]) -> "AtomsDataset":
        """A dataset holding the structures at ``indices`` (in that order)."""
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"boolean mask has shape {idx.shape}, expected ({len(self)},)")
            idx = np.where(idx)[0]
        return AtomsDataset([self._structures[int(i)] for i in idx])

    def split(self, fractions: Sequence[float], seed: int = 0) -> list["AtomsDataset"]:
        """Shuffle with ``seed`` and cut into one dataset per fraction.

        Fractions must be positive and sum to at most 1; a sum of 1 uses every
        structure (rounding remainders go to the last part). The indices of
        each part are :func:`split_indices` ``(len(self), fractions, seed)``.
        """
        return [self.subset(part) for part in split_indices(len(self), fractions, seed)]

    # reference data
    @property
    def has_reference(self) -> np.ndarray:
        """(n,) bool: which structures carry a reference energy."""
        return np.array([_reference(a, "energy") is not None for a in self._structures], dtype=bool)

    @property
    def has_forces(self) -> np.ndarray:
        """(n,) bool: which structures carry reference forces."""
        return np.array([_reference(a, "forces") is not None for a in self._structures], dtype=bool)

    @property
    def energies(self) -> np.ndarray:
        """(n,) reference energies in eV (NaN where absent)."""
        out = np.full(len(self), np.nan)
        for k, a in enumerate(self._structures):
            e = _reference(a, "energy")
            if e is not None:
                out[k] = float(e)
        return out

    @property
    def forces(self) -> np.ndarray:
        """(N, 3) reference forces of all atoms in eV/Å (NaN where absent)."""
        chunks = []
        for a in self._structures:
            f = _reference(a, "forces")
            chunks.append(f if f is not None else np.full((len(a), 3), np.nan))
        return np.concatenate(chunks) if chunks else np.zeros((0, 3))

    @property
    def n_atoms(self) -> np.ndarray:
        return np.array([len(a) for a in self._structures], dtype=np.int64)

    @property
    def species(self) -> list[int]:
        """Sorted atomic numbers present in the dataset."""
        return sorted(set(int(z) for a in self._structures for z in a.numbers))

    def validate(
        self,
        species: Optional[Iterable[Union[int, str]]] = None,
        *,
        require_energy: bool = False,
        require_forces: bool = False,
        offset: int = 0,
    ) -> "AtomsDataset":
        """Check every structure; raise a ``ValueError`` naming the first bad one.

        ``require_energy`` / ``require_forces`` demand reference data (training).
        ``offset``: index of this dataset's first structure in the caller's data (a
        shard's start), for the messages. Returns ``self``.
        """
        if len(self) == 0:
            raise InvalidStructureError("the dataset holds no structures")
        known = None if species is None else _as_species(species)
        for k, atoms in enumerate(self._structures, start=int(offset)):
            check_structure(atoms, k, known)
            results = _current_results(atoms)
            _check_reference(atoms, k, results)
            if require_energy and _reference(atoms, "energy", results) is None:
                raise MissingReferenceError(f"structure {k}: no reference energy")
            if require_forces and _reference(atoms, "forces", results) is None:
                raise MissingReferenceError(f"structure {k}: no reference forces")
        return self

    # output
    def write(
        self,
        path: Union[str, os.PathLike],
        prediction=None,
        *,
        overwrite: bool = False,
    ) -> None:
        """Write the structures as extended XYZ, with predictions if given.

        Reference data are written as the standard ``energy`` / ``forces``
        columns. A :class:`~mlipuq.prediction.Prediction` adds, per structure,
        ``mlipuq_energy`` and ``mlipuq_energy_std`` (eV) and, per atom,
        ``mlipuq_forces`` and ``mlipuq_forces_std`` (eV/Å, per component);
        committee members add ``mlipuq_energy_members``. Refuses to overwrite
        an existing file unless ``overwrite=True``.
        """
        path = os.fspath(path)
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        if prediction is not None:
            if prediction.energy.shape != (len(self),) or prediction.forces.shape[0] != int(
                self.n_atoms.sum()
            ):
                raise ValueError(
                    f"prediction covers {prediction.energy.shape[0]} structures / "
                    f"{prediction.forces.shape[0]} atoms, the dataset "
                    f"{len(self)} / {int(self.n_atoms.sum())}"
                )
        out = []
        for k, atoms in enumerate(self._structures):
            a = atoms.copy()
            for key in (PRED_ENERGY, PRED_ENERGY_STD, PRED_ENERGY_MEMBERS, schema.STRESS,
                        schema.STRESS_STD):
                a.info.pop(key, None)
            for key in (PRED_FORCES, PRED_FORCES_STD, schema.FORCES_STD_NORM,
                        schema.ATOM_ENERGY_STD):
                if key in a.arrays:
                    del a.arrays[key]
            if atoms.calc is not None:
                results = {
                    key: atoms.calc.results[key]
                    for key in ("energy", "forces", "stress")
                    if key in atoms.calc.results
                }
                a.calc = SinglePointCalculator(a, **results)
            if prediction is not None:
                info, arrays = prediction.columns(k)
                a.info.update(info)
                a.arrays.update(arrays)
            out.append(a)
        ase.io.write(path, out, format="extxyz")


def split_indices(n: int, fractions: Sequence[float], seed: int = 0) -> list[np.ndarray]:
    """The indices of :meth:`AtomsDataset.split`'s parts of ``n`` structures."""
    fractions = [float(f) for f in fractions]
    if not fractions or any(f <= 0 for f in fractions):
        raise ValueError(f"fractions must be positive, got {fractions}")
    total = sum(fractions)
    if total > 1 + 1e-9:
        raise ValueError(f"fractions sum to {total} > 1")
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.floor(np.cumsum(fractions) * n + 1e-9).astype(int)
    if abs(total - 1) < 1e-9:
        bounds[-1] = n
    parts, start = [], 0
    for stop in bounds:
        parts.append(order[start:stop])
        start = stop
    return parts


def concatenate(datasets: Sequence[AtomsDataset]) -> AtomsDataset:
    """Join datasets (structures are shared, not copied)."""
    structures: list[ase.Atoms] = []
    for d in datasets:
        structures.extend(d)
    return AtomsDataset(structures)


def _raw_references(atoms: ase.Atoms, energy_key: str, forces_key: str) -> dict:
    """Reference values of ``atoms`` as found (unconverted), by result name,
    with the key each came from: ``{"energy": (key, value), ...}``."""
    results = _current_results(atoms)
    found = {name: (name, results[name]) for name in ("energy", "forces", "stress")
             if name in results}
    if energy_key != "energy":
        found.pop("energy", None)
    if forces_key != "forces":
        found.pop("forces", None)
    if energy_key in atoms.info:
        found["energy"] = (energy_key, atoms.info[energy_key])
    if forces_key in atoms.arrays:
        found["forces"] = (forces_key, atoms.arrays[forces_key])
    return found


def _attach_reference(
    atoms: ase.Atoms, energy_key: str, forces_key: str, index: int, origin=None
) -> ase.Atoms:
    """Copy of ``atoms`` whose calculator holds the reference energy and forces.

    Every value is checked first (numeric, not boolean, right shape, finite):
    a bad one raises :class:`InputFileError` naming file, frame and key when
    ``origin = (file, frame)`` is given, else :class:`InvalidStructureError`.
    """
    found = _raw_references(atoms, energy_key, forces_key)
    for name, (key, value) in found.items():
        problem = reference_problem(value, name, len(atoms))
        if problem is not None:
            if origin is None:
                raise InvalidStructureError(f"{describe(atoms, index)}: {problem} (key {key!r})")
            raise file_error(origin[0], origin[1], problem, key=key)
    origin = origin or origin_of(atoms)  # a structure loaded before keeps its file and frame
    results = {name: np.array(value, dtype=np.float64) for name, (_, value) in found.items()}
    if "energy" in results:
        results["energy"] = float(results["energy"].reshape(()))
    new = atoms.copy()  # Atoms.copy drops the calculator
    new.info.pop(energy_key, None)
    if forces_key in new.arrays:
        del new.arrays[forces_key]
    if "energy" in results:
        results["free_energy"] = results["energy"]
    if results:
        new.calc = SinglePointCalculator(new, **results)
    if origin is not None:
        set_origin(new, *origin)
    return new


