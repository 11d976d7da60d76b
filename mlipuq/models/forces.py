"""Forces of the base-MLIP contract: the strain leaf, volumes and the direct force head.

Responsibility: the force- and stress-specific part of :class:`~mlipuq.models.base.MLIP`
(:mod:`mlipuq.models.base` re-exports every name): the strained batch whose
strain leaf gives stresses (:func:`strained`, :func:`structure_volumes`,
:func:`stress_from_strain_gradient`), and the optional direct force head as
the mixin :class:`DirectForceHead` with its ``force_mode``
(:data:`FORCE_MODES`, :func:`check_force_mode`).

Direct (non-conservative) forces, optional: a model with a *direct force head*
(``has_direct_forces``) also computes, during :meth:`MLIP.per_atom_energy`, a
linear readout without bias of per-atom vector features :math:`v_{ic}` (C of
them per atom, each a Cartesian vector),

.. math:: F^\\mathrm{direct}_i = \\sum_c w_c\\, v_{ic},

captured by a forward hook on its ``force_readout_name`` layer (a
``torch.nn.Linear(C, 1, bias=False)`` applied to (N, 3, C) tensors).
``forward(..., direct_forces=True)`` returns them; ``force_mode = "direct"``
makes them *the* forces of ``forward(forces=True)`` (and of everything built on
it: :meth:`MLIP.compute`, training, calculators, MD) with no backward pass.
Such forces need not be the gradient of any energy: check them with
:func:`mlipuq.trust.jacobian_asymmetry` and :func:`mlipuq.trust.nve_drift`
(``docs/direct-forces.md``). The default ``force_mode = "conservative"``
leaves every result exactly as without the head.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional

import torch
from torch import nn

from mlipuq import data as mdata


def _get_submodule(module: nn.Module, name: str) -> nn.Module:
    """``module``'s submodule called ``name`` (dotted); a ValueError listing them if none."""
    try:
        return module.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in module.named_modules() if n]
        raise ValueError(
            f"readout layer {name!r} not found in {type(module).__name__}; "
            f"its submodules are {names[:20]}{' ...' if len(names) > 20 else ''}"
        ) from None


def strained(batch: mdata.Batch, *, positions_grad: bool, stress: bool):
    """``(work, positions, strain)``: the batch a model evaluates, with its leaves.

    ``positions`` is a detached copy of ``batch.positions`` (requiring grad with
    ``positions_grad``). With ``stress``, ``strain`` is a (B, 3, 3) zero leaf
    requiring grad and ``work`` holds positions and cell deformed by
    :math:`1 + \\mathrm{sym}(\\varepsilon)`, so that
    :math:`\\partial E / \\partial \\varepsilon / V` is the stress (eV/Å^3, ASE
    sign convention) and the values equal those of the undeformed batch;
    otherwise ``strain`` is None and ``work`` holds ``positions``.
    """
    positions = batch.positions
    cell = batch.cell
    strain = None
    if positions_grad:
        positions = positions.detach().requires_grad_(True)
    if stress:
        strain = torch.zeros_like(cell, requires_grad=True)
        sym = 0.5 * (strain + strain.transpose(1, 2))
        positions_in = positions + torch.einsum("ni,nij->nj", positions, sym[batch.batch])
        cell = cell + torch.bmm(cell, sym)
    else:
        positions_in = positions
    return dataclasses.replace(batch, positions=positions_in, cell=cell), positions, strain


#: Values of :attr:`MLIP.force_mode`.
FORCE_MODES = ("conservative", "direct")


def structure_volumes(batch: mdata.Batch) -> torch.Tensor:
    """(B,) cell volumes |det(cell)| (Å^3) of the batch's structures, in its dtype."""
    return torch.abs(torch.linalg.det(batch.cell))


def stress_from_strain_gradient(g: torch.Tensor, batch: mdata.Batch) -> torch.Tensor:
    """(B, 3, 3) stresses (eV/Å^3) from the gradient ``g`` of the energy with respect
    to the strain leaf of :func:`strained`: ``g / V`` for periodic structures, zero
    for the others."""
    volume = structure_volumes(batch)
    periodic = batch.pbc.all(dim=1)
    volume = torch.where(periodic, volume, torch.ones_like(volume))
    return torch.where(
        periodic[:, None, None], g / volume[:, None, None], torch.zeros_like(g)
    )


def check_force_mode(mode: str, model: Optional["DirectForceHead"] = None) -> str:
    """``mode`` if it is one of :data:`FORCE_MODES` (and ``"direct"`` only for a
    ``model`` with a direct force head), else a ``ValueError``."""
    if mode not in FORCE_MODES:
        raise ValueError(f"force_mode must be one of {FORCE_MODES}, got {mode!r}")
    if mode == "direct" and model is not None and not model.has_direct_forces:
        raise ValueError(
            f"force_mode='direct' needs a direct force head, which this {type(model).__name__} "
            "lacks (MiniMLIP(..., direct_forces=True), wrap(..., force_readout=...))"
        )
    return mode



class DirectForceHead:
    """Mixin of :class:`~mlipuq.models.base.MLIP`: the optional direct force head
    (module notes) and the ``force_mode`` that selects it."""

    #: Dotted name of the direct force readout (``torch.nn.Linear(C, 1, bias=False)``
    #: applied to the (N, 3, C) vector features), None for models without one.
    force_readout_name: Optional[str] = None

    @property
    def has_direct_forces(self) -> bool:
        """Whether the model has a direct force head (``force_readout_name``)."""
        return self.force_readout_name is not None

    @property
    def force_readout_layer(self) -> nn.Linear:
        """The direct force readout: ``Linear(C, 1, bias=False)`` on (N, 3, C) vector features."""
        if not self.has_direct_forces:
            raise ValueError(f"this {type(self).__name__} has no direct force head")
        return _get_submodule(self, self.force_readout_name)

    @property
    def force_mode(self) -> str:
        """Which forces ``forward(forces=True)`` returns: ``"conservative"`` (default,
        :math:`-\\partial E/\\partial r` by autograd) or ``"direct"`` (the direct head's,
        no backward pass; models with ``has_direct_forces`` only). Settable."""
        return getattr(self, "_force_mode", "conservative")

    @force_mode.setter
    def force_mode(self, mode: str) -> None:
        self._force_mode = check_force_mode(mode, self)

    @contextlib.contextmanager
    def using_force_mode(self, mode: str):
        """Context in which :attr:`force_mode` is ``mode`` (restored on exit)."""
        previous = self.force_mode
        self.force_mode = mode
        try:
            yield self
        finally:
            self._force_mode = previous

    @property
    def direct_readout_weight(self) -> torch.Tensor:
        """(C,) weights ``w_c`` of the direct force readout (per vector feature)."""
        return self.force_readout_layer.weight.detach().reshape(-1)

    @property
    def n_vector_features(self) -> int:
        """Number C of per-atom vector features feeding the direct force readout."""
        return int(self.force_readout_layer.in_features)

    def _direct_outputs(self, store: dict, n_atoms: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3) direct forces and (N, C, 3) vector features from a ``capture_features(direct=True)``."""
        if "direct_output" not in store:
            raise ValueError(
                f"the direct force readout {self.force_readout_name!r} of {type(self).__name__} "
                "was not called during the forward pass"
            )
        vectors, forces = store["vector_input"], store["direct_output"]
        if vectors.dim() != 3 or vectors.shape[:2] != (n_atoms, 3) or forces.numel() != 3 * n_atoms:
            raise ValueError(
                f"the direct force readout {self.force_readout_name!r} got input of shape "
                f"{tuple(vectors.shape)} and gave {tuple(forces.shape)}; expected per-atom vector "
                f"features ({n_atoms}, 3, C) and forces ({n_atoms}, 3, 1)"
            )
        return forces.reshape(n_atoms, 3), vectors.transpose(1, 2)
