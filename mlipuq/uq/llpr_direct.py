"""The last-layer Laplace posterior of a direct force head.

Responsibility: the part of :class:`~mlipuq.uq.llpr.LastLayerLaplace` that
exists only for a model with ``force_mode == "direct"`` at fit time (see
:mod:`mlipuq.models.base` and ``docs/direct-forces.md``), as the mixin
:class:`DirectHeadPosterior`: its statistics, evidence, posterior,
predictions and saved state.

The forces :math:`F_{ia} = \\sum_c w_c v_{ica}` are linear in the direct
readout weights :math:`w` (C,), with the vector features as rows,
:math:`F = V w` (:func:`~mlipuq.uq.jacobians.direct_force_rows`), and
independent of the energy readout :math:`\\theta`. The force posterior is then
a separate last-layer Laplace over :math:`w`,

.. math:: P_w = V^T V / \\sigma_F^2 + \\lambda_F I, \\qquad \\Sigma_w = P_w^{-1},

with its own Gram matrix (``gn_direct_``, accumulated over every force
component of the training set), prior precision :math:`\\lambda_F` and noise
:math:`\\sigma_F` by evidence (the same marginal likelihood, with the direct
force residuals), and :math:`\\mathrm{Var}\\,F_{ia} = (V \\Sigma_w V^T)_{(ia),(ia)}`:
no vector-Jacobian product, one forward pass (``force_variance="samples"``
draws members :math:`w_k \\sim N(w^*, \\Sigma_w)` instead; members are given
with either setting, they cost a matrix product). The energy posterior over
:math:`\\theta` has the energy rows alone (there are no force rows on it), so
``energy_posterior`` makes no difference; stresses (the strain derivative of
the energy) use it with strain rows (:mod:`mlipuq.uq.llpr_rows`). Member
forces are not gradients of member energies (``consistent_members`` is
False), nor is the mean force the gradient of the mean energy.
``calibrate`` works unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq.uq.jacobians import direct_force_rows
from mlipuq.uq.llpr_rows import sampled_stress, strain_rows, stress_from_rows

#: Fitted state of a posterior on a direct force head (saved only for those).
_DIRECT_STATE = ("force_head_", "gn_direct_", "direct_prior_precision_",
                 "direct_log_marginal_likelihood_", "direct_precision_", "direct_covariance_",
                 "direct_samples_", "direct_jitter_")


class DirectHeadPosterior:
    """Mixin of :class:`~mlipuq.uq.llpr.LastLayerLaplace`: the posterior over the
    direct readout weights (module notes).

    It uses the host's ``model``, ``include_forces``, ``n_samples``, ``force_variance``,
    ``vectorize``, ``forces_noise``, ``_maximise_evidence``, ``_posterior``,
    ``_energy_part``, ``_sample_deltas``, ``_theta`` and ``_has_bias`` and its joint posterior
    (``covariance_``, ``samples_``).
    """

    @property
    def _direct(self) -> bool:
        """Whether the force posterior is on a direct force head (fixed at fit)."""
        return getattr(self, "force_head_", "conservative") == "direct"

    def _direct_theta(self) -> np.ndarray:
        return self.model.direct_readout_weight.cpu().double().numpy()

    # ------------------------------------------------------------------- fit
    def _set_force_head(self) -> bool:
        """Fix ``force_head_`` from the model's ``force_mode``; whether it is direct."""
        direct = self.model.has_direct_forces and self.model.force_mode == "direct"
        if direct and not self.include_forces:
            raise ValueError(
                "a model with force_mode='direct' gets its force uncertainty from the direct "
                "head's own posterior, which needs force data: use include_forces=True "
                "(or set model.force_mode = 'conservative')"
            )
        self.force_head_ = "direct" if direct else "conservative"
        return direct

    def _accumulate_direct(self, stats: dict, out: dict, batch: mdata.Batch) -> None:
        """Add a batch's direct force rows (the vector features themselves, F = V w),
        squared force residuals and component count to ``stats``."""
        rows = direct_force_rows(out["vector_features"].detach().to(torch.float64))
        stats["G_V"] += (rows.T @ rows).cpu().numpy()
        df = (out["direct_forces"].detach().to(torch.float64)
              - batch.forces.to(torch.float64))
        stats["R_F"] += float((df**2).sum())
        stats["N_F"] += int(df.numel())

    def _fit_direct_hyperparameters(self, stats: dict) -> None:
        """Two evidences: θ on the energy rows, the direct weights w on the force rows V."""
        lam, s_e, _, lml = self._maximise_evidence({**stats, "N_F": 0})
        self.prior_precision_, self.energy_noise_, self.log_marginal_likelihood_ = lam, s_e, lml
        self.energy_posterior_ = {"prior_precision": lam, "energy_noise": s_e,
                                  "log_marginal_likelihood": lml}
        c = len(stats["G_V"])
        force_stats = {"G_E": stats["G_V"], "G_F": np.zeros((c, c)), "R_E": stats["R_F"],
                       "R_F": 0.0, "N_E": stats["N_F"], "N_F": 0}
        lam_f, s_f, _, lml_f = self._maximise_evidence(force_stats, direct=True)
        self.direct_prior_precision_, self.forces_noise_ = lam_f, s_f
        self.direct_log_marginal_likelihood_ = lml_f

    def _factorise_direct(self, rng: np.random.Generator) -> None:
        """The direct readout's own posterior, its normals drawn from ``rng``."""
        c = self.gn_direct_.shape[0]
        direct_precision = (self.gn_direct_ / self.forces_noise_**2
                            + self.direct_prior_precision_ * np.eye(c))
        self.direct_precision_ = direct_precision
        self.direct_covariance_, self.direct_samples_, self.direct_jitter_ = self._posterior(
            direct_precision, rng.standard_normal((c, self.n_samples)), self._direct_theta())
        self.jitter_ = max(self.jitter_, self.direct_jitter_)

    # --------------------------------------------------------------- predict
    def _predict_direct(self, batch: mdata.Batch, stress: bool) -> dict:
        """Direct head: force variances diag(V Σ_w Vᵀ) from the vector features, one
        forward pass; stresses (energy strain derivative) from the θ posterior."""
        out = self.model(batch, forces=False, direct_forces=True, stress=stress, features=True)
        result, _ = self._energy_part(out, batch)
        dev = out["features"].device
        forces = out["direct_forces"].detach().to(torch.float64)
        rows = direct_force_rows(out["vector_features"].detach().to(torch.float64))  # (3N, C)
        cov_w = torch.as_tensor(self.direct_covariance_, dtype=torch.float64, device=dev)
        result["forces"] = forces
        if self.n_samples > 0:  # F_k = F* + V (w_k - w*): exact, the head is linear in w
            delta = (torch.as_tensor(self.direct_samples_, dtype=torch.float64, device=dev)
                     - torch.as_tensor(self._direct_theta(), dtype=torch.float64, device=dev))
            members = forces[None] + (delta @ rows.T).reshape(len(delta), -1, 3)
            result["forces_members"] = members
        if self.force_variance == "exact":
            result["forces_var"] = ((rows @ cov_w) * rows).sum(dim=1).reshape(-1, 3)
        else:
            result["forces_var"] = result["forces_members"].var(dim=0, unbiased=False)
        if stress:
            result.update(self._direct_stress(out, batch))
        return result

    def _direct_stress(self, out: dict, batch: mdata.Batch) -> dict:
        """Stress, its variance and members from the θ posterior (strain rows only)."""
        phi, dev = out["features"], out["features"].device
        stress = out["stress"].detach().to(torch.float64)
        theta = torch.as_tensor(self._theta(), dtype=torch.float64, device=dev)
        result = {"stress": stress}
        if self.force_variance == "exact":
            s = strain_rows(phi, out["strain"], batch, self._has_bias, self.vectorize)
            cov = torch.as_tensor(self.covariance_, dtype=torch.float64, device=dev)
            result.update(stress_from_rows(stress, s, cov,
                                           self.samples_ if self.n_samples > 0 else None, theta))
            return result
        result.update(sampled_stress(phi, out, batch, self._sample_deltas(phi), self.vectorize))
        return result
