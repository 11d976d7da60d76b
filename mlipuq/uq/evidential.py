"""Evidential regression head: a normal-inverse-gamma (NIG) prior on top of a frozen MLIP.

Deep evidential regression (Amini et al., NeurIPS 2020) places a NIG prior on the
mean and variance of a Gaussian likelihood,

.. math:: y \\sim \\mathcal N(\\mu, \\sigma^2), \\quad
          \\mu \\sim \\mathcal N(\\gamma, \\sigma^2/\\nu), \\quad
          \\sigma^2 \\sim \\Gamma^{-1}(\\alpha, \\beta),

and trains a network to output :math:`(\\gamma, \\nu, \\alpha, \\beta)` by the
negative log marginal likelihood (a Student-t,
:math:`\\mathrm{St}(y;\\gamma, \\beta(1+\\nu)/(\\nu\\alpha), 2\\alpha)`) plus the
evidence regulariser :math:`\\lambda |y-\\gamma| (2\\nu + \\alpha)`. The variance
splits into aleatoric :math:`E[\\sigma^2] = \\beta/(\\alpha-1)` and epistemic
:math:`\\mathrm{Var}[\\mu] = \\beta/(\\nu(\\alpha-1))` parts.

:class:`EvidentialHead` follows eIP (Xu et al., 2025): the mean stays the base
model (energy :math:`\\gamma_E = E`, forces :math:`\\gamma_F = -\\partial E/\\partial r`)
and a small head maps each atom's readout features :math:`\\phi_i` to per-atom
evidential parameters for energies and forces. Per-atom energy evidence is
aggregated into one NIG per structure by moment matching (see
:func:`aggregate_energy_nig` and ``docs/evidential.md``).
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mlipuq import data as mdata
from mlipuq.models.base import MLIP
from mlipuq.uq.base import UQWrapper, _check_model, register

log = logging.getLogger(__name__)

_INIT_BIAS = math.log(math.e - 1.0)  # softplus(_INIT_BIAS) == 1
_FLOOR = 1e-8  # keeps nu, alpha - 1 and beta strictly positive in float64

__all__ = [
    "EvidentialHead",
    "aggregate_energy_nig",
    "nig_nll",
    "nig_regularizer",
    "nig_variances",
]


# --------------------------------------------------------------------- NIG maths
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


# ------------------------------------------------------------------------- head
class _NIGHead(nn.Module):
    """Per-atom features -> per-atom NIG parameters for energies and forces (float64).

    Features are standardised with the training-set mean and std, then a
    linear layer (or a one-hidden-layer MLP) gives six raw outputs mapped to
    ``nu = softplus``, ``alpha = 1 + softplus``, ``beta = scale * softplus``
    (energy, then forces). ``energy_scale`` (eV^2 per atom) and
    ``forces_scale`` (eV^2/Å^2) are the base model's training-set error
    variances, so that the initial head predicts variances of the right size.
    """

    def __init__(self, n_features: int, hidden: Optional[int] = None):
        super().__init__()
        kw = {"dtype": torch.float64}
        if hidden is None:
            self.net = nn.Linear(n_features, 6, **kw)
        else:
            self.net = nn.Sequential(
                nn.Linear(n_features, hidden, **kw), nn.SiLU(), nn.Linear(hidden, 6, **kw)
            )
        last = self.net if hidden is None else self.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, _INIT_BIAS)
        self.register_buffer("feature_mean", torch.zeros(n_features, **kw))
        self.register_buffer("feature_scale", torch.ones(n_features, **kw))
        self.register_buffer("energy_scale", torch.ones((), **kw))
        self.register_buffer("forces_scale", torch.ones((), **kw))

    def forward(self, phi: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (phi.to(torch.float64) - self.feature_mean) / self.feature_scale
        raw = self.net(x)
        sp = F.softplus(raw) + _FLOOR
        return {
            "energy_nu": sp[:, 0],
            "energy_alpha": 1.0 + sp[:, 1],
            "energy_beta": self.energy_scale * sp[:, 2],
            "forces_nu": sp[:, 3],
            "forces_alpha": 1.0 + sp[:, 4],
            "forces_beta": self.forces_scale * sp[:, 5],
        }


class _Trainable(nn.Module):
    """Base model + head as one module for :func:`mlipuq.train` (its state_dict
    holds both, so the trainer's best-weight restore covers the head)."""

    atomic_energies_set = True  # the wrapper never refits the mean's offsets

    def __init__(self, model: MLIP, head: _NIGHead):
        super().__init__()
        self.model = model
        self.head = head
        self.species = model.species
        self.cutoff = model.cutoff

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device


# ---------------------------------------------------------------------- wrapper
@register
class EvidentialHead(UQWrapper):
    """Evidential (NIG) uncertainty head on the per-atom features of an MLIP.

    The mean prediction is the base model's: energies :math:`E` (eV) and forces
    :math:`-\\partial E/\\partial r` (eV/Å). A small head maps every atom's
    readout features :math:`\\phi_i` to NIG parameters; energies get one NIG per
    structure by moment-matched aggregation (:func:`aggregate_energy_nig`),
    forces one NIG per atom shared by the three Cartesian components (a scalar
    per atom, so the force variance is rotation-equivariant).

    Parameters
    ----------
    model
        A trained :class:`~mlipuq.models.MLIP`. The wrapper works on a deep copy;
        the user's model is never modified.
    reg_weight
        λ, the weight of the evidence regulariser :math:`|y-\\gamma|(2\\nu+\\alpha)`
        (>= 0; Amini et al. use 0.01-0.1).
    train_backbone
        Also train the base model (mean and features) with the evidential
        loss. Default False: backbone and readout frozen, so the mean is exactly
        the base model's.
    hidden
        Width of the head's hidden SiLU layer (default 32), or None for a
        linear head on :math:`\\phi_i`. On the packaged ethanol data the
        one-hidden-layer head ranks force errors far better (Spearman 0.41
        against 0.28 for the linear head, ``benchmarks/uq_evidence.py``).

    Attributes
    ----------
    head_ : torch.nn.Module
        The fitted head (float64), set by :meth:`fit`.
    history_ : mlipuq.training.History
        The training record of the last :meth:`fit`.

    Notes
    -----
    The loss per batch (weights :math:`w_E, w_F` given to :meth:`fit`) is

    .. math:: L = w_E \\langle \\mathrm{NLL}(E^{ref}/n; E/n, \\nu, \\alpha, \\beta/n^2)
              + \\lambda |E^{ref}-E|/n\\,(2\\nu+\\alpha) \\rangle_B
              + w_F \\langle \\mathrm{NLL}(F^{ref}_{ic}; F_{ic}, \\nu_i, \\alpha_i, \\beta_i)
              + \\lambda |F^{ref}_{ic}-F_{ic}|(2\\nu_i+\\alpha_i) \\rangle_{ic},

    the energy NIG being rescaled exactly to per-atom energies
    (:math:`y/n` is NIG with :math:`\\beta/n^2`). Evidential uncertainties are
    known to be less reliable than ensembles (Meinert et al., AAAI 2023):
    calibrate them on validation data (:meth:`calibrate`).
    """

    def __init__(
        self,
        model: MLIP,
        *,
        reg_weight: float = 0.01,
        train_backbone: bool = False,
        hidden: Optional[int] = 32,
    ):
        model = _check_model(model)
        if isinstance(reg_weight, bool) or not isinstance(reg_weight, (int, float, np.number)):
            raise TypeError(f"reg_weight must be a number, got {type(reg_weight).__name__}")
        if not (math.isfinite(float(reg_weight)) and float(reg_weight) >= 0):
            raise ValueError(f"reg_weight must be a finite number >= 0, got {reg_weight}")
        if not isinstance(train_backbone, (bool, np.bool_)):
            raise TypeError(f"train_backbone must be a bool, got {type(train_backbone).__name__}")
        if hidden is not None and (
            isinstance(hidden, bool) or not isinstance(hidden, (int, np.integer)) or hidden < 1
        ):
            raise ValueError(f"hidden must be None or a positive integer, got {hidden!r}")
        self.model = copy.deepcopy(model)
        self.model.eval()
        self.reg_weight = float(reg_weight)
        self.train_backbone = bool(train_backbone)
        self.hidden = None if hidden is None else int(hidden)
        self.head_: Optional[_NIGHead] = None
        self.history_ = None
        self.fitted_ = False

    def __repr__(self) -> str:
        return (
            f"EvidentialHead({type(self.model).__name__}, reg_weight={self.reg_weight}, "
            f"train_backbone={self.train_backbone}, hidden={self.hidden})"
        )

    # ------------------------------------------------------------ UQWrapper API
    def config(self) -> dict:
        return {
            "reg_weight": self.reg_weight,
            "train_backbone": self.train_backbone,
            "hidden": self.hidden,
        }

    def _get_state(self) -> dict:
        return {
            "n_features": int(self.head_.feature_mean.shape[0]),
            "head": {k: v.detach().clone() for k, v in self.head_.state_dict().items()},
        }

    def _set_state(self, state: dict) -> None:
        head = _NIGHead(int(state["n_features"]), self.hidden)
        head.load_state_dict(state["head"])
        head.to(device=self.model.device)
        head.eval()
        self.head_ = head

    # --------------------------------------------------------------------- fit
    def fit(
        self,
        train,
        val=None,
        *,
        epochs: int = 100,
        lr: float = 1e-2,
        batch_size: int = 16,
        seed: int = 0,
        energy_weight: float = 1.0,
        forces_weight: float = 1.0,
        patience: int = 20,
        progress: bool = True,
        **train_options,
    ) -> "EvidentialHead":
        """Train the evidential head (and the backbone if ``train_backbone``).

        Parameters
        ----------
        train, val
            Datasets (or lists of ``ase.Atoms``) with reference energies (eV)
            and, if ``forces_weight > 0``, forces (eV/Å). ``val`` drives early
            stopping and the best-epoch selection (the training loss without it).
        epochs, lr, batch_size, patience
            As in :func:`mlipuq.train` (Adam, plateau decay, best weights kept).
        seed
            Seeds the head's initialisation and the trainer: equal seeds give
            identical heads on CPU.
        energy_weight, forces_weight
            Weights of the per-structure energy term and of the per-component
            force term of the loss (>= 0, not both 0; both are NLLs, so 1 and 1
            is a neutral choice). With ``forces_weight=0`` the force outputs
            keep their initial values.
        progress
            Show a progress bar.
        **train_options
            Other :func:`mlipuq.train` options (``max_time``, ``weight_decay``,
            ``lr_factor``...); ``checkpoint``, ``parameters`` and ``loss_fn``
            are not accepted.

        Returns
        -------
        EvidentialHead
            ``self``, fitted.
        """
        from mlipuq.training import train as run_training

        for name in ("checkpoint", "parameters", "loss_fn"):
            if name in train_options:
                raise ValueError(f"EvidentialHead.fit does not accept {name}=")
        for name, value in (("energy_weight", energy_weight), ("forces_weight", forces_weight)):
            if not (math.isfinite(float(value)) and float(value) >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if float(energy_weight) == 0 and float(forces_weight) == 0:
            raise ValueError("energy_weight and forces_weight cannot both be 0")
        weights = (float(energy_weight), float(forces_weight))
        need_forces = weights[1] > 0
        train = mdata.as_dataset(train)
        train.validate(self.species, require_energy=True, require_forces=need_forces)
        if val is not None:
            val = mdata.as_dataset(val)
            val.validate(self.species, require_energy=True, require_forces=need_forces)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            head = _NIGHead(self.model.n_features, self.hidden)
        self._init_scales(head, train, batch_size)
        head.to(device=self.model.device)
        trainable = _Trainable(self.model, head)
        params = list(head.parameters())
        saved = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            if self.train_backbone:
                params += [p for p, flag in saved if flag]
            else:
                for p, _ in saved:
                    p.requires_grad_(False)
            self.history_ = run_training(
                trainable,
                train,
                val,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                energy_weight=weights[0],
                forces_weight=weights[1],
                seed=seed,
                patience=patience,
                parameters=params,
                loss_fn=lambda m, b, g: self._loss(m, b, g, weights),
                progress=progress,
                **train_options,
            )
        finally:
            for p, flag in saved:
                p.requires_grad_(flag)
        self.model.eval()
        head.eval()
        self.head_ = head
        self.fitted_ = True
        return self

    @torch.no_grad()
    def _init_scales(self, head: _NIGHead, train: mdata.AtomsDataset, batch_size: int) -> None:
        """Feature standardisation and error scales from one pass of the base model."""
        n_feat = head.feature_mean.shape[0]
        s1 = torch.zeros(n_feat, dtype=torch.float64)
        s2 = torch.zeros(n_feat, dtype=torch.float64)
        n_atoms = 0
        e_sq, f_sq, f_n = 0.0, 0.0, 0
        for _, batch in mdata.iter_batches(
            train, self.cutoff, batch_size, species=self.species, dtype=self.dtype
        ):
            batch = batch.to(device=self.model.device)
            out = self.model(batch, forces=True, features=True)
            phi = out["features"].detach().to(torch.float64).cpu()
            s1 += phi.sum(0)
            s2 += (phi**2).sum(0)
            n_atoms += phi.shape[0]
            n = batch.n_atoms.to(torch.float64)
            de = out["energy"].detach() - batch.energy.to(torch.float64)
            e_sq += float((de**2 / n).sum())
            if batch.forces is not None:
                df = out["forces"].detach().to(torch.float64) - batch.forces.to(torch.float64)
                df = df[torch.isfinite(df).all(dim=1)]  # atoms without reference forces
                f_sq += float((df**2).sum())
                f_n += df.numel()
        mean = s1 / n_atoms
        std = torch.sqrt(torch.clamp(s2 / n_atoms - mean**2, min=0.0))
        head.feature_mean.copy_(mean)
        head.feature_scale.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))
        # energy_scale: per-atom error variance (E - E_ref)^2 / n, eV^2
        head.energy_scale.fill_(max(e_sq / len(train), 1e-12))
        head.forces_scale.fill_(max(f_sq / f_n, 1e-12) if f_n else 1.0)
        log.info(
            "evidential head scales: energy %.3g eV^2/atom, forces %.3g eV^2/Å^2",
            float(head.energy_scale), float(head.forces_scale),
        )

    def _loss(self, trainable: _Trainable, batch: mdata.Batch, create_graph: bool, weights):
        """Evidential loss of one batch, ``(loss, stats)`` for :func:`mlipuq.train`."""
        energy_weight, forces_weight = weights
        use_forces = forces_weight > 0
        backbone = self.train_backbone
        out = trainable.model(
            batch, forces=use_forces, features=True, create_graph=create_graph and backbone
        )
        phi = out["features"] if backbone else out["features"].detach()
        params = trainable.head(phi)
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
        loss = energy_weight * energy_term.mean()
        de = (gamma - y).detach()
        stats = {
            "n_structures": float(len(n)),
            "energy_abs": float(de.abs().sum()),
            "energy_sq": float((de**2).sum()),
        }
        if use_forces:
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
            loss = loss + forces_weight * forces_term.mean()
            df = (forces - yf).detach()
            stats.update(
                n_components=float(df.numel()),
                forces_abs=float(df.abs().sum()),
                forces_sq=float((df**2).sum()),
            )
        return loss, stats

    # ----------------------------------------------------------------- predict
    def _predict_batch(self, batch: mdata.Batch) -> dict:
        out = self.model(batch, forces=True, features=True)
        with torch.no_grad():
            params = self.head_(out["features"].detach())
            nu, alpha, beta = aggregate_energy_nig(
                params["energy_nu"], params["energy_alpha"], params["energy_beta"],
                batch.batch, batch.n_structures,
            )
            e_alea, e_epi = nig_variances(nu, alpha, beta)
            f_alea, f_epi = nig_variances(
                params["forces_nu"], params["forces_alpha"], params["forces_beta"]
            )
            forces_var = (f_alea + f_epi).unsqueeze(1).expand(-1, 3)
        return {
            "energy": out["energy"].detach(),
            "energy_var": e_alea + e_epi,
            "energy_aleatoric_var": e_alea,
            "energy_epistemic_var": e_epi,
            "forces": out["forces"].detach(),
            "forces_var": forces_var,
        }

    def evidential_parameters(self, structures, *, batch_size: int = 32) -> dict[str, np.ndarray]:
        """The fitted NIG parameters, for inspection.

        Returns
        -------
        dict of numpy.ndarray
            ``energy_nu``, ``energy_alpha``, ``energy_beta`` (B,) per structure
            (beta in eV^2) and ``forces_nu``, ``forces_alpha``, ``forces_beta``
            (N,) per atom (beta in eV^2/Å^2), float64.
        """
        self._check_fitted()
        dataset = mdata.as_dataset(structures)
        dataset.validate(self.species)
        parts: dict[str, list] = {}
        for _, batch in mdata.iter_batches(
            dataset, self.cutoff, batch_size, species=self.species, dtype=self.dtype
        ):
            batch = batch.to(device=self.model.device)
            phi = self.model(batch, forces=False, features=True)["features"].detach()
            with torch.no_grad():
                p = self.head_(phi)
                nu, alpha, beta = aggregate_energy_nig(
                    p["energy_nu"], p["energy_alpha"], p["energy_beta"],
                    batch.batch, batch.n_structures,
                )
            values = {
                "energy_nu": nu, "energy_alpha": alpha, "energy_beta": beta,
                "forces_nu": p["forces_nu"], "forces_alpha": p["forces_alpha"],
                "forces_beta": p["forces_beta"],
            }
            for k, v in values.items():
                parts.setdefault(k, []).append(v.cpu().numpy())
        return {k: np.concatenate(v).astype(np.float64) for k, v in parts.items()}
