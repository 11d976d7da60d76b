"""``wrap()``: any per-atom-energy torch module seen through the MLIP contract
(optionally with a direct force head, ``wrap(..., force_readout=...)``)."""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Union

import torch
from torch import nn

from mlipuq import data as mdata
from mlipuq.errors import FileFormatError
from mlipuq.models.base import (MLIP, _get_submodule, check_force_mode, load_module_state,
                                register)


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
        force_readout: Optional[str] = None,
        force_mode: str = "conservative",
    ):
        super().__init__(species, cutoff)
        if not isinstance(module, nn.Module):
            raise TypeError(f"wrap() needs a torch.nn.Module, got {type(module).__name__}")
        if force_readout is not None:
            _check_force_readout(module, force_readout)
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
        self._force_readout_path = force_readout
        if force_readout is not None:
            self.force_readout_name = "module." + force_readout
        self.force_mode = force_mode
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
        config = {
            "readout": self._readout_path,
            "species": self.species,
            "cutoff": self.cutoff,
            "module_class": f"{cls.__module__}.{cls.__qualname__}",  # for messages only
        }
        if self.has_direct_forces:  # only then: configs of models without the head unchanged
            config["force_readout"] = self._force_readout_path
            config["force_mode"] = self.force_mode
        return config

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
        force_readout = config.get("force_readout")  # absent: no direct head (older files)
        force_mode = config.get("force_mode", "conservative")
        if force_readout is not None and not isinstance(force_readout, str):
            raise FileFormatError(f"{path}: wrap() model config with a force_readout that is "
                                  f"not a name ({force_readout!r})")
        try:
            check_force_mode(force_mode)
        except ValueError as exc:
            raise FileFormatError(f"{path}: {exc}") from None
        load_module_state(module, payload["state_dict"], path, expected)
        return cls(module, readout, species, cutoff, force_readout=force_readout,
                   force_mode=force_mode)


def _check_force_readout(module: nn.Module, name: str) -> None:
    """ValueError unless ``name`` is a ``Linear(C, 1, bias=False)`` submodule of ``module``."""
    if not isinstance(name, str):
        raise TypeError(f"force_readout must be the dotted name of a layer, got {name!r}")
    layer = _get_submodule(module, name)
    if not isinstance(layer, nn.Linear):
        raise ValueError(
            f"force readout layer {name!r} is a {type(layer).__name__}, not torch.nn.Linear: "
            "direct forces must be a linear readout of per-atom vector features"
        )
    if layer.out_features != 1:
        raise ValueError(
            f"force readout layer {name!r} has {layer.out_features} outputs; it must map "
            "the C vector features of each Cartesian component to one force component"
        )
    if layer.bias is not None:
        raise ValueError(
            f"force readout layer {name!r} has a bias: a bias would not rotate with the "
            "structure (forces must be equivariant); build it with bias=False"
        )


def wrap(
    module: nn.Module,
    readout: str,
    *,
    species: Iterable[Union[int, str]],
    cutoff: float,
    atomic_energies: Optional[Mapping[Union[int, str], float]] = None,
    force_readout: Optional[str] = None,
    force_mode: str = "conservative",
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
    force_readout
        Dotted name of a direct (non-conservative) force readout, if the
        module has one: a ``torch.nn.Linear(C, 1, bias=False)`` that the
        module's forward applies to its per-atom vector features, a tensor
        of shape (N, 3, C) (atom, Cartesian component, feature; features
        that rotate with the structure), giving direct forces (N, 3, 1) in
        eV/Å. Its output need not be returned (a forward hook captures input
        and output): the module still returns per-atom energies. Then
        ``forward(..., direct_forces=True)`` gives ``out["direct_forces"]``
        (N, 3) and, with ``features=True``, ``out["vector_features"]``
        (N, C, 3), and the UQ wrappers can put their force uncertainty on
        this head (``docs/direct-forces.md``).
    force_mode
        ``"conservative"`` (default; forces −∂E/∂r by autograd) or
        ``"direct"`` (forces from ``force_readout``, no backward pass).

    Returns an :class:`MLIP` whose ``module`` attribute is ``module`` itself;
    an :class:`MLIP` passed in is returned unchanged. Saving it stores the
    module's weights and these settings, not its code: load the file with
    ``mlipuq.models.load(path, module=MyNetwork(...))``.
    """
    if isinstance(module, MLIP):
        return module
    return WrappedMLIP(module, readout, species, cutoff, atomic_energies,
                       force_readout=force_readout, force_mode=force_mode)
