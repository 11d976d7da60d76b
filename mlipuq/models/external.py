"""What every adapter of an external MLIP package shares.

An external model's per-atom energy is rarely a bare ``nn.Linear`` of one
feature vector: MACE sums a readout per interaction layer, SevenNet and CHGNet
rescale the output per species. Each of these is still *linear* in a vector of
per-atom features, so an adapter

1. runs the package's own network on a :class:`~mlipuq.data.Batch` (geometry
   taken from ``batch.positions``/``batch.cell`` so forces and stresses come
   from autograd), and returns the per-atom last-layer features ``phi_i``
   (:meth:`ExternalMLIP.features`);
2. folds the package's final linear maps, scales and shifts into one
   ``nn.Linear(F, 1)`` named ``readout``, plus per-species reference energies
   kept in float64 (:meth:`~mlipuq.models.MLIP.set_atomic_energies`).

``per_atom_energy = readout(features(batch))`` then reproduces the package's
energies, and every mlipuq wrapper (LLPR, shallow ensembles, evidential heads)
works on it unchanged. The package's own readout layers are still executed by
its forward pass; their output is discarded.
"""

from __future__ import annotations

import importlib
from typing import Iterable, Mapping, Optional, Union

import torch
from torch import nn

from mlipuq import data as mdata
from mlipuq.models.base import MLIP


def require(module: str, extra: str, package: str):
    """Import an optional dependency, or raise an ImportError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this adapter needs the {package} package: pip install 'mlipuq[{extra}]' "
            f"-c constraints.txt (the constraints file keeps torch at its installed version); "
            f"importing {module} failed: {exc}"
        ) from exc


class ExternalMLIP(MLIP):
    """Base of the adapters: a package's network (``self.module``) whose per-atom
    energy is ``readout(phi_i)``, with ``readout`` an ``nn.Linear(F, 1)``.

    Subclasses implement :meth:`features` and :meth:`from_payload` (how a saved
    file is rebuilt) and call :meth:`_set_readout_from` in their constructor.
    ``pickles_module = True`` stores the package's module itself in saved files
    (needs ``weights_only=False`` to load); otherwise ``config()`` must be enough
    to rebuild it (e.g. weights shipped inside the package's wheel).
    """

    readout_name = "readout"
    pickles_module = False

    def __init__(
        self,
        module: nn.Module,
        species: Iterable[Union[int, str]],
        cutoff: float,
    ):
        super().__init__(species, cutoff)
        self.module = module
        self.readout: Optional[nn.Linear] = None

    # --------------------------------------------------------------- subclass API
    def features(self, batch: mdata.Batch) -> torch.Tensor:
        """(N, F) per-atom last-layer features of the package's network."""
        raise NotImplementedError

    @classmethod
    def from_payload(cls, payload: dict) -> "ExternalMLIP":
        """Rebuild the (unloaded) model from a saved payload; weights load afterwards."""
        raise NotImplementedError

    # ------------------------------------------------------------------- helpers
    def _set_readout_from(
        self,
        weight: torch.Tensor,
        bias: Union[float, torch.Tensor],
        atomic_energies: Optional[Mapping[int, float]] = None,
    ) -> None:
        """Install the folded readout ``eps_i = weight . phi_i + bias`` (eV)."""
        weight = torch.as_tensor(weight, dtype=torch.float64).detach().reshape(-1)
        layer = nn.Linear(weight.numel(), 1, bias=True, dtype=self.module_dtype())
        with torch.no_grad():
            layer.weight.copy_(weight.reshape(1, -1))
            layer.bias.fill_(float(torch.as_tensor(bias, dtype=torch.float64)))
        layer.to(self.module_device())
        self.readout = layer
        if atomic_energies is not None:
            self.set_atomic_energies(atomic_energies)

    def module_dtype(self) -> torch.dtype:
        for p in self.module.parameters():
            return p.dtype
        return torch.get_default_dtype()

    def module_device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    def per_atom_energy(self, batch: mdata.Batch) -> torch.Tensor:
        if self.readout is None:
            raise RuntimeError(f"{type(self).__name__} was built without its readout")
        phi = self.features(batch)
        return self.readout(phi.to(self.readout.weight.dtype)).squeeze(-1)

    def _payload(self) -> dict:
        payload = super()._payload()
        if self.pickles_module:
            payload["module"] = self.module
        return payload


def cartesian_shifts(batch: mdata.Batch) -> torch.Tensor:
    """(E, 3) Cartesian periodic shift of each edge, ``shifts @ cell`` (Å), a
    differentiable function of ``batch.cell`` (so strains reach it)."""
    i = batch.edge_index[0]
    return torch.einsum("ek,ekl->el", batch.shifts, batch.cell[batch.batch[i]])
