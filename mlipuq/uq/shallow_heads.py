"""The heads of a shallow ensemble: their module, their outputs and their loss.

Responsibility: the K linear heads of :class:`~mlipuq.uq.shallow_ensemble.ShallowEnsemble`
on a backbone's per-atom features (``_Heads``, on centred features), the
energies, forces and stresses they give (:func:`head_members`; with direct
force heads a matrix product on the vector features instead of K
vector-Jacobian products), the mean training feature they are centred on
(:func:`mean_feature`), and their training objective, the Gaussian negative
log-likelihood of per-atom energies and force components under the heads'
mean and variance (:func:`gaussian_nll`, :class:`HeadsNLL`). The method, its
initialisation and the wrapper are documented in
:mod:`mlipuq.uq.shallow_ensemble`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Optional

import numpy as np
import torch
from torch import nn

from mlipuq import data as mdata
from mlipuq import distributed as mdist
from mlipuq.models.base import MLIP, strained, structure_volumes
from mlipuq.training import HeadTrainable, error_statistics, reduce_terms
from mlipuq.uq.jacobians import feature_vjps, feature_vjps_strain, strain_vjps

_LOG_2PI = math.log(2 * math.pi)


class _Heads(nn.Module):
    """K linear heads on centred features: (K, F) weights and (K,) offsets.

    ``eps_ik = W_k . (phi_i - c) + o_k`` with ``c`` the mean training feature,
    i.e. the bias ``b_k = o_k - W_k . c`` of a head on raw features. Centring
    decouples the weights from the mean energy level: a weight update that
    improves the forces no longer shifts every atom's energy by ``dW . c``.
    The offsets are frozen when the readout has no bias.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, train_bias: bool,
                 center: torch.Tensor, direct: Optional[torch.Tensor] = None):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        # (K, C) direct force heads, if any (no bias: forces must rotate)
        self.direct = None if direct is None else nn.Parameter(direct.clone())
        self.register_buffer("center", center.clone())
        offset = (bias + weight @ center).detach()
        if train_bias:
            self.offset = nn.Parameter(offset)
        else:
            self.register_buffer("offset", offset)

    @property
    def bias(self) -> torch.Tensor:
        """(K,) biases of the heads on raw features (eV per atom)."""
        return self.offset - self.weight @ self.center

    def forward(self) -> tuple[torch.Tensor, ...]:
        """(K, F) weights and (K,) raw-feature biases, and (K, C) direct force heads
        if any (the trainer calls the heads through this, so that
        DistributedDataParallel sees every step)."""
        if self.direct is None:
            return self.weight, self.bias
        return self.weight, self.bias, self.direct


def mean_feature(model: MLIP, dataset, batch_size: int = 32, *,
                 sharded: bool = False) -> torch.Tensor:
    """(F,) float64 mean of the readout features over all atoms of ``dataset``.

    ``sharded`` (collective, after :func:`mlipuq.distributed.init`): each rank
    sums the features of its shard and the sums are all-reduced in float64.
    """
    if sharded and mdist.active():
        dataset = mdata.as_dataset(dataset)
        start, stop = mdist.shard_bounds(len(dataset))
        total, count = _feature_sum(model, dataset[start:stop], batch_size)
        if total is None:
            total = torch.zeros(model.n_features, dtype=torch.float64)
        summed = mdist.all_reduce_sum(np.concatenate([total.numpy(), [count]]))
        return torch.from_numpy(summed[:-1] / summed[-1])
    total, count = _feature_sum(model, dataset, batch_size)
    return total / count


def _feature_sum(model: MLIP, dataset, batch_size: int) -> tuple[Optional[torch.Tensor], int]:
    total, count = None, 0
    model.eval()
    with torch.no_grad():
        for _, batch in mdata.iter_batches(dataset, model.cutoff, batch_size,
                                           species=model.species, dtype=model.dtype):
            phi = model.per_atom_features(batch.to(device=model.device)).to(torch.float64)
            part = phi.sum(dim=0).cpu()
            total = part if total is None else total + part
            count += phi.shape[0]
    return total, count


def head_members(
    model: MLIP,
    batch: mdata.Batch,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    forces: bool = True,
    create_graph: bool = False,
    vectorize="auto",
    stress: bool = False,
    direct_weight: Optional[torch.Tensor] = None,
) -> dict[str, Optional[torch.Tensor]]:
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
        Also compute the (K, N, 3) forces: K vector-Jacobian products, batched
        into one backward pass on GPU (``vectorize``, see
        :func:`mlipuq.uq.jacobians.feature_vjps`).
    create_graph
        Keep the graph of the forces (needed to train on them).
    stress
        Also compute the (K, B, 3, 3) stresses (eV/Å^3; periodic structures,
        ``1/V dE_k/d(strain)``) from the same backward passes as the forces
        (implies ``forces``).
    direct_weight
        (K, C) direct force heads (a model with ``has_direct_forces``): the
        forces are then ``F_ik = sum_c W_kc v_ic`` on the model's vector
        features, a matrix product without vector-Jacobian products (and
        with a graph to the heads and the backbone whenever those require
        grad); ``stress`` then takes K backward passes to the strain alone.

    Returns
    -------
    dict
        ``"energy"``: (K, B) float64 energies including the species offsets
        (eV); ``"atom_energy"``: (K, N) float64 per-atom energies without
        offsets (eV); ``"forces"``: (K, N, 3) float64 forces (eV/Å), or None
        without ``forces``; ``"features"``: the (N, F) readout features the
        heads act on; with ``stress``, ``"stress"``: (K, B, 3, 3) float64
        stresses (eV/Å^3).
    """
    if direct_weight is not None:
        return _direct_head_members(model, batch, weight, bias, direct_weight, forces=forces,
                                    create_graph=create_graph, vectorize=vectorize,
                                    stress=stress)
    forces = forces or stress
    if stress:
        work, positions, strain = strained(batch, positions_grad=True, stress=True)
    else:
        positions = batch.positions.detach().requires_grad_(forces)
        work = dataclasses.replace(batch, positions=positions)
    with torch.enable_grad() if forces else contextlib.nullcontext():
        with model.capture_features() as store:
            model.per_atom_energy(work)
        phi, w, out = _head_energies(model, batch, store, weight, bias)
        if not forces:
            return out
        # dE_k/dr = sum_i J_i^T W_k: one VJP per head (batched on GPU, see feature_vjps)
        if stress:
            grad, grad_strain = feature_vjps_strain(phi, positions, strain, w,
                                                    create_graph=create_graph,
                                                    retain_graph=create_graph,
                                                    vectorize=vectorize)
            volume = structure_volumes(batch).to(torch.float64)
            out["stress"] = grad_strain.to(torch.float64) / volume[None, :, None, None]
        else:
            grad = feature_vjps(phi, positions, w, create_graph=create_graph,
                                retain_graph=create_graph, vectorize=vectorize)
        out["forces"] = -grad.to(torch.float64)
        return out


def _head_energies(model: MLIP, batch: mdata.Batch, store: dict, weight: torch.Tensor,
                   bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(phi, w, out)``: the captured (N, F) features, the (K, F) weights in their
    dtype, and :func:`head_members`' energies (``"forces"`` None)."""
    n_atoms = batch.numbers.shape[0]
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
    out = {"energy": (energies + model.offsets(batch)[:, None]).T,
           "atom_energy": eps.T, "forces": None, "features": phi}
    return phi, w, out


def _direct_head_members(model, batch, weight, bias, direct_weight, *, forces, create_graph,
                         vectorize, stress) -> dict:
    """:func:`head_members` with K direct force heads (no position derivatives)."""
    if stress:
        work, _, strain = strained(batch, positions_grad=False, stress=True)
    else:
        work = batch
    n_atoms = batch.numbers.shape[0]
    with torch.enable_grad() if stress else contextlib.nullcontext():
        with model.capture_features(direct=forces) as store:
            model.per_atom_energy(work)
        phi, w, out = _head_energies(model, batch, store, weight, bias)
        if forces:
            _, vectors = model._direct_outputs(store, n_atoms)  # (N, C, 3)
            wd = direct_weight.to(device=vectors.device, dtype=vectors.dtype)
            if wd.shape[1] != vectors.shape[1]:
                raise ValueError(f"direct heads have {wd.shape[1]} input features, the model "
                                 f"produces {vectors.shape[1]} vector features")
            out["forces"] = torch.einsum("nca,kc->kna", vectors, wd).to(torch.float64)
        if stress:
            grad_strain = strain_vjps(phi, strain, w, create_graph=create_graph,
                                      retain_graph=create_graph, vectorize=vectorize)
            volume = structure_volumes(batch).to(torch.float64)
            out["stress"] = grad_strain.to(torch.float64) / volume[None, :, None, None]
    return out


def _mean_var(members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable mean and population variance over the first axis."""
    mean = members.mean(dim=0)
    return mean, ((members - mean) ** 2).mean(dim=0)


def gaussian_nll(mean, var, target, floor: float) -> torch.Tensor:
    """Element-wise Gaussian negative log-likelihood with variance ``var + floor``."""
    var = var + floor
    return 0.5 * (_LOG_2PI + torch.log(var) + (target - mean) ** 2 / var)


class HeadsNLL(HeadTrainable):
    """The heads of a shallow ensemble as a :class:`~mlipuq.training.Trainable`.

    Loss: ``energy_weight`` times the mean Gaussian NLL of the per-atom
    energies plus ``forces_weight`` times that of the force components, under
    the heads' mean and population variance (+ ``var_floor``). The readout is
    frozen; the rest of the backbone is trained only with ``train_backbone``.
    """

    #: What :func:`~mlipuq.training.train`'s progress bar says is trained.
    description = "ShallowEnsemble heads"

    def __init__(self, model: MLIP, heads: nn.Module, *, train_backbone: bool, vectorize="auto",
                 energy_weight: float = 1.0, forces_weight: float = 1.0,
                 var_floor: float = 1e-8):
        readout = list(model.readout_layer.parameters())
        if getattr(heads, "direct", None) is not None:  # the direct heads replace it
            readout += list(model.force_readout_layer.parameters())
        backbone = [p for p in model.parameters() if all(p is not r for r in readout)]
        trained = [p for p in backbone if p.requires_grad] if train_backbone else []
        super().__init__(model, heads, need_forces=forces_weight > 0, backbone=trained,
                         frozen=readout + ([] if train_backbone else backbone))
        self.vectorize = vectorize
        self.energy_weight, self.forces_weight = energy_weight, forces_weight
        self.var_floor = var_floor

    def loss(self, batch: mdata.Batch, *, create_graph: bool, denominators=None):
        weight, bias, *direct = self.run_head()
        out = head_members(self.model, batch, weight, bias,
                           vectorize=self.vectorize, forces=self.need_forces,
                           create_graph=create_graph,
                           direct_weight=direct[0] if direct else None)
        n = batch.n_atoms.to(torch.float64)
        mean, var = _mean_var(out["energy"] / n)
        target = batch.energy.to(torch.float64) / n
        nll = gaussian_nll(mean, var, target, self.var_floor)
        loss = self.energy_weight * reduce_terms(nll, denominators, "structures")
        de = mean - target
        if not self.need_forces:
            return loss, error_statistics(de)
        mean, var = _mean_var(out["forces"])
        target = batch.forces.to(torch.float64)
        nll = gaussian_nll(mean, var, target, self.var_floor)
        loss = loss + self.forces_weight * reduce_terms(nll, denominators, "components")
        return loss, error_statistics(de, mean - target)
