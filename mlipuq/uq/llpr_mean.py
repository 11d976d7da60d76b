"""The posterior mean of the readout for ``LastLayerLaplace(refit_mean=True)``.

Responsibility: what changes when the last-layer Laplace predicts with the
Bayesian posterior mean of the readout instead of the trained weights θ*.

Why. The trained readout is the optimum of the training loss (weighted energy
and force errors, early stopping, weight decay); the Laplace posterior is a
Gaussian on the same rows with the fitted noise levels σ_E, σ_F and the prior
N(0, λ⁻¹ I). Its mean is where the posterior variance is centred. When the
training stopped before the readout converged (a time budget, early stopping)
or weighted energies and forces differently from σ_E/σ_F, θ* sits away from
that centre: a constant per-atom energy offset is the typical symptom (z-mean
far from 0, see :mod:`mlipuq.calibration.bias`), and calibration then stretches
σ to cover it.

How. The outputs are linear in θ (energy ``θ·f``, force component ``θ·g``,
stress ``θ·s``), so with the cross terms ``b_E = Σ f (E_ref − E*)`` and
``b_F = Σ g (F_ref − F*)`` accumulated in the same pass as the Gram matrices,
the posterior mean is θ* + Δ with

.. math:: \\Delta = \\Sigma\\,(b_E/\\sigma_E^2 + b_F/\\sigma_F^2 - \\lambda\\,\\theta^*)

(:func:`mlipuq.uq.llpr_evidence.posterior_mean_step`), exact for the last
layer. The hyperparameters maximise the evidence *at the posterior mean* (the
exact Bayesian-linear-regression evidence, ``refit=True`` in
:func:`~mlipuq.uq.llpr_evidence.log_marginal_likelihood`). Predictions add
``f·Δ`` to energies, ``g·Δ`` to forces and ``s·Δ`` to stresses; the posterior
samples are drawn around θ* + Δ, so the members are centred on the new mean.
The base model is not modified. Energy variances keep their posterior
(``energy_posterior``); the mean is the joint posterior's, since forces and
energies must come from one readout.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from mlipuq.uq.llpr_evidence import posterior_mean_step
from mlipuq.uq.llpr_rows import sampled_forces, sampled_forces_and_stress, sampled_stress


class PosteriorMean:
    """Mixin of :class:`~mlipuq.uq.llpr.LastLayerLaplace`: ``refit_mean``.

    It uses the host's ``_theta``, ``vectorize``, its fitted hyperparameters
    and cross terms ``cross_`` = (b_E, b_F), and sets ``mean_shift_`` (Δ,
    float64 (D,); None without ``refit_mean``).
    """

    def _mean_shift(self, precision: np.ndarray) -> np.ndarray:
        """Δ of the joint posterior (its hyperparameters): θ* + Δ is the readout's
        posterior mean (:func:`~mlipuq.uq.llpr_evidence.posterior_mean_step`)."""
        stats = {"b_E": torch.as_tensor(self.cross_[0]), "b_F": torch.as_tensor(self.cross_[1]),
                 "N_F": int(self.forces_noise_ is not None and self.include_forces)}
        var_f = (self.forces_noise_ or 1.0) ** 2
        return posterior_mean_step(torch.as_tensor(precision), stats,
                                   torch.as_tensor(self._theta()), self.prior_precision_,
                                   self.energy_noise_**2, var_f).numpy()

    def _readout_mean(self) -> np.ndarray:
        """The centre of the posterior samples: θ* (default) or θ* + Δ."""
        theta = self._theta()
        shift = getattr(self, "mean_shift_", None)
        return theta if shift is None else theta + shift

    def _shift(self, like: torch.Tensor) -> Optional[torch.Tensor]:
        """Δ as a float64 tensor on ``like``'s device; None when the mean is θ*."""
        shift = getattr(self, "mean_shift_", None)
        if shift is None:
            return None
        return torch.as_tensor(shift, dtype=torch.float64, device=like.device)

    @staticmethod
    def _member_weights(delta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """(1, F) feature weights of Δ in ``phi``'s dtype: the one "member" θ* + Δ of
        :mod:`mlipuq.uq.llpr_rows` (the bias has no force nor stress)."""
        return delta[: phi.shape[1]].to(phi.dtype)[None]

    def _mean_stress(self, batch) -> torch.Tensor:
        """(B, 3, 3) stress (eV/Å^3) of the mean readout, as ``predict(..., stress=True)``
        gives it: θ*'s, the base model's (one backward pass), or with ``refit_mean``
        the posterior mean's, σ* + s·Δ: the stress of the one "member" θ* + Δ, one
        vector-Jacobian product more (:func:`~mlipuq.uq.llpr_rows.sampled_stress`;
        until 2026-12-05 ``compute_stress`` gave the base model's, inconsistent with
        the energies and forces)."""
        if getattr(self, "mean_shift_", None) is None:
            return super()._mean_stress(batch)
        out = self._model_call(batch, stress=True, features=True)
        phi = out["features"]
        weights = self._member_weights(self._shift(phi), phi)
        return sampled_stress(phi, out, batch, weights, self.vectorize)["stress_members"][0]

    def _shift_energy(self, result: dict, f: torch.Tensor) -> None:
        """Energies at the posterior mean: E* + f·Δ (in place)."""
        delta = self._shift(f)
        if delta is not None:
            result["energy"] = result["energy"].to(torch.float64) + f @ delta

    def _shift_to_mean(self, result: dict, phi: torch.Tensor, out: dict, batch,
                       f: torch.Tensor, g: Optional[torch.Tensor] = None,
                       s: Optional[torch.Tensor] = None) -> None:
        """Energies, forces and (if ``result`` has them) stresses at the posterior mean,
        in place: E* + f·Δ, F* + g·Δ, σ* + s·Δ. Without the force rows ``g`` (and
        strain rows ``s``) the shift is one more member of :mod:`mlipuq.uq.llpr_rows`:
        a vector-Jacobian product with the feature weights of Δ."""
        delta = self._shift(phi)
        if delta is None:
            return
        self._shift_energy(result, f)
        stress = "stress" in result
        if g is None:  # the forces (and stresses) of the one "member" θ* + Δ
            weights = self._member_weights(delta, phi)
            if stress:
                moved = sampled_forces_and_stress(phi, out, batch, weights, self.vectorize)
                result["stress"] = moved["stress_members"][0]
            else:
                moved = sampled_forces(phi, out, weights, self.vectorize)
            result["forces"] = moved["forces_members"][0]
            return
        result["forces"] = result["forces"].to(torch.float64) + (g @ delta).reshape(-1, 3)
        if stress:
            result["stress"] = result["stress"] + torch.einsum("brd,d->br", s, delta).reshape(
                -1, 3, 3)
