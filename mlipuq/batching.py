"""Neighbour lists (vesin) and batching of structures into torch tensors.

``collate`` turns structures into a :class:`Batch` with a full neighbour list
(both i→j and j→i), including the integer cell shifts of periodic images: the
vector from atom i to neighbour j is ``r_j - r_i + shift @ cell``. Everything
here is re-exported by :mod:`mlipuq.data`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Iterable, Iterator, Optional, Sequence, Union

import ase
import numpy as np
import torch

from mlipuq.checks import (_as_species, _current_results, _reference, check_resources,
                           check_structure)
from mlipuq.errors import InvalidStructureError


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


def neighbour_list(
    atoms: ase.Atoms, cutoff: float, *, index: Optional[int] = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list ``(i, j, shifts)`` within ``cutoff`` (Å), from vesin.

    Each pair appears in both directions; ``shifts`` are integer cell shifts
    so that ``d_ij = r_j - r_i + shifts @ cell``. A periodic cell far smaller
    than the cutoff raises :class:`~mlipuq.errors.ResourceError` first (see
    :func:`mlipuq.checks.check_resources`); ``index`` names the structure in
    that message.
    """
    from vesin import NeighborList

    check_resources(atoms, cutoff, index)

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
    """Check one structure (including the resource guard) and compute its neighbour list."""
    check_structure(atoms, index, species)
    i, j, s = neighbour_list(atoms, cutoff, index=index)
    if len(i):
        d = atoms.positions[j] - atoms.positions[i] + s @ np.asarray(atoms.cell)
        close = np.einsum("ij,ij->i", d, d) < 1e-12
        if close.any():
            k = int(np.argmax(close))
            raise InvalidStructureError(
                f"structure {index}: atoms {int(i[k])} and {int(j[k])} overlap "
                "(distance below 1e-6 Å)"
            )
    results = _current_results(atoms)
    energy = _reference(atoms, "energy", results)
    forces = _reference(atoms, "forces", results)
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

    def cartesian_shifts(self) -> torch.Tensor:
        """(E, 3) Cartesian periodic shift of each edge, ``shifts @ cell`` (Å), a
        differentiable function of ``cell`` (so strains reach it)."""
        cell_of_edge = self.cell[self.batch[self.edge_index[0]]]
        return torch.einsum("ek,ekl->el", self.shifts, cell_of_edge)

    def edge_vectors(self) -> torch.Tensor:
        """(E, 3) vectors from each centre to its neighbour (Å)."""
        i, j = self.edge_index
        return self.positions[j] - self.positions[i] + self.cartesian_shifts()

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
