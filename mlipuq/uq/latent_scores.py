"""Scores and latent variances of :class:`~mlipuq.uq.latent_distance.LatentDistance`:
how far an atom's standardised readout features lie from the training atoms of its
element (Mahalanobis, kNN or GMM score, ``u``), the structure's distance ``U``, and
the variance map ``a + b u²`` applied to them. A mixin of the fitted state that
``LatentDistance.fit`` sets (``feature_mean_``, ``feature_scale_``, ``species_``,
``points_``, ``gmm_``, ``score_scale_``, ``structure_``, the map's ``a`` and ``b``),
split out of latent_distance.py to keep that module to the wrapper's fitting,
prediction and persistence."""

from __future__ import annotations

import numpy as np

from mlipuq import data as mdata
from mlipuq.uq import latent_features, structure_distance
from mlipuq.uq.latent_maps import _gmm_log_density, fit_gmm, mahalanobis

__all__ = ["LatentScores"]


class LatentScores:
    """Scores ``u`` of raw readout features and the latent variances they give
    (methods of :class:`~mlipuq.uq.latent_distance.LatentDistance`)."""

    def standardise(self, phi: np.ndarray) -> np.ndarray:
        """Raw readout features ``phi`` (N, F) in the units every score is measured in:
        less the training atoms' mean, over their spread per feature (float64)."""
        return (np.asarray(phi, dtype=np.float64) - self.feature_mean_) / self.feature_scale_

    def _raw_scores(self, z: int, x: np.ndarray) -> np.ndarray:
        """Raw (unnormalised) scores of standardised features ``x`` under species ``z``."""
        if self.score == "knn":
            index = self._index.get(z)
            if index is None:
                from sklearn.neighbors import NearestNeighbors

                index = NearestNeighbors(algorithm="ball_tree").fit(self.points_[z])
                self._index[z] = index
            k = min(self.n_neighbors, len(self.points_[z]))
            return index.kneighbors(x, n_neighbors=k)[0].mean(axis=1)
        g = self.gmm_[z]
        if self.score == "mahalanobis":
            return mahalanobis(g, x)
        log_p = _gmm_log_density(x, g["weights"], g["means"], g["precisions_cholesky"])
        return np.sqrt(2.0 * np.maximum(g["max_log_density"] - log_p, 0.0))

    def scores(self, phi: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """Per-atom scores ``u >= 0`` (dimensionless) of raw features ``phi`` (N, F).

        Atoms of an element absent from the training data get the smallest
        score over the training elements (their distance to the nearest
        training distribution).
        """
        return self._standardised_scores(self.standardise(phi), numbers)

    def _standardised_scores(self, x: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """:meth:`scores` of already standardised features ``x``."""
        numbers = np.asarray(numbers)
        u = np.zeros(len(x))
        for z in np.unique(numbers):
            rows = numbers == z
            if int(z) in self.score_scale_:
                u[rows] = self._raw_scores(int(z), x[rows]) / self.score_scale_[int(z)]
            else:
                u[rows] = np.min([self._raw_scores(s, x[rows]) / self.score_scale_[s]
                                  for s in self.species_], axis=0)
        return u

    def _fit_gmm(self, points: np.ndarray, seed: int) -> dict:
        k = 1 if self.score == "mahalanobis" else max(1, min(self.n_components, len(points) // 4))
        return fit_gmm(points, k, seed, rescale=self.ridge_scale == "per_species")

    def _score_terms(self, phi: np.ndarray, batch: mdata.Batch):
        """``u²`` per atom of ``batch`` (raw features ``phi``, standardised once) and,
        per structure, the count and the squared score that the energy map
        ``a_E count + b_E score`` multiplies: ``n²`` and ``n² U²`` (structure
        distance) or ``n`` and ``Σ_i u_i²`` (independent atoms)."""
        x, numbers = self.standardise(phi), batch.numbers.cpu().numpy()
        u2 = self._standardised_scores(x, numbers) ** 2
        structure = batch.batch.cpu().numpy()
        n = batch.n_atoms.cpu().numpy().astype(np.float64)
        if self.structure_ is None:
            return u2, n, np.bincount(structure, weights=u2, minlength=batch.n_structures)
        d = structure_distance.descriptors(x, numbers, structure, batch.n_structures,
                                           self.species_)
        return u2, n**2, n**2 * structure_distance.scores(self.structure_, d) ** 2

    def latent_variances(self, phi: np.ndarray, batch: mdata.Batch):
        """Per atom of ``batch`` with raw features ``phi``: the local energy variance
        ``a_E + b_E u²`` (eV²) and the force-component variance ``a_F + b_F u²``
        (eV²/Å², 0 for atoms without neighbours), float64 NumPy."""
        _, atom_var, force_var = self.latent_parts(phi, batch)
        return atom_var, force_var

    def latent_parts(self, phi: np.ndarray, batch: mdata.Batch):
        """:meth:`latent_variances` preceded by the energy variance of each structure
        of ``batch`` (eV², see the module notes): ``(energy_var, atom_var, force_var)``."""
        u2, count, q = self._score_terms(phi, batch)
        force_var = np.where(latent_features.has_neighbours(batch),
                             self.forces_a_ + self.forces_b_ * u2, 0.0)
        return (self.energy_a_ * count + self.energy_b_ * q,
                self.energy_a_ + self.energy_b_ * u2, force_var)
