"""Normal-inverse-gamma (NIG) maths of deep evidential regression (Amini et al. 2020).

The formulas used by :class:`mlipuq.uq.evidential.EvidentialHead`, in float64:
the Student-t negative log marginal likelihood, the evidence regulariser, the
aleatoric/epistemic variance split and the moment-matched aggregation of
per-atom energy evidence into one NIG per structure (``docs/evidential.md``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["aggregate_energy_nig", "nig_nll", "nig_regularizer", "nig_variances"]


def nig_nll(y, gamma, nu, alpha, beta) -> torch.Tensor:
    """Elementwise negative log marginal likelihood of a NIG evidential model.

    .. math:: -\\log p(y) = \\tfrac12 \\log\\frac{\\pi}{\\nu} - \\alpha \\log\\Omega
              + (\\alpha + \\tfrac12) \\log\\big(\\nu (y-\\gamma)^2 + \\Omega\\big)
              + \\log\\frac{\\Gamma(\\alpha)}{\\Gamma(\\alpha + 1/2)},
       \\qquad \\Omega = 2\\beta(1+\\nu),

    which is the negative log density of the Student-t
    :math:`\\mathrm{St}(y; \\gamma, \\beta(1+\\nu)/(\\nu\\alpha), 2\\alpha)`.

    Parameters
    ----------
    y, gamma
        Targets and predicted means (same unit u, e.g. eV or eV/Å).
    nu, alpha, beta
        NIG parameters, ``nu > 0``, ``alpha > 1``, ``beta > 0`` (unit u^2).

    Returns
    -------
    torch.Tensor
        -log p(y) per element (log of 1/u), broadcast shape of the inputs.
    """
    omega = 2.0 * beta * (1.0 + nu)
    return (
        0.5 * torch.log(math.pi / nu)
        - alpha * torch.log(omega)
        + (alpha + 0.5) * torch.log(nu * (y - gamma) ** 2 + omega)
        + torch.lgamma(alpha)
        - torch.lgamma(alpha + 0.5)
    )


def nig_regularizer(y, gamma, nu, alpha) -> torch.Tensor:
    """Evidence regulariser :math:`|y - \\gamma| (2\\nu + \\alpha)` per element (unit of y).

    Penalises evidence (virtual observations) where the error is large
    (Amini et al. 2020, eq. 9 with their "total evidence" ``2 nu + alpha``).
    """
    return (y - gamma).abs() * (2.0 * nu + alpha)


def nig_variances(nu, alpha, beta) -> tuple[torch.Tensor, torch.Tensor]:
    """Aleatoric and epistemic variances of a NIG.

    Aleatoric :math:`E[\\sigma^2] = \\beta/(\\alpha-1)`, epistemic
    :math:`\\mathrm{Var}[\\mu] = \\beta/(\\nu(\\alpha-1))`.
    Both have the unit of ``beta`` (u^2); their sum is the variance of the
    Student-t marginal, :math:`\\beta(1+\\nu)/(\\nu(\\alpha-1))`.
    """
    aleatoric = beta / (alpha - 1.0)
    return aleatoric, aleatoric / nu


def aggregate_energy_nig(nu, alpha, beta, batch, n_structures: int):
    """Combine per-atom energy evidence into one NIG per structure.

    Each atom contributes independent aleatoric
    :math:`a_i = \\beta_i/(\\alpha_i-1)` and epistemic :math:`p_i = a_i/\\nu_i`
    variances to the total energy :math:`E = \\sum_i \\varepsilon_i`, so the
    structure's variances are the sums :math:`A = \\sum_i a_i`,
    :math:`P = \\sum_i p_i` (extensive). The structure-level NIG is the one with
    exactly these two moments and the mean shape of its atoms:

    .. math:: \\alpha = \\frac1n \\sum_i \\alpha_i, \\quad
              \\nu = A / P, \\quad \\beta = (\\alpha - 1) A,

    so that :math:`\\beta/(\\alpha-1) = A` and :math:`\\beta/(\\nu(\\alpha-1)) = P`.
    ``alpha`` (tail weight) and ``nu`` (evidence per unit variance) stay
    intensive; ``beta`` and both variances grow with the number of atoms.
    Sums and means make the result invariant to atom permutations.

    Parameters
    ----------
    nu, alpha, beta
        (N,) per-atom NIG parameters (``beta`` in eV^2).
    batch
        (N,) structure index of every atom.
    n_structures
        Number of structures B.

    Returns
    -------
    tuple of torch.Tensor
        (B,) ``nu``, ``alpha``, ``beta`` (eV^2) of each structure's energy.
    """
    aleatoric, epistemic = nig_variances(nu, alpha, beta)
    zeros = torch.zeros(n_structures, dtype=nu.dtype, device=nu.device)
    total_aleatoric = zeros.index_add(0, batch, aleatoric)
    total_epistemic = zeros.index_add(0, batch, epistemic)
    counts = zeros.index_add(0, batch, torch.ones_like(alpha))
    alpha_s = zeros.index_add(0, batch, alpha) / counts
    nu_s = total_aleatoric / total_epistemic
    beta_s = (alpha_s - 1.0) * total_aleatoric
    return nu_s, alpha_s, beta_s
