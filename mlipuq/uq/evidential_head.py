"""The evidential head's network and its training objective.

:class:`_NIGHead` maps each atom's readout features to normal-inverse-gamma
parameters for its energy and forces; :class:`EvidentialNLL` trains it (and
optionally the base model) on the NIG negative log marginal likelihood plus the
evidence regulariser (:mod:`mlipuq.uq.nig`). The wrapper that fits, calibrates
and predicts with them is :class:`mlipuq.uq.evidential.EvidentialHead`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from mlipuq import data as mdata
from mlipuq.models.base import MLIP
from mlipuq.training import HeadTrainable, error_statistics, reduce_terms
from mlipuq.uq.nig import aggregate_energy_nig, nig_nll, nig_regularizer

__all__ = ["EvidentialNLL"]

_INIT_BIAS = math.log(math.e - 1.0)  # softplus(_INIT_BIAS) == 1
_FLOOR = 1e-8  # keeps nu, alpha - 1 and beta strictly positive in float64


class _NIGHead(nn.Module):
    """Per-atom features -> per-atom NIG parameters for energies and forces (float64).

    Features are standardised with the training-set mean and std, then a
    linear layer (or a one-hidden-layer MLP) gives raw outputs mapped to
    ``nu = softplus``, ``alpha = 1 + softplus``, ``beta = scale * softplus``.
    ``energy_scale`` (eV^2 per atom) and ``forces_scale`` (eV^2/Å^2) are the
    base model's error variances on the fitting data, so that the initial head
    predicts variances of the right size.

    ``shared=False``: six outputs, three for the energy NIG and three for the
    force NIG of each atom. ``shared=True``: three outputs, one NIG per atom
    (learned from the force components); the atom's energy NIG has the same
    ``nu`` and ``alpha`` and ``beta_E = energy_scale * exp(log_energy_ratio) *
    softplus``, one learned scalar ratio. The energy entries are detached from
    the shared outputs, so the energy loss trains only that ratio.
    """

    def __init__(self, n_features: int, hidden: Optional[int] = None, shared: bool = False):
        super().__init__()
        kw = {"dtype": torch.float64}
        self.shared = bool(shared)
        n_out = 3 if self.shared else 6
        if hidden is None:
            self.net = nn.Linear(n_features, n_out, **kw)
        else:
            self.net = nn.Sequential(
                nn.Linear(n_features, hidden, **kw), nn.SiLU(), nn.Linear(hidden, n_out, **kw)
            )
        last = self.net if hidden is None else self.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, _INIT_BIAS)
        if self.shared:
            self.log_energy_ratio = nn.Parameter(torch.zeros((), **kw))
        self.register_buffer("feature_mean", torch.zeros(n_features, **kw))
        self.register_buffer("feature_scale", torch.ones(n_features, **kw))
        self.register_buffer("energy_scale", torch.ones((), **kw))
        self.register_buffer("forces_scale", torch.ones((), **kw))

    def forward(self, phi: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (phi.to(torch.float64) - self.feature_mean) / self.feature_scale
        sp = F.softplus(self.net(x)) + _FLOOR
        if self.shared:
            shared = sp.detach()
            energy = (shared[:, 0], 1.0 + shared[:, 1],
                      self.energy_scale * torch.exp(self.log_energy_ratio) * shared[:, 2])
            forces = sp
        else:
            energy = (sp[:, 0], 1.0 + sp[:, 1], self.energy_scale * sp[:, 2])
            forces = sp[:, 3:]
        return {
            "energy_nu": energy[0],
            "energy_alpha": energy[1],
            "energy_beta": energy[2],
            "forces_nu": forces[:, 0],
            "forces_alpha": 1.0 + forces[:, 1],
            "forces_beta": self.forces_scale * forces[:, 2],
        }


class EvidentialNLL(HeadTrainable):
    """An evidential head on its base model as a :class:`~mlipuq.training.Trainable`.

    The loss is the one in :class:`~mlipuq.uq.evidential.EvidentialHead`'s notes. With
    ``train_backbone`` the whole base model is trained with the head;
    otherwise it is frozen and the mean is exactly the base model's.
    """

    #: What :func:`~mlipuq.training.train`'s progress bar says is trained.
    description = "EvidentialHead"

    def __init__(self, model: MLIP, head: _NIGHead, *, reg_weight: float, train_backbone: bool,
                 energy_weight: float = 1.0, forces_weight: float = 1.0):
        params = list(model.parameters())
        super().__init__(
            model, head, need_forces=forces_weight > 0,
            backbone=[p for p in params if p.requires_grad] if train_backbone else [],
            frozen=[] if train_backbone else params,
        )
        self.reg_weight = reg_weight
        self.train_backbone = train_backbone
        self.energy_weight, self.forces_weight = energy_weight, forces_weight

    def loss(self, batch: mdata.Batch, *, create_graph: bool, denominators=None):
        backbone = self.train_backbone
        out = self.model(batch, forces=self.need_forces, features=True,
                         create_graph=create_graph and backbone)
        params = self.run_head(out["features"] if backbone else out["features"].detach())
        n = batch.n_atoms.to(torch.float64)
        energy = out["energy"] if backbone else out["energy"].detach()
        nu, alpha, beta = aggregate_energy_nig(
            params["energy_nu"], params["energy_alpha"], params["energy_beta"],
            batch.batch, batch.n_structures,
        )
        y = batch.energy.to(torch.float64) / n
        gamma = energy / n
        energy_term = nig_nll(y, gamma, nu, alpha, beta / n**2) + self.reg_weight * (
            nig_regularizer(y, gamma, nu, alpha)
        )
        loss = self.energy_weight * reduce_terms(energy_term, denominators, "structures")
        if not self.need_forces:
            return loss, error_statistics(gamma - y)
        forces = out["forces"].to(torch.float64)
        if not backbone:
            forces = forces.detach()
        yf = batch.forces.to(torch.float64)
        nu_f = params["forces_nu"].unsqueeze(1)
        alpha_f = params["forces_alpha"].unsqueeze(1)
        beta_f = params["forces_beta"].unsqueeze(1)
        forces_term = nig_nll(yf, forces, nu_f, alpha_f, beta_f) + self.reg_weight * (
            nig_regularizer(yf, forces, nu_f, alpha_f)
        )
        loss = loss + self.forces_weight * reduce_terms(forces_term, denominators, "components")
        return loss, error_statistics(gamma - y, forces - yf)
