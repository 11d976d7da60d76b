"""Shallow ensemble: K last-layer heads on one shared backbone.

Kellner & Ceriotti (2024), "Uncertainty quantification by direct propagation
of shallow ensembles", Mach. Learn.: Sci. Technol. 5, 035006.

The base model's readout ``eps_i = w·phi_i + b`` is replaced by K heads
``(W_k, b_k)`` acting on the same per-atom features ``phi_i`` (F,):

.. math:: \\varepsilon_{ik} = W_k \\cdot \\phi_i + b_k, \\qquad
          E_k = \\sum_i \\varepsilon_{ik} + \\sum_i e_{Z_i}, \\qquad
          F_k = -\\partial E_k / \\partial r = -\\sum_i J_i^T W_k,

with :math:`J_i = \\partial \\phi_i / \\partial r`. All K force sets come from
one vectorised vector-Jacobian product (``is_grads_batched``), so a
prediction costs one forward pass plus one batched backward pass, not K.
Mean and variance are taken over heads (population variance, ``ddof=0``,
float64).

Training minimises the Gaussian negative log-likelihood of the per-atom
energies and of the force components under the ensemble mean and variance

.. math:: \\mathrm{NLL}(y; \\mu, \\sigma^2) = \\tfrac12 \\left(\\log 2\\pi
          + \\log(\\sigma^2 + \\epsilon) + \\frac{(y - \\mu)^2}{\\sigma^2 + \\epsilon}\\right),

:math:`L = w_E \\langle \\mathrm{NLL}_E \\rangle + w_F \\langle \\mathrm{NLL}_F \\rangle`,
with a small floor :math:`\\epsilon` for stability.

Initialisation ``"laplace"`` draws the heads from the last-layer Laplace
(LLPR) posterior :math:`N(\\theta^*, \\alpha^2 \\Sigma)`,
:math:`\\Sigma = (X^T X / \\sigma^2 + \\lambda I)^{-1}`, built from the summed
per-structure features :math:`x_s = (\\sum_i \\phi_i, n_s)` of the training
set in float64, with :math:`\\sigma^2` the mean squared energy residual of the
base model and :math:`\\alpha^2` the NLL-optimal scale of the energy variance
:math:`x^T \\Sigma x` (on the validation set when given). Heads then start
calibrated on energies and training converges in a few epochs.
``"random"`` perturbs the trained readout with small Gaussian noise.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
from typing import Optional

import numpy as np
import torch
from torch import nn

from mlipuq import data as mdata
from mlipuq.models.base import MLIP
from mlipuq.training import History, fit_scales, prepare_graphs
from mlipuq.training import train as train_model
from mlipuq.uq.base import UQWrapper, _check_model, register
from mlipuq.uq.deep_ensemble import member_statistics

log = logging.getLogger(__name__)

INITS = ("laplace", "random")
#: Relative std of the noise added to the readout weights by ``init="random"``.
RANDOM_INIT_SCALE = 0.1
#: Prior precision of the Laplace init, relative to the mean diagonal of X^T X / sigma^2.
LAPLACE_RELATIVE_PRIOR = 1e-4
_HEADS_ATTR = "_shallow_ensemble_heads"
_LOG_2PI = math.log(2 * math.pi)


class _Heads(nn.Module):
    """K linear heads, (K, F) weights and (K,) biases (biases frozen at 0 if absent)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, train_bias: bool):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        if train_bias:
            self.bias = nn.Parameter(bias.clone())
        else:
            self.register_buffer("bias", bias.clone())


def head_members(
    model: MLIP,
    batch: mdata.Batch,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    forces: bool = True,
    create_graph: bool = False,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Energies and forces of K linear heads on ``model``'s per-atom features.

    Parameters
    ----------
    model
        Backbone whose readout input ``phi_i`` (N, F) the heads act on.
    batch
        Structures in the model's dtype and device.
    weight, bias
        (K, F) head weights and (K,) biases (eV per feature unit, eV per atom).
    forces
        Also compute the (K, N, 3) forces with one batched backward pass.
    create_graph
        Keep the graph of the forces (needed to train on them).

    Returns
    -------
    energies, forces
        (K, B) float64 energies including the species offsets (eV) and
        (K, N, 3) float64 forces (eV/Å), or None without ``forces``.
    """
    positions = batch.positions.detach().requires_grad_(forces)
    work = dataclasses.replace(batch, positions=positions)
    n_atoms = batch.numbers.shape[0]
    with torch.enable_grad() if forces else contextlib.nullcontext():
        with model.capture_features() as store:
            model.per_atom_energy(work)
        if "features" not in store:
            raise ValueError(f"the readout layer of {type(model).__name__} was not called")
        phi = store["features"].reshape(n_atoms, -1)
        w = weight.to(device=phi.device, dtype=phi.dtype)
        b = bias.to(device=phi.device, dtype=phi.dtype)
        if w.shape[1] != phi.shape[1]:
            raise ValueError(
                f"heads have {w.shape[1]} input features, the model produces {phi.shape[1]}"
            )
        eps = (phi @ w.T + b).to(torch.float64)  # (N, K)
        energies = torch.zeros(
            batch.n_structures, w.shape[0], dtype=torch.float64, device=phi.device
        ).index_add(0, batch.batch, eps)
        energies = (energies + model.offsets(batch)[:, None]).T
        if not forces:
            return energies, None
        k = w.shape[0]
        grad = None
        if phi.requires_grad:
            # dE_k/dr = sum_i J_i^T W_k: one VJP per head, vectorised over heads.
            (grad,) = torch.autograd.grad(
                phi,
                positions,
                grad_outputs=w[:, None, :].expand(k, n_atoms, w.shape[1]),
                is_grads_batched=True,
                create_graph=create_graph,
                retain_graph=create_graph,
                allow_unused=True,
            )
        if grad is None:  # features independent of positions (e.g. isolated atoms)
            grad = torch.zeros(k, n_atoms, 3, dtype=phi.dtype, device=phi.device)
        return energies, -grad.to(torch.float64)


def _mean_var(members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable mean and population variance over the first axis."""
    mean = members.mean(dim=0)
    return mean, ((members - mean) ** 2).mean(dim=0)


def gaussian_nll(mean, var, target, floor: float) -> torch.Tensor:
    """Element-wise Gaussian negative log-likelihood with variance ``var + floor``."""
    var = var + floor
    return 0.5 * (_LOG_2PI + torch.log(var) + (target - mean) ** 2 / var)


def feature_jacobian(phi: torch.Tensor, positions: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """(F, N, 3) derivatives of the batch-summed features ``sum_i phi_i`` w.r.t. positions.

    Atoms of different structures do not interact, so each atom's rows are the
    derivatives of its own structure's summed features (1/Å per feature unit).
    Batched VJPs, ``chunk`` features at a time.
    """
    n, f = phi.shape
    if not phi.requires_grad:
        return torch.zeros(f, n, 3, dtype=phi.dtype, device=phi.device)
    eye = torch.eye(f, dtype=phi.dtype, device=phi.device)
    parts = []
    for start in range(0, f, chunk):
        rows = eye[start : start + chunk]
        (grad,) = torch.autograd.grad(
            phi, positions, grad_outputs=rows[:, None, :].expand(len(rows), n, f),
            is_grads_batched=True, retain_graph=start + chunk < f, allow_unused=True,
        )
        parts.append(torch.zeros(len(rows), n, 3, dtype=phi.dtype, device=phi.device)
                     if grad is None else grad)
    return torch.cat(parts)


def _design_batches(model: MLIP, dataset, theta: np.ndarray, with_bias: bool,
                    include_forces: bool, batch_size: int = 16):
    """Per batch, the last-layer design rows and residuals of the model, float64.

    Yields ``(x_e, r_e, x_f, r_f)``: energy rows ``(sum_i phi_i[, n_s])`` (B, P)
    with residuals (B,) in eV, and force-component rows ``-d(sum_i phi_i)/dr``
    (3N, P) with residuals (3N,) in eV/Å (None without ``include_forces``).
    """
    theta_t = torch.as_tensor(theta, dtype=torch.float64)
    for _, batch in mdata.iter_batches(
        dataset, model.cutoff, batch_size, species=model.species, dtype=model.dtype
    ):
        batch = batch.to(device=model.device)
        positions = batch.positions.detach().requires_grad_(include_forces)
        work = dataclasses.replace(batch, positions=positions)
        with torch.enable_grad() if include_forces else torch.no_grad():
            with model.capture_features() as store:
                model.per_atom_energy(work)
            phi = store["features"].reshape(batch.numbers.shape[0], -1)
            jac = feature_jacobian(phi, positions) if include_forces else None
        phi = phi.detach().to(torch.float64).cpu()
        x_e = torch.zeros(batch.n_structures, phi.shape[1], dtype=torch.float64).index_add(
            0, batch.batch.cpu(), phi)
        if with_bias:
            x_e = torch.cat([x_e, batch.n_atoms.cpu().to(x_e)[:, None]], dim=1)
        energy = x_e @ theta_t + model.offsets(batch).cpu()
        r_e = (energy - batch.energy.cpu().to(torch.float64)).numpy()
        if not include_forces:
            yield x_e.numpy(), r_e, None, None
            continue
        x_f = -jac.detach().to(torch.float64).cpu().reshape(jac.shape[0], -1).T  # (3N, F)
        if with_bias:
            x_f = torch.cat([x_f, torch.zeros(len(x_f), 1, dtype=torch.float64)], dim=1)
        r_f = (x_f @ theta_t - batch.forces.cpu().to(torch.float64).reshape(-1)).numpy()
        yield x_e.numpy(), r_e, x_f.numpy(), r_f


def _cholesky(matrix: np.ndarray) -> np.ndarray:
    """Cholesky factor with growing diagonal jitter on failure (logged)."""
    matrix = 0.5 * (matrix + matrix.T)
    scale = float(np.mean(np.abs(np.diag(matrix)))) or 1.0
    jitter = 0.0
    for _ in range(12):
        try:
            factor = np.linalg.cholesky(matrix + jitter * np.eye(len(matrix)))
            if jitter > 0:
                log.warning("Laplace init: Cholesky needed jitter %.3g", jitter)
            return factor
        except np.linalg.LinAlgError:
            jitter = scale * 1e-10 if jitter == 0 else jitter * 10
    raise np.linalg.LinAlgError(f"matrix not positive definite even with jitter {jitter:.3g}")


def laplace_heads(
    model: MLIP,
    train,
    calibration,
    theta: np.ndarray,
    n_heads: int,
    generator: torch.Generator,
    *,
    with_bias: bool = True,
    include_forces: bool = True,
    energy_weight: float = 1.0,
    forces_weight: float = 1.0,
) -> np.ndarray:
    """(K, P) head parameters drawn from the calibrated last-layer Laplace posterior.

    Parameters
    ----------
    theta
        (P,) readout weights (and the bias, last, with ``with_bias``).
    train, calibration
        Data for the posterior and for the scale ``alpha`` (``train`` if None).
    include_forces
        Add the force Gram matrix ``G_F / sigma_F^2`` to the precision.
    energy_weight, forces_weight
        Weights of the energy and force NLL in the choice of ``alpha``.

    Notes
    -----
    Precision ``P = X_E^T X_E / sigma_E^2 [+ X_F^T X_F / sigma_F^2] + lambda I``
    with ``sigma`` the RMS residuals of the model (eV, eV/Å) and ``lambda`` a
    fraction ``LAPLACE_RELATIVE_PRIOR`` of the mean diagonal. ``alpha^2``
    minimises the weighted mean NLL of ``alpha^2 x^T P^-1 x`` on the
    calibration data. The K samples are centred on ``theta`` (head mean = base
    model) and scaled so that their population covariance is unbiased.
    """
    parts = list(_design_batches(model, train, theta, with_bias, include_forces))
    x_e = np.concatenate([p[0] for p in parts])
    r_e = np.concatenate([p[1] for p in parts])
    sigma2_e = max(float(np.mean(r_e**2)), 1e-12)  # eV^2
    precision = x_e.T @ x_e / sigma2_e
    sigma2_f = None
    if include_forces:
        r_f = np.concatenate([p[3] for p in parts])
        sigma2_f = max(float(np.mean(r_f**2)), 1e-12)  # eV^2/Å^2
        precision += sum(p[2].T @ p[2] for p in parts) / sigma2_f
    prior = LAPLACE_RELATIVE_PRIOR * (float(np.mean(np.diag(precision))) or 1.0)
    factor = _cholesky(precision + prior * np.eye(len(precision)))  # P = L L^T
    if calibration is not None:
        parts = list(_design_batches(model, calibration, theta, with_bias, include_forces))

    def ratio(rows, residuals):  # residual^2 / (x^T P^-1 x) with x^T P^-1 x = |L^-1 x|^2
        variance = np.sum(np.linalg.solve(factor, rows.T) ** 2, axis=0)
        return residuals**2 / np.maximum(variance, 1e-300)

    alpha2 = energy_weight * float(np.mean(np.concatenate([ratio(p[0], p[1]) for p in parts])))
    total = energy_weight
    if include_forces and forces_weight > 0:
        alpha2 += forces_weight * float(np.mean(np.concatenate([ratio(p[2], p[3]) for p in parts])))
        total += forces_weight
    alpha2 /= total
    log.info("Laplace init: sigma_E = %.3g eV, sigma_F = %s eV/Å, alpha^2 = %.3g",
             math.sqrt(sigma2_e), "-" if sigma2_f is None else f"{math.sqrt(sigma2_f):.3g}",
             alpha2)
    z = torch.randn(n_heads, len(theta), generator=generator, dtype=torch.float64).numpy()
    z = (z - z.mean(axis=0)) * math.sqrt(n_heads / (n_heads - 1))
    # theta + alpha L^-T z has covariance alpha^2 (L L^T)^-1 = alpha^2 P^-1.
    deviations = np.linalg.solve(factor.T, z.T).T * math.sqrt(alpha2)
    return theta[None, :] + deviations


@register
class ShallowEnsemble(UQWrapper):
    """K last-layer heads on a shared backbone, trained by Gaussian NLL.

    Parameters
    ----------
    model
        A trained :class:`~mlipuq.models.MLIP`. The wrapper works on its own
        deep copy; the caller's model is never modified.
    n_heads
        Number of heads K (>= 2).
    init
        ``"laplace"`` (heads drawn from the calibrated last-layer Laplace
        posterior; converges in a few epochs) or ``"random"`` (readout weights
        plus Gaussian noise of relative size ``RANDOM_INIT_SCALE``).
    train_backbone
        Also train the backbone (the wrapper's copy) with the NLL; by default
        it is frozen and only the heads are trained.

    Attributes
    ----------
    head_weight_ : torch.Tensor
        (K, F) head weights.
    head_bias_ : torch.Tensor
        (K,) head biases (eV per atom).
    history_ : History
        Training history of the last :meth:`fit` (not saved).

    Notes
    -----
    After :meth:`fit` the readout of the wrapper's model holds the mean head,
    so ``base_model`` (used e.g. for stresses) predicts the ensemble mean.
    """

    def __init__(
        self,
        model: MLIP,
        *,
        n_heads: int = 8,
        init: str = "laplace",
        train_backbone: bool = False,
    ):
        self._setup(copy.deepcopy(_check_model(model)), n_heads, init, train_backbone)

    def _setup(self, model: MLIP, n_heads, init, train_backbone) -> None:
        if isinstance(n_heads, bool) or not isinstance(n_heads, (int, np.integer)) or n_heads < 2:
            raise ValueError(f"n_heads must be an integer >= 2, got {n_heads!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not isinstance(train_backbone, (bool, np.bool_)):
            raise TypeError(f"train_backbone must be a bool, got {type(train_backbone).__name__}")
        self.model = model
        self.n_heads = int(n_heads)
        self.init = init
        self.train_backbone = bool(train_backbone)
        layer = model.readout_layer
        if not isinstance(layer, nn.Linear) or layer.out_features != 1:
            raise ValueError("the model's readout must be a torch.nn.Linear with one output")
        self._readout_weight = layer.weight.detach().reshape(-1).to(torch.float64).cpu().clone()
        self._readout_bias = (
            None if layer.bias is None else layer.bias.detach().reshape(-1).to(torch.float64).cpu()
        )
        self.head_weight_: Optional[torch.Tensor] = None
        self.head_bias_: Optional[torch.Tensor] = None
        self.history_: Optional[History] = None
        self.fitted_ = False

    def __repr__(self) -> str:
        return (f"ShallowEnsemble({type(self.model).__name__}, n_heads={self.n_heads}, "
                f"init={self.init!r}, train_backbone={self.train_backbone})")

    # ------------------------------------------------------------------ training
    def _initial_heads(self, train, val, seed: int, energy_weight: float,
                       forces_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(int(seed))
        w = self._readout_weight
        has_bias = self._readout_bias is not None
        b = self._readout_bias if has_bias else torch.zeros(1, dtype=torch.float64)
        if self.init == "random":
            scale = RANDOM_INIT_SCALE * (float(w.pow(2).mean().sqrt()) or 1e-2)
            noise = torch.randn(self.n_heads, len(w), generator=generator, dtype=torch.float64)
            return w[None, :] + scale * noise, b.expand(self.n_heads).clone()
        theta = torch.cat([w, b]).numpy() if has_bias else w.numpy()
        heads = laplace_heads(self.model, train, val, theta, self.n_heads, generator,
                              with_bias=has_bias, include_forces=forces_weight > 0,
                              energy_weight=energy_weight, forces_weight=forces_weight)
        heads = torch.from_numpy(heads)
        if has_bias:
            return heads[:, :-1].contiguous(), heads[:, -1].contiguous()
        return heads, torch.zeros(self.n_heads, dtype=torch.float64)

    def _set_readout(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        layer = self.model.readout_layer
        with torch.no_grad():
            layer.weight.copy_(weight.reshape(layer.weight.shape).to(layer.weight))
            if layer.bias is not None and bias is not None:
                layer.bias.copy_(bias.reshape(layer.bias.shape).to(layer.bias))

    def fit(
        self,
        train,
        val=None,
        *,
        epochs: int = 50,
        lr: float = 1e-3,
        batch_size: int = 16,
        seed: int = 0,
        energy_weight: float = 1.0,
        forces_weight: float = 1.0,
        patience: int = 20,
        var_floor: float = 1e-8,
        progress: bool = True,
        **train_options,
    ) -> "ShallowEnsemble":
        """Initialise the heads and train them (and the backbone if asked) by Gaussian NLL.

        Parameters
        ----------
        train, val
            Data with reference energies (eV) and, if ``forces_weight > 0``,
            forces (eV/Å). ``val`` drives early stopping and the best-epoch
            selection, and calibrates the Laplace init.
        epochs, lr, batch_size, patience
            As in :func:`mlipuq.train`.
        seed
            Seeds the head initialisation and the trainer: a fit is reproducible.
        energy_weight, forces_weight
            Weights of the mean NLL of per-atom energies and of force components.
        var_floor
            Added to the variances in the loss: (eV/atom)² for energies, (eV/Å)²
            for forces.
        **train_options
            Other :func:`mlipuq.train` options (``lr_factor``, ``max_time``,
            ``weight_decay``...); ``checkpoint`` is not supported.

        Returns
        -------
        ShallowEnsemble
            ``self``, fitted.
        """
        for name in ("checkpoint", "parameters", "loss_fn"):
            if name in train_options:
                raise ValueError(f"ShallowEnsemble.fit does not accept {name}=")
        if not (var_floor > 0):
            raise ValueError(f"var_floor must be positive, got {var_floor}")
        if energy_weight < 0 or forces_weight < 0 or energy_weight + forces_weight == 0:
            raise ValueError("loss weights must be non-negative and not both zero")
        model = self.model
        train = mdata.as_dataset(train)
        val = None if val is None else mdata.as_dataset(val)
        need_forces = forces_weight > 0
        if not model.atomic_energies_set or getattr(model, "avg_num_neighbors", 0) is None:
            fit_scales(model, train, prepare_graphs(train, model, need_forces=need_forces,
                                                    name="train"))
        else:
            train.validate(model.species, require_energy=True, require_forces=need_forces)
        self._set_readout(self._readout_weight, self._readout_bias)
        weight, bias = self._initial_heads(train, val, seed, energy_weight, forces_weight)
        heads = _Heads(weight.to(model.dtype), bias.to(model.dtype),
                       self._readout_bias is not None).to(model.device)

        def loss_fn(m, batch, create_graph):
            energies, forces = head_members(m, batch, heads.weight, heads.bias,
                                            forces=need_forces, create_graph=create_graph)
            n = batch.n_atoms.to(torch.float64)
            mean, var = _mean_var(energies / n)
            target = batch.energy.to(torch.float64) / n
            loss = energy_weight * gaussian_nll(mean, var, target, var_floor).mean()
            de = (mean - target).detach()
            stats = {"n_structures": float(len(n)), "energy_abs": float(de.abs().sum()),
                     "energy_sq": float((de**2).sum())}
            if need_forces:
                mean, var = _mean_var(forces)
                target = batch.forces.to(torch.float64)
                loss = loss + forces_weight * gaussian_nll(mean, var, target, var_floor).mean()
                df = (mean - target).detach()
                stats.update(n_components=float(df.numel()), forces_abs=float(df.abs().sum()),
                             forces_sq=float((df**2).sum()))
            return loss, stats

        readout = {id(p) for p in model.readout_layer.parameters()}
        backbone = [p for p in model.parameters() if id(p) not in readout]
        saved = {id(p): p.requires_grad for p in model.parameters()}
        params = list(heads.parameters())
        if self.train_backbone:
            params += [p for p in backbone if p.requires_grad]
        # Attached so that the trainer's best-epoch restore covers the heads too.
        model.add_module(_HEADS_ATTR, heads)
        try:
            for p in ([] if self.train_backbone else backbone):
                p.requires_grad_(False)
            for p in model.readout_layer.parameters():
                p.requires_grad_(False)
            history = train_model(
                model, train, val, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                energy_weight=energy_weight, forces_weight=forces_weight, patience=patience,
                parameters=params, loss_fn=loss_fn, progress=progress, **train_options,
            )
        finally:
            delattr(model, _HEADS_ATTR)
            for p in model.parameters():
                p.requires_grad_(saved[id(p)])
        self.head_weight_ = heads.weight.detach().clone()
        self.head_bias_ = heads.bias.detach().clone()
        self._set_readout(self.head_weight_.to(torch.float64).mean(0),
                          self.head_bias_.to(torch.float64).mean(0))
        self.history_ = history
        self.fitted_ = True
        return self

    # ---------------------------------------------------------------- predict
    def _predict_batch(self, batch: mdata.Batch) -> dict:
        energy_members, forces_members = head_members(
            self.model, batch, self.head_weight_, self.head_bias_, forces=True
        )
        energy_members = energy_members.detach().cpu()
        forces_members = forces_members.detach().cpu()
        energy, energy_var = member_statistics(energy_members)
        forces, forces_var = member_statistics(forces_members)
        return {
            "energy": energy,
            "energy_var": energy_var,
            "forces": forces,
            "forces_var": forces_var,
            "energy_members": energy_members,
            "forces_members": forces_members,
        }

    # ------------------------------------------------------------ persistence
    def config(self) -> dict:
        return {"n_heads": self.n_heads, "init": self.init, "train_backbone": self.train_backbone}

    @classmethod
    def _from_config(cls, models: list[MLIP], config: dict) -> "ShallowEnsemble":
        (model,) = models
        wrapper = cls.__new__(cls)
        wrapper._setup(model, config["n_heads"], config["init"], config["train_backbone"])
        return wrapper

    def _get_state(self) -> dict:
        return {
            "head_weight": self.head_weight_,
            "head_bias": self.head_bias_,
            "readout_weight": self._readout_weight,
            "readout_bias": self._readout_bias,
        }

    def _set_state(self, state: dict) -> None:
        self.head_weight_ = torch.as_tensor(state["head_weight"])
        self.head_bias_ = torch.as_tensor(state["head_bias"])
        self._readout_weight = torch.as_tensor(state["readout_weight"], dtype=torch.float64)
        bias = state.get("readout_bias")
        self._readout_bias = None if bias is None else torch.as_tensor(bias, dtype=torch.float64)
