"""Energy-only queries of a fitted last-layer Laplace: the selection protocol.

Responsibility: what batch active learning (:mod:`mlipuq.active`) and cheap
screening ask of :class:`~mlipuq.uq.llpr.LastLayerLaplace`, all without force
passes or Jacobians, as the mixin :class:`EnergyQueries`: the energy rows
``f`` of structures (the design matrix, energy = ``θ·f``), the energy
posterior covariance with the energy noise, and energies with their
variances from one forward pass.
"""

from __future__ import annotations

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq.progress import batches_with_progress
from mlipuq.uq import latent_features


class EnergyQueries:
    """Mixin of :class:`~mlipuq.uq.llpr.LastLayerLaplace`: energy-only queries.

    It uses the host's ``model``, ``species``, ``cutoff``, ``dtype``, ``distance_features``,
    ``_term_energy_var``, ``_check_fitted``, ``_structure_features``, ``_shift_energy``,
    its energy posterior (``energy_covariance_``, ``energy_posterior_``) and its calibration
    (``calibrated_``, ``recalibrator_``, ``strain_term_`` with ``_strain_variance``).
    """

    def design_matrix(self, structures, *, batch_size: int = 32,
                      progress: bool = False) -> np.ndarray:
        """(B, D) float64 energy rows ``f`` of the structures: the energy is ``θ·f``.

        ``f`` is the sum of the last-layer features over the structure's atoms,
        with the atom count appended when the readout has a bias. Computed
        without forces, in batches (memory bounded by one batch).
        """
        self._check_fitted()
        dataset = mdata.as_dataset(structures)
        rows = [f.cpu().numpy()
                for _, f, _, _ in self._energy_rows(dataset, batch_size, progress)]
        return np.concatenate(rows).astype(np.float64)

    @torch.no_grad()
    def _energy_rows(self, dataset: mdata.AtomsDataset, batch_size: int, progress: bool = False):
        """Per batch, without forces: (energies (b,) eV, energy rows f (b, D) float64,
        the batch on the model's device, the features its latent term reads)."""
        dataset.validate(self.species)
        batches = batches_with_progress(
            mdata.iter_batches(dataset, self.cutoff, batch_size, species=self.species,
                               dtype=self.dtype),
            len(dataset), f"energy rows ({type(self).__name__})", progress)
        self.model.eval()
        for _, batch in batches:
            batch = batch.to(device=self.model.device)
            with latent_features.capture(self.model, self.distance_features) as term_features:
                out = self.model(batch, forces=False, features=True)
            yield (out["energy"], self._structure_features(out["features"], batch), batch,
                   term_features(out["features"]))

    def energy_posterior_covariance(self) -> tuple[np.ndarray, float]:
        """``(Σ, σ²)``: the (D, D) posterior covariance of the readout weights behind
        the energy variances ``predict`` reports (``Var E = f·Σ f``, eV²) and the
        fitted energy noise variance σ² (eV² per structure)."""
        self._check_fitted()
        return self.energy_covariance_, float(self.energy_posterior_["energy_noise"]) ** 2

    def predict_energy(self, structures, *, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Energies (B,) eV and their variance (B,) eV² only: no force pass, no Jacobian.

        The cheapest LLPR query (one forward pass of the base model; a latent-distance
        term's energy variance is added as in :meth:`predict`, from the same pass); the
        energy recalibrator of :meth:`calibrate` is applied, then the strain term
        (stress-labelled calibration data) and the composition variance (as in
        :meth:`predict`).
        """
        self._check_fitted()
        dataset = mdata.as_dataset(structures)
        energies, variances, strains = [], [], []
        cov = torch.as_tensor(self.energy_covariance_, dtype=torch.float64)
        strain = self.calibrated_ and getattr(self, "strain_term_", None) is not None
        for energy, f, batch, phi in self._energy_rows(dataset, batch_size):
            result = {"energy": energy}
            self._shift_energy(result, f)  # refit_mean: the posterior mean's energies
            energies.append(result["energy"].cpu().numpy())
            own = torch.einsum("bi,ij,bj->b", f, cov.to(f.device), f).cpu().numpy()
            variances.append(self._term_energy_var(batch, own, phi))  # LLPR's latent term
            if strain:  # as predict adds it, from the same batches
                strains.append(self._strain_variance(batch))
        energy, var = np.concatenate(energies), np.concatenate(variances)
        if self.calibrated_:
            var = self.recalibrator_.transform_energy_std(np.sqrt(var), dataset.n_atoms) ** 2
        if strain:
            var = var + np.concatenate(strains)
        counts = mdata.composition_matrix(dataset, self.species)
        return energy, var + self.model.composition_variance(counts)
