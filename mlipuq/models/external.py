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

import copy
import importlib
from typing import Iterable, Mapping, Optional, Union

import torch
from torch import nn

from mlipuq import data as mdata
from mlipuq.models.base import MLIP


def saved_config(payload: dict, name_key: str, spec_key: str, what: str, path: str) -> dict:
    """The ``config`` of an adapter's saved payload, checked to be self-contained:
    exactly a name (``name_key``) and a plain-data architecture dict (``spec_key``)."""
    from mlipuq.errors import FileFormatError

    config = payload["config"]
    if set(config) != {name_key, spec_key} or not isinstance(config[spec_key], dict):
        raise FileFormatError(
            f"{path}: {what} model config {sorted(config)} is not self-contained "
            f"(expected {name_key!r} and {spec_key!r}); mlipuq reads no file a saved file names"
        )
    return config


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


def check_dtype(dtype) -> Optional[torch.dtype]:
    """``None``, ``torch.float32`` or ``torch.float64``; anything else is a ValueError."""
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def linear_response(layer: nn.Module, n_in: int, columns: Optional[list[int]] = None):
    """Effective weights of a map that is linear (plus a constant) in its input.

    Applies a float64 copy of ``layer`` to zero and to the unit vectors of
    ``columns`` (default: all ``n_in`` inputs), so the result includes whatever
    normalisation the layer applies internally (e3nn's path normalisation).
    Returns ``(weights (len(columns), n_out), bias (n_out,))`` in float64.
    """
    columns = list(range(n_in)) if columns is None else list(columns)
    probe = copy.deepcopy(layer).to(device="cpu", dtype=torch.float64)
    units = torch.zeros(len(columns), n_in, dtype=torch.float64)
    units[torch.arange(len(columns)), torch.tensor(columns, dtype=torch.long)] = 1.0
    with torch.no_grad():
        zero = probe(torch.zeros(1, n_in, dtype=torch.float64)).reshape(1, -1)
        response = probe(units).reshape(len(columns), -1) - zero
    return response, zero[0]


class ExternalMLIP(MLIP):
    """Base of the adapters: a package's network (``self.module``) whose per-atom
    energy is ``readout(phi_i)``, with ``readout`` an ``nn.Linear(F, 1)``.

    Subclasses implement :meth:`features` and :meth:`from_payload` (how a saved
    file is rebuilt) and call :meth:`_set_readout_from` in their constructor.
    Saved files are self-contained and hold no code: the package's weights are
    part of the ``state_dict`` and ``config()`` is plain data from which
    :meth:`from_payload` rebuilds the architecture without reading any file.
    An adapter that cannot do so sets ``needs_module = True``: its files are
    loaded with ``load(path, module=...)``, the network built by the user.
    """

    readout_name = "readout"

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
    def from_payload(cls, payload: dict, *, module: Optional[nn.Module] = None,
                     path: str = "<memory>") -> "ExternalMLIP":
        """Rebuild the model from a saved payload (plain config, no file read);
        the weights are loaded afterwards."""
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
