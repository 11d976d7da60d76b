"""Error measures of a model: per-batch error sums for training, MAE/RMSE on a data set.

Split out of :mod:`mlipuq.training`, which re-exports ``error_statistics`` and
``errors``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq.checks import stress_label
from mlipuq.errors import MissingReferenceError
from mlipuq.models.base import MLIP


def error_statistics(de: torch.Tensor, df: Optional[torch.Tensor] = None) -> dict[str, float]:
    """Error sums of one batch that :func:`train` turns into per-epoch MAE and RMSE.

    ``de`` (B,) per-atom energy errors (eV/atom), ``df`` force-component errors
    (eV/Å) or None. Every :meth:`Trainable.loss` returns these keys.
    """
    de = de.detach()
    stats = {
        "n_structures": float(len(de)),
        "energy_abs": float(de.abs().sum()),
        "energy_sq": float((de**2).sum()),
    }
    if df is not None:
        df = df.detach()
        stats.update(
            n_components=float(df.numel()),
            forces_abs=float(df.abs().sum()),
            forces_sq=float((df**2).sum()),
        )
    return stats


def errors(model: MLIP, dataset, *, batch_size: int = 32) -> dict[str, float]:
    """MAE and RMSE of energies (eV/atom) and forces (eV/Å) on ``dataset``; when every
    structure is fully periodic and carries a stress label (:func:`stress_labels`),
    also of the nine stress components (``stress_mae``, ``stress_rmse``, eV/Å³) and the
    mean pressure error (``pressure_error``, P_model − P_label with P = −tr σ / 3,
    eV/Å³). A model trained on energies and forces at one cell can carry a constant
    pressure error there; a cell strained by ε from it then gets the energy error
    V₀ Δσ : ε to first order (−ΔP ΔV for a uniform strain; docs/shift.md,
    "Strained cells' energies")."""
    dataset = mdata.as_dataset(dataset)
    if not dataset.has_reference.all():
        raise MissingReferenceError("every structure needs a reference energy to compute errors")
    labels = stress_labels(dataset)
    out = model.compute(dataset, batch_size=batch_size, stress=labels is not None)
    de = (out["energy"] - dataset.energies) / dataset.n_atoms
    result = {
        "energy_mae": float(np.mean(np.abs(de))),
        "energy_rmse": float(np.sqrt(np.mean(de**2))),
    }
    if dataset.has_forces.all():
        df = out["forces"] - dataset.forces
        result["forces_mae"] = float(np.mean(np.abs(df)))
        result["forces_rmse"] = float(np.sqrt(np.mean(df**2)))
    if labels is not None:
        ds = out["stress"] - labels
        result["stress_mae"] = float(np.mean(np.abs(ds)))
        result["stress_rmse"] = float(np.sqrt(np.mean(ds**2)))
        result["pressure_error"] = float(np.mean(-np.trace(ds, axis1=1, axis2=2) / 3))
    return result


def stress_labels(dataset) -> Optional[np.ndarray]:
    """The stress labels (B, 3, 3), eV/Å³ (ASE's sign: positive is tensile), of
    ``dataset`` when every structure is fully periodic and its results hold a stress
    (Voigt 6 or 3×3); else None. A label that is not finite or of another shape raises
    :class:`~mlipuq.errors.InvalidStructureError` naming the structure."""
    stresses = []
    for index, atoms in enumerate(dataset):
        stress = stress_label(atoms, index)
        if stress is None:
            return None
        stresses.append(stress)
    return np.array(stresses) if stresses else None
