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

Stresses (``predict(..., stress=True)``, periodic cells): the energy is
:math:`\\theta \\cdot f` with :math:`f = (\\sum_i \\phi_i, n)`, so a member's stress
is :math:`\\sigma_k = \\sigma^* + (\\theta_k - \\theta^*) \\cdot s` with the strain rows
:math:`s_{ab} = V^{-1}\\,\\partial f / \\partial \\varepsilon_{ab}` (the atom count,
hence the bias, has none). With ``force_variance="exact"`` the (9, D) strain
Jacobian of each structure comes out of the same D backward passes as the
force Jacobian (the strain is one more leaf of each pass) and
:math:`\\mathrm{Var}\\,\\sigma_{ab} = s_{ab}^T \\Sigma s_{ab}` exactly; with
``"samples"`` the K passes that give the member forces give the member
stresses too and ``stress_var`` is their variance. Stresses use the posterior
the forces use, the joint :math:`\\Sigma` (and its samples), whatever
``energy_posterior``: the stress, like the forces, is a derivative of the
energy with respect to the geometry, and the virial is a sum of interatomic
force terms (:math:`W = -\\sum r_{ij} \\otimes f_{ij}` for pair terms), the
directions the force rows pin down, so the energy-row posterior would
overstate it just as it would the force variances. The stress members
(whenever ``n_samples > 0``) are therefore strain derivatives of the joint
posterior's member energies: with ``energy_posterior="joint"`` of the reported
``energy_members``.

``prior_precision="auto"`` maximises the Laplace approximation of the
marginal likelihood over ``lambda`` and the noise levels ``sigma_E`` (eV),
``sigma_F`` (eV/Å) (MacKay 1992; Immer et al. 2021).

Direct force heads (a model with ``force_mode == "direct"`` at fit time, see
:mod:`mlipuq.models.base` and ``docs/direct-forces.md``): the forces
:math:`F_{ia} = \\sum_c w_c v_{ica}` are linear in the direct readout weights
:math:`w` (C,), with the vector features as rows, :math:`F = V w`
(:func:`~mlipuq.uq.jacobians.direct_force_rows`), and independent of the
energy readout :math:`\\theta`. The force posterior is then a separate
last-layer Laplace over :math:`w`,

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
the energy) use it with strain rows as above. Member forces are not gradients
of member energies (``consistent_members`` is False), nor is the mean force
the gradient of the mean energy. ``calibrate`` works unchanged.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Union

import numpy as np
import torch

from mlipuq import data as mdata
from mlipuq import distributed as mdist
from mlipuq.errors import InvalidStructureError
from mlipuq.models.base import MLIP, structure_volumes
from mlipuq.params import positive
from mlipuq.uq.base import UQWrapper, _check_model, register
from mlipuq.uq.jacobians import (direct_force_rows, feature_vjps, feature_vjps_strain,
                                 strain_vjps)

log = logging.getLogger(__name__)

_FORCE_VARIANCE = ("exact", "samples")
_ENERGY_POSTERIOR = ("energy", "joint")
#: Fitted state of a posterior on a direct force head (saved only for those).
_DIRECT_STATE = ("force_head_", "gn_direct_", "direct_prior_precision_",
                 "direct_log_marginal_likelihood_", "direct_precision_", "direct_covariance_",
                 "direct_samples_", "direct_jitter_")


def cholesky_with_jitter(matrix: np.ndarray, *, max_tries: int = 12) -> tuple[np.ndarray, float]:
    """Cholesky factor of a symmetric matrix, adding growing diagonal jitter on failure.

    Returns ``(L, jitter)``; the jitter used (0 when none was needed) is logged.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    matrix = 0.5 * (matrix + matrix.T)
    scale = float(np.mean(np.abs(np.diag(matrix)))) or 1.0
    if not np.all(np.isfinite(matrix)):
        raise ValueError(
            "the posterior precision holds non-finite values (check the model's features "
            "and the noise and prior parameters)"
        )
    jitter = 0.0
    for attempt in range(max_tries):
        try:
            factor = np.linalg.cholesky(matrix + jitter * np.eye(len(matrix)))
            if jitter > 0:
                log.warning("Cholesky needed jitter %.3g (%d tries)", jitter, attempt)
            return factor, jitter
        except np.linalg.LinAlgError:
            jitter = scale * 1e-10 if jitter == 0 else jitter * 10
    raise np.linalg.LinAlgError(f"matrix is not positive definite even with jitter {jitter:.3g}")


def _sum_per_structure(x: torch.Tensor, batch: mdata.Batch) -> torch.Tensor:
    out = torch.zeros(batch.n_structures, x.shape[1], dtype=x.dtype, device=x.device)
    return out.index_add_(0, batch.batch, x)


def log_marginal_likelihood(
    log_params: torch.Tensor,
    eig_stats: dict,
    theta: torch.Tensor,
) -> torch.Tensor:
    """Laplace log marginal likelihood for ``log_params = (log lambda, log sigma_E, log sigma_F)``.

    .. math:: \\log p(D) \\approx -\\tfrac{1}{2}\\big(N_E \\log 2\\pi\\sigma_E^2
       + R_E/\\sigma_E^2 + N_F \\log 2\\pi\\sigma_F^2 + R_F/\\sigma_F^2\\big)
       - \\tfrac{\\lambda}{2}\\lVert\\theta\\rVert^2
       - \\tfrac{1}{2}\\log\\det P + \\tfrac{d}{2}\\log\\lambda

    with residual sums of squares ``R`` of the trained model and counts ``N``.
    """
    lam = torch.exp(log_params[0])
    var_e = torch.exp(2 * log_params[1])
    var_f = torch.exp(2 * log_params[2])
    d = theta.shape[0]
    precision = eig_stats["G_E"] / var_e + lam * torch.eye(d, dtype=torch.float64)
    loglik = -0.5 * (
        eig_stats["N_E"] * torch.log(2 * math.pi * var_e) + eig_stats["R_E"] / var_e
    )
    if eig_stats["N_F"] > 0:
        precision = precision + eig_stats["G_F"] / var_f
        loglik = loglik - 0.5 * (
            eig_stats["N_F"] * torch.log(2 * math.pi * var_f) + eig_stats["R_F"] / var_f
        )
    logdet = torch.linalg.slogdet(precision)[1]
    return loglik - 0.5 * lam * (theta @ theta) - 0.5 * logdet + 0.5 * d * torch.log(lam)


def _pack_stats(stats: dict) -> np.ndarray:
    """The fit's sufficient statistics as one float64 vector (for one all-reduce)."""
    direct = [stats["G_V"].ravel()] if "G_V" in stats else []
    return np.concatenate([stats["G_E"].ravel(), stats["G_F"].ravel()] + direct
                          + [[stats["R_E"], stats["R_F"], stats["N_E"], stats["N_F"]]])


def _unpack_stats(vector: np.ndarray, d: int, c: int = 0) -> dict:
    """Inverse of :func:`_pack_stats`; ``c``: size of the direct-head Gram matrix (0: none)."""
    g_e, g_f = vector[: d * d].reshape(d, d), vector[d * d: 2 * d * d].reshape(d, d)
    end = 2 * d * d + c * c
    r_e, r_f, n_e, n_f = vector[end:]
    # counts are sums of integers below 2**53: exact in float64
    stats = {"G_E": g_e, "G_F": g_f, "R_E": float(r_e), "R_F": float(r_f),
             "N_E": int(round(n_e)), "N_F": int(round(n_f))}
    if c:
        stats["G_V"] = vector[2 * d * d: end].reshape(c, c)
    return stats


@register
class LastLayerLaplace(UQWrapper):
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
        Posterior of the energy variances (and energy members): ``"energy"``
        (default) the energy rows alone, with their own prior precision and
        noise; ``"joint"`` the energy and force rows (identical without
        ``include_forces``). See the module notes for why.
    energy_noise, forces_noise
        Fix the noise std (eV per structure, eV/Å per component) instead of
        fitting it by marginal likelihood.
    seed
        Seed of the posterior samples; ``fit(seed=...)`` takes precedence.
    vectorize
        How feature Jacobians are computed (see :func:`mlipuq.uq.jacobians.feature_vjps`):
        ``"auto"`` batches the backward passes on GPU and loops on CPU.

    The force head is the model's ``force_mode`` at :meth:`fit`: with
    ``"direct"`` (a model with a direct force head) the force uncertainty
    comes from a separate posterior over the direct readout weights, without
    vector-Jacobian products (module notes; needs ``include_forces``), and
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
    ):
        self.model = _check_model(model)
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

    @property
    def _direct(self) -> bool:
        """Whether the force posterior is on a direct force head (fixed at fit)."""
        return getattr(self, "force_head_", "conservative") == "direct"

    def _direct_theta(self) -> np.ndarray:
        return self.model.direct_readout_weight.cpu().double().numpy()

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
        f = _sum_per_structure(phi.to(torch.float64), batch)
        if self._has_bias:
            f = torch.cat([f, batch.n_atoms.to(torch.float64)[:, None]], dim=1)
        return f

    def _atom_features(self, phi: torch.Tensor) -> torch.Tensor:
        phi = phi.to(torch.float64)
        if self._has_bias:
            ones = torch.ones(len(phi), 1, dtype=torch.float64, device=phi.device)
            phi = torch.cat([phi, ones], dim=1)
        return phi

    def _force_features(self, phi, positions) -> torch.Tensor:
        """(N*3, D) rows g_ac = -(d sum phi / d r_ac, 0)."""
        eye = torch.eye(phi.shape[1], dtype=phi.dtype, device=phi.device)
        jac = feature_vjps(phi, positions, eye, vectorize=self.vectorize)  # (F, N, 3)
        return self._force_rows(jac)

    def _force_rows(self, jac: torch.Tensor) -> torch.Tensor:
        g = -jac.to(torch.float64).reshape(jac.shape[0], -1).T
        if self._has_bias:
            g = torch.cat([g, torch.zeros(len(g), 1, dtype=torch.float64, device=g.device)], dim=1)
        return g

    def _force_and_strain_features(self, phi, out, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(N*3, D) force rows (as :meth:`_force_features`) and (B, 9, D) strain rows
        s_ab = (d sum phi / d eps_ab / V, 0), from the same D backward passes."""
        eye = torch.eye(phi.shape[1], dtype=phi.dtype, device=phi.device)
        jac, jac_strain = feature_vjps_strain(phi, out["positions"], out["strain"], eye,
                                              vectorize=self.vectorize)  # (F, N, 3), (F, B, 3, 3)
        volume = structure_volumes(batch).to(torch.float64)
        s = jac_strain.to(torch.float64).reshape(jac_strain.shape[0], -1, 9).permute(1, 2, 0)
        s = s / volume[:, None, None]
        if self._has_bias:
            s = torch.cat([s, torch.zeros(s.shape[0], 9, 1, dtype=torch.float64,
                                          device=s.device)], dim=2)
        return self._force_rows(jac), s

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
            Not used: the prior precision and noise levels come from the
            marginal likelihood on ``train``. Calibrate on held-out data with
            :meth:`calibrate` (``fit(train).calibrate(val)``).
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
        direct = self.model.has_direct_forces and self.model.force_mode == "direct"
        if direct and not self.include_forces:
            raise ValueError(
                "a model with force_mode='direct' gets its force uncertainty from the direct "
                "head's own posterior, which needs force data: use include_forces=True "
                "(or set model.force_mode = 'conservative')"
            )
        self.force_head_ = "direct" if direct else "conservative"
        dataset = mdata.as_dataset(train)
        if len(dataset) == 0:
            raise InvalidStructureError("the dataset holds no structures")
        start, stop = mdist.shard_bounds(len(dataset)) if mdist.active() else (0, len(dataset))
        stats = mdist.run_local(self._accumulate, dataset[start:stop], batch_size,
                                progress and mdist.is_main())
        if mdist.active():  # one all-reduce of everything, in float64
            stats = _unpack_stats(mdist.all_reduce_sum(_pack_stats(stats)), len(stats["G_E"]),
                                  len(stats["G_V"]) if "G_V" in stats else 0)
        self.gn_energy_ = stats["G_E"]
        self.gn_forces_ = stats["G_F"]
        if direct:
            self.gn_direct_ = stats["G_V"]
        self.n_train_ = len(dataset)
        self._fit_hyperparameters(stats)
        self._factorise()
        self.fitted_ = True
        return self

    def _accumulate(self, dataset, batch_size: int, progress: bool) -> dict:
        """Gram matrices, squared residuals and counts of ``dataset`` (float64)."""
        d = self.model.n_features + int(self._has_bias)
        stats = {"G_E": np.zeros((d, d)), "G_F": np.zeros((d, d)),
                 "R_E": 0.0, "R_F": 0.0, "N_E": 0, "N_F": 0}
        if self._direct:
            c = self.model.n_vector_features
            stats["G_V"] = np.zeros((c, c))
        if len(dataset) == 0:  # an empty shard (fewer structures than ranks)
            return stats
        dataset.validate(self.species, require_energy=True, require_forces=self.include_forces)
        batches = mdata.iter_batches(
            dataset, self.cutoff, batch_size, species=self.species, dtype=self.dtype
        )
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=-(-len(dataset) // batch_size), desc="LLPR fit")
        device = self.model.device
        self.model.eval()
        for _, batch in batches:
            batch = batch.to(device=device)
            out = self._model_call(batch, features=True)
            f = self._structure_features(out["features"].detach(), batch)
            stats["G_E"] += (f.T @ f).cpu().numpy()
            residual = out["energy"].detach() - batch.energy.to(torch.float64)
            stats["R_E"] += float((residual**2).sum())
            stats["N_E"] += batch.n_structures
            if self._direct:  # rows: the vector features themselves (F = V w)
                rows = direct_force_rows(out["vector_features"].detach().to(torch.float64))
                stats["G_V"] += (rows.T @ rows).cpu().numpy()
                df = (out["direct_forces"].detach().to(torch.float64)
                      - batch.forces.to(torch.float64))
                stats["R_F"] += float((df**2).sum())
                stats["N_F"] += int(df.numel())
            elif self.include_forces:
                g = self._force_features(out["features"], out["positions"])
                stats["G_F"] += (g.T @ g).cpu().numpy()
                df = out["forces"].detach().to(torch.float64) - batch.forces.to(torch.float64)
                stats["R_F"] += float((df**2).sum())
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

    @property
    def _separate_energy_posterior(self) -> bool:
        return self.energy_posterior == "energy" and self.include_forces and not self._direct

    @property
    def n_members(self) -> int:
        return self.n_samples

    def members_hint(self, *, forces: bool = False) -> str:
        return ("LastLayerLaplace(..., n_samples=16, force_variance='samples'"
                + (", energy_posterior='joint')" if forces else ")"))

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
        return not self._separate_energy_posterior and not self._direct

    def _maximise_evidence(self, stats: dict, *,
                           direct: bool = False) -> tuple[float, float, float, float]:
        """(lambda, sigma_E, sigma_F, log evidence): the free ones maximise the evidence.

        Force rows enter when ``stats["N_F"] > 0``. ``direct``: the "energy"
        rows of ``stats`` are the direct head's force rows, the weights its
        readout's and the noise ``forces_noise`` (fixed if given).
        """
        theta = torch.as_tensor(self._direct_theta() if direct else self._theta(),
                                dtype=torch.float64)
        fixed_noise = self.forces_noise if direct else self.energy_noise
        t = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in stats.items()}
        t["N_E"], t["N_F"] = stats["N_E"], stats["N_F"]
        rms_e = math.sqrt(stats["R_E"] / max(stats["N_E"], 1)) or 1e-3
        rms_f = math.sqrt(stats["R_F"] / max(stats["N_F"], 1)) if stats["N_F"] else 1.0
        lam0 = 1.0 if self.prior_precision == "auto" else float(self.prior_precision)
        init = [math.log(lam0), math.log(fixed_noise or rms_e), math.log(self.forces_noise or rms_f or 1e-3)]
        free = [
            self.prior_precision == "auto",
            fixed_noise is None,
            self.forces_noise is None and stats["N_F"] > 0,
        ]
        if any(free):
            from scipy.optimize import minimize

            fixed = torch.tensor(init, dtype=torch.float64)
            mask = torch.tensor(free)

            def objective(x):
                params = fixed.clone()
                xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
                params = params.masked_scatter(mask, xt)
                value = -log_marginal_likelihood(params, t, theta)
                (grad,) = torch.autograd.grad(value, xt)
                return float(value.detach()), grad.numpy()

            x0 = np.array([v for v, f in zip(init, free) if f])
            result = minimize(objective, x0, jac=True, method="L-BFGS-B",
                              bounds=[(-30.0, 30.0)] * len(x0))
            values = iter(result.x)
            init = [next(values) if f else v for v, f in zip(init, free)]
            log.info("LLPR marginal likelihood optimisation: %s", result.message)
        lml = float(log_marginal_likelihood(torch.tensor(init, dtype=torch.float64), t, theta))
        return (float(math.exp(init[0])), float(math.exp(init[1])), float(math.exp(init[2])), lml)

    def _posterior(self, precision: np.ndarray, z: np.ndarray,
                   theta: Optional[np.ndarray] = None) -> tuple:
        """(covariance, samples (K, d), jitter) of N(theta*, precision^-1); ``z`` is (d, K).

        ``theta``: the mean (default: the energy readout's parameters)."""
        factor, jitter = cholesky_with_jitter(precision)
        inv_factor = np.linalg.solve(factor, np.eye(len(precision)))  # L^{-1}
        theta = self._theta() if theta is None else theta
        # theta_s = theta* + L^{-T} z has covariance P^{-1}
        samples = (theta[:, None] + np.linalg.solve(factor.T, z)).T
        return inv_factor.T @ inv_factor, samples, jitter

    def _factorise(self) -> None:
        d = self.gn_energy_.shape[0]
        precision = self.gn_energy_ / self.energy_noise_**2 + self.prior_precision_ * np.eye(d)
        if self.include_forces and self.forces_noise_ is not None and not self._direct:
            precision = precision + self.gn_forces_ / self.forces_noise_**2
        rng = np.random.default_rng(self.seed)
        z = rng.standard_normal((d, self.n_samples))
        self.precision_ = precision
        self.covariance_, self.samples_, self.jitter_ = self._posterior(precision, z)
        if self._direct:  # the direct readout's own posterior, its normals drawn next
            c = self.gn_direct_.shape[0]
            direct_precision = (self.gn_direct_ / self.forces_noise_**2
                                + self.direct_prior_precision_ * np.eye(c))
            self.direct_precision_ = direct_precision
            self.direct_covariance_, self.direct_samples_, self.direct_jitter_ = self._posterior(
                direct_precision, rng.standard_normal((c, self.n_samples)), self._direct_theta())
            self.jitter_ = max(self.jitter_, self.direct_jitter_)
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

    def _predict_batch(self, batch: mdata.Batch, stress: bool = False) -> dict:
        if self._direct:
            return self._predict_direct(batch, stress)
        if self.model.has_direct_forces:  # the posterior is on -dE/dr, whatever the mode now
            with self.model.using_force_mode("conservative"):
                return self._predict_conservative(batch, stress)
        return self._predict_conservative(batch, stress)

    def _energy_part(self, out: dict, batch: mdata.Batch) -> tuple[dict, torch.Tensor]:
        """Energies, their variance, local variances and members; and the rows ``f``."""
        phi = out["features"].detach()
        cov_e = torch.as_tensor(self.energy_covariance_, dtype=torch.float64, device=phi.device)
        f = self._structure_features(phi, batch)
        atom = self._atom_features(phi)
        result = {
            "energy": out["energy"].detach(),
            "energy_var": torch.einsum("bi,ij,bj->b", f, cov_e, f),
            "atom_energy_var": torch.einsum("ni,ij,nj->n", atom, cov_e, atom),
        }
        if self.n_samples > 0:
            samples = torch.as_tensor(self.energy_samples_, dtype=torch.float64,
                                      device=phi.device)
            theta = torch.as_tensor(self._theta(), dtype=torch.float64, device=phi.device)
            result["energy_members"] = result["energy"][None, :] + (samples - theta) @ f.T
        return result, f

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
        phi, dev, n = out["features"], out["features"].device, batch.n_structures
        stress = out["stress"].detach().to(torch.float64)
        volume = structure_volumes(batch).to(torch.float64)
        theta = torch.as_tensor(self._theta(), dtype=torch.float64, device=dev)
        result = {"stress": stress}
        if self.force_variance == "exact":
            eye = torch.eye(phi.shape[1], dtype=phi.dtype, device=dev)
            jac = strain_vjps(phi, out["strain"], eye, vectorize=self.vectorize)  # (F, B, 3, 3)
            s = jac.to(torch.float64).reshape(jac.shape[0], n, 9).permute(1, 2, 0)
            s = s / volume[:, None, None]
            if self._has_bias:
                s = torch.cat([s, torch.zeros(n, 9, 1, dtype=torch.float64, device=dev)], dim=2)
            cov = torch.as_tensor(self.covariance_, dtype=torch.float64, device=dev)
            result["stress_var"] = torch.einsum("bri,ij,brj->br", s, cov, s).reshape(n, 3, 3)
            if self.n_samples > 0:
                delta = torch.as_tensor(self.samples_, dtype=torch.float64, device=dev) - theta
                result["stress_members"] = (
                    stress[None] + torch.einsum("brd,kd->kbr", s, delta).reshape(-1, n, 3, 3))
            return result
        samples = torch.as_tensor(self.samples_, dtype=phi.dtype, device=dev)
        delta_w = (samples - theta.to(phi.dtype))[:, : phi.shape[1]]  # the bias has no stress
        grads = strain_vjps(phi, out["strain"], delta_w, vectorize=self.vectorize)
        members = stress[None] + grads.detach().to(torch.float64) / volume[None, :, None, None]
        result.update({"stress_members": members,
                       "stress_var": members.var(dim=0, unbiased=False)})
        return result

    def _predict_conservative(self, batch: mdata.Batch, stress: bool) -> dict:
        out = self.model(batch, forces=True, stress=stress, features=True)
        phi = out["features"]
        cov = torch.as_tensor(self.covariance_, dtype=torch.float64, device=phi.device)
        cov_e = torch.as_tensor(self.energy_covariance_, dtype=torch.float64, device=phi.device)
        f = self._structure_features(phi.detach(), batch)
        atom = self._atom_features(phi.detach())
        result = {
            "energy": out["energy"].detach(),
            "energy_var": torch.einsum("bi,ij,bj->b", f, cov_e, f),
            "forces": out["forces"].detach(),
            "atom_energy_var": torch.einsum("ni,ij,nj->n", atom, cov_e, atom),
        }
        if self.n_samples > 0:
            samples = torch.as_tensor(self.energy_samples_, dtype=torch.float64,
                                      device=phi.device)
            theta = torch.as_tensor(self._theta(), dtype=torch.float64, device=phi.device)
            # E_k = E* + f·(theta_k - theta*): exact for a model linear in theta
            result["energy_members"] = result["energy"][None, :] + (samples - theta) @ f.T
        if stress:
            result.update(self._forces_and_stress(phi, out, batch, cov))
        elif self.force_variance == "exact":
            g = self._force_features(phi, out["positions"])
            var = torch.einsum("ri,ij,rj->r", g, cov, g)
            result["forces_var"] = var.reshape(-1, 3)
        else:
            result.update(self._sampled_forces(phi, out, batch))
        return result

    def _sampled_forces(self, phi, out, batch) -> dict:
        """Forces of the posterior samples: F_k = F* - d(sum_i dw_k . phi_i)/dr."""
        samples = torch.as_tensor(self.samples_, dtype=phi.dtype, device=phi.device)
        theta = torch.as_tensor(self._theta(), dtype=phi.dtype, device=phi.device)
        delta_w = (samples - theta)[:, : phi.shape[1]]  # (K, F); the bias has no force
        grads = feature_vjps(phi, out["positions"], delta_w, vectorize=self.vectorize)
        members = out["forces"].detach()[None].to(torch.float64) - grads.detach().to(
            torch.float64
        )
        return {
            "forces_members": members,
            "forces_var": members.var(dim=0, unbiased=False),
        }

    def _forces_and_stress(self, phi, out, batch, cov) -> dict:
        """Force variance (and members) as without stress, plus ``stress``,
        ``stress_var`` and ``stress_members`` from the joint posterior (module notes):
        the strain derivatives come out of the same backward passes as the forces'."""
        n, dev = batch.n_structures, phi.device
        stress = out["stress"].detach().to(torch.float64)
        theta = torch.as_tensor(self._theta(), dtype=torch.float64, device=dev)
        result = {"stress": stress}
        if self.force_variance == "exact":
            g, s = self._force_and_strain_features(phi, out, batch)
            result["forces_var"] = torch.einsum("ri,ij,rj->r", g, cov, g).reshape(-1, 3)
            result["stress_var"] = torch.einsum("bri,ij,brj->br", s, cov, s).reshape(n, 3, 3)
            if self.n_samples > 0:  # sigma_k = sigma* + s (theta_k - theta*): linear in theta
                delta = torch.as_tensor(self.samples_, dtype=torch.float64, device=dev) - theta
                result["stress_members"] = (
                    stress[None] + torch.einsum("brd,kd->kbr", s, delta).reshape(-1, n, 3, 3)
                )
            return result
        samples = torch.as_tensor(self.samples_, dtype=phi.dtype, device=dev)
        delta_w = (samples - theta.to(phi.dtype))[:, : phi.shape[1]]  # the bias has no force
        grads, grads_strain = feature_vjps_strain(phi, out["positions"], out["strain"], delta_w,
                                                  vectorize=self.vectorize)
        members = out["forces"].detach()[None].to(torch.float64) - grads.detach().to(
            torch.float64)
        volume = structure_volumes(batch).to(torch.float64)
        stress_members = stress[None] + (grads_strain.detach().to(torch.float64)
                                         / volume[None, :, None, None])
        result.update({
            "forces_members": members,
            "forces_var": members.var(dim=0, unbiased=False),
            "stress_members": stress_members,
            "stress_var": stress_members.var(dim=0, unbiased=False),
        })
        return result

    # ------------------------------------------------ selection protocol
    def design_matrix(self, structures, *, batch_size: int = 32,
                      progress: bool = False) -> np.ndarray:
        """(B, D) float64 energy rows ``f`` of the structures: the energy is ``θ·f``.

        ``f`` is the sum of the last-layer features over the structure's atoms,
        with the atom count appended when the readout has a bias. Computed
        without forces, in batches (memory bounded by one batch).
        """
        self._check_fitted()
        dataset = mdata.as_dataset(structures)
        rows = [f.cpu().numpy() for _, f in self._energy_rows(dataset, batch_size, progress)]
        return np.concatenate(rows).astype(np.float64)

    @torch.no_grad()
    def _energy_rows(self, dataset: mdata.AtomsDataset, batch_size: int, progress: bool = False):
        """Per batch, without forces: (energies (b,) eV, energy rows f (b, D) float64)."""
        dataset.validate(self.species)
        batches = mdata.iter_batches(dataset, self.cutoff, batch_size, species=self.species,
                                     dtype=self.dtype)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=-(-len(dataset) // batch_size),
                           desc="LLPR energy rows", unit="batch")
        self.model.eval()
        for _, batch in batches:
            out = self.model(batch.to(device=self.model.device), forces=False, features=True)
            yield out["energy"], self._structure_features(out["features"], batch)

    def energy_posterior_covariance(self) -> tuple[np.ndarray, float]:
        """``(Σ, σ²)``: the (D, D) posterior covariance of the readout weights behind
        the energy variances ``predict`` reports (``Var E = f·Σ f``, eV²) and the
        fitted energy noise variance σ² (eV² per structure)."""
        self._check_fitted()
        return self.energy_covariance_, float(self.energy_posterior_["energy_noise"]) ** 2

    def predict_energy(self, structures, *, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Energies (B,) eV and their variance (B,) eV² only: no force pass, no Jacobian.

        The cheapest LLPR query (one forward pass of the base model); the
        energy recalibrator of :meth:`calibrate` is applied, then the
        composition variance (as in :meth:`predict`).
        """
        self._check_fitted()
        dataset = mdata.as_dataset(structures)
        energies, variances = [], []
        cov = torch.as_tensor(self.energy_covariance_, dtype=torch.float64)
        for energy, f in self._energy_rows(dataset, batch_size):
            energies.append(energy.cpu().numpy())
            variances.append(torch.einsum("bi,ij,bj->b", f, cov.to(f.device), f).cpu().numpy())
        energy, var = np.concatenate(energies), np.concatenate(variances)
        if self.calibrated_:
            var = self.recalibrator_.energy_.transform(np.sqrt(var)) ** 2
        counts = mdata.composition_matrix(dataset, self.species)
        return energy, var + self.model.composition_variance(counts)

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
        if not self._separate_energy_posterior:  # the joint posterior, stored once
            del state["energy_covariance_"], state["energy_samples_"]
        if self._direct:  # only then: files of conservative posteriors unchanged
            state.update({name: getattr(self, name) for name in _DIRECT_STATE})
        return state

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
        if self._direct:
            for name in _DIRECT_STATE:
                setattr(self, name, state[name])

