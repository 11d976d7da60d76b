"""The NIG maths of :mod:`mlipuq.uq.nig` behind the evidential head: its NLL is a
Student-t log density, rescales exactly to per-atom energies, and per-atom NIGs
aggregate to a structure's by their moments."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

from mlipuq.uq.evidential import aggregate_energy_nig, nig_nll, nig_regularizer, nig_variances


def _nig_draws():
    y = torch.tensor([0.3, -1.2, 2.5, 0.0, 10.0], dtype=torch.float64)
    gamma = torch.tensor([0.1, -1.0, 0.5, 0.0, 9.0], dtype=torch.float64)
    nu = torch.tensor([0.5, 2.0, 0.1, 1.0, 7.0], dtype=torch.float64)
    alpha = torch.tensor([1.5, 3.0, 1.1, 2.0, 10.0], dtype=torch.float64)
    beta = torch.tensor([0.2, 1.0, 3.0, 0.01, 4.0], dtype=torch.float64)
    return y, gamma, nu, alpha, beta


def test_nig_nll_is_student_t_log_density():
    y, gamma, nu, alpha, beta = _nig_draws()
    nll = nig_nll(y, gamma, nu, alpha, beta).numpy()
    scale = np.sqrt((beta * (1 + nu) / (nu * alpha)).numpy())
    expected = -stats.t.logpdf(y.numpy(), df=2 * alpha.numpy(), loc=gamma.numpy(), scale=scale)
    np.testing.assert_allclose(nll, expected, rtol=1e-12, atol=1e-12)


def test_nig_nll_rescales_exactly_to_per_atom():
    # y/n is NIG(gamma/n, nu, alpha, beta/n^2): the NLL only shifts by log n
    y, gamma, nu, alpha, beta = _nig_draws()
    n = 9.0
    per_atom = nig_nll(y / n, gamma / n, nu, alpha, beta / n**2)
    whole = nig_nll(y, gamma, nu, alpha, beta) - math.log(n)
    np.testing.assert_allclose(per_atom.numpy(), whole.numpy(), rtol=1e-12)


def test_regularizer_and_variance_formulas():
    y, gamma, nu, alpha, beta = _nig_draws()
    reg = nig_regularizer(y, gamma, nu, alpha)
    np.testing.assert_allclose(reg.numpy(), (torch.abs(y - gamma) * (2 * nu + alpha)).numpy())
    alea, epi = nig_variances(nu, alpha, beta)
    np.testing.assert_allclose(alea.numpy(), (beta / (alpha - 1)).numpy())
    np.testing.assert_allclose(epi.numpy(), (beta / (nu * (alpha - 1))).numpy())
    # aleatoric + epistemic is the Student-t marginal's variance
    scale = np.sqrt((beta * (1 + nu) / (nu * alpha)).numpy())
    t_var = stats.t.var(df=2 * alpha.numpy(), scale=scale)
    np.testing.assert_allclose((alea + epi).numpy(), t_var, rtol=1e-12)


def test_aggregation_matches_moments_and_is_extensive():
    _, _, nu, alpha, beta = _nig_draws()
    batch = torch.tensor([0, 0, 0, 1, 1])
    nu_s, alpha_s, beta_s = aggregate_energy_nig(nu, alpha, beta, batch, 2)
    alea, epi = nig_variances(nu, alpha, beta)
    alea_s, epi_s = nig_variances(nu_s, alpha_s, beta_s)
    np.testing.assert_allclose(alea_s.numpy(), [alea[:3].sum(), alea[3:].sum()], rtol=1e-12)
    np.testing.assert_allclose(epi_s.numpy(), [epi[:3].sum(), epi[3:].sum()], rtol=1e-12)
    np.testing.assert_allclose(alpha_s.numpy(), [alpha[:3].mean(), alpha[3:].mean()])
    # one structure made of two copies of structure 0: variances double, nu and alpha stay
    doubled = aggregate_energy_nig(
        torch.cat([nu[:3], nu[:3]]), torch.cat([alpha[:3], alpha[:3]]),
        torch.cat([beta[:3], beta[:3]]), torch.zeros(6, dtype=torch.long), 1,
    )
    np.testing.assert_allclose(doubled[0].numpy(), nu_s[:1].numpy(), rtol=1e-12)
    np.testing.assert_allclose(doubled[1].numpy(), alpha_s[:1].numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        nig_variances(*doubled)[0].numpy(), 2 * alea_s[:1].numpy(), rtol=1e-12
    )
    # one atom: the structure NIG is the atom's
    single = aggregate_energy_nig(nu[:1], alpha[:1], beta[:1], torch.zeros(1, dtype=torch.long), 1)
    for got, want in zip(single, (nu[:1], alpha[:1], beta[:1])):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)
