"""Posterior maths of the last-layer Laplace on its sufficient statistics.

Responsibility: everything :class:`~mlipuq.uq.llpr.LastLayerLaplace` computes
from the Gram matrices, squared residuals and counts of a fit, without the
model: the Laplace marginal likelihood (evidence) and its maximisation over
the prior precision and the noise levels (MacKay 1992; Immer et al. 2021),
Gaussian posteriors from a precision matrix (Cholesky with jitter, samples),
and the packing of the statistics into one vector for the all-reduce of a
distributed fit.

The statistics are a dict ``{"G_E": (d, d), "G_F": (d, d), "R_E", "R_F",
"N_E", "N_F"}`` (and ``"G_V"`` (C, C) for a direct force head): Gram
matrices of the energy and force rows, residual sums of squares of the
trained model and the numbers of energies and force components.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Union

import numpy as np
import torch

#: The logger of :mod:`mlipuq.uq.llpr`, whose messages these were.
log = logging.getLogger("mlipuq.uq.llpr")


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


def gaussian_posterior(precision: np.ndarray, z: np.ndarray,
                       theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(covariance, samples (K, d), jitter) of N(theta, precision^-1); ``z`` is (d, K)
    standard normals."""
    factor, jitter = cholesky_with_jitter(precision)
    inv_factor = np.linalg.solve(factor, np.eye(len(precision)))  # L^{-1}
    # theta_s = theta* + L^{-T} z has covariance P^{-1}
    samples = (theta[:, None] + np.linalg.solve(factor.T, z)).T
    return inv_factor.T @ inv_factor, samples, jitter


def log_marginal_likelihood(
    log_params: torch.Tensor,
    eig_stats: dict,
    theta: torch.Tensor,
    refit: bool = False,
) -> torch.Tensor:
    """Laplace log marginal likelihood for ``log_params = (log lambda, log sigma_E, log sigma_F)``.

    .. math:: \\log p(D) \\approx -\\tfrac{1}{2}\\big(N_E \\log 2\\pi\\sigma_E^2
       + R_E/\\sigma_E^2 + N_F \\log 2\\pi\\sigma_F^2 + R_F/\\sigma_F^2\\big)
       - \\tfrac{\\lambda}{2}\\lVert\\theta\\rVert^2
       - \\tfrac{1}{2}\\log\\det P + \\tfrac{d}{2}\\log\\lambda

    with residual sums of squares ``R`` of the trained model and counts ``N``.

    ``refit=True`` (the statistics then hold the cross terms ``b_E``, ``b_F``):
    the exact evidence of Bayesian linear regression on the rows, evaluated
    at the posterior mean :math:`\\theta^* + \\Delta` of these hyperparameters
    (:func:`posterior_mean_step`), whose residual sums are
    :math:`R - 2 b\\cdot\\Delta + \\Delta^T G \\Delta`.
    """
    lam = torch.exp(log_params[0])
    var_e = torch.exp(2 * log_params[1])
    var_f = torch.exp(2 * log_params[2])
    d = theta.shape[0]
    forces = eig_stats["N_F"] > 0
    precision = eig_stats["G_E"] / var_e + lam * torch.eye(d, dtype=torch.float64)
    if forces:
        precision = precision + eig_stats["G_F"] / var_f
    r_e, r_f = eig_stats["R_E"], eig_stats["R_F"]
    if refit:
        delta = posterior_mean_step(precision, eig_stats, theta, lam, var_e, var_f)
        r_e = r_e - 2 * eig_stats["b_E"] @ delta + delta @ eig_stats["G_E"] @ delta
        r_f = r_f - 2 * eig_stats["b_F"] @ delta + delta @ eig_stats["G_F"] @ delta
        theta = theta + delta
    loglik = -0.5 * (eig_stats["N_E"] * torch.log(2 * math.pi * var_e) + r_e / var_e)
    if forces:
        loglik = loglik - 0.5 * (eig_stats["N_F"] * torch.log(2 * math.pi * var_f) + r_f / var_f)
    logdet = torch.linalg.slogdet(precision)[1]
    return loglik - 0.5 * lam * (theta @ theta) - 0.5 * logdet + 0.5 * d * torch.log(lam)


def posterior_mean_step(precision, stats: dict, theta, lam, var_e, var_f):
    """Δ with θ* + Δ the posterior mean of the readout (float64 torch tensors).

    The outputs are linear in θ with rows f (energies) and g (forces); the
    residuals of the trained θ* enter through the cross terms
    ``b_E = Σ f (E_ref − E*)``, ``b_F = Σ g (F_ref − F*)``. One Newton step of
    the log posterior (prior N(0, λ⁻¹ I)) is exact for a linear model:

    .. math:: \\Delta = P^{-1}\\,(b_E/\\sigma_E^2 + b_F/\\sigma_F^2 - \\lambda\\,\\theta^*).

    Force terms enter when ``stats["N_F"] > 0``.
    """
    rhs = stats["b_E"] / var_e - lam * theta
    if stats["N_F"] > 0:
        rhs = rhs + stats["b_F"] / var_f
    return torch.linalg.solve(precision, rhs)


def maximise_evidence(
    stats: dict,
    theta: np.ndarray,
    *,
    prior_precision: Union[str, float],
    noise: Optional[float],
    forces_noise: Optional[float],
    refit: bool = False,
) -> tuple[float, float, float, float]:
    """(lambda, sigma_E, sigma_F, log evidence): the free ones maximise the evidence.

    ``theta``: the readout parameters at the mode. ``prior_precision``:
    ``"auto"`` (free) or a fixed λ; ``noise``: the fixed noise std of the
    "energy" rows of ``stats`` (None: free); ``forces_noise``: that of the
    force rows, which enter when ``stats["N_F"] > 0`` (None: free). Free
    parameters start at λ = 1 and at the root mean square residuals.
    ``refit``: the evidence at the posterior mean (see
    :func:`log_marginal_likelihood`), for ``refit_mean=True``.
    """
    theta = torch.as_tensor(theta, dtype=torch.float64)
    t = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in stats.items()}
    t["N_E"], t["N_F"] = stats["N_E"], stats["N_F"]
    rms_e = math.sqrt(stats["R_E"] / max(stats["N_E"], 1)) or 1e-3
    rms_f = math.sqrt(stats["R_F"] / max(stats["N_F"], 1)) if stats["N_F"] else 1.0
    lam0 = 1.0 if prior_precision == "auto" else float(prior_precision)
    init = [math.log(lam0), math.log(noise or rms_e), math.log(forces_noise or rms_f or 1e-3)]
    free = [
        prior_precision == "auto",
        noise is None,
        forces_noise is None and stats["N_F"] > 0,
    ]
    if any(free):
        init = _optimise(init, free, t, theta, refit)
    lml = float(log_marginal_likelihood(torch.tensor(init, dtype=torch.float64), t, theta,
                                        refit))
    return (float(math.exp(init[0])), float(math.exp(init[1])), float(math.exp(init[2])), lml)


def _optimise(init: list, free: list, t: dict, theta: torch.Tensor, refit: bool = False) -> list:
    """``init`` with its ``free`` entries replaced by the L-BFGS-B maximiser of the evidence."""
    from scipy.optimize import minimize

    fixed = torch.tensor(init, dtype=torch.float64)
    mask = torch.tensor(free)

    def objective(x):
        params = fixed.clone()
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        params = params.masked_scatter(mask, xt)
        value = -log_marginal_likelihood(params, t, theta, refit)
        (grad,) = torch.autograd.grad(value, xt)
        return float(value.detach()), grad.numpy()

    x0 = np.array([v for v, f in zip(init, free) if f])
    result = minimize(objective, x0, jac=True, method="L-BFGS-B",
                      bounds=[(-30.0, 30.0)] * len(x0))
    values = iter(result.x)
    log.info("LLPR marginal likelihood optimisation: %s", result.message)
    return [next(values) if f else v for v, f in zip(init, free)]


def _pack_stats(stats: dict) -> np.ndarray:
    """The fit's sufficient statistics as one float64 vector (for one all-reduce)."""
    direct = [stats["G_V"].ravel()] if "G_V" in stats else []
    cross = [stats["b_E"], stats["b_F"]] if "b_E" in stats else []
    return np.concatenate([stats["G_E"].ravel(), stats["G_F"].ravel()] + direct + cross
                          + [[stats["R_E"], stats["R_F"], stats["N_E"], stats["N_F"]]])


def _unpack_stats(vector: np.ndarray, d: int, c: int = 0, cross: bool = False) -> dict:
    """Inverse of :func:`_pack_stats`; ``c``: size of the direct-head Gram matrix (0: none);
    ``cross``: the vector holds the cross terms ``b_E``, ``b_F`` (d each)."""
    g_e, g_f = vector[: d * d].reshape(d, d), vector[d * d: 2 * d * d].reshape(d, d)
    end = 2 * d * d + c * c
    r_e, r_f, n_e, n_f = vector[end + 2 * d * cross:]
    # counts are sums of integers below 2**53: exact in float64
    stats = {"G_E": g_e, "G_F": g_f, "R_E": float(r_e), "R_F": float(r_f),
             "N_E": int(round(n_e)), "N_F": int(round(n_f))}
    if c:
        stats["G_V"] = vector[2 * d * d: end].reshape(c, c)
    if cross:
        stats["b_E"], stats["b_F"] = vector[end: end + d], vector[end + d: end + 2 * d]
    return stats
