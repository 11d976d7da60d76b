"""The mean model's stress, without its uncertainty.

Responsibility: the stress that ``predict(..., stress=True)`` reports as ``stress``,
computed without the variance that comes with it. Three callers need that stress
alone: ``calibrate``'s strain pass (the stress errors of the labelled calibration
cells, :func:`mlipuq.calibration.strain.measure`), the ASE calculator and the MD
engines without a stress uncertainty (``compute_stress``). For a last-layer
posterior the variance costs one backward pass per feature (or per sample) and a
committee's one per member; the mean costs one backward pass to the strain, and
for a deep ensemble one per member model.

Each wrapper's mean is its own: the base model's by default
(:meth:`MeanStress._mean_stress`), and overridden where the mean readout is another
model's: the deep ensemble's member mean, ``LastLayerLaplace(refit_mean=True)``'s
posterior mean, a combined latent distance's other wrapper.
"""

from __future__ import annotations

from typing import Optional

import ase
import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq import distributed as mdist
from mlipuq.errors import InvalidStructureError


class MeanStress:
    """Mixin of :class:`~mlipuq.uq.base.UQWrapper` (whose ``_batches`` it uses):
    :meth:`mean_stress`, :meth:`compute_stress` and the per-batch hook
    :meth:`_mean_stress`."""

    def mean_stress(self, structures, *, batch_size: int = 32, progress: bool = False,
                    distributed: Optional[bool] = None) -> np.ndarray:
        """(B, 3, 3) float64 stresses (eV/Å^3, ASE's sign) of the mean model: the
        ``stress`` of ``predict(structures, stress=True)`` without its variance.

        ``structures``, ``batch_size``, ``progress`` and ``distributed`` are as in
        :meth:`~mlipuq.uq.base.UQWrapper.predict`; every structure must be periodic
        in all three directions (else an
        :class:`~mlipuq.errors.InvalidStructureError` naming it)."""
        self._check_fitted()
        dataset = mdata.as_dataset(structures)
        if distributed is None:
            distributed = mdist.active() and not isinstance(structures, ase.Atoms)
        return mdist.run_sharded(self._mean_stress_raw, dataset, batch_size, progress,
                                 distributed, np.concatenate)

    def _mean_stress_raw(self, dataset, batch_size: int, progress: bool,
                         allow_empty: bool = False, *, offset: int = 0) -> Optional[np.ndarray]:
        """:meth:`mean_stress` of ``dataset`` in this process (None: an empty shard)."""
        if allow_empty and len(dataset) == 0:
            return None
        parts = []
        for start, batch in self._batches(dataset, batch_size, progress, "stress"):
            self._check_periodic(batch, offset + start)
            parts.append(self._mean_stress(batch).detach().cpu().to(torch.float64).numpy())
        return np.concatenate(parts) if parts else np.zeros((0, 3, 3))

    def compute_stress(self, atoms) -> np.ndarray:
        """(3, 3) stress of the mean model (eV/Å^3), used by the ASE calculator and
        the engines (``predict(atoms, stress=True)`` also gives its uncertainty)."""
        return self.mean_stress(atoms, distributed=False)[0]

    @staticmethod
    def _check_periodic(batch: mdata.Batch, first: int) -> None:
        """InvalidStructureError naming the first structure (``first`` + its index
        in the batch) not periodic in all three directions."""
        periodic = batch.pbc.all(dim=1).cpu()
        if not bool(periodic.all()):
            k = int(torch.nonzero(~periodic)[0, 0])
            raise InvalidStructureError(
                f"structure {first + k}: predict(..., stress=True) needs a cell periodic in "
                f"all three directions (pbc={batch.pbc[k].cpu().tolist()}); a stress is "
                "defined for 3D-periodic structures only"
            )

    def _mean_stress(self, batch: mdata.Batch) -> torch.Tensor:
        """(B, 3, 3) stress (eV/Å^3) of the mean model on ``batch``: the base model's
        (override where the mean is another model's). ``predict(..., stress=True)``
        of wrappers without a stress uncertainty reports it."""
        model = self.base_model
        return model(batch.to(device=model.device), forces=False, stress=True)["stress"].detach()
