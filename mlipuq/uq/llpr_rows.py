"""Rows of the last-layer linearisation, and the force and stress members.

Responsibility: the feature rows in which the outputs of a model are linear
in its readout parameters ``theta = (w, b)`` (:mod:`mlipuq.uq.llpr`), the
stress variances they give, and the forces and stresses of posterior samples
of the readout (vector-Jacobian products). With per-atom features ``phi_i``
(N, F) of a batch:

* energy rows ``f = (sum_i phi_i, n_atoms)`` (B, D), one per structure;
* per-atom rows ``(phi_i, 1)`` (N, D);
* force rows ``g_ac = -(d sum phi / d r_ac, 0)`` (3N, D), one per component;
* strain rows ``s_ab = (d sum phi / d eps_ab / V, 0)`` (B, 9, D), the stress
  per unit parameter (the atom count, hence the bias, has no derivative).

``D = F + has_bias``; rows are float64. Force and strain rows come from F
vector-Jacobian products of the features (:mod:`mlipuq.uq.jacobians`).

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
"""

from __future__ import annotations

import torch

from mlipuq import data as mdata
from mlipuq.models.base import structure_volumes
from mlipuq.uq.jacobians import feature_vjps, feature_vjps_strain, strain_vjps


def _sum_per_structure(x: torch.Tensor, batch: mdata.Batch) -> torch.Tensor:
    out = torch.zeros(batch.n_structures, x.shape[1], dtype=x.dtype, device=x.device)
    return out.index_add_(0, batch.batch, x)


def structure_rows(phi: torch.Tensor, batch: mdata.Batch, has_bias: bool) -> torch.Tensor:
    """(B, D) energy rows ``f``: the energy of a structure is ``theta · f``."""
    f = _sum_per_structure(phi.to(torch.float64), batch)
    if has_bias:
        f = torch.cat([f, batch.n_atoms.to(torch.float64)[:, None]], dim=1)
    return f


def atom_rows(phi: torch.Tensor, has_bias: bool) -> torch.Tensor:
    """(N, D) per-atom rows ``(phi_i, 1)``: the energy of atom i is ``theta · row_i``."""
    phi = phi.to(torch.float64)
    if has_bias:
        ones = torch.ones(len(phi), 1, dtype=torch.float64, device=phi.device)
        phi = torch.cat([phi, ones], dim=1)
    return phi


def force_rows(jac: torch.Tensor, has_bias: bool) -> torch.Tensor:
    """(N*3, D) force rows from the (F, N, 3) Jacobian of ``sum_i phi_i``."""
    g = -jac.to(torch.float64).reshape(jac.shape[0], -1).T
    if has_bias:
        g = torch.cat([g, torch.zeros(len(g), 1, dtype=torch.float64, device=g.device)], dim=1)
    return g


def force_features(phi: torch.Tensor, positions: torch.Tensor, has_bias: bool,
                   vectorize="auto") -> torch.Tensor:
    """(N*3, D) rows g_ac = -(d sum phi / d r_ac, 0): F backward passes."""
    eye = torch.eye(phi.shape[1], dtype=phi.dtype, device=phi.device)
    jac = feature_vjps(phi, positions, eye, vectorize=vectorize)  # (F, N, 3)
    return force_rows(jac, has_bias)


def _strain_rows(jac_strain: torch.Tensor, batch: mdata.Batch, has_bias: bool) -> torch.Tensor:
    """(B, 9, D) strain rows from the (F, B, 3, 3) strain Jacobian of ``sum_i phi_i``."""
    volume = structure_volumes(batch).to(torch.float64)
    s = jac_strain.to(torch.float64).reshape(jac_strain.shape[0], -1, 9).permute(1, 2, 0)
    s = s / volume[:, None, None]
    if has_bias:
        s = torch.cat([s, torch.zeros(s.shape[0], 9, 1, dtype=torch.float64,
                                      device=s.device)], dim=2)
    return s


def strain_rows(phi: torch.Tensor, strain: torch.Tensor, batch: mdata.Batch, has_bias: bool,
                vectorize="auto") -> torch.Tensor:
    """(B, 9, D) strain rows alone (F backward passes to the strain leaf)."""
    eye = torch.eye(phi.shape[1], dtype=phi.dtype, device=phi.device)
    jac = strain_vjps(phi, strain, eye, vectorize=vectorize)  # (F, B, 3, 3)
    return _strain_rows(jac, batch, has_bias)


def force_and_strain_rows(phi: torch.Tensor, out: dict, batch: mdata.Batch, has_bias: bool,
                          vectorize="auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(N*3, D) force rows (as :func:`force_features`) and (B, 9, D) strain rows,
    from the same F backward passes (``out``: the model's outputs with
    ``"positions"`` and ``"strain"``)."""
    eye = torch.eye(phi.shape[1], dtype=phi.dtype, device=phi.device)
    jac, jac_strain = feature_vjps_strain(phi, out["positions"], out["strain"], eye,
                                          vectorize=vectorize)  # (F, N, 3), (F, B, 3, 3)
    return force_rows(jac, has_bias), _strain_rows(jac_strain, batch, has_bias)


def stress_from_rows(stress: torch.Tensor, s: torch.Tensor, cov: torch.Tensor,
                     samples, theta: torch.Tensor) -> dict:
    """``stress_var`` (B, 3, 3), diag(s Σ sᵀ), and with ``samples`` (K, D) (None: no
    members) ``stress_members`` (K, B, 3, 3), σ_k = σ* + s (θ_k − θ*): exact, the
    stress is linear in θ."""
    n = s.shape[0]
    result = {"stress_var": torch.einsum("bri,ij,brj->br", s, cov, s).reshape(n, 3, 3)}
    if samples is not None:
        delta = torch.as_tensor(samples, dtype=torch.float64, device=s.device) - theta
        result["stress_members"] = (
            stress[None] + torch.einsum("brd,kd->kbr", s, delta).reshape(-1, n, 3, 3))
    return result


def sampled_forces(phi: torch.Tensor, out: dict, delta_w: torch.Tensor,
                   vectorize="auto") -> dict:
    """Forces of the posterior samples, F_k = F* - d(sum_i dw_k . phi_i)/dr, and their
    variance; ``delta_w`` (K, F): the samples' feature weights minus the mode's."""
    grads = feature_vjps(phi, out["positions"], delta_w, vectorize=vectorize)
    members = out["forces"].detach()[None].to(torch.float64) - grads.detach().to(
        torch.float64
    )
    return {
        "forces_members": members,
        "forces_var": members.var(dim=0, unbiased=False),
    }


def sampled_forces_and_stress(phi: torch.Tensor, out: dict, batch: mdata.Batch,
                              delta_w: torch.Tensor, vectorize="auto") -> dict:
    """:func:`sampled_forces` plus the samples' stresses and their variance, from the
    same K backward passes (to the positions and the strain together)."""
    stress = out["stress"].detach().to(torch.float64)
    grads, grads_strain = feature_vjps_strain(phi, out["positions"], out["strain"], delta_w,
                                              vectorize=vectorize)
    members = out["forces"].detach()[None].to(torch.float64) - grads.detach().to(
        torch.float64)
    volume = structure_volumes(batch).to(torch.float64)
    stress_members = stress[None] + (grads_strain.detach().to(torch.float64)
                                     / volume[None, :, None, None])
    return {
        "forces_members": members,
        "forces_var": members.var(dim=0, unbiased=False),
        "stress_members": stress_members,
        "stress_var": stress_members.var(dim=0, unbiased=False),
    }


def sampled_stress(phi: torch.Tensor, out: dict, batch: mdata.Batch, delta_w: torch.Tensor,
                   vectorize="auto") -> dict:
    """Stresses of the posterior samples and their variance (K backward passes to
    the strain alone; for heads whose forces are not energy gradients)."""
    stress = out["stress"].detach().to(torch.float64)
    volume = structure_volumes(batch).to(torch.float64)
    grads = strain_vjps(phi, out["strain"], delta_w, vectorize=vectorize)
    members = stress[None] + grads.detach().to(torch.float64) / volume[None, :, None, None]
    return {"stress_members": members, "stress_var": members.var(dim=0, unbiased=False)}
