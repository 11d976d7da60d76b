"""Error measures of a model: per-batch error sums for training, MAE/RMSE on a data set.

Split out of :mod:`mlipuq.training`, which re-exports both names.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from mlipuq import data as mdata
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
    """MAE and RMSE of energies (eV/atom) and forces (eV/Å) on ``dataset``."""
    dataset = mdata.as_dataset(dataset)
    if not dataset.has_reference.all():
        raise MissingReferenceError("every structure needs a reference energy to compute errors")
    out = model.compute(dataset, batch_size=batch_size)
    de = (out["energy"] - dataset.energies) / dataset.n_atoms
    result = {
        "energy_mae": float(np.mean(np.abs(de))),
        "energy_rmse": float(np.sqrt(np.mean(de**2))),
    }
    if dataset.has_forces.all():
        df = out["forces"] - dataset.forces
        result["forces_mae"] = float(np.mean(np.abs(df)))
        result["forces_rmse"] = float(np.sqrt(np.mean(df**2)))
    return result
