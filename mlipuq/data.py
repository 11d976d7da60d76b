"""Datasets of atomic structures, neighbour lists and batching.

``load`` turns an extxyz file (anything ``ase.io.read`` reads), a list of
``ase.Atoms`` or one ``Atoms`` into an :class:`AtomsDataset`. Reference
energies (eV) and forces (eV/Å) live on each structure as an ASE
``SinglePointCalculator``, so ``atoms.get_potential_energy()`` and
``atoms.get_forces()`` return them, as ASE users expect.

``collate`` turns structures into a :class:`Batch` of torch tensors with a
full neighbour list (both i→j and j→i) from vesin, including the integer cell
shifts of periodic images: the vector from atom i to neighbour j is
``r_j - r_i + shift @ cell``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Iterable, Iterator, Optional, Sequence, Union

import ase
import ase.io
import numpy as np
import torch
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers, chemical_symbols

from mlipuq.errors import InvalidStructureError, MissingReferenceError

#: extxyz column names used by :meth:`AtomsDataset.write` for predictions.
PRED_ENERGY = "mlipuq_energy"
PRED_ENERGY_STD = "mlipuq_energy_std"
PRED_FORCES = "mlipuq_forces"
PRED_FORCES_STD = "mlipuq_forces_std"
PRED_ENERGY_MEMBERS = "mlipuq_energy_members"

Source = Union[str, os.PathLike, ase.Atoms, Iterable[ase.Atoms]]


# --------------------------------------------------------------------- checks
def check_structure(atoms: ase.Atoms, index: int, species: Optional[Sequence[int]] = None) -> None:
    """Raise a ``ValueError`` naming structure ``index`` if it cannot be used.

    Checks: at least one atom, finite positions, array shapes, a non-degenerate
    cell under periodic boundary conditions, and (if ``species`` is given) that
    every element is known to the model.
    """
    if not isinstance(atoms, ase.Atoms):
        raise TypeError(f"structure {index}: expected ase.Atoms, got {type(atoms).__name__}")
    n = len(atoms)
    if n == 0:
        raise InvalidStructureError(f"structure {index}: empty structure (no atoms)")
    positions = atoms.positions
    if positions.shape != (n, 3):
        raise InvalidStructureError(
            f"structure {index}: positions have shape {positions.shape}, expected ({n}, 3)"
        )
    if not np.all(np.isfinite(positions)):
        bad = np.where(~np.all(np.isfinite(positions), axis=1))[0]
        raise InvalidStructureError(
            f"structure {index}: non-finite (NaN/inf) positions for atoms {bad.tolist()}"
        )
    if np.any(atoms.pbc):
        cell = np.asarray(atoms.cell)
        if not np.all(np.isfinite(cell)):
            raise InvalidStructureError(f"structure {index}: non-finite cell")
        for axis in np.where(atoms.pbc)[0]:
            if np.linalg.norm(cell[axis]) < 1e-8:
                raise InvalidStructureError(
                    f"structure {index}: periodic along axis {axis} but the cell vector is zero"
                )
        if atoms.pbc.all() and abs(np.linalg.det(cell)) < 1e-8:
            raise InvalidStructureError(
                f"structure {index}: periodic cell has zero volume"
            )
        periodic = cell[np.asarray(atoms.pbc, dtype=bool)]
        gram = periodic @ periodic.T
        if abs(np.linalg.det(gram)) < 1e-8 * max(float(np.max(np.abs(gram))), 1.0) ** len(gram):
            raise InvalidStructureError(
                f"structure {index}: periodic cell vectors are linearly dependent (zero volume)"
            )
    if species is not None:
        known = set(int(z) for z in species)
        unknown = sorted(set(int(z) for z in atoms.numbers) - known)
        if unknown:
            names = [chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z) for z in unknown]
            allowed = [chemical_symbols[z] for z in sorted(known)]
            raise InvalidStructureError(
                f"structure {index}: element(s) {names} unknown to the model (it knows {allowed})"
            )


def _reference(atoms: ase.Atoms, name: str):
    calc = atoms.calc
    if calc is None or _stale(atoms, calc):
        return None
    value = calc.results.get(name)
    return None if value is None else np.asarray(value, dtype=np.float64)


def _stale(atoms: ase.Atoms, calc) -> bool:
    """True when the calculator's results belong to another state of ``atoms``
    (the structure was edited after they were computed)."""
    if getattr(calc, "atoms", None) is None or not hasattr(calc, "check_state"):
        return False
    try:
        return bool(calc.check_state(atoms))
    except Exception:  # a calculator that cannot compare states: trust its results
        return False


def _check_reference(atoms: ase.Atoms, index: int) -> None:
    energy = _reference(atoms, "energy")
    if energy is not None and not np.all(np.isfinite(energy)):
        raise InvalidStructureError(f"structure {index}: reference energy is not finite")
    forces = _reference(atoms, "forces")
    if forces is not None:
        if forces.shape != (len(atoms), 3):
            raise InvalidStructureError(
                f"structure {index}: reference forces have shape {forces.shape}, "
                f"expected ({len(atoms)}, 3)"
            )
        if not np.all(np.isfinite(forces)):
            raise InvalidStructureError(f"structure {index}: reference forces are not finite")


# -------------------------------------------------------------------- dataset
def _as_species(species: Iterable[Union[int, str]]) -> list[int]:
    out = []
    for s in species:
        if isinstance(s, str):
            if s not in atomic_numbers:
                raise ValueError(f"unknown element symbol {s!r}")
            out.append(atomic_numbers[s])
        else:
            out.append(int(s))
    return sorted(set(out))


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
        structure (rounding remainders go to the last part).
        """
        fractions = [float(f) for f in fractions]
        if not fractions or any(f <= 0 for f in fractions):
            raise ValueError(f"fractions must be positive, got {fractions}")
        total = sum(fractions)
        if total > 1 + 1e-9:
            raise ValueError(f"fractions sum to {total} > 1")
        order = np.random.default_rng(seed).permutation(len(self))
        bounds = np.floor(np.cumsum(fractions) * len(self) + 1e-9).astype(int)
        if abs(total - 1) < 1e-9:
            bounds[-1] = len(self)
        parts, start = [], 0
        for stop in bounds:
            parts.append(self.subset(order[start:stop]))
            start = stop
        return parts

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
    ) -> "AtomsDataset":
        """Check every structure; raise a ``ValueError`` naming the first bad one.

        ``require_energy`` / ``require_forces`` demand reference data (training).
        Returns ``self``.
        """
        if len(self) == 0:
            raise InvalidStructureError("the dataset holds no structures")
        known = None if species is None else _as_species(species)
        for k, atoms in enumerate(self._structures):
            check_structure(atoms, k, known)
            _check_reference(atoms, k)
            if require_energy and _reference(atoms, "energy") is None:
                raise MissingReferenceError(f"structure {k}: no reference energy")
            if require_forces and _reference(atoms, "forces") is None:
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
        columns. A :class:`~mlipuq.uq.prediction.Prediction` adds, per structure,
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
        offsets = np.concatenate([[0], np.cumsum(self.n_atoms)])
        for k, atoms in enumerate(self._structures):
            a = atoms.copy()
            for key in (PRED_ENERGY, PRED_ENERGY_STD, PRED_ENERGY_MEMBERS):
                a.info.pop(key, None)
            for key in (PRED_FORCES, PRED_FORCES_STD):
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
                s = slice(offsets[k], offsets[k + 1])
                a.info[PRED_ENERGY] = float(prediction.energy[k])
                a.info[PRED_ENERGY_STD] = float(prediction.energy_std[k])
                if prediction.energy_members is not None:
                    a.info[PRED_ENERGY_MEMBERS] = np.asarray(prediction.energy_members[:, k])
                a.arrays[PRED_FORCES] = np.asarray(prediction.forces[s])
                a.arrays[PRED_FORCES_STD] = np.asarray(prediction.forces_std[s])
            out.append(a)
        ase.io.write(path, out, format="extxyz")


def concatenate(datasets: Sequence[AtomsDataset]) -> AtomsDataset:
    """Join datasets (structures are shared, not copied)."""
    structures: list[ase.Atoms] = []
    for d in datasets:
        structures.extend(d)
    return AtomsDataset(structures)


def _attach_reference(atoms: ase.Atoms, energy_key: str, forces_key: str) -> ase.Atoms:
    """Copy of ``atoms`` whose calculator holds the reference energy and forces."""
    results = {}
    calc = atoms.calc
    if calc is not None and getattr(calc, "results", None) and not _stale(atoms, calc):
        for key in ("energy", "forces", "stress"):
            if key in calc.results:
                results[key] = np.array(calc.results[key], dtype=np.float64)
        if energy_key != "energy":
            results.pop("energy", None)
        if forces_key != "forces":
            results.pop("forces", None)
    if energy_key in atoms.info:
        results["energy"] = float(atoms.info[energy_key])
    if forces_key in atoms.arrays:
        results["forces"] = np.array(atoms.arrays[forces_key], dtype=np.float64)
    new = atoms.copy()  # Atoms.copy drops the calculator
    new.info.pop(energy_key, None)
    if forces_key in new.arrays:
        del new.arrays[forces_key]
    if "energy" in results:
        results["free_energy"] = results["energy"]
    if results:
        new.calc = SinglePointCalculator(new, **results)
    return new


def load(
    source: Source,
    *,
    energy_key: str = "energy",
    forces_key: str = "forces",
    index: Union[str, int, slice] = ":",
) -> AtomsDataset:
    """Read structures with their reference energies and forces.

    Parameters
    ----------
    source
        A file path (any format ``ase.io.read`` knows; extxyz is the usual),
        a list of ``ase.Atoms`` or a single ``Atoms``.
    energy_key, forces_key
        Where the reference energy (eV, ``atoms.info`` or the calculator) and
        forces (eV/Å, ``atoms.arrays`` or the calculator) are found.
    index
        Which frames of a file to read (ASE syntax, e.g. ``":100"``).

    Returns
    -------
    AtomsDataset
        Copies of the structures; the originals are left untouched. Structures
        without reference data are kept (``has_reference`` is False for them).
    """
    if isinstance(source, AtomsDataset):
        structures = list(source)
    elif isinstance(source, ase.Atoms):
        structures = [source]
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {path}")
        read = ase.io.read(path, index=index)
        structures = [read] if isinstance(read, ase.Atoms) else list(read)
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
    dataset = AtomsDataset([_attach_reference(a, energy_key, forces_key) for a in structures])
    for k, atoms in enumerate(dataset):
        _check_reference(atoms, k)
    return dataset


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
    column = {z: c for c, z in enumerate(zs)}
    counts = np.zeros((int(mask.sum()), len(zs)))
    energies = dataset.energies[mask]
    for row, atoms in enumerate(a for a, m in zip(dataset, mask) if m):
        for z in atoms.numbers:
            if int(z) not in column:
                raise InvalidStructureError(
                    f"element {chemical_symbols[int(z)]} is not among the species {zs}"
                )
            counts[row, column[int(z)]] += 1
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {z: float(solution[column[z]]) for z in zs}


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


# ---------------------------------------------------------- neighbour lists
@dataclass
class Graph:
    """One structure's arrays and neighbour list, ready to be collated."""

    numbers: np.ndarray  # (n,) int64
    positions: np.ndarray  # (n, 3) float64
    cell: np.ndarray  # (3, 3)
    pbc: np.ndarray  # (3,) bool
    edge_index: np.ndarray  # (2, e) int64, i then j
    shifts: np.ndarray  # (e, 3) integer cell shifts (as float64)
    energy: Optional[float]
    forces: Optional[np.ndarray]


def neighbour_list(atoms: ase.Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list ``(i, j, shifts)`` within ``cutoff`` (Å), from vesin.

    Each pair appears in both directions; ``shifts`` are integer cell shifts
    so that ``d_ij = r_j - r_i + shifts @ cell``.
    """
    from vesin import NeighborList

    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell, dtype=np.float64)
    if not pbc.any():
        cell = np.zeros((3, 3))
    calculator = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s = calculator.compute(
        points=np.asarray(atoms.positions, dtype=np.float64),
        box=cell,
        periodic=pbc if pbc.any() else False,
        quantities="ijS",
    )
    return i.astype(np.int64), j.astype(np.int64), s.astype(np.int64)


def to_graph(atoms: ase.Atoms, cutoff: float, index: int = 0, species=None) -> Graph:
    """Check one structure and compute its neighbour list."""
    check_structure(atoms, index, species)
    i, j, s = neighbour_list(atoms, cutoff)
    if len(i):
        d = atoms.positions[j] - atoms.positions[i] + s @ np.asarray(atoms.cell)
        close = np.einsum("ij,ij->i", d, d) < 1e-12
        if close.any():
            k = int(np.argmax(close))
            raise InvalidStructureError(
                f"structure {index}: atoms {int(i[k])} and {int(j[k])} overlap "
                "(distance below 1e-6 Å)"
            )
    energy = _reference(atoms, "energy")
    forces = _reference(atoms, "forces")
    return Graph(
        numbers=np.asarray(atoms.numbers, dtype=np.int64),
        positions=np.asarray(atoms.positions, dtype=np.float64),
        cell=np.asarray(atoms.cell, dtype=np.float64),
        pbc=np.asarray(atoms.pbc, dtype=bool),
        edge_index=np.stack([i, j]),
        shifts=s.astype(np.float64),
        energy=None if energy is None else float(energy),
        forces=forces,
    )


# -------------------------------------------------------------------- batches
@dataclass
class Batch:
    """Several structures concatenated, as torch tensors.

    ``edge_index[0]`` are the centres i, ``edge_index[1]`` the neighbours j;
    ``edge_vectors()`` gives ``r_j - r_i + shift @ cell`` and is what models
    must use, so that forces and stresses come out of autograd.
    """

    numbers: torch.Tensor  # (N,) long
    positions: torch.Tensor  # (N, 3)
    cell: torch.Tensor  # (B, 3, 3)
    pbc: torch.Tensor  # (B, 3) bool
    batch: torch.Tensor  # (N,) long, structure of each atom
    n_atoms: torch.Tensor  # (B,) long
    edge_index: torch.Tensor  # (2, E) long
    shifts: torch.Tensor  # (E, 3), integer shifts in the positions' dtype
    energy: Optional[torch.Tensor] = None  # (B,) reference, NaN where absent
    forces: Optional[torch.Tensor] = None  # (N, 3) reference, NaN where absent

    @property
    def n_structures(self) -> int:
        return int(self.n_atoms.shape[0])

    def edge_vectors(self) -> torch.Tensor:
        """(E, 3) vectors from each centre to its neighbour (Å)."""
        i, j = self.edge_index
        cell_of_edge = self.cell[self.batch[i]]
        offsets = torch.einsum("ek,ekl->el", self.shifts, cell_of_edge)
        return self.positions[j] - self.positions[i] + offsets

    def to(self, device=None, dtype=None) -> "Batch":
        """Copy with floating tensors in ``dtype`` and everything on ``device``."""
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                if value.is_floating_point() and dtype is not None:
                    value = value.to(device=device, dtype=dtype)
                else:
                    value = value.to(device=device)
                changes[f.name] = value
        return replace(self, **changes)


def collate_graphs(graphs: Sequence[Graph], dtype: torch.dtype = torch.float64) -> Batch:
    """Concatenate graphs into one :class:`Batch`."""
    if len(graphs) == 0:
        raise ValueError("cannot collate an empty list of structures")
    n_atoms = np.array([len(g.numbers) for g in graphs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    edge_index = np.concatenate(
        [g.edge_index + o for g, o in zip(graphs, offsets)], axis=1
    )
    energy = np.array([np.nan if g.energy is None else g.energy for g in graphs])
    forces = np.concatenate(
        [g.forces if g.forces is not None else np.full((len(g.numbers), 3), np.nan) for g in graphs]
    )

    def t(x, dt=dtype):
        return torch.as_tensor(np.ascontiguousarray(x), dtype=dt)

    return Batch(
        numbers=t(np.concatenate([g.numbers for g in graphs]), torch.long),
        positions=t(np.concatenate([g.positions for g in graphs])),
        cell=t(np.stack([g.cell for g in graphs])),
        pbc=t(np.stack([g.pbc for g in graphs]), torch.bool),
        batch=t(np.repeat(np.arange(len(graphs)), n_atoms), torch.long),
        n_atoms=t(n_atoms, torch.long),
        edge_index=t(edge_index, torch.long),
        shifts=t(np.concatenate([g.shifts for g in graphs])),
        energy=t(energy),
        forces=t(forces),
    )


def collate(
    structures: Union[ase.Atoms, Sequence[ase.Atoms]],
    cutoff: float,
    *,
    species: Optional[Iterable[Union[int, str]]] = None,
    dtype: torch.dtype = torch.float64,
    start_index: int = 0,
) -> Batch:
    """Check structures, build their neighbour lists and collate a :class:`Batch`.

    ``species`` (atomic numbers or symbols) makes unknown elements an error;
    ``start_index`` offsets the structure indices named in error messages.
    """
    if isinstance(structures, ase.Atoms):
        structures = [structures]
    known = None if species is None else _as_species(species)
    graphs = [to_graph(a, cutoff, start_index + k, known) for k, a in enumerate(structures)]
    return collate_graphs(graphs, dtype=dtype)


def as_dataset(x: Union[Source, AtomsDataset]) -> AtomsDataset:
    """An ``AtomsDataset`` from a dataset, a list of Atoms, one Atoms or a path."""
    return x if isinstance(x, AtomsDataset) else load(x)


def iter_batches(
    structures: Sequence[ase.Atoms],
    cutoff: float,
    batch_size: int,
    *,
    species=None,
    dtype: torch.dtype = torch.float64,
) -> Iterator[tuple[int, Batch]]:
    """Yield ``(start, Batch)`` over consecutive chunks of ``structures``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(structures), batch_size):
        chunk = [structures[k] for k in range(start, min(start + batch_size, len(structures)))]
        yield start, collate(chunk, cutoff, species=species, dtype=dtype, start_index=start)


def species_index_table(species: Sequence[int]) -> torch.Tensor:
    """Lookup table mapping atomic number to position in ``species`` (-1 if absent)."""
    table = torch.full((119,), -1, dtype=torch.long)
    for k, z in enumerate(species):
        table[int(z)] = k
    return table

