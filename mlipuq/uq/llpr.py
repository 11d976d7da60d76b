"""Last-layer Laplace / LLPR (Bigi, Chong, Ceriotti, Grasselli 2024).

The readout ``eps_i = w·phi_i + b`` is treated as Bayesian linear regression
on fixed features. For a structure, the energy is linear in the parameters
``theta = (w, b)`` with the feature vector ``f = (sum_i phi_i, n_atoms)``; a
force component ``F_ac`` is linear with ``g_ac = -(d/dr_ac sum_i phi_i, 0)``.
``fit`` accumulates, in float64 and in one pass over the training set,

.. math:: G_E = \\sum_s f_s f_s^T, \\qquad G_F = \\sum_{a,c} g_{ac} g_{ac}^T,

and the posterior precision (Gauss-Newton Laplace) is

.. math:: P = G_E / \\sigma_E^2 + G_F / \\sigma_F^2 + \\lambda I, \\qquad \\Sigma = P^{-1}.

Predictions: :math:`\\mathrm{Var}\\,E = f^T \\Sigma_E f` exactly, local (per-atom)
variances :math:`\\phi_i^T \\Sigma_E \\phi_i`, force variances either exactly as the
diagonal of :math:`J \\Sigma J^T` (``force_variance="exact"``, feature
Jacobians in vectorised chunks) or from ``n_samples`` last-layer weights drawn
from :math:`N(\\theta^*, \\Sigma)` once at fit time (``"samples"``); the sampled
members are always exposed for the energies (and for the forces with
``"samples"``) so that they can be propagated.

Energy variances use :math:`\\Sigma_E`: by default (``energy_posterior="energy"``)
the posterior of the energy rows alone, :math:`(G_E/\\sigma_E^2 + \\lambda_E I)^{-1}`
with its own marginal-likelihood hyperparameters, as metatrain's LLPR does;
``energy_posterior="joint"`` uses the joint :math:`\\Sigma`. Force variances
always use the joint :math:`\\Sigma`. Why not the joint posterior for
energies too: force rows pin the readout down along exactly the feature
directions that thermal displacements move (to first order
:math:`\\phi(r+\\delta r) - \\phi(r) = J\\,\\delta r`, and the rows of
:math:`J` are the force data), so the joint energy variance hardly grows on
hotter structures, while the energy-row variance does (measured in
``docs/llpr.md`` with ``benchmarks/uq_evidence.py``). With
``"energy"`` the energy members and the force members are drawn with the same
standard normals from the two posteriors, so a member's forces are not the
gradient of its energy.

Stresses (``predict(..., stress=True)``, periodic cells) are linear in the
readout too, with strain rows; they use the joint posterior, as the forces do
(:mod:`mlipuq.uq.llpr_rows` explains why).

``prior_precision="auto"`` maximises the Laplace approximation of the
marginal likelihood over ``lambda`` and the noise levels ``sigma_E`` (eV),
``sigma_F`` (eV/Å) (MacKay 1992; Immer et al. 2021).

Direct force heads (a model with ``force_mode == "direct"`` at fit time): the
force posterior is a separate last-layer Laplace over the direct readout
weights, without vector-Jacobian products (:mod:`mlipuq.uq.llpr_direct`).

Module layout: this module holds the wrapper (configuration, fit, prediction,
persistence); :mod:`mlipuq.uq.llpr_evidence` the marginal likelihood, its
maximisation and the Gaussian posteriors; :mod:`mlipuq.uq.llpr_rows` the energy,
force and strain rows and the sampled members; :mod:`mlipuq.uq.llpr_direct` the
direct-head posterior; :mod:`mlipuq.uq.llpr_energy` the energy-only queries
(``design_matrix``, ``predict_energy``) of active learning.
"""

from __future__ import annotations

import logging
from typing import Optional, Union

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq import distributed as mdist
from mlipuq.errors import InvalidStructureError
from mlipuq.models.base import MLIP
from mlipuq.params import positive
from mlipuq.progress import batches_with_progress
from mlipuq.uq.base import UQWrapper, _check_model, register
from mlipuq.uq.llpr_direct import _DIRECT_STATE, DirectHeadPosterior
from mlipuq.uq.llpr_distance import LatentTerm
from mlipuq.uq.llpr_energy import EnergyQueries
from mlipuq.uq.llpr_evidence import (  # noqa: F401  (re-exported: the old home of these)
    _pack_stats, _unpack_stats, cholesky_with_jitter, gaussian_posterior,
    log_marginal_likelihood, maximise_evidence)
from mlipuq.uq.llpr_mean import PosteriorMean
from mlipuq.uq.llpr_rows import (  # noqa: F401  (_sum_per_structure re-exported)
    _sum_per_structure,
    atom_rows,
    force_and_strain_rows,
    force_features,
    sampled_forces,
    sampled_forces_and_stress,
    stress_from_rows,
    structure_rows,
)

log = logging.getLogger(__name__)

_FORCE_VARIANCE = ("exact", "samples")
_ENERGY_POSTERIOR = ("energy", "joint")


@register
class LastLayerLaplace(LatentTerm, PosteriorMean, DirectHeadPosterior, EnergyQueries,
                       UQWrapper):
    """Last-layer Laplace approximation / LLPR for energies and forces.

    Parameters
    ----------
    model
        A base :class:`~mlipuq.models.MLIP` (trained). It is used as is and
        not modified.
    prior_precision
        ``"auto"`` (maximise the marginal likelihood over the prior precision
        and the noise levels) or a fixed positive float λ.
    include_forces
        Use force Jacobians in the Gauss-Newton matrix (the training data must
        have forces). Without them only structure energies inform the posterior.
    n_samples
        Number of last-layer weight vectors drawn from the posterior at fit
        time and held fixed; they are the committee members of the prediction.
    force_variance
        ``"exact"``: diag(J Σ Jᵀ); ``"samples"``: variance over the members.
    energy_posterior
        Posterior of the energy variances (and members): ``"energy"`` (default) the energy
        rows alone, with their own prior precision and noise; ``"joint"`` the energy and
        force rows (identical without ``include_forces``). The module notes say why.
    energy_noise, forces_noise
        Fix the noise std (eV per structure, eV/Å per component) instead of
        fitting it by marginal likelihood.
    seed
        Seed of the posterior samples; ``fit(seed=...)`` takes precedence.
    vectorize
        How feature Jacobians are computed (see :func:`mlipuq.uq.jacobians.feature_vjps`):
        ``"auto"`` batches the backward passes on GPU and loops on CPU.
    refit_mean
        Predict with the Bayesian posterior mean of the readout, θ* + Δ, instead of the
        trained weights θ* (:mod:`mlipuq.uq.llpr_mean`); the hyperparameters then maximise
        the evidence at that mean. The base model is not modified. Conservative heads only.
    distance, distance_ridge_scale, distance_features
        A latent-distance term (:mod:`mlipuq.uq.llpr_distance`): ``distance`` its
        :class:`~mlipuq.uq.LatentDistance` score (``"mahalanobis"``, the default
        since 2026-12-06, a round on eleven systems and forty unseen shifts,
        docs/shift.md; ``"knn"``, ``"gmm"``) or None (LLPR's variance alone, Bigi et
        al.'s, the default before; files saved before load so); the other two are
        LatentDistance's ``ridge_scale`` and ``features`` (None: its defaults). Pass
        ``fit`` the held-out ``val`` the term is fitted on.
    energy_combination, force_combination
        How the term's energy (force) variance joins LLPR's: ``"sum"`` (fitted jointly;
        the energies' kept by a round of 2026-12-07, docs/llpr.md) or ``"max"`` (fitted
        apart, the larger taken; the energies' the better with tens of ``val`` structures).

    The force head is the model's ``force_mode`` at :meth:`fit`: with
    ``"direct"`` (a model with a direct force head) the force uncertainty
    comes from a separate posterior over the direct readout weights, without
    vector-Jacobian products (:mod:`mlipuq.uq.llpr_direct`; needs ``include_forces``), and
    ``predict`` reports the direct head's forces whatever the model's
    ``force_mode`` later.

    Attributes
    ----------
    prior_precision_, energy_noise_, forces_noise_
        Hyperparameters used (fitted or given); eV⁻² per unit weight, eV, eV/Å.
    precision_, covariance_
        (d, d) float64 posterior precision and covariance of the readout weights.
    jitter_
        The largest diagonal jitter added to make a posterior precision
        positive definite (joint or energy-row posterior); 0 when none was needed.
    force_head_
        ``"conservative"`` or ``"direct"``: the forces the posterior is on.
    direct_prior_precision_, direct_covariance_, direct_samples_
        Direct head only: λ_F (per unit weight²), the (C, C) covariance Σ_w of
        the direct readout weights and its (K, C) samples; ``forces_noise_``
        is then the direct head's noise σ_F (eV/Å).
    """

    #: Energies widened by r ** 1 beyond the calibration range: chosen on nine systems
    #: (0.75 on six; EMT Cu₃Pd's surfaces covered 0.10 with it, 0.80 with 1; extrapolation.py)
    default_extrapolation = {"energy": 1.0, "forces": 0.75}

    def __init__(
        self,
        model: MLIP,
        *,
        prior_precision: Union[str, float] = "auto",
        include_forces: bool = True,
        n_samples: int = 16,
        force_variance: str = "exact",
        energy_posterior: str = "energy",
        energy_noise: Optional[float] = None,
        forces_noise: Optional[float] = None,
        seed: int = 0,
        vectorize="auto",
        refit_mean: bool = False,
        distance: Optional[str] = "mahalanobis",
        distance_ridge_scale: Optional[str] = None,
        distance_features: Optional[str] = None,
        energy_combination: str = "sum",
        force_combination: str = "sum",
    ):
        self.model = _check_model(model)
        self._set_term(self.model, distance, distance_ridge_scale, distance_features,
                       energy_combination, force_combination)
        if isinstance(prior_precision, str):
            if prior_precision != "auto":
                raise ValueError(
                    f"prior_precision must be 'auto' or a positive float, got {prior_precision!r}"
                )
        else:
            prior_precision = positive("prior_precision", prior_precision)
        if force_variance not in _FORCE_VARIANCE:
            raise ValueError(f"force_variance must be one of {_FORCE_VARIANCE}, got {force_variance!r}")
        if energy_posterior not in _ENERGY_POSTERIOR:
            raise ValueError(
                f"energy_posterior must be one of {_ENERGY_POSTERIOR}, got {energy_posterior!r}"
            )
        if int(n_samples) < 0 or (force_variance == "samples" and int(n_samples) < 2):
            raise ValueError(
                f"n_samples must be >= 0 (>= 2 with force_variance='samples'), got {n_samples}"
            )
        energy_noise = None if energy_noise is None else positive("energy_noise", energy_noise)
        forces_noise = None if forces_noise is None else positive("forces_noise", forces_noise)
        self.prior_precision = prior_precision
        self.include_forces = bool(include_forces)
        self.n_samples = int(n_samples)
        self.force_variance = force_variance
        self.energy_posterior = energy_posterior
        self.energy_noise = energy_noise
        self.forces_noise = forces_noise
        self.seed = int(seed)
        self.vectorize = vectorize
        self.refit_mean = bool(refit_mean)

    def config(self) -> dict:
        return {
            "prior_precision": self.prior_precision,
            "include_forces": self.include_forces,
            "n_samples": self.n_samples,
            "force_variance": self.force_variance,
            "energy_posterior": self.energy_posterior,
            "energy_noise": self.energy_noise,
            "forces_noise": self.forces_noise,
            "seed": self.seed,
            "vectorize": self.vectorize,
            "refit_mean": self.refit_mean,
            **self._term_config(),  # absent without a term: files as before
        }

    # ------------------------------------------------------------ parameters
    @property
    def _has_bias(self) -> bool:
        return self.model.readout_layer.bias is not None

    def _theta(self) -> np.ndarray:
        w = self.model.readout_weight.cpu().double().numpy()
        if self._has_bias:
            w = np.concatenate([w, [self.model.readout_bias]])
        return w

    def _model_call(self, batch: mdata.Batch, **kwargs) -> dict:
        """The model's outputs for the fitted force head: direct forces with a
        direct head (no autograd forces), else -dE/dr whatever its ``force_mode``."""
        if self._direct:
            return self.model(batch, forces=False, direct_forces=True, **kwargs)
        if self.model.has_direct_forces:
            with self.model.using_force_mode("conservative"):
                return self.model(batch, forces=True, **kwargs)
        return self.model(batch, forces=True, **kwargs)

    def _structure_features(self, phi: torch.Tensor, batch: mdata.Batch) -> torch.Tensor:
        return structure_rows(phi, batch, self._has_bias)

    def _atom_features(self, phi: torch.Tensor) -> torch.Tensor:
        return atom_rows(phi, self._has_bias)

    def _force_features(self, phi, positions) -> torch.Tensor:
        """(N*3, D) rows g_ac = -(d sum phi / d r_ac, 0)."""
        return force_features(phi, positions, self._has_bias, self.vectorize)

    # ------------------------------------------------------------------- fit
    def fit(self, train, val=None, *, seed: Optional[int] = None, progress: bool = False,
            **method_options) -> "LastLayerLaplace":
        """One pass over ``train``: accumulate G_E (and G_F), fit λ and the noise, factorise.

        Parameters
        ----------
        train
            Data with reference energies (eV), and forces (eV/Å) with
            ``include_forces``.
        val
            Held-out data the latent-distance term (``distance``) fits λ, a and
            b on (None: a held-out fifth of ``train``, left out of its reference;
            pass ``val``). LLPR's prior precision and noise levels come from the
            marginal likelihood on ``train`` alone. Calibrate on held-out data
            with :meth:`calibrate` (``fit(train, val).calibrate(val)``).
        seed
            Seed of the posterior samples. None: the constructor's ``seed``
            (default 0). A given seed takes precedence and replaces the
            constructor's, so :meth:`config` and saved files record the seed
            the samples were drawn with.
        progress
            Show a progress bar.
        **method_options
            ``batch_size`` (16): structures per pass.

        Returns
        -------
        LastLayerLaplace
            ``self``, fitted.

        Notes
        -----
        After :func:`mlipuq.distributed.init` with two or more processes the
        call is collective: each rank accumulates ``G_E``, ``G_F`` and the
        squared residuals of its contiguous shard in float64, one all-reduce
        sums them, and every rank then holds the covariance one process would
        compute (equal to rounding, ~1e-15 relative).
        """
        batch_size = method_options.pop("batch_size", 16)
        if method_options:
            raise TypeError(f"LastLayerLaplace.fit got unexpected option(s) "
                            f"{sorted(method_options)}; valid: batch_size")
        if seed is not None:
            self.seed = int(seed)
        direct = self._set_force_head()
        if direct and self.refit_mean:
            raise ValueError("refit_mean=True needs a conservative force head; this model's "
                             "forces come from a direct head (force_mode='direct')")
        dataset = mdata.as_dataset(train)
        if len(dataset) == 0:
            raise InvalidStructureError("the dataset holds no structures")
        stats = self._statistics(dataset, batch_size, progress)
        self.gn_energy_ = stats["G_E"]
        self.gn_forces_ = stats["G_F"]
        self.cross_ = (stats["b_E"], stats["b_F"])  # b_F stays zero without force rows
        if direct:
            self.gn_direct_ = stats["G_V"]
        self.n_train_ = len(dataset)
        self._fit_hyperparameters(stats)
        self._factorise()
        self._fit_term(dataset, val, batch_size=batch_size, progress=progress)
        self.fitted_ = True
        return self

    def _statistics(self, dataset, batch_size: int, progress: bool) -> dict:
        """The sufficient statistics of ``dataset``: of its local shard, all-reduced
        in float64 when :mod:`mlipuq.distributed` is active."""
        start, stop = mdist.shard_bounds(len(dataset)) if mdist.active() else (0, len(dataset))
        stats = mdist.run_local(self._accumulate, dataset[start:stop], batch_size,
                                progress and mdist.is_main())
        if mdist.active():  # one all-reduce of everything, in float64
            stats = _unpack_stats(mdist.all_reduce_sum(_pack_stats(stats)), len(stats["G_E"]),
                                  len(stats["G_V"]) if "G_V" in stats else 0, cross=True)
        return stats

    def _accumulate(self, dataset, batch_size: int, progress: bool) -> dict:
        """Gram matrices, squared residuals and counts of ``dataset`` (float64)."""
        d = self.model.n_features + int(self._has_bias)
        stats = {"G_E": np.zeros((d, d)), "G_F": np.zeros((d, d)), "b_E": np.zeros(d),
                 "b_F": np.zeros(d), "R_E": 0.0, "R_F": 0.0, "N_E": 0, "N_F": 0}
        if self._direct:
            c = self.model.n_vector_features
            stats["G_V"] = np.zeros((c, c))
        if len(dataset) == 0:  # an empty shard (fewer structures than ranks)
            return stats
        dataset.validate(self.species, require_energy=True, require_forces=self.include_forces)
        batches = batches_with_progress(mdata.iter_batches(
            dataset, self.cutoff, batch_size, species=self.species, dtype=self.dtype
        ), len(dataset), f"LLPR fit ({type(self).__name__})", progress)
        device = self.model.device
        self.model.eval()
        for _, batch in batches:
            batch = batch.to(device=device)
            out = self._model_call(batch, features=True)
            f = self._structure_features(out["features"].detach(), batch)
            stats["G_E"] += (f.T @ f).cpu().numpy()
            residual = out["energy"].detach() - batch.energy.to(torch.float64)
            stats["R_E"] += float((residual**2).sum())
            stats["b_E"] -= (f.T @ residual.to(f.dtype)).cpu().numpy()
            stats["N_E"] += batch.n_structures
            if self._direct:  # rows: the vector features themselves (F = V w)
                self._accumulate_direct(stats, out, batch)
            elif self.include_forces:
                g = self._force_features(out["features"], out["positions"])
                stats["G_F"] += (g.T @ g).cpu().numpy()
                df = out["forces"].detach().to(torch.float64) - batch.forces.to(torch.float64)
                stats["R_F"] += float((df**2).sum())
                stats["b_F"] -= (g.T @ df.reshape(-1).to(g.dtype)).cpu().numpy()
                stats["N_F"] += int(df.numel())
        return stats

    def _fit_hyperparameters(self, stats: dict) -> None:
        if self._direct:
            self._fit_direct_hyperparameters(stats)
            return
        lam, s_e, s_f, lml = self._maximise_evidence(stats)
        self.prior_precision_, self.energy_noise_ = lam, s_e
        self.forces_noise_ = s_f if stats["N_F"] else None
        self.log_marginal_likelihood_ = lml
        if self._separate_energy_posterior:
            lam, s_e, _, lml = self._maximise_evidence({**stats, "N_F": 0})
        self.energy_posterior_ = {"prior_precision": lam, "energy_noise": s_e,
                                  "log_marginal_likelihood": lml}

    @property
    def _separate_energy_posterior(self) -> bool:
        return self.energy_posterior == "energy" and self.include_forces and not self._direct

    @property
    def n_members(self) -> int:
        return self.n_samples

    def members_hint(self, *, forces: bool = False) -> str:
        return ("LastLayerLaplace(..., n_samples=16, force_variance='samples'"
                + (", energy_posterior='joint'" if forces else "")  # a term stretches them:
                + (", distance=None)" if forces and self.distance is not None else ")"))

    @property
    def has_consistent_members(self) -> bool:
        return self.consistent_members

    @property
    def consistent_members(self) -> bool:
        """Whether each member's forces are minus the gradient of its energy.

        False with ``energy_posterior="energy"`` and force rows: the energy and
        force members then come from two posteriors, and member-wise
        relaxations or MD (:mod:`mlipuq.propagation`) refuse them. False on a
        direct force head too (its forces are no gradient of any energy).
        """
        return (not self._separate_energy_posterior and not self._direct
                and self.distance_ is None)  # a term stretches them atom by atom

    def _maximise_evidence(self, stats: dict, *,
                           direct: bool = False) -> tuple[float, float, float, float]:
        """(lambda, sigma_E, sigma_F, log evidence): the free ones maximise the evidence.

        Force rows enter when ``stats["N_F"] > 0``. ``direct``: the "energy"
        rows of ``stats`` are the direct head's force rows, the weights its
        readout's and the noise ``forces_noise`` (fixed if given).
        """
        theta = self._direct_theta() if direct else self._theta()
        return maximise_evidence(stats, theta, prior_precision=self.prior_precision,
                                 noise=self.forces_noise if direct else self.energy_noise,
                                 forces_noise=self.forces_noise,
                                 refit=self.refit_mean and not direct)

    def _posterior(self, precision: np.ndarray, z: np.ndarray,
                   theta: Optional[np.ndarray] = None) -> tuple:
        """(covariance, samples (K, d), jitter) of N(theta*, precision^-1); ``z`` is (d, K).

        ``theta``: the mean (default: the energy readout's posterior mean,
        :meth:`_readout_mean`)."""
        return gaussian_posterior(precision, z, self._readout_mean() if theta is None else theta)

    def _factorise(self) -> None:
        d = self.gn_energy_.shape[0]
        precision = self.gn_energy_ / self.energy_noise_**2 + self.prior_precision_ * np.eye(d)
        if self.include_forces and self.forces_noise_ is not None and not self._direct:
            precision = precision + self.gn_forces_ / self.forces_noise_**2
        rng = np.random.default_rng(self.seed)
        z = rng.standard_normal((d, self.n_samples))
        self.precision_ = precision
        self.mean_shift_ = self._mean_shift(precision) if self.refit_mean else None
        self.covariance_, self.samples_, self.jitter_ = self._posterior(precision, z)
        if self._direct:  # the direct readout's own posterior, its normals drawn next
            self._factorise_direct(rng)
        if self._separate_energy_posterior:
            post = self.energy_posterior_
            energy_precision = (self.gn_energy_ / post["energy_noise"] ** 2
                                + post["prior_precision"] * np.eye(d))
            self.energy_covariance_, self.energy_samples_, energy_jitter = self._posterior(
                energy_precision, z
            )
            self.jitter_ = max(self.jitter_, energy_jitter)  # the largest jitter used
        else:
            self.energy_covariance_, self.energy_samples_ = self.covariance_, self.samples_

    # --------------------------------------------------------------- predict
    has_stress_uncertainty = True

    def _posterior_batch(self, batch: mdata.Batch, stress: bool) -> dict:
        """The posterior's predictions of one batch (the mixin's ``_predict_batch``)."""
        if self._direct:
            return self._predict_direct(batch, stress)
        if self.model.has_direct_forces:  # the posterior is on -dE/dr, whatever the mode now
            with self.model.using_force_mode("conservative"):
                return self._predict_conservative(batch, stress)
        return self._predict_conservative(batch, stress)

    def _energy_part(self, out: dict, batch: mdata.Batch) -> tuple[dict, torch.Tensor]:
        """Energies, variances, members, the pass's ``features`` (the term's); rows ``f``."""
        phi = out["features"].detach()
        cov_e = torch.as_tensor(self.energy_covariance_, dtype=torch.float64, device=phi.device)
        f = self._structure_features(phi, batch)
        atom = self._atom_features(phi)
        result = {
            "energy": out["energy"].detach(),
            "energy_var": torch.einsum("bi,ij,bj->b", f, cov_e, f),
            "atom_energy_var": torch.einsum("ni,ij,nj->n", atom, cov_e, atom),
            "features": phi,
        }
        if self.n_samples > 0:
            samples = torch.as_tensor(self.energy_samples_, dtype=torch.float64,
                                      device=phi.device)
            theta = torch.as_tensor(self._theta(), dtype=torch.float64, device=phi.device)
            # E_k = E* + f·(theta_k - theta*): exact for a model linear in theta
            result["energy_members"] = result["energy"][None, :] + (samples - theta) @ f.T
        return result, f

    def _predict_conservative(self, batch: mdata.Batch, stress: bool) -> dict:
        out = self.model(batch, forces=True, stress=stress, features=True)
        phi = out["features"]
        cov = torch.as_tensor(self.covariance_, dtype=torch.float64, device=phi.device)
        result, f = self._energy_part(out, batch)
        result["forces"] = out["forces"].detach()
        g = s = None  # force and strain rows, where this mode computes them
        if stress:
            part, g, s = self._forces_and_stress(phi, out, batch, cov)
            result.update(part)
        elif self.force_variance == "exact":
            g = self._force_features(phi, out["positions"])
            var = torch.einsum("ri,ij,rj->r", g, cov, g)
            result["forces_var"] = var.reshape(-1, 3)
        else:
            result.update(self._sampled_forces(phi, out, batch))
        self._shift_to_mean(result, phi, out, batch, f, g, s)  # refit_mean only
        return result

    def _sample_deltas(self, phi: torch.Tensor) -> torch.Tensor:
        """(K, F) feature weights of the joint posterior's samples minus the mode's, in
        ``phi``'s dtype (the bias has no force nor stress)."""
        samples = torch.as_tensor(self.samples_, dtype=phi.dtype, device=phi.device)
        theta = torch.as_tensor(self._theta(), dtype=phi.dtype, device=phi.device)
        return (samples - theta)[:, : phi.shape[1]]

    def _sampled_forces(self, phi, out, batch) -> dict:
        """Forces of the posterior samples: F_k = F* - d(sum_i dw_k . phi_i)/dr."""
        return sampled_forces(phi, out, self._sample_deltas(phi), self.vectorize)

    def _forces_and_stress(self, phi, out, batch, cov) -> tuple:
        """``(part, g, s)``: force variance (and members) as without stress, plus
        ``stress``, ``stress_var`` and ``stress_members`` from the joint posterior
        (:mod:`mlipuq.uq.llpr_rows`), and the force and strain rows (None with
        sampled variances): the strain derivatives come out of the same backward
        passes as the forces'."""
        stress = out["stress"].detach().to(torch.float64)
        result = {"stress": stress}
        if self.force_variance != "exact":
            result.update(sampled_forces_and_stress(phi, out, batch, self._sample_deltas(phi),
                                                    self.vectorize))
            return result, None, None
        theta = torch.as_tensor(self._theta(), dtype=torch.float64, device=phi.device)
        g, s = force_and_strain_rows(phi, out, batch, self._has_bias, self.vectorize)
        result["forces_var"] = torch.einsum("ri,ij,rj->r", g, cov, g).reshape(-1, 3)
        result.update(stress_from_rows(stress, s, cov,
                                       self.samples_ if self.n_samples > 0 else None, theta))
        return result, g, s

    # ------------------------------------------------------------ persistence
    _STATE = (
        "gn_energy_",
        "gn_forces_",
        "n_train_",
        "prior_precision_",
        "energy_noise_",
        "forces_noise_",
        "log_marginal_likelihood_",
        "jitter_",
        "precision_",
        "covariance_",
        "samples_",
        "energy_posterior_",
        "energy_covariance_",
        "energy_samples_",
    )

    def _get_state(self) -> dict:
        state = {name: getattr(self, name) for name in self._STATE}
        if self.refit_mean:  # only then: files of the default unchanged
            state["mean_shift_"] = self.mean_shift_
        if not self._separate_energy_posterior:  # the joint posterior, stored once
            del state["energy_covariance_"], state["energy_samples_"]
        if self._direct:  # only then: files of conservative posteriors unchanged
            state.update({name: getattr(self, name) for name in _DIRECT_STATE})
        return {**state, **self._term_state()}

    def _set_state(self, state: dict) -> None:
        if "energy_posterior_" not in state:  # saved before energy_posterior existed
            self.energy_posterior = "joint"
            state = {**state, "energy_posterior_": {
                "prior_precision": state["prior_precision_"],
                "energy_noise": state["energy_noise_"],
                "log_marginal_likelihood": state["log_marginal_likelihood_"]}}
        if "energy_covariance_" not in state:
            state = {**state, "energy_covariance_": state["covariance_"],
                     "energy_samples_": state["samples_"]}
        for name in self._STATE:
            setattr(self, name, state[name])
        self.force_head_ = state.get("force_head_", "conservative")  # absent: saved before
        self.mean_shift_ = state.get("mean_shift_")  # present only with refit_mean
        if self._direct:
            for name in _DIRECT_STATE:
                setattr(self, name, state[name])
        self._load_term(state)

