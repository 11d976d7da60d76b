"""``wrap()``: any per-atom-energy torch module seen through the MLIP contract."""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Union

import torch
from torch import nn

from mlipuq import data as mdata
from mlipuq.errors import FileFormatError
from mlipuq.models.base import MLIP, _get_submodule, load_module_state, register


@register
class WrappedMLIP(MLIP):
    """Any torch module computing per-atom energies, seen through the MLIP contract.

    Built by :func:`wrap`; the wrapped module is stored as ``self.module`` and is
    not modified (hooks live only for the duration of a call).
    """

    needs_module = True  # saved files hold the module's weights, not its code

    def __init__(
        self,
        module: nn.Module,
        readout: str,
        species: Iterable[Union[int, str]],
        cutoff: float,
        atomic_energies: Optional[Mapping[Union[int, str], float]] = None,
    ):
        super().__init__(species, cutoff)
        if not isinstance(module, nn.Module):
            raise TypeError(f"wrap() needs a torch.nn.Module, got {type(module).__name__}")
        layer = _get_submodule(module, readout)
        if not isinstance(layer, nn.Linear):
            raise ValueError(
                f"readout layer {readout!r} is a {type(layer).__name__}, not torch.nn.Linear: "
                "the last operation of the per-atom energy must be linear"
            )
        if layer.out_features != 1:
            raise ValueError(
                f"readout layer {readout!r} has {layer.out_features} outputs; "
                "it must map per-atom features to one per-atom energy"
            )
        self.module = module
        self.readout_name = "module." + readout
        self._readout_path = readout
        self._checked = False
        if atomic_energies is not None:
            self.set_atomic_energies(atomic_energies)

    def per_atom_energy(self, batch: mdata.Batch) -> torch.Tensor:
        if self._checked:
            return self.module(batch)
        with self.capture_features() as store:
            out = self.module(batch)
        if not isinstance(out, torch.Tensor):
            raise ValueError(
                f"the wrapped module returned {type(out).__name__}; it must return a tensor of "
                "per-atom energies"
            )
        flat = out.squeeze(-1) if out.dim() == 2 and out.shape[1] == 1 else out
        if flat.shape != (batch.numbers.shape[0],):
            raise ValueError(
                f"the wrapped module returned shape {tuple(out.shape)}; expected per-atom "
                f"energies of shape ({batch.numbers.shape[0]},) or ({batch.numbers.shape[0]}, 1)"
            )
        if "readout_output" not in store:
            raise ValueError(
                f"readout layer {self._readout_path!r} was not called during the forward pass"
            )
        readout_out = store["readout_output"].reshape(-1)
        if readout_out.shape != flat.shape or not torch.allclose(readout_out, flat):
            raise ValueError(
                f"the module's per-atom energies differ from the output of {self._readout_path!r}: "
                "the readout must be the last operation"
            )
        self._checked = True
        return out

    def config(self) -> dict:
        cls = type(self.module)
        return {
            "readout": self._readout_path,
            "species": self.species,
            "cutoff": self.cutoff,
            "module_class": f"{cls.__module__}.{cls.__qualname__}",  # for messages only
        }

    @classmethod
    def from_payload(cls, payload: dict, *, module: Optional[nn.Module] = None,
                     path: str = "<memory>") -> "WrappedMLIP":
        config = payload["config"]
        expected = config.get("module_class", "the wrapped module")
        if module is None:
            raise ValueError(
                f"{path}: holds a model made by wrap() around a {expected}; mlipuq saves its "
                "weights, not its code: build the module in code and pass it, "
                "e.g. mlipuq.models.load(path, module=MyNetwork(...))"
            )
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        try:
            readout, species, cutoff = config["readout"], config["species"], config["cutoff"]
        except KeyError as exc:
            raise FileFormatError(f"{path}: wrap() model config without {exc}") from None
        load_module_state(module, payload["state_dict"], path, expected)
        return cls(module, readout, species, cutoff)


def wrap(
    module: nn.Module,
    readout: str,
    *,
    species: Iterable[Union[int, str]],
    cutoff: float,
    atomic_energies: Optional[Mapping[Union[int, str], float]] = None,
) -> MLIP:
    """Make any per-atom-energy torch module usable by every mlipuq wrapper.

    Parameters
    ----------
    module
        A ``torch.nn.Module`` mapping a :class:`~mlipuq.data.Batch` to per-atom
        energies (N,) or (N, 1) in eV, computing geometry from
        ``batch.edge_vectors()`` so that forces come from autograd.
    readout
        Dotted name of the final ``torch.nn.Linear`` (one output) whose input
        are the per-atom features.
    species, cutoff
        Elements the module knows (symbols or atomic numbers) and its cutoff (Å).
    atomic_energies
        Per-species reference energies (eV) added to the module's output; if
        omitted, :func:`mlipuq.train` fits them by least squares.

    Returns an :class:`MLIP` whose ``module`` attribute is ``module`` itself;
    an :class:`MLIP` passed in is returned unchanged. Saving it stores the
    module's weights and these settings, not its code: load the file with
    ``mlipuq.models.load(path, module=MyNetwork(...))``.
    """
    if isinstance(module, MLIP):
        return module
    return WrappedMLIP(module, readout, species, cutoff, atomic_energies)
