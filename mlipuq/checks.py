"""Input checks shared by the data layer and the models: every bad structure
raises a ``ValueError`` naming its index and the problem."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import ase
import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from mlipuq.errors import InvalidStructureError

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
