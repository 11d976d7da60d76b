"""Reference arrays for calibration and evaluation, and the targets that can be scored.

Two rules live here, used by both ``calibrate`` (recalibrators) and
``evaluate`` (metrics):

* **Lone atoms.** A non-periodic one-atom structure (an isolated-atom
  reference, common in DFT training sets) has zero force by translation
  invariance. Its forces may be missing from the file; they are taken as 0.
* **Exact targets.** A target whose predicted std is exactly 0 *and* whose
  error is exactly 0 (the forces of a lone atom) carries no information about
  calibration and would break every metric that divides by σ. It is excluded,
  and the number excluded is reported. Any other zero std (a wrong prediction
  claimed with certainty) raises :class:`~mlipuq.errors.ZeroUncertaintyError`
  naming the structure.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from mlipuq.errors import MissingReferenceError, ZeroUncertaintyError


def lone_atoms(dataset) -> np.ndarray:
    """(B,) bool: non-periodic one-atom structures."""
    return np.array([len(a) == 1 and not np.any(a.pbc) for a in dataset], dtype=bool)


def reference_arrays(prediction, reference) -> Tuple[np.ndarray, np.ndarray]:
    """Reference energies (B,) in eV and forces (N, 3) in eV/Å matching ``prediction``.

    Parameters
    ----------
    prediction : Prediction
        Predictions for B structures, N atoms.
    reference
        An ``AtomsDataset`` or anything :func:`mlipuq.data.as_dataset` accepts
        (path, list of ``ase.Atoms``), with reference energies and forces
        (forces of lone atoms may be missing: they are zero).

    Raises
    ------
    ValueError
        Different structure or atom counts; ``MissingReferenceError`` (a
        ``ValueError``) when a structure lacks a reference energy or forces.
    """
    from mlipuq.data import as_dataset

    dataset = as_dataset(reference)
    if len(dataset) != prediction.n_structures:
        raise ValueError(
            f"the prediction covers {prediction.n_structures} structures, "
            f"the reference {len(dataset)}"
        )
    n_atoms = dataset.n_atoms
    if not np.array_equal(n_atoms, prediction.n_atoms):
        k = int(np.flatnonzero(n_atoms != prediction.n_atoms)[0])
        raise ValueError(
            f"structure {k}: the prediction has {int(prediction.n_atoms[k])} atoms, "
            f"the reference {int(n_atoms[k])}"
        )
    energy = np.asarray(dataset.energies, dtype=np.float64)
    missing = np.flatnonzero(~np.isfinite(energy))
    if missing.size:
        raise MissingReferenceError(
            f"{missing.size} structure(s) lack a reference energy (first: structure "
            f"{int(missing[0])})"
        )
    forces = np.array(dataset.forces, dtype=np.float64)
    lone = lone_atoms(dataset)[prediction.batch]
    forces[lone & ~np.isfinite(forces).all(axis=1)] = 0.0
    bad_atoms = np.flatnonzero(~np.isfinite(forces).all(axis=1))
    if bad_atoms.size:
        k = int(prediction.batch[bad_atoms[0]])
        raise MissingReferenceError(
            f"{np.unique(prediction.batch[bad_atoms]).size} structure(s) lack reference "
            f"forces (first: structure {k})"
        )
    return energy, forces


def scored_mask(y_pred, y_std, y_true, structure_of, what: str) -> np.ndarray:
    """Boolean mask of the targets that can be scored (same shape as ``y_pred``).

    Targets with exactly zero std and exactly zero error are left out (False);
    a zero std with a non-zero error raises naming the structure.

    Parameters
    ----------
    y_pred, y_std, y_true
        Arrays of one shape, first axis indexing structures or atoms.
    structure_of
        (len(y_pred),) structure index of each row (for the error message).
    what
        Name of the target (``"energy"``, ``"forces"``), for messages.
    """
    y_pred, y_std, y_true = (np.asarray(x, dtype=np.float64) for x in (y_pred, y_std, y_true))
    zero = y_std == 0
    exact = zero & (y_true - y_pred == 0)
    wrong = zero & ~exact
    if wrong.any():
        first = tuple(np.argwhere(wrong)[0])
        error = float((y_true - y_pred)[first])
        raise ZeroUncertaintyError(
            f"{what} of structure {int(np.asarray(structure_of)[first[0]])}: predicted std is 0 "
            f"but the error is {error:.3g} "
            f"({int(wrong.sum())} such value(s)); a certain but wrong prediction cannot be "
            "calibrated"
        )
    return ~exact
