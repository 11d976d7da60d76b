"""Input checks shared by the data layer and the models: every bad structure
raises a ``ValueError`` naming its index and the problem.

Besides the structure checks this module holds the reference-value checks
used by the loader (:func:`reference_problem`) and the resource guard run
before any neighbour-list work (:func:`check_resources`).
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence, Union

import ase
import numpy as np
from ase.data import atomic_numbers, chemical_symbols
from ase.stress import voigt_6_to_full_3x3_stress

from mlipuq.errors import InvalidStructureError, ResourceError

#: Most neighbours per atom (within the cutoff) the resource guard accepts.
#: Dense metals have about 80-200 neighbours at a 6 Å cutoff, diamond (the
#: densest solid) about 1300 at 12 Å; a structure above this limit is a cell
#: far smaller than the cutoff (or atoms packed far denser than any material),
#: not a real system. Raise it for cutoffs well above 12 Å.
MAX_NEIGHBOURS = 2000

#: Most periodic image cells (the product over periodic axes of
#: ``2 * ceil(cutoff / width) + 1``) the resource guard accepts before it
#: counts anything; ``width`` is the cell's perpendicular width. A one-atom
#: primitive metal cell at a 6 Å cutoff needs 343, at 12 Å about 2 000.
MAX_IMAGE_CELLS = 200_000


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
            names = [
                chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z) for z in unknown
            ]
            allowed = [chemical_symbols[z] for z in sorted(known)]
            raise InvalidStructureError(
                f"structure {index}: element(s) {names} unknown to the model (it knows {allowed})"
            )


def origin(atoms: ase.Atoms) -> Optional[tuple[str, int]]:
    """``(file, frame)`` a structure was read from by :func:`mlipuq.data.load`, if known."""
    value = getattr(atoms, "_mlipuq_origin", None)
    return value if isinstance(value, tuple) and len(value) == 2 else None


def set_origin(atoms: ase.Atoms, file: str, frame: int) -> None:
    """Record where ``atoms`` was read from (named in later error messages)."""
    atoms._mlipuq_origin = (str(file), int(frame))


def describe(atoms: ase.Atoms, index: Optional[int]) -> str:
    """``"structure 3 (frame 7 of data.xyz)"``: how error messages name a structure."""
    name = "structure" if index is None else f"structure {index}"
    where = origin(atoms)
    return name if where is None else f"{name} (frame {where[1]} of {where[0]})"


# ---------------------------------------------------------- reference values
def reference_problem(value, name: str, n_atoms: int) -> Optional[str]:
    """What is wrong with a raw reference value, or ``None`` if it is usable.

    ``name`` is ``"energy"`` (a real scalar, eV), ``"forces"`` (``(n_atoms, 3)``
    reals, eV/Å) or ``"stress"`` (6 Voigt or 3x3 reals, eV/Å³). Booleans and
    strings are refused (ASE parses ``energy=True`` in an extxyz comment line
    as a bool, which ``float()`` would silently turn into 1.0 eV).
    """
    if isinstance(value, (bool, np.bool_)):
        return f"reference {name} is a boolean ({value}), not a number"
    if isinstance(value, (str, bytes)):
        return f"reference {name} {value!r} is not a number"
    try:
        array = np.asarray(value)
    except Exception:  # ragged sequences and the like
        return f"reference {name} is not an array of numbers"
    if array.dtype == bool:
        return f"reference {name} holds booleans, not numbers"
    if array.dtype.kind not in "iuf":
        if array.dtype.kind in "USO" and array.size:
            try:
                array = array.astype(np.float64)
            except (TypeError, ValueError):
                return f"reference {name} {_short(value)} is not numeric"
        else:
            return f"reference {name} has non-numeric type {array.dtype}"
    if name == "energy":
        if array.size != 1:
            return f"reference energy has shape {array.shape}, expected a scalar"
    elif name == "forces":
        if array.shape != (n_atoms, 3):
            return f"reference forces have shape {array.shape}, expected ({n_atoms}, 3)"
    elif name == "stress":
        if array.shape not in ((6,), (3, 3)):
            return f"reference stress has shape {array.shape}, expected (6,) or (3, 3)"
    if not np.all(np.isfinite(array.astype(np.float64))):
        verb = "are" if name == "forces" else "is"
        return f"reference {name} {verb} not finite (NaN/inf)"
    return None


def _short(value) -> str:
    text = repr(value if not isinstance(value, np.ndarray) else value.tolist())
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------ resource guard
def perpendicular_widths(periodic: np.ndarray) -> np.ndarray:
    """The perpendicular widths (Å) of a cell whose periodic lattice vectors are the
    rows of ``periodic`` (k, 3), within their subspace: the distance between the
    cell's faces along each (non-degenerate vectors)."""
    periodic = np.asarray(periodic, dtype=np.float64)
    # rows of ``dual`` are the reciprocal vectors within the periodic subspace
    dual = np.linalg.solve(periodic @ periodic.T, periodic)
    return 1.0 / np.linalg.norm(dual, axis=1)


def narrowest_widths(cells, pbc) -> np.ndarray:
    """(B,) smallest perpendicular width (Å) of each of ``cells`` (B, 3, 3; rows are
    the lattice vectors) periodic in all three directions (``pbc`` (B, 3)); NaN for
    the others and for degenerate cells."""
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)
    periodic = np.asarray(pbc, dtype=bool).reshape(-1, 3).all(axis=1)
    out = np.full(len(cells), np.nan)
    for b in np.flatnonzero(periodic):
        if abs(np.linalg.det(cells[b])) > 0:
            out[b] = perpendicular_widths(cells[b]).min()
    return out


def structure_widths(structures) -> np.ndarray:
    """:func:`narrowest_widths` of ``structures`` (``ase.Atoms``, or a dataset of them)."""
    return narrowest_widths([np.asarray(atoms.cell) for atoms in structures],
                            [atoms.pbc for atoms in structures])


def periodic_widths(structures) -> np.ndarray:
    """The finite :func:`structure_widths` of ``structures``: those of the cells periodic
    in all three directions and not degenerate, in order."""
    widths = structure_widths(structures)
    return widths[np.isfinite(widths)]


def estimate_neighbours(atoms: ase.Atoms, cutoff: float) -> tuple[float, float]:
    """``(neighbours per atom, periodic image cells)`` a neighbour list within
    ``cutoff`` (Å) would need; ``(0, 1)`` for a non-periodic structure.

    Neighbours are the larger of the number density estimate
    ``N / V * 4/3 pi rc^3`` (fully periodic cells only) and the number of an
    atom's own periodic images within the cutoff (every periodic structure;
    this catches cells thin along one axis only). Image cells are
    ``prod_i (2 ceil(rc / w_i) + 1)`` over the periodic axes, with ``w_i`` the
    cell's perpendicular width along axis ``i``. The images are counted
    exactly when there are at most :data:`MAX_IMAGE_CELLS` image cells, else
    estimated as the volume (area, length) of the cutoff ball over that of the
    periodic cell.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        return 0.0, 1.0
    periodic = np.asarray(atoms.cell, dtype=np.float64)[pbc]
    gram = periodic @ periodic.T
    det = float(np.linalg.det(gram)) if np.all(np.isfinite(gram)) else 0.0
    if det <= 0:
        return 0.0, 1.0  # degenerate: check_structure reports it
    rc = float(cutoff)
    measure = math.sqrt(det)  # volume, area or length of the periodic cell
    ball = {1: 2.0 * rc, 2: math.pi * rc**2, 3: 4.0 / 3.0 * math.pi * rc**3}[len(periodic)]
    density = len(atoms) * ball / measure if pbc.all() else 0.0
    widths = perpendicular_widths(periodic)
    reach = np.ceil(rc / widths)
    image_cells = float(np.prod(2 * reach + 1))
    if image_cells > MAX_IMAGE_CELLS:
        return max(density, ball / measure), image_cells
    if widths.min() >= rc:
        # a lattice vector with n_i != 0 is at least w_i long: no image within the cutoff
        return density, image_cells
    axes = [np.arange(-r, r + 1) for r in reach.astype(int)]
    shifts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))
    vectors = shifts @ periodic
    self_images = float(np.count_nonzero(np.einsum("ij,ij->i", vectors, vectors) < rc * rc) - 1)
    return max(density, self_images), image_cells


def check_resources(
    atoms: ase.Atoms,
    cutoff: float,
    index: Optional[int] = None,
    *,
    max_neighbours: Optional[float] = None,
) -> None:
    """Raise :class:`~mlipuq.errors.ResourceError` before a neighbour list
    within ``cutoff`` (Å) would need absurd memory or time.

    Refuses a periodic structure whose estimated neighbours per atom
    (:func:`estimate_neighbours`) exceed ``max_neighbours`` (default: the
    module constant :data:`MAX_NEIGHBOURS`, read at call time, so setting
    ``mlipuq.checks.MAX_NEIGHBOURS`` changes it everywhere) or whose periodic
    image cells exceed :data:`MAX_IMAGE_CELLS`: a cell far smaller than the
    cutoff. Non-periodic structures always pass. The message names the
    structure (index, and file and frame when it was loaded from a file), the
    estimate and the cell.
    """
    limit = MAX_NEIGHBOURS if max_neighbours is None else float(max_neighbours)
    neighbours, image_cells = estimate_neighbours(atoms, cutoff)
    if neighbours <= limit and image_cells <= MAX_IMAGE_CELLS:
        return
    cell = np.round(np.asarray(atoms.cell, dtype=np.float64), 4).tolist()
    images = ""
    if image_cells > MAX_IMAGE_CELLS:
        images = f" and {image_cells:.3g} periodic image cells (limit {MAX_IMAGE_CELLS})"
    raise ResourceError(
        f"{describe(atoms, index)}: about {neighbours:.3g} neighbours per atom within the "
        f"cutoff {float(cutoff):g} Å (limit {limit:g}){images} for {len(atoms)} atom(s) in "
        f"the periodic cell {cell} (pbc {np.asarray(atoms.pbc, dtype=bool).tolist()}); the "
        "cell is far smaller than the cutoff: refusing before building the neighbour list"
    )


def _current_results(atoms: ase.Atoms) -> dict:
    """The calculator results of ``atoms`` as it is now: ``{}`` without a
    calculator or when they are stale (one comparison of states; pass the dict to
    :func:`_reference` and :func:`_check_reference` to compare once per structure)."""
    calc = atoms.calc
    if calc is None or not getattr(calc, "results", None) or _stale(atoms, calc):
        return {}
    return calc.results


def stress_label(atoms: ase.Atoms, index: Optional[int]) -> Optional[np.ndarray]:
    """The stress label (3, 3), eV/Å³ (ASE's sign: positive is tensile), of a fully
    periodic structure whose current results hold one (Voigt 6 or 3×3); else None.
    A label that is not finite or of another shape raises
    :class:`~mlipuq.errors.InvalidStructureError` naming the structure (``index``)."""
    stress = _current_results(atoms).get("stress")
    if stress is None or not np.all(atoms.pbc):
        return None
    problem = reference_problem(stress, "stress", len(atoms))
    if problem is not None:
        raise InvalidStructureError(f"{describe(atoms, index)}: {problem}")
    stress = np.asarray(stress, dtype=np.float64)
    return voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress


def _reference(atoms: ase.Atoms, name: str, results: Optional[dict] = None):
    """Reference ``name`` of ``atoms`` (float64) or None; ``results``: its
    :func:`_current_results`, when the caller has them."""
    value = (_current_results(atoms) if results is None else results).get(name)
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


def _check_reference(atoms: ase.Atoms, index: int, results: Optional[dict] = None) -> None:
    results = _current_results(atoms) if results is None else results
    for name in ("energy", "forces", "stress"):
        value = results.get(name)
        problem = None if value is None else reference_problem(value, name, len(atoms))
        if problem is not None:
            raise InvalidStructureError(f"{describe(atoms, index)}: {problem}")


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
